"""A new model swapped in while requests are in flight: none fails, none is answered wrongly."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest

from rlrec.serving.export import export_run
from rlrec.serving.scorer import Scorer, SlateRequest
from tests.serving.conftest import ADMIN_TOKEN, require_serve_extra

pytestmark = pytest.mark.timeout(300)


def test_swap_with_requests_in_flight(server, world):
    require_serve_extra()
    import httpx

    models = {s.model_version: s for s in map(Scorer.load, (world["export_a"], world["export_b"]))}
    a_version, b_version = list(models)
    histories = [
        [(str(models[a_version].item_raw[(7 * i + j) % 200]), float(j)) for j in range(3)]
        for i in range(40)
    ]
    # The answer each model gives each history (greedy: deterministic).
    expected = {
        version: [
            r.items
            for r in scorer.recommend(
                [SlateRequest(h, 5) for h in histories], np.random.default_rng(0)
            )
        ]
        for version, scorer in models.items()
    }
    headers = {"X-Admin-Token": ADMIN_TOKEN}

    async def traffic() -> list[tuple[int, dict]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            refused = await client.post("/admin/reload", json={"path": str(world["export_b"])})
            assert refused.status_code == 403  # no token
            results: list[tuple[int, dict]] = []

            async def worker(offset: int) -> None:
                for n in range(offset, 400, 8):
                    body = {
                        "history": [{"item": it, "time": t} for it, t in histories[n % 40]],
                        "k": 5,
                    }
                    response = await client.post("/recommend", json=body)
                    results.append((n % 40, {"status": response.status_code, **response.json()}))

            async def swap() -> None:
                while len(results) < 80:
                    await asyncio.sleep(0.01)
                reply = await client.post(
                    "/admin/reload", json={"path": str(world["export_b"])}, headers=headers
                )
                assert reply.status_code == 200, reply.text
                assert reply.json() == {"previous": a_version, "model_version": b_version}

            await asyncio.gather(*(worker(i) for i in range(8)), swap())
            return results

    results = asyncio.run(traffic())
    assert len(results) == 400
    assert all(r["status"] == 200 for _, r in results)
    versions = [r["model_version"] for _, r in results]
    assert versions[0] == a_version and versions[-1] == b_version
    for index, r in results:
        assert r["items"] == expected[r["model_version"]][index]

    # SIGHUP reloads the served directory: write model a into it again and signal.
    export_run(world["run_a"], server.live, force=True)
    httpx.post(f"{server.url}/admin/reload", json={"path": str(server.live)}, headers=headers)
    export_run(world["run_b"], server.live, force=True)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/ready").json()["model_version"] != b_version:
        assert time.monotonic() < deadline, "SIGHUP did not swap the model"
        time.sleep(0.1)
    # A broken export is refused and the current model keeps serving.
    broken = httpx.post(
        f"{server.url}/admin/reload", json={"path": str(server.live / "nope")}, headers=headers
    )
    assert broken.status_code == 422 and b_version in broken.json()["detail"]
    # Put model a back for whatever runs next on the shared server.
    back = httpx.post(
        f"{server.url}/admin/reload", json={"path": str(world["export_a"])}, headers=headers
    )
    assert back.json()["model_version"] == a_version
