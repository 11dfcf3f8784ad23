"""Two tiny trained runs and their exports, and a real ``rlrec serve`` process over HTTP."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def require_serve_extra() -> None:
    """Skip (fail under CI=true) when the ``serve`` extra is not installed."""
    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {', '.join(missing)} missing: install rlrec[serve]")
        pytest.skip(f"{', '.join(missing)} not installed: pip install 'rlrec[serve]'")


@pytest.fixture(scope="session")
def world(serving_world: dict[str, Path]) -> dict[str, Path]:
    """The trained runs and exports of ``tests/conftest.py::serving_world``."""
    return serving_world


RLREC = [sys.executable, "-c", "import sys; from rlrec.cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running ``rlrec serve`` process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path | None
    live: Path | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(export: Path, *extra: str, log: Path | None = None) -> Server:
    """``rlrec serve EXPORT`` on a free 127.0.0.1 port, returned once ``/ready`` is 200."""
    import httpx

    port = free_port()
    argv = [*RLREC, "serve", str(export), "--port", str(port)]
    if log is not None:
        argv += ["--log", str(log)]
    process = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # importing torch and SB3 is slow on a loaded machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"rlrec serve exited {process.returncode}: {output}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return Server(process, url, log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("rlrec serve was not ready within 300 s")


ADMIN_TOKEN = "test-token"


@pytest.fixture(scope="session")
def server(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session: a copy of export ``a`` in ``live/``, a log, a token.

    Starting a server costs seconds (torch and stable-baselines3 import), so the HTTP tests
    share it; the swap test puts model ``a`` back when it is done.
    """
    require_serve_extra()
    root = tmp_path_factory.mktemp("server")
    live = root / "live"
    shutil.copytree(world["export_a"], live)
    running = start_server(live, "--admin-token", ADMIN_TOKEN, log=root / "traffic.jsonl")
    running.live = live
    yield running
    running.stop()
