"""``POST /v1/encode``: texts and images (JSON, multipart or a raw image) to embeddings."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from clipserve.batching import RequestTiming, measure_batching
from clipserve.server.auth import RequireKey
from clipserve.server.formats import NPY_MEDIA_TYPE, aencode_response
from clipserve.server.inputs import parse_encode
from clipserve.server.schemas import (
    ENCODE_EXAMPLES,
    ENCODE_RESPONSE_EXAMPLE,
    ERROR_RESPONSES,
    EncodeOptions,
    EncodeRequest,
    EncodeResponse,
    Encoding,
)
from clipserve.server.state import EngineDep, StateDep

router = APIRouter(prefix="/v1", tags=["embeddings"], dependencies=[RequireKey])

# The body is read by hand (three content types), so its documentation is spelled out here;
# the app adds the EncodeRequest schema this refers to (see EXTRA_SCHEMAS).
EXTRA_SCHEMAS = (EncodeRequest,)
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/EncodeRequest"},
                "examples": ENCODE_EXAMPLES,
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "text": {"type": "array", "items": {"type": "string"}},
                        "model": {"type": "string"},
                        "normalize": {"type": "boolean"},
                        "encoding": {"type": "string", "enum": ["float", "base64", "base64_f16"]},
                    },
                },
                "example": {"text": ["a photo of a cat"], "encoding": "base64"},
            },
            "image/*": {
                "schema": {"type": "string", "format": "binary"},
                "example": "<raw JPEG/PNG/WebP bytes>",
            },
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/json": {"example": ENCODE_RESPONSE_EXAMPLE},
            NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
        "description": "Embeddings in input order (an [N, dim] float32 .npy body when "
        "the request sends Accept: application/x-npy).",
    },
    **ERROR_RESPONSES,
}


@router.post(
    "/encode",
    response_model=EncodeResponse,
    summary="Embed texts and images",
    openapi_extra=_REQUEST_BODY,
    responses=_RESPONSES,
)
async def encode(
    request: Request,
    engine: EngineDep,
    state: StateDep,
    model: Annotated[str | None, Query(description="Default for a body without 'model'.")] = None,
    normalize: Annotated[bool | None, Query(description="Default for 'normalize'.")] = None,
    encoding: Annotated[Encoding | None, Query(description="Default for 'encoding'.")] = None,
) -> Response:
    """Embed texts and images in one request; results come back in input order.

    The body is JSON (``{"inputs": [...]}``: strings, data URIs, URLs or input objects),
    ``multipart/form-data`` (file parts are images, ``text`` fields are texts) or a raw image
    (``Content-Type: image/*`` or ``application/octet-stream``). Query parameters set
    ``model``, ``normalize`` and ``encoding`` for bodies that cannot carry them.
    """
    started = time.perf_counter()
    given = {"model": model, "normalize": normalize, "encoding": encoding}
    defaults = EncodeOptions(**{key: value for key, value in given.items() if value is not None})
    job = await parse_encode(request, state, defaults)
    with measure_batching() as timing:
        vectors = await engine.aencode(job.items, model=job.model, normalize=job.options.normalize)
    response = await aencode_response(
        vectors,
        job.modalities,
        model=job.model,
        encoding=job.options.encoding,
        accept=request.headers.get("accept"),
    )
    response.headers["Server-Timing"] = server_timing(timing, time.perf_counter() - started)
    return response


def server_timing(timing: RequestTiming, total: float) -> str:
    """A ``Server-Timing`` header: batch queue wait, preprocessing, model runs and the
    route's total, in milliseconds — what ``Client.profile`` reports."""
    parts = {
        "queue": timing.queue,
        "prepare": timing.prepare,
        "inference": timing.inference,
        "total": total,
    }
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in parts.items())
