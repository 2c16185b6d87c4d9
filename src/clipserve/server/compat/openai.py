"""OpenAI's embeddings API: ``POST /v1/embeddings``.

Follows the API reference (platform.openai.com/docs/api-reference/embeddings/create) and the
official SDK (``openai-python``: ``resources/embeddings.py``,
``types/create_embedding_response.py``):
``input`` is a string or a list of strings — here a string that is a ``data:image/...`` URI or
an http(s) URL is an image, as in clipserve's native API; ``model`` must name a served model
(else a 404 ``model_not_found``, as OpenAI answers for an unknown model); ``encoding_format``
is ``float`` or ``base64`` (little-endian float32, which the SDK requests by default and
decodes itself); ``dimensions`` may only repeat the model's dimension, since CLIP embeddings
cannot be shortened. Embeddings are L2-normalised, as OpenAI's are. Token-id inputs are
refused with a 400. Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from clipserve.errors import ModelNotFoundError
from clipserve.server.auth import RequireKey
from clipserve.server.formats import encode_vectors
from clipserve.server.inputs import resolve, served_model
from clipserve.server.schemas import EXAMPLE_DATA_URI
from clipserve.server.state import EngineDep, ServerState, StateDep

from .errors import CompatError, CompatInputError, error_docs, error_route

#: OpenAI's error ``type`` per status.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(BaseModel):
    """What went wrong, as OpenAI describes it."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error body."""

    error: OpenAIError


def render_error(error: CompatError) -> JSONResponse:
    """OpenAI's error body; ``code`` is clipserve's error type (``invalid_api_key`` for 401)."""
    code = {401: "invalid_api_key", 404: "model_not_found"}.get(error.status, error.kind)
    body = {
        "error": {
            "message": error.message,
            "type": _TYPES.get(error.status, "server_error"),
            "param": error.param,
            "code": code,
        }
    }
    # OpenAI answers a malformed body with a 400, not FastAPI's 422.
    return JSONResponse(body, 400 if error.status == 422 else error.status)


router = APIRouter(
    prefix="/v1",
    tags=["compat: OpenAI embeddings"],
    dependencies=[RequireKey],
    route_class=error_route(render_error),
)


class EmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings``; unknown fields (``user``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, an image (data URI or URL), or a list of them."
    )
    model: str = Field(description="A served model, e.g. ViT-B-32::openai.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Must equal the model's dimension.")


_EXAMPLES = {
    "texts": {
        "summary": "Texts",
        "value": {"model": "ViT-B-32::openai", "input": ["a photo of a cat", "a diagram"]},
    },
    "image": {
        "summary": "An image as a data URI, base64 answer",
        "value": {
            "model": "ViT-B-32::openai",
            "input": EXAMPLE_DATA_URI,
            "encoding_format": "base64",
        },
    },
}
_RESPONSES: dict[int | str, Any] = {
    200: {
        "content": {
            "application/json": {
                "example": {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, -0.045]}],
                    "model": "ViT-B-32::openai",
                    "usage": {"prompt_tokens": 7, "total_tokens": 7},
                }
            }
        }
    },
    # A malformed body is a 400 here, as OpenAI answers it: no 422.
    **error_docs(
        render_error,
        OpenAIErrorBody,
        examples={400: "dimensions: this model's embeddings have 512 dimensions"},
    ),
}


@router.post(
    "/embeddings",
    summary="OpenAI-compatible embeddings",
    responses=_RESPONSES,
    openapi_extra={"requestBody": {"content": {"application/json": {"examples": _EXAMPLES}}}},
)
async def embeddings(body: EmbeddingsRequest, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Embed texts and images the way OpenAI's ``/v1/embeddings`` does."""
    model = _model(state, body.model)
    dim = engine.model(model).embed_dim
    if body.dimensions is not None and body.dimensions != dim:
        raise CompatInputError(
            f"dimensions: {body.model} embeddings have {dim} dimensions and cannot be "
            f"shortened to {body.dimensions}",
            param="dimensions",
        )
    raw = _inputs(body.input)
    items = await resolve(raw, "input", state)
    vectors = await engine.aencode(items, model=model, normalize=True)
    texts = [item for item in items if isinstance(item, str)]
    tokens = sum(len(ids) for ids in engine.model(model).tokenizer.encode(texts)) if texts else 0
    data = [
        {"object": "embedding", "index": index, "embedding": embedding}
        for index, embedding in enumerate(encode_vectors(vectors, body.encoding_format))
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _model(state: ServerState, name: str) -> str:
    try:
        return served_model(state, name)
    except ModelNotFoundError as exc:
        raise CompatInputError(
            f"The model `{name}` does not exist or is not served here",
            param="model",
            status=404,
        ) from exc


def _inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not items:
        raise CompatInputError("input must not be empty", param="input")
    if not all(isinstance(item, str) for item in items):
        raise CompatInputError(
            "input: token-id arrays are not supported; send strings "
            "(texts, image data URIs or image URLs)",
            param="input",
        )
    return [item for item in items if isinstance(item, str)]
