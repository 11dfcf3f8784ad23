"""Two tiny trained runs and their exports, and a real ``rlrec serve`` process over HTTP."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlrec.agents.config import load_agent_config
from rlrec.agents.train import train_agent
from rlrec.serving.export import export_run
from tests.agents.conftest import TINY_AGENT, TINY_ENV, write_yaml


def require_serve_extra() -> None:
    """Skip (fail under CI=true) when the ``serve`` extra is not installed."""
    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {', '.join(missing)} missing: install rlrec[serve]")
        pytest.skip(f"{', '.join(missing)} not installed: pip install 'rlrec[serve]'")


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs ``a`` (seed 0) and ``b`` (seed 1, more steps) and their exports."""
    root = tmp_path_factory.mktemp("serving")
    env = write_yaml(root / "env.yaml", TINY_ENV)
    agent = load_agent_config(write_yaml(root / "agent.yaml", TINY_AGENT))
    out = {"root": root, "env": env, "cache": root / "cache"}
    for name, seed, steps in (("a", 0, 128), ("b", 1, 256)):
        run = root / f"run_{name}"
        train_agent(env, agent, run, timesteps=steps, seed=seed, cache_dir=root / "cache")
        out[f"run_{name}"] = run
        out[f"export_{name}"] = export_run(run, root / f"export_{name}").out
    return out


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
    argv = [sys.executable, "-m", "rlrec.cli", "serve", str(export), "--port", str(port)]
    if log is not None:
        argv += ["--log", str(log)]
    process = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
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
    raise AssertionError("rlrec serve was not ready within 120 s")


@pytest.fixture(scope="module")
def server(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of export ``a`` with a traffic log (one per test module)."""
    require_serve_extra()
    log = tmp_path_factory.mktemp("traffic") / "traffic.jsonl"
    running = start_server(world["export_a"], log=log)
    yield running
    running.stop()
