"""benchmarks/bench_serve.py's load cell against a real server: both clients, honest counts."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from rlrec.serving.scorer import Scorer
from tests.serving.conftest import require_serve_extra

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    require_serve_extra()
    if importlib.util.find_spec("aiohttp") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but aiohttp missing: install rlrec[serve]")
        pytest.skip("aiohttp not installed: pip install 'rlrec[serve]'")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_serve
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_serve


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_cell_counts_requests_batches_and_cpu(server, world, bench, client):
    scorer = Scorer.load(world["export_a"])
    bodies = [
        json.dumps({"history": [{"item": str(scorer.item_raw[i]), "time": 0}], "k": 3}).encode()
        for i in range(20)
    ]
    stats = asyncio.run(
        bench.cell(server.process.pid, server.url, bodies, "/recommend", 4, 60, 60.0, client)
    )
    assert stats["requests"] == 60 and stats["failed"] == 0 and not stats["transport_errors"]
    assert 1.0 <= stats["mean_batch"] <= 4.0  # at most the 4 requests in flight
    assert stats["server_cpu_ms_per_request"] > 0 and stats["client_cpu_ms_per_request"] > 0
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]
    # A request the server refuses counts as failed, not as served.
    bad = asyncio.run(
        bench.cell(server.process.pid, server.url, [b'{"k": 3}'], "/recommend", 2, 6, 60.0, client)
    )
    assert bad["failed"] == 6 and bad["requests"] == 6
