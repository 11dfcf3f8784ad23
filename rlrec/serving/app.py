"""``rlrec serve``: the FastAPI app around an export's :class:`~rlrec.serving.scorer.Scorer`.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``POST /recommend``: one history -> a slate (raw ids, scores, categories, propensities,
  the model version, the history's unknown items);
* ``POST /recommend/batch``: ``{"requests": [...]}`` (up to :data:`MAX_BATCH`), one answer each;
* ``POST /feedback``: a request's reward, appended to the traffic log (``--log``);
* ``GET /health`` (the process answers), ``GET /ready`` (200 once a model is loaded, else
  503), ``GET /metadata`` (the model's version, run, step, catalog and history length);
* ``POST /admin/reload``: load the export again (or another one: ``{"path": ...}``) and swap it
  in. Refused (403) to a client that is not on the loopback interface, and, when the server has
  an admin token (``--admin-token`` or ``RLREC_SERVE_ADMIN_TOKEN``), without the header
  ``X-Admin-Token``. ``SIGHUP`` does the same reload (a worker's own signal; with
  ``--workers N`` uvicorn's parent restarts the workers one by one on ``SIGHUP`` instead, each
  new one loading the export before it takes requests).

Bad requests get 422 with ``{"error": "<field>: <what is wrong>", "detail": [...]}`` (the
field's path, never the input echoed back); a malformed JSON body the same. Histories are
limited to :data:`MAX_HISTORY_EVENTS` events (the policy reads the last ``history_length``
steps; send the most recent events).

Why requests are scored in micro-batches: a forward pass of 64 histories costs little more
than one of a single history (the per-call overhead of the encoder and the policy dominates
on a CPU), so concurrent requests are collected while the previous batch is scored and then
scored together (:class:`MicroBatcher`); a lone request never waits for others. Each batch
reads the current model once, so a swap is atomic per batch: a request is answered wholly by
the old model or wholly by the new one (its ``model_version`` says which), and none fails.

Why a batch is scored on the event loop rather than in a thread: the forward pass of a few
histories is Python-bound (operator dispatch holds the GIL), so a thread runs no faster beside
the loop; it only adds a hand-off per batch and GIL contention with the loop. Scored inline,
the requests that arrive during a pass wait in their sockets and are all read before the next
one, so batches tend to be larger (5.3-6.3 rather than 4.5-4.6 at concurrency 8 on the bench
model, alternating the two under the same load) and the server spends less CPU per request
(docs/serving.md, Performance). The loop yields after
each batch, so a long ``/recommend/batch`` call never holds other requests for more than one
pass of at most ``max_batch`` histories. Loading a model still runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
import numpy as np
import torch
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import to_json

from rlrec.errors import UserError
from rlrec.serving.scorer import Recommendation, Scorer, SlateRequest
from rlrec.serving.traffic_log import TrafficLogWriter

__all__ = [
    "CONFIG_ENV",
    "MAX_BATCH",
    "MAX_HISTORY_EVENTS",
    "MAX_K",
    "MicroBatcher",
    "ModelHolder",
    "ServeConfig",
    "config_to_env",
    "create_app",
    "create_app_from_env",
]

MAX_HISTORY_EVENTS = 1000
"""Events per history; more is a 422 (the policy reads only the last steps)."""
MAX_K = 1000
"""Largest slate a request may ask for."""
MAX_BATCH = 256
"""Requests per ``/recommend/batch`` call."""
CONFIG_ENV = "RLREC_SERVE_CONFIG"
"""Environment variable that carries :class:`ServeConfig` (JSON) to uvicorn's workers."""
TOKEN_ENV = "RLREC_SERVE_ADMIN_TOKEN"
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class ServeConfig:
    """How a server runs.

    Attributes:
        export_dir: The export to serve (``rlrec export``).
        log_path: Traffic log to append to (None: no log).
        admin_token: Token the admin endpoint requires (None: loopback clients only).
        seed: Seed of the server's generator (``sample`` requests without a seed of their
            own). One worker's draws are reproducible from it; with several workers each
            combines it with its process id, so that they draw different streams (a request
            that must be reproducible gives its own ``seed``).
        threads: Torch threads per worker.
        max_batch: Requests scored together at most (micro-batching).
        background_load: Load the model after the server starts (``/ready`` says when); else
            before it accepts requests (what uvicorn's worker restarts need).
    """

    export_dir: str
    log_path: str | None = None
    admin_token: str | None = None
    seed: int = 0
    threads: int = 1
    max_batch: int = 64
    background_load: bool = True


# --------------------------------------------------------------------------- request schemas

RawId = (
    Annotated[str, Field(min_length=1, max_length=256, strict=True)]
    | Annotated[int, Field(strict=True)]
)
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class HistoryEvent(BaseModel):
    """One event of a user's history."""

    model_config = ConfigDict(extra="forbid")
    item: RawId = Field(description="raw item id, as in the log (string or integer)")
    time: FiniteNumber = Field(description="event time (any unit; only the order is used)")
    event: Literal["view", "click", "cart", "fav", "buy"] | None = Field(
        None, description="event type (recorded in the traffic log; the policy reads items)"
    )


class RecommendRequest(BaseModel):
    """A request for one slate."""

    model_config = ConfigDict(extra="forbid")
    history: list[HistoryEvent] = Field(
        min_length=1, max_length=MAX_HISTORY_EVENTS, description="the user's recent events"
    )
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = 10
    exclude_seen: Annotated[bool, Field(strict=True)] = True
    mode: Literal["greedy", "sample"] = "greedy"
    request_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    seed: Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)] | None = None


class BatchRequest(BaseModel):
    """Several requests answered together."""

    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class RecommendResponse(BaseModel):
    """A served slate (definitions: rlrec.serving.scorer)."""

    request_id: str
    model_version: str
    mode: str
    items: list[str]
    scores: list[float]
    categories: list[str]
    propensities: list[float]
    unknown_items: list[str]
    history_steps: int


class BatchResponse(BaseModel):
    """One answer per request, in order."""

    responses: list[RecommendResponse]


class FeedbackRequest(BaseModel):
    """What the user did after a served slate."""

    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, Field(min_length=1, max_length=128)]
    reward: FiniteNumber
    item: RawId | None = None


class ReloadRequest(BaseModel):
    """Which export to load (default: the one being served)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None


# --------------------------------------------------------------------------- model and batching


class ModelHolder:
    """The current scorer, swapped atomically by :meth:`reload`.

    Args:
        export_dir: The export loaded first and reloaded by default.
    """

    def __init__(self, export_dir: str) -> None:
        self.export_dir = export_dir
        self.current: Scorer | None = None
        self.error: str | None = None
        self._lock = asyncio.Lock()

    async def reload(self, path: str | None = None) -> Scorer:
        """Load an export in a thread, then swap it in; the old one serves until then.

        Raises:
            UserError: If the export does not load (the current model stays).
        """
        async with self._lock:
            target = path or self.export_dir
            scorer = await anyio.to_thread.run_sync(Scorer.load, target)
            self.current, self.export_dir, self.error = scorer, target, None
            await anyio.to_thread.run_sync(_settle_heap)
            return scorer


def _settle_heap() -> None:
    """Collect once, then move every object alive out of the collector's reach.

    Why: a full collection walks every object of the process (~0.4 M after torch, SB3 and
    the model load: 0.1-0.5 s with the event loop stopped, a p99 outlier whenever one falls
    due), though none of them becomes garbage while a model is served. ``gc.freeze`` puts them
    in a generation no collection visits. A replaced model holds reference cycles (SB3), so
    the previous freeze is undone and the heap collected once per load first; that one pause
    happens when a model is swapped in, not at random in the traffic.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class MicroBatcher:
    """Score concurrent requests together (see the module docstring).

    Args:
        holder: Where the current model is read, once per batch.
        rng: The worker's generator for ``sample`` requests without a seed.
        max_batch: Requests per forward pass at most.
    """

    def __init__(self, holder: ModelHolder, rng: np.random.Generator, max_batch: int) -> None:
        self.holder = holder
        self.rng = rng
        self.max_batch = max_batch
        self._pending: list[tuple[list[SlateRequest], asyncio.Future[Any]]] = []
        self._running = False
        self.batches = 0
        """Forward passes run so far."""
        self.scored = 0
        """Requests (histories) scored so far: ``scored / batches`` is the mean batch."""

    async def submit(self, requests: list[SlateRequest]) -> tuple[Scorer, list[Recommendation]]:
        """The model that answered and its recommendations for ``requests``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((requests, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        result: tuple[Scorer, list[Recommendation]] = await future
        return result

    async def _drain(self) -> None:
        try:
            while self._pending:
                taken, size = 0, 0
                while taken < len(self._pending) and (
                    taken == 0 or size + len(self._pending[taken][0]) <= self.max_batch
                ):
                    size += len(self._pending[taken][0])
                    taken += 1
                batch, self._pending = self._pending[:taken], self._pending[taken:]
                scorer = self.holder.current
                flat = [r for requests, _ in batch for r in requests]
                try:
                    if scorer is None:
                        raise HTTPException(503, "the model is still loading; retry shortly")
                    # On the event loop, not in a thread: see the module docstring.
                    results = scorer.recommend(flat, self.rng)
                except Exception as exc:  # handed to each waiting request, which re-raises it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.batches += 1
                self.scored += len(flat)
                start = 0
                for requests, future in batch:
                    if not future.done():
                        future.set_result((scorer, results[start : start + len(requests)]))
                    start += len(requests)
                # Let the answered requests go out and new ones arrive before the next pass.
                await asyncio.sleep(0)
        finally:
            self._running = False


# --------------------------------------------------------------------------- the app


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors[:20]
    ]
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ("body",), "msg": "invalid"}
    message = f"{_field_path(first.get('loc', ()))}: {first.get('msg', 'invalid')}"
    if first.get("type") == "json_invalid":
        context = first.get("ctx")
        reason = context.get("error", "invalid") if isinstance(context, dict) else "invalid"
        message = f"body: malformed JSON ({reason})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return JSONResponse(status_code=422, content={"error": message, "detail": detail})


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _parse_body(model: type[_M], body: bytes) -> _M:
    """``body`` validated as ``model`` straight from its JSON bytes.

    Why not FastAPI's body parameter: it decodes the JSON into Python objects first and then
    validates them, and validates and encodes the answer again through the response model;
    pydantic's ``model_validate_json`` does both steps in one pass in Rust, and the answer is
    encoded once by :func:`pydantic_core.to_json`. The saving is small (FastAPI's part of a
    request was about 0.08 ms of CPU either way, docs/serving.md, Performance) but free.

    Raises:
        RequestValidationError: Its errors located as FastAPI locates them (``body``, then
            the field's path), so one handler writes every 422.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in errors]
        ) from None


_SCHEMA_REF = "#/components/schemas/{model}"
_REQUEST_SCHEMAS: dict[str, Any] = models_json_schema(
    [(RecommendRequest, "validation"), (BatchRequest, "validation")], ref_template=_SCHEMA_REF
)[1]["$defs"]
"""The request models' schemas, for the OpenAPI document's components."""


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as a route's JSON body."""
    ref = {"$ref": _SCHEMA_REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"description": '`{"error": "<field>: <what is wrong>", "detail": [...]}`'},
    503: {"description": "the model is still loading"},
}


def _json_response(payload: Any) -> Response:
    return Response(content=to_json(payload), media_type="application/json")


def _to_slate_request(request: RecommendRequest) -> SlateRequest:
    return SlateRequest(
        history=[(str(e.item), float(e.time)) for e in request.history],
        k=request.k,
        exclude_seen=request.exclude_seen,
        mode=request.mode,
        seed=request.seed,
    )


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``config.export_dir`` (see the module docstring)."""
    holder = ModelHolder(config.export_dir)
    # Several workers (background_load off) must not draw the same stream.
    rng = np.random.default_rng(
        config.seed if config.background_load else [config.seed, os.getpid()]
    )
    batcher = MicroBatcher(holder, rng, config.max_batch)
    writer: TrafficLogWriter | None = None
    token = config.admin_token or os.environ.get(TOKEN_ENV) or None

    async def load_first() -> None:
        try:
            await holder.reload()
        except UserError as exc:
            holder.error = str(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal writer
        torch.set_num_threads(max(1, config.threads))
        if config.log_path is not None:
            writer = TrafficLogWriter(config.log_path)
        loop = asyncio.get_running_loop()
        task = None
        if config.background_load:
            task = loop.create_task(load_first())
        else:
            await load_first()
            if holder.current is None:
                raise RuntimeError(holder.error or "the model did not load")
        # Not possible outside the main thread (an app run by a test's thread).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(load_first()))
        yield
        if task is not None:
            task.cancel()
        if writer is not None:
            writer.close()

    app = FastAPI(
        title="rlrec policy server",
        description="Recommendations from a trained rlrec policy, with propensities for OPE.",
        lifespan=lifespan,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_REQUEST_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    default_openapi = app.openapi
    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    def answer(
        scorer: Scorer, request: RecommendRequest, slate: SlateRequest, rec: Recommendation
    ) -> dict[str, Any]:
        # A plain dict in RecommendResponse's shape (the OpenAPI schema): building the
        # model would validate the lists a second time for nothing.
        request_id = request.request_id or uuid.uuid4().hex
        if writer is not None:
            writer.served(
                request_id,
                scorer.model_version,
                slate,
                [(str(e.item), float(e.time), e.event) for e in request.history],
                rec.items,
                rec.propensities,
                rec.position_propensities,
            )
        return {
            "request_id": request_id,
            "model_version": scorer.model_version,
            "mode": slate.mode,
            "items": rec.items,
            "scores": rec.scores,
            "categories": rec.categories,
            "propensities": rec.propensities,
            "unknown_items": rec.unknown_items,
            "history_steps": rec.history_steps,
        }

    async def recommend_many(requests: list[RecommendRequest]) -> list[dict[str, Any]]:
        slates = [_to_slate_request(r) for r in requests]
        scorer, recs = await batcher.submit(slates)
        return [answer(scorer, *args) for args in zip(requests, slates, recs, strict=True)]

    # The body is read raw and validated by _parse_body (why: its docstring); the OpenAPI
    # document still shows the request models (body_schema) and the response models.
    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        openapi_extra=_body_schema(RecommendRequest),
        responses=_ERROR_RESPONSES,
    )
    async def recommend(request: Request) -> Response:
        """A slate for one history."""
        body = _parse_body(RecommendRequest, await request.body())
        return _json_response((await recommend_many([body]))[0])

    @app.post(
        "/recommend/batch",
        response_model=BatchResponse,
        openapi_extra=_body_schema(BatchRequest),
        responses=_ERROR_RESPONSES,
    )
    async def recommend_batch(request: Request) -> Response:
        """One slate per history, scored together."""
        body = _parse_body(BatchRequest, await request.body())
        return _json_response({"responses": await recommend_many(body.requests)})

    @app.post("/feedback")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Append a request's reward to the traffic log."""
        if writer is None:
            raise HTTPException(409, "feedback needs a traffic log: start 'rlrec serve --log FILE'")
        item = None if body.item is None else str(body.item)
        writer.feedback(body.request_id, float(body.reward), item)
        return {"logged": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 once a model is loaded, else 503 (with the load error, if any)."""
        scorer = holder.current
        if scorer is None:
            return JSONResponse(
                status_code=503, content={"ready": False, "error": holder.error or "loading"}
            )
        return JSONResponse(content={"ready": True, "model_version": scorer.model_version})

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """What is being served."""
        scorer = holder.current
        if scorer is None:
            raise HTTPException(503, holder.error or "the model is still loading")
        spec = scorer.spec
        return {
            "model_version": scorer.model_version,
            "export_dir": str(Path(holder.export_dir).resolve()),
            "created": scorer.manifest.get("created"),
            "run": spec.run,
            "step": spec.step,
            "catalog_size": scorer.n_actions,
            "n_items": len(scorer.item_raw),
            "history_length": spec.history_length,
            "encoder": spec.encoder,
            "planner": spec.planner,
            "modes": ["greedy", "sample"],
            "max_history_events": MAX_HISTORY_EVENTS,
            "max_k": MAX_K,
            "traffic_log": config.log_path,
            "batching": {
                "max_batch": batcher.max_batch,
                "batches": batcher.batches,
                "requests": batcher.scored,
            },
        }

    @app.post("/admin/reload")
    async def reload(
        request: Request,
        body: ReloadRequest | None = None,
        x_admin_token: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Load an export and swap it in without failing a request."""
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            raise HTTPException(403, "the admin endpoint answers loopback clients only")
        if token is not None and x_admin_token != token:
            raise HTTPException(403, "missing or wrong X-Admin-Token")
        old = holder.current.model_version if holder.current else None
        try:
            scorer = await holder.reload(body.path if body else None)
        except UserError as exc:
            raise HTTPException(422, f"reload refused, still serving {old}: {exc}") from None
        return {"previous": old, "model_version": scorer.model_version}

    return app


def create_app_from_env() -> FastAPI:
    """The app of the :class:`ServeConfig` in ``$RLREC_SERVE_CONFIG`` (uvicorn's workers)."""
    payload = json.loads(os.environ[CONFIG_ENV])
    return create_app(ServeConfig(**payload))


def config_to_env(config: ServeConfig) -> str:
    """The JSON that :func:`create_app_from_env` reads."""
    return json.dumps(asdict(config))
