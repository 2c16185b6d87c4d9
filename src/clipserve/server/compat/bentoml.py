"""BentoML's CLIP example service: ``/encode_image``, ``/encode_text`` and ``/rank``.

Request and response shapes follow the example's ``service.py`` (BentoML docs, "CLIP
embeddings") and how BentoML's HTTP client sends arguments: a file argument is one multipart
part per file under the argument's name; any other argument of a request with files is a form
field holding its JSON. Embeddings come back unnormalised, as ``get_image_features`` /
``get_text_features`` return them; rank scores every query image against every candidate
text. Errors: ``{"error": "<message>"}`` with the status code.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clipserve.server.auth import RequireKey
from clipserve.server.inputs import ImageBytes, resolve, served_model
from clipserve.server.schemas import InputObject
from clipserve.server.state import EngineDep, StateDep

from .common import Part, check_total, image_reference, read_parts
from .errors import CompatError, CompatInputError, error_docs, error_route

#: The example's default candidates when a rank request names none.
DEFAULT_CANDIDATES = ("picture of a dog", "picture of a cat")


class BentoErrorBody(BaseModel):
    """BentoML's error body."""

    error: str


def render_error(error: CompatError) -> JSONResponse:
    """BentoML's error body."""
    return JSONResponse({"error": error.message}, error.status)


router = APIRouter(
    tags=["compat: BentoML CLIP"],
    dependencies=[RequireKey],
    route_class=error_route(render_error),
)


class TextItems(BaseModel):
    """Body of ``/encode_text``."""

    items: list[str] = Field(min_length=1, examples=[["a photo of a cat", "a diagram"]])


_MULTIPART_IMAGES: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["items"],
                },
            }
        },
    }
}
_MULTIPART_RANK: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "queries": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "candidates": {
                            "type": "string",
                            "description": "JSON list of candidate texts",
                            "example": json.dumps(list(DEFAULT_CANDIDATES)),
                        },
                    },
                    "required": ["queries"],
                },
            }
        },
    }
}
_MATRIX_EXAMPLE: dict[int | str, Any] = {
    200: {"content": {"application/json": {"example": [[0.0123, -0.456, 0.789]]}}}
}
_RANK_EXAMPLE: dict[int | str, Any] = {
    200: {
        "content": {
            "application/json": {
                "example": {
                    "probabilities": [[0.93, 0.07]],
                    "cosine_similarities": [[0.31, 0.28]],
                }
            }
        }
    }
}
#: Errors of the routes that take images: no model or index to name, no body model to fail.
_IMAGE_ERRORS = error_docs(
    render_error, BentoErrorBody, (400, 401, 413, 415, 503, 504), {400: "items[0]: not an image"}
)


@router.post(
    "/encode_image",
    summary="BentoML CLIP: embed images",
    openapi_extra=_MULTIPART_IMAGES,
    responses={**_MATRIX_EXAMPLE, **_IMAGE_ERRORS},
)
async def encode_image(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Image embeddings (unnormalised), one row per ``items`` file part, as a bare 2-D list."""
    parts = [part for part in await read_parts(request, state) if part.name == "items"]
    if not parts:
        raise CompatInputError("send the images as multipart file parts named 'items'")
    items = await resolve([_image(part, index) for index, part in enumerate(parts)], "items", state)
    vectors = await engine.aencode(items, model=served_model(state, None), normalize=False)
    return JSONResponse(vectors.tolist())


@router.post(
    "/encode_text",
    summary="BentoML CLIP: embed texts",
    responses={
        **_MATRIX_EXAMPLE,
        **error_docs(render_error, BentoErrorBody, (400, 401, 413, 415, 422, 503, 504)),
    },
)
async def encode_text(body: TextItems, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Text embeddings (unnormalised), one row per item, as a bare 2-D list."""
    items = await resolve([InputObject(text=text) for text in body.items], "items", state)
    vectors = await engine.aencode(items, model=served_model(state, None), normalize=False)
    return JSONResponse(vectors.tolist())


@router.post(
    "/rank",
    summary="BentoML CLIP: score query images against candidate texts",
    openapi_extra=_MULTIPART_RANK,
    responses={**_RANK_EXAMPLE, **_IMAGE_ERRORS},
)
async def rank(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Per query image, the softmax of ``logit_scale · cosine`` over the candidates and the
    cosines, both in candidate order: ``[queries][candidates]``."""
    parts = await read_parts(request, state)
    queries = [part for part in parts if part.name == "queries"]
    if not queries:
        raise CompatInputError("send the query images as multipart file parts named 'queries'")
    texts = _candidates([part for part in parts if part.name == "candidates"])
    # Each query is ranked against every candidate: the candidates are encoded per query.
    check_total(len(queries) * (1 + len(texts)), "queries × (1 + candidates)", state)
    images = await resolve([_image(p, i) for i, p in enumerate(queries)], "queries", state)
    candidates = await resolve([InputObject(text=text) for text in texts], "candidates", state)
    model = served_model(state, None)
    results = await asyncio.gather(
        *(engine.arank(query, candidates, model=model) for query in images)
    )
    return JSONResponse(
        {
            "probabilities": np.stack([r.probabilities for r in results]).tolist(),
            "cosine_similarities": np.stack([r.cosines for r in results]).tolist(),
        }
    )


_FILES = {"type": "array", "items": {"type": "file", "format": "image"}}
_MATRIX = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
#: The routes as BentoML's ``/schema.json`` lists them; BentoML's Python client
#: (``SyncHTTPClient``) reads it to learn each API's route, arguments and file fields.
SCHEMA: dict[str, Any] = {
    "name": "CLIP",
    "type": "service",
    "routes": [
        {
            "name": "encode_image",
            "route": "/encode_image",
            "input": {"type": "object", "properties": {"items": _FILES}, "required": ["items"]},
            "output": _MATRIX,
        },
        {
            "name": "encode_text",
            "route": "/encode_text",
            "input": {
                "type": "object",
                "properties": {"items": {"type": "array", "items": {"type": "string"}}},
                "required": ["items"],
            },
            "output": _MATRIX,
        },
        {
            "name": "rank",
            "route": "/rank",
            "input": {
                "type": "object",
                "properties": {
                    "queries": _FILES,
                    "candidates": {
                        "type": "array",
                        "items": {"type": "string"},
                        "default": list(DEFAULT_CANDIDATES),
                    },
                },
                "required": ["queries"],
            },
            "output": {
                "type": "object",
                "properties": {"probabilities": _MATRIX, "cosine_similarities": _MATRIX},
            },
        },
    ],
}


@router.get(
    "/schema.json",
    summary="BentoML CLIP: the service's API schema",
    responses={
        200: {"content": {"application/json": {"example": SCHEMA}}},
        **error_docs(render_error, BentoErrorBody, (401,)),
    },
)
async def schema() -> dict[str, Any]:
    """The three APIs' routes and argument schemas, for BentoML's Python client."""
    return SCHEMA


def _image(part: Part, index: int) -> ImageBytes | InputObject:
    # BentoML's client sends a file argument given as a URL string as a plain form field.
    if isinstance(part.value, str):
        return image_reference(part.value, f"{part.name}[{index}]")
    return ImageBytes(part.value)


def _candidates(parts: list[Part]) -> list[str]:
    if not parts:
        return list(DEFAULT_CANDIDATES)
    if len(parts) > 1 or not isinstance(parts[0].value, str):
        raise CompatInputError("'candidates' must be one form field holding a JSON list of texts")
    try:
        texts = json.loads(parts[0].value)
    except (ValueError, RecursionError) as exc:  # as in clipserve.server.inputs._json
        raise CompatInputError(f"'candidates' is not valid JSON: {exc}") from exc
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise CompatInputError("'candidates' must be a non-empty JSON list of strings")
    return texts


__all__ = ["router"]
