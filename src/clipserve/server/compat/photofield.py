"""photofield-ai: ``/text-embeddings`` and ``/image-embeddings``.

As photofield-ai's ``main.py`` does, each embedding is the model's raw (unnormalised) output
as base64 of little-endian float16 (``embedding_f16_b64``), with ``embedding_inv_norm_f16_uint16``
= ``1 / ‖v‖`` rounded to float16 and sent as the integer of its 16 bits, so a client computes
cosines without a square root per vector. Image requests are multipart with any field names;
each file comes back with its ``field`` and ``filename``. ``HEAD`` on both routes answers 200:
photofield probes the routes to discover features. Errors: FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clipserve.server.auth import RequireKey
from clipserve.server.inputs import ImageBytes, resolve, served_model
from clipserve.server.schemas import InputObject
from clipserve.server.state import EngineDep, StateDep

from .common import read_parts
from .errors import CompatError, CompatInputError, DetailErrorBody, error_docs, error_route


def render_error(error: CompatError) -> JSONResponse:
    """FastAPI's error body, as photofield-ai (a FastAPI app) answers."""
    return JSONResponse({"detail": error.message}, error.status)


router = APIRouter(
    tags=["compat: photofield-ai"],
    dependencies=[RequireKey],
    route_class=error_route(render_error),
)


class TextEmbeddings(BaseModel):
    """Body of ``/text-embeddings``."""

    texts: list[str] = Field(min_length=1, examples=[["hawk", "lion"]])


def encode_embedding(vector: np.ndarray) -> dict[str, Any]:
    """``embedding_f16_b64`` and ``embedding_inv_norm_f16_uint16`` of one raw embedding."""
    inverse_norm = np.float16(1.0 / float(np.linalg.norm(vector.astype(np.float64))))
    return {
        "embedding_f16_b64": base64.b64encode(vector.astype("<f2").tobytes()).decode("ascii"),
        "embedding_inv_norm_f16_uint16": int(inverse_norm.view(np.uint16)),
    }


_ITEM_EXAMPLE = {"embedding_f16_b64": "VykzsNCu7CQ2NLCq...", "embedding_inv_norm_f16_uint16": 11922}
_IMAGE_ERRORS = error_docs(
    render_error, DetailErrorBody, (400, 401, 413, 415, 503, 504), {400: "No images provided"}
)
_MULTIPART: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "format": "binary"},
                    "description": "Any number of image file parts, under any field names.",
                },
            }
        },
    }
}


@router.head("/text-embeddings", summary="photofield-ai: feature probe", include_in_schema=False)
@router.head("/image-embeddings", summary="photofield-ai: feature probe", include_in_schema=False)
async def probe() -> Response:
    """200: the route is served (photofield checks with ``HEAD`` before using it)."""
    return Response()


@router.post(
    "/text-embeddings",
    summary="photofield-ai: embed texts",
    responses={
        200: {
            "content": {
                "application/json": {"example": {"texts": [{"text": "hawk", **_ITEM_EXAMPLE}]}}
            }
        },
        **error_docs(render_error, DetailErrorBody, (400, 401, 413, 415, 422, 503, 504)),
    },
)
async def text_embeddings(body: TextEmbeddings, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Per text: the text and its float16 embedding with the inverse norm."""
    model = served_model(state, None)
    items = await resolve([InputObject(text=text) for text in body.texts], "texts", state)
    vectors = await engine.aencode(items, model=model, normalize=False)
    texts = [
        {"text": text, **encode_embedding(vector)}
        for text, vector in zip(body.texts, vectors, strict=True)
    ]
    return JSONResponse({"texts": texts})


@router.post(
    "/image-embeddings",
    summary="photofield-ai: embed images",
    openapi_extra=_MULTIPART,
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "images": [{"field": "image", "filename": "a.jpg", **_ITEM_EXAMPLE}]
                    }
                }
            }
        },
        **_IMAGE_ERRORS,
    },
)
async def image_embeddings(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Per file part: its field name, file name and float16 embedding with the inverse norm."""
    model = served_model(state, None)
    parts = await read_parts(request, state)
    files = [part for part in parts if isinstance(part.value, bytes)]
    if len(files) != len(parts):
        raise CompatInputError("every form field must be an image file")
    if not files:
        raise CompatInputError("No images provided")
    raw = [ImageBytes(part.value) for part in files if isinstance(part.value, bytes)]
    items = await resolve(raw, "images", state)
    vectors = await engine.aencode(items, model=model, normalize=False)
    images = [
        {"field": part.name, "filename": part.filename, **encode_embedding(vector)}
        for part, vector in zip(files, vectors, strict=True)
    ]
    return JSONResponse({"images": images})
