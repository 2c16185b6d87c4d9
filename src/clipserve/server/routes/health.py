"""Operations: ``/healthz`` (alive), ``/readyz`` (models loaded and warm), ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from clipserve.server.auth import RequireKey
from clipserve.server.metrics import CONTENT_TYPE
from clipserve.server.schemas import ERROR_RESPONSES, HealthResponse, json_example
from clipserve.server.state import StateDep

router = APIRouter(tags=["operations"])

_LOADING = {"status": "loading", "models": []}
_READY = {"status": "ready", "models": ["ViT-B-32::openai"]}
_METRICS_EXAMPLE = (
    "# HELP clipserve_http_requests_total HTTP requests answered, by route and status.\n"
    "# TYPE clipserve_http_requests_total counter\n"
    'clipserve_http_requests_total{method="POST",route="/v1/encode",status="200"} 42.0\n'
)


def _health(status: int, body: HealthResponse, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body.model_dump(exclude_none=True), status, headers=headers)


@router.get(
    "/healthz",
    response_model=HealthResponse,
    summary="Liveness",
    responses={
        **json_example({"status": "ok"}),
        503: {"description": "The models failed to load", "model": HealthResponse},
    },
)
async def healthz(state: StateDep) -> JSONResponse:
    """200 while the process serves HTTP (also during loading); 503 if loading failed."""
    if state.load_error is not None:
        return _health(503, HealthResponse(status="failed", error=state.load_error))
    return _health(200, HealthResponse(status="ok"))


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **json_example(_READY),
    503: {
        "description": "Still loading or warming up",
        "model": HealthResponse,
        "content": {"application/json": {"example": _LOADING}},
    },
}


@router.get(
    "/readyz",
    response_model=HealthResponse,
    summary="Readiness",
    responses=_READY_RESPONSES,
)
async def readyz(state: StateDep) -> JSONResponse:
    """200 once every model is loaded and has encoded a text and an image; 503 until then."""
    if state.load_error is not None:
        return _health(503, HealthResponse(status="failed", error=state.load_error))
    if not state.ready or state.engine is None:
        return _health(503, HealthResponse(status="loading"), retry_after=1)
    return _health(200, HealthResponse(status="ready", models=state.engine.model_names))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[RequireKey],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE: {"example": _METRICS_EXAMPLE}}},
        401: ERROR_RESPONSES[401],
    },
)
async def metrics(state: StateDep) -> Response:
    """Requests and latency by route and status, batch sizes, queue depth, items encoded.

    An ``async`` route on purpose: it drains the batchers' stats on the event loop thread,
    the only thread that writes them.
    """
    return Response(state.metrics.render(state.engine), media_type=CONTENT_TYPE)
