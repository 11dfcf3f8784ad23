"""A real ``rlrec serve`` process on 127.0.0.1, tested over HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlrec.serving.scorer import Scorer, SlateRequest
from tests.serving.conftest import require_serve_extra

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def httpx_mod():
    require_serve_extra()
    import httpx

    return httpx


@pytest.fixture(scope="module")
def scorer(world) -> Scorer:
    return Scorer.load(world["export_a"])


def history(scorer: Scorer, *indices: int) -> list[dict]:
    return [{"item": str(scorer.item_raw[i]), "time": float(t)} for t, i in enumerate(indices)]


def test_health_ready_metadata_and_openapi(server, httpx_mod, scorer):
    assert httpx_mod.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx_mod.get(f"{server.url}/ready").json()
    assert ready == {"ready": True, "model_version": scorer.model_version}
    meta = httpx_mod.get(f"{server.url}/metadata").json()
    assert meta["catalog_size"] == scorer.n_actions and meta["history_length"] == 8
    spec = httpx_mod.get(f"{server.url}/openapi.json").json()
    paths = spec["paths"]
    assert {"/recommend", "/recommend/batch", "/feedback", "/admin/reload"} <= set(paths)
    # The hot endpoints read the raw body, yet document their request and response models.
    for path, request, response in (
        ("/recommend", "RecommendRequest", "RecommendResponse"),
        ("/recommend/batch", "BatchRequest", "BatchResponse"),
    ):
        post = paths[path]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        answer = post["responses"]["200"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(f"/{request}") and answer["$ref"].endswith(f"/{response}")
        assert "422" in post["responses"]
    schemas = spec["components"]["schemas"]
    assert {"RecommendRequest", "BatchRequest", "HistoryEvent", "RecommendResponse"} <= set(schemas)
    assert schemas["RecommendRequest"]["properties"]["history"]["maxItems"] == 1000
    assert meta["batching"]["max_batch"] == 64 and meta["batching"]["batches"] >= 0


def test_recommend_answers_what_the_scorer_computes(server, httpx_mod, scorer):
    body = {"history": [*history(scorer, 4, 9), {"item": "never-seen", "time": 5}], "k": 5}
    answer = httpx_mod.post(f"{server.url}/recommend", json=body).json()
    (expected,) = scorer.recommend(
        [SlateRequest([(e["item"], e["time"]) for e in body["history"]], 5)],
        np.random.default_rng(0),
    )
    assert answer["items"] == expected.items
    assert answer["categories"] == expected.categories
    np.testing.assert_allclose(answer["propensities"], expected.propensities)
    np.testing.assert_allclose(answer["scores"], expected.scores)
    assert answer["unknown_items"] == ["never-seen"] and answer["history_steps"] == 2
    assert answer["model_version"] == scorer.model_version and answer["mode"] == "greedy"
    # Integer raw ids are the same items as their strings.
    as_int = {
        **body,
        "history": [{"item": int(e["item"]), "time": e["time"]} for e in body["history"][:2]],
    }
    assert httpx_mod.post(f"{server.url}/recommend", json=as_int).json()["items"] == expected.items


def test_batch_of_64_matches_single_requests(server, httpx_mod, scorer):
    requests = [{"history": history(scorer, i, i + 1, i + 2), "k": 3} for i in range(64)]
    batch = httpx_mod.post(f"{server.url}/recommend/batch", json={"requests": requests})
    assert batch.status_code == 200
    responses = batch.json()["responses"]
    assert len(responses) == 64
    for i in (0, 17, 63):
        single = httpx_mod.post(f"{server.url}/recommend", json=requests[i]).json()
        assert single["items"] == responses[i]["items"]


BAD = [
    ("malformed JSON", b'{"history": [{"item": "1", "time": 1}', "malformed JSON"),
    ("not JSON at all", b"\x00\xff garbage", "malformed JSON"),
    ("10,000 events", None, "history"),
    ("k of the wrong type", {"k": "ten"}, "k:"),
    ("item of the wrong type", {"history": [{"item": [1], "time": 1}]}, "history[0].item"),
    ("time as text", {"history": [{"item": "1", "time": "noon"}]}, "history[0].time"),
    ("empty history", {"history": []}, "history"),
    ("no history", b'{"k": 3}', "history"),
    ("k of 0", {"k": 0}, "k:"),
    ("unknown mode", {"mode": "best"}, "mode"),
    ("unknown field", {"user": 7}, "user"),
    ("bool as k", {"k": True}, "k:"),
    ("NaN time", b'{"history": [{"item": "1", "time": NaN}]}', "history[0].time"),
    ("a list body", b"[1, 2]", "body"),
]


@pytest.mark.parametrize(("case", "change", "named"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_422_naming_the_field(server, httpx_mod, case, change, named):
    if isinstance(change, bytes):
        content = change
    else:
        body = {"history": [{"item": "1", "time": 1}], "k": 3}
        if change is None:
            body["history"] = [{"item": "1", "time": t} for t in range(10_000)]
        else:
            body.update(change)
        content = json.dumps(body).encode()
    response = httpx_mod.post(
        f"{server.url}/recommend", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert named in error and "\n" not in error and len(response.content) < 5000


def test_batch_limits_and_feedback(server, httpx_mod, scorer):
    too_many = {"requests": [{"history": history(scorer, 1)}] * 257}
    response = httpx_mod.post(f"{server.url}/recommend/batch", json=too_many)
    assert response.status_code == 422 and "requests" in response.json()["error"]
    bad_inner = {"requests": [{"history": history(scorer, 1)}, {"history": []}]}
    response = httpx_mod.post(f"{server.url}/recommend/batch", json=bad_inner)
    assert response.status_code == 422 and "requests[1].history" in response.json()["error"]
    answer = httpx_mod.post(
        f"{server.url}/recommend",
        json={"history": history(scorer, 2), "request_id": "fb-1", "mode": "sample", "k": 2},
    ).json()
    ok = httpx_mod.post(
        f"{server.url}/feedback",
        json={"request_id": "fb-1", "reward": 3, "item": answer["items"][0]},
    )
    assert ok.status_code == 200
    bad = httpx_mod.post(f"{server.url}/feedback", json={"request_id": "fb-1", "reward": "lots"})
    assert bad.status_code == 422 and "reward" in bad.json()["error"]
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    served = [r for r in lines if r.get("request_id") == "fb-1"]
    assert [r["type"] for r in served] == ["served", "feedback"]
    assert served[0]["items"] == answer["items"] and served[1]["reward"] == 3.0
    np.testing.assert_allclose(served[0]["propensities"], answer["propensities"])
