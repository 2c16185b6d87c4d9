"""immich's machine-learning service: ``GET /ping`` and ``POST /predict`` for its CLIP task.

immich's server (``server/src/repositories/machine-learning.repository.ts``) posts a multipart
form: ``entries`` — JSON such as ``{"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}``
or ``{"clip": {"textual": {"modelName": ..., "options": {"language": "en"}}}}`` — plus an
``image`` file or a ``text`` field, and reads ``response["clip"]``: the embedding as a JSON
string (immich's ``serialize_np_array``), L2-normalised as immich's exported models return it.
Image answers also carry ``imageHeight`` and ``imageWidth``. immich spells model names with
``__`` where clipserve uses ``::``; both are accepted. Only the ``clip`` task is served.
Errors: FastAPI's ``{"detail": ...}``, as immich's service answers.
"""

from __future__ import annotations

import io
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image

from clipserve.errors import ModelNotFoundError
from clipserve.server.auth import RequireKey
from clipserve.server.inputs import ImageBytes, resolve, served_model
from clipserve.server.schemas import InputObject
from clipserve.server.state import EngineDep, ServerState, StateDep

from .common import Part, read_parts
from .errors import CompatError, CompatInputError, DetailErrorBody, error_docs, error_route

_TASK = "clip"
_EXIF_ORIENTATION = 0x0112


def render_error(error: CompatError) -> JSONResponse:
    """FastAPI's error body, as immich's machine-learning service answers."""
    return JSONResponse({"detail": error.message}, error.status)


router = APIRouter(tags=["compat: immich machine learning"], route_class=error_route(render_error))
# /ping is immich's health probe: like /healthz it works without an API key.
_predict = APIRouter(
    tags=["compat: immich machine learning"],
    dependencies=[RequireKey],
    route_class=error_route(render_error),
)


@router.get(
    "/ping",
    summary="immich ML: health probe",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"example": "pong"}}}},
)
async def ping() -> PlainTextResponse:
    """``pong``, as immich's server expects from a healthy machine-learning URL."""
    return PlainTextResponse("pong")


_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "entries": {
                            "type": "string",
                            "example": '{"clip": {"textual": {"modelName": "ViT-B-32__openai"}}}',
                        },
                        "image": {"type": "string", "format": "binary"},
                        "text": {"type": "string"},
                    },
                    "required": ["entries"],
                }
            }
        },
    }
}
_RESPONSES: dict[int | str, Any] = {
    200: {
        "content": {
            "application/json": {
                "example": {
                    "clip": "[0.0123,-0.0456,0.0789]",
                    "imageHeight": 480,
                    "imageWidth": 640,
                }
            }
        }
    },
    **error_docs(
        render_error,
        DetailErrorBody,
        examples={
            400: "Either image or text must be provided",
            422: "Invalid request format: 'entries' must be JSON like ...",
        },
    ),
}


@_predict.post(
    "/predict", summary="immich ML: CLIP embedding", openapi_extra=_REQUEST, responses=_RESPONSES
)
async def predict(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """The CLIP embedding of the ``image`` file or the ``text`` field, as a JSON string."""
    parts = await read_parts(request, state)
    kind, model_name = _entry(_field(parts, "entries"))
    model = _model(state, model_name)
    item = _input(parts, kind)
    items = await resolve([item], "image" if kind == "visual" else "text", state)
    vector = await engine.aencode(items, model=model, normalize=True)
    body: dict[str, Any] = {_TASK: json.dumps(vector[0].tolist(), separators=(",", ":"))}
    image = items[0]
    if isinstance(image, bytes):
        body["imageHeight"], body["imageWidth"] = _oriented_size(image)
    return JSONResponse(body)


def _field(parts: list[Part], name: str) -> Part | None:
    return next((part for part in parts if part.name == name), None)


def _entry(part: Part | None) -> tuple[str, str]:
    """``("visual" | "textual", modelName)`` from the ``entries`` JSON."""
    if part is None:
        raise CompatInputError("the form needs an 'entries' field", param="entries", status=422)
    try:
        raw = part.value if isinstance(part.value, str) else part.value.decode()
        entries = json.loads(raw)
        tasks = dict(entries)
        types = dict(tasks.pop(_TASK))
        (kind, entry), *more = types.items()
        name = entry["modelName"]
    # RecursionError: JSON nested deeper than the parser can follow (10,000 levels).
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise CompatInputError(
            "Invalid request format: 'entries' must be JSON like "
            '{"clip": {"visual": {"modelName": "..."}}}',
            param="entries",
            status=422,
        ) from exc
    if tasks or more or kind not in ("visual", "textual") or not isinstance(name, str):
        raise CompatInputError(
            "this server runs only the 'clip' task, with one 'visual' or 'textual' entry",
            param="entries",
            status=422,
        )
    return kind, name


def _model(state: ServerState, name: str) -> str:
    try:
        return served_model(state, name)
    except ModelNotFoundError:
        return served_model(state, name.replace("__", "::"))


def _input(parts: list[Part], kind: str) -> ImageBytes | InputObject:
    image, text = _field(parts, "image"), _field(parts, "text")
    if image is not None and isinstance(image.value, bytes):
        if kind != "visual":
            raise CompatInputError("an image needs a 'visual' entry", param="entries")
        return ImageBytes(image.value)
    if text is not None and isinstance(text.value, str):
        if kind != "textual":
            raise CompatInputError("a text needs a 'textual' entry", param="entries")
        return InputObject(text=text.value)
    raise CompatInputError("Either image or text must be provided")


def _oriented_size(data: bytes) -> tuple[int, int]:
    """Height and width after EXIF orientation (immich decodes with ``exif_transpose``)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width
    return height, width


router.include_router(_predict)
