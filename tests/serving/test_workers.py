"""``rlrec serve --workers 2``: several processes, one log, and SIGHUP to the parent."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import pytest

from rlrec.serving.export import export_run
from rlrec.serving.scorer import Scorer
from tests.serving.conftest import require_serve_extra, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_two_workers_share_the_log_and_restart_on_sighup(world, tmp_path):
    require_serve_extra()
    import httpx

    live = tmp_path / "live"
    shutil.copytree(world["export_a"], live)
    log = tmp_path / "traffic.jsonl"
    server = start_server(live, "--workers", "2", log=log)
    a_version = Scorer.load(world["export_a"]).model_version
    b_version = Scorer.load(world["export_b"]).model_version
    item = str(Scorer.load(world["export_a"]).item_raw[3])
    results: list[tuple[int, str]] = []
    resets: list[str] = []
    stop = threading.Event()

    def traffic(thread: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            n = 0
            while not stop.is_set():
                body = {"history": [{"item": item, "time": 0}], "request_id": f"w{thread}-{n}"}
                n += 1
                try:
                    response = client.post("/recommend", json=body)
                except httpx.TransportError as exc:
                    # A retiring worker closes its idle keep-alive connections: a request sent
                    # on one at that moment sees a reset (the documented retry case).
                    resets.append(type(exc).__name__)
                    continue
                version = response.json().get("model_version", "") if response.is_success else ""
                results.append((response.status_code, version))

    try:
        threads = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        export_run(world["run_b"], live, force=True)
        server.process.send_signal(signal.SIGHUP)  # the parent replaces the workers one by one
        deadline = time.monotonic() + 240
        while not any(v == b_version for _, v in results[-20:]):
            assert time.monotonic() < deadline, "the workers were not replaced"
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        server.stop()
    assert results and all(status == 200 for status, _ in results), {s for s, _ in results}
    assert {v for _, v in results} == {a_version, b_version}
    assert len(resets) <= 8, resets  # at most the connections of the retired workers
    served = [json.loads(line) for line in log.read_text().splitlines()]
    # Every answer logged once, no torn or merged lines (a reset request may have been served).
    ids = [r["request_id"] for r in served]
    assert len(ids) == len(set(ids)) and len(results) <= len(ids) <= len(results) + len(resets)
