"""Request and response bodies of the native HTTP API (``/v1/...``), with OpenAPI examples.

An *input* is a plain string — a ``data:image/...;base64,`` URI is an image, an ``http(s)://``
URL (without spaces) names an image to fetch, anything else is a text — or an object with
exactly one of ``text``, ``image`` (base64 or a data URI) and ``url``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

Encoding = Literal["float", "base64", "base64_f16"]
Modality = Literal["text", "image"]

#: A 2x2 red PNG, small enough for examples.
EXAMPLE_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mM8ISfHwMDAxMDAwMDAAAANBAEIf62CUQ"
    "AAAABJRU5ErkJggg=="
)
EXAMPLE_DATA_URI = f"data:image/png;base64,{EXAMPLE_PNG_B64}"


def exactly_one_of(*names: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a model that needs exactly one of its optional fields
    ``names`` to be given and not null — what its validator checks — so that the OpenAPI
    document says so too. Without it the document calls ``{}`` valid, and the server
    answers it with a 422.
    """

    def document(schema: dict[str, Any]) -> None:
        not_null = {"not": {"type": "null"}}
        schema["oneOf"] = [{"required": [name], "properties": {name: not_null}} for name in names]

    return document


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" includes 10.0; strict validation alone would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: An integer of a strict JSON body: 10 or 10.0, never "10" or true.
JsonInt = Annotated[int, BeforeValidator(_whole_number)]
#: A count (at least 1) of a strict JSON body. The bound comes before the validator: after
#: it, pydantic would document it as "ge" (no JSON Schema keyword) inside an optional field.
JsonCount = Annotated[int, Field(ge=1), BeforeValidator(_whole_number)]


class _Strict(BaseModel):
    # Unknown fields are a client mistake worth a 422, not something to ignore silently.
    model_config = ConfigDict(extra="forbid")


class StrictJsonModel(BaseModel):
    """Base of JSON request bodies: unknown fields and lax coercions are 422s."""

    # JSON bodies hold what their schema says: no 0 for false or "5" for 5, which pydantic's
    # lax mode would take although the OpenAPI document says otherwise. (EncodeOptions stays
    # lax: form fields and query parameters arrive as strings.)
    model_config = ConfigDict(extra="forbid", strict=True)


class InputObject(StrictJsonModel):
    """One input spelled out: exactly one of ``text``, ``image`` or ``url``."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("text", "image", "url"))

    text: str | None = Field(None, description="A text, never interpreted as an image or URL.")
    image: str | None = Field(None, description="Base64 image bytes or a data:image/... URI.")
    url: str | None = Field(None, description="An http(s) URL of an image (if enabled).")

    @model_validator(mode="after")
    def _exactly_one(self) -> InputObject:
        given = [name for name in ("text", "image", "url") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "an input object needs exactly one of 'text', 'image' or 'url'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


def _input_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict | InputObject):
        return "object"
    return None


#: An input: a string or an :class:`InputObject`; anything else gets one clear error message.
InputItem = Annotated[
    Annotated[str, Tag("string")] | Annotated[InputObject, Tag("object")],
    Discriminator(
        _input_kind,
        custom_error_type="input_type",
        custom_error_message=(
            "an input must be a string or an object with one of 'text', 'image' or 'url'"
        ),
    ),
]


class EncodeOptions(_Strict):
    """Options of ``POST /v1/encode`` (JSON fields, form fields or query parameters)."""

    model: str | None = Field(None, description="A served model; the default model if omitted.")
    normalize: bool = Field(True, description="L2-normalise the embeddings.")
    encoding: Encoding = Field(
        "float",
        description="float: JSON numbers; base64: little-endian float32 bytes; "
        "base64_f16: little-endian float16 bytes.",
    )


class EncodeRequest(EncodeOptions):
    """JSON body of ``POST /v1/encode``: texts and images, mixed, kept in order."""

    inputs: list[InputItem] = Field(min_length=1, description="Texts and images, in order.")


class Embedding(BaseModel):
    """One input's embedding."""

    index: int = Field(description="Position of the input in the request.")
    modality: Modality
    embedding: list[float] | str = Field(
        description="Floats, or base64 of little-endian float32/float16 bytes."
    )


class Usage(BaseModel):
    """How many inputs of each kind the request encoded."""

    texts: int
    images: int


class EncodeResponse(BaseModel):
    """Embeddings in input order."""

    model: str
    dim: int
    encoding: Encoding
    data: list[Embedding]
    usage: Usage


class RankRequest(StrictJsonModel):
    """Score candidates against a query; either may be texts or images."""

    query: InputItem
    candidates: list[InputItem] = Field(min_length=1)
    model: str | None = None


class RankScore(BaseModel):
    """A candidate's score: softmax(logit_scale · cosine) over the candidates, and the cosine."""

    index: int = Field(description="Position of the candidate in the request.")
    probability: float
    cosine: float


class RankResponse(BaseModel):
    """Candidates, best first."""

    model: str
    results: list[RankScore]


class ClassifyRequest(StrictJsonModel):
    """Zero-shot classification of images among labels."""

    images: list[InputItem] = Field(
        min_length=1,
        description="Images: data URIs, URLs, base64 (a plain string here is base64) or "
        "{'image': ...} / {'url': ...} objects.",
    )
    labels: list[str] = Field(min_length=1)
    templates: list[str] | None = Field(
        None, description="Prompt templates with '{}' for the label; default 'a photo of a {}.'"
    )
    model: str | None = None


class LabelScore(BaseModel):
    """One label's score for one image."""

    label: str
    probability: float
    cosine: float


class Classification(BaseModel):
    """The labels of one image, most probable first."""

    index: int
    label: str
    scores: list[LabelScore]


class ClassifyResponse(BaseModel):
    """One classification per image, in request order."""

    model: str
    results: list[Classification]


class ModelInfo(BaseModel):
    """A served model."""

    name: str
    dim: int
    image_size: int
    context_length: int
    precision: str
    logit_scale: float
    default: bool


class ModelsResponse(BaseModel):
    """The served models, default first."""

    data: list[ModelInfo]


class HealthResponse(BaseModel):
    """Liveness or readiness."""

    status: str
    models: list[str] = Field(default_factory=list)
    error: str | None = None


class ErrorDetail(BaseModel):
    """What went wrong: a machine-readable ``type`` and a message for people."""

    type: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorDetail


# ---------------------------------------------------------------- OpenAPI examples
def _error_doc(description: str, kind: str, message: str) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": error_example(kind, message)}},
    }


def error_example(kind: str, message: str) -> dict[str, Any]:
    """An example error body."""
    return {"error": {"type": kind, "message": message}}


#: Error answers shared by the ``/v1`` routes, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error_doc("Bad input", "invalid_image", "inputs[1]: cannot identify image format"),
    401: _error_doc("Missing or wrong API key", "unauthorized", "invalid API key"),
    404: _error_doc("Unknown model", "model_not_found", "model 'x' is not served"),
    413: _error_doc("Too large", "too_many_items", "3000 inputs; the limit is 1024"),
    422: _error_doc("Invalid body", "validation_error", "body.inputs: Field required"),
    503: _error_doc("Overloaded or loading", "overloaded", "queue full; retry"),
    504: _error_doc("Timed out", "request_timeout", "no result within 60 s"),
}

#: Error answers of the routes that write to disk: the ``/v1`` ones, and a full disk.
WRITE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    507: _error_doc(
        "The disk is full (or a file size limit was reached): the write was not applied",
        "storage",
        "cannot write /data/indexes/photos/items.sqlite: database or disk is full (SQLITE_FULL)",
    ),
}

ENCODE_EXAMPLES: dict[str, dict[str, Any]] = {
    "mixed": {
        "summary": "Texts and a data-URI image",
        "value": {"inputs": ["a photo of a cat", EXAMPLE_DATA_URI], "encoding": "float"},
    },
    "objects": {
        "summary": "Explicit input objects, base64 float16 output",
        "value": {
            "inputs": [{"text": "https://example.com is a text here"}, {"image": EXAMPLE_PNG_B64}],
            "normalize": True,
            "encoding": "base64_f16",
        },
    },
}

ENCODE_RESPONSE_EXAMPLE: dict[str, Any] = {
    "model": "ViT-B-32::openai",
    "dim": 4,
    "encoding": "float",
    "data": [
        {"index": 0, "modality": "text", "embedding": [0.12, -0.51, 0.33, 0.78]},
        {"index": 1, "modality": "image", "embedding": [0.09, -0.47, 0.41, 0.76]},
    ],
    "usage": {"texts": 1, "images": 1},
}

RANK_EXAMPLES: dict[str, dict[str, Any]] = {
    "image_query": {
        "summary": "Which caption fits the image?",
        "value": {
            "query": EXAMPLE_DATA_URI,
            "candidates": ["a red square", "a blue circle", "a green triangle"],
        },
    },
    "text_query": {
        "summary": "Which image fits the text?",
        "value": {"query": "a red square", "candidates": [{"image": EXAMPLE_PNG_B64}]},
    },
}

RANK_RESPONSE_EXAMPLE: dict[str, Any] = {
    "model": "ViT-B-32::openai",
    "results": [
        {"index": 0, "probability": 0.93, "cosine": 0.31},
        {"index": 2, "probability": 0.05, "cosine": 0.22},
        {"index": 1, "probability": 0.02, "cosine": 0.19},
    ],
}

CLASSIFY_EXAMPLES: dict[str, dict[str, Any]] = {
    "labels": {
        "summary": "Zero-shot among three labels",
        "value": {
            "images": [EXAMPLE_DATA_URI],
            "labels": ["red square", "blue circle", "green triangle"],
            "templates": ["a photo of a {}.", "a drawing of a {}."],
        },
    }
}

CLASSIFY_RESPONSE_EXAMPLE: dict[str, Any] = {
    "model": "ViT-B-32::openai",
    "results": [
        {
            "index": 0,
            "label": "red square",
            "scores": [
                {"label": "red square", "probability": 0.97, "cosine": 0.33},
                {"label": "green triangle", "probability": 0.02, "cosine": 0.21},
                {"label": "blue circle", "probability": 0.01, "cosine": 0.2},
            ],
        }
    ],
}

MODELS_RESPONSE_EXAMPLE: dict[str, Any] = {
    "data": [
        {
            "name": "ViT-B-32::openai",
            "dim": 512,
            "image_size": 224,
            "context_length": 77,
            "precision": "fp32",
            "logit_scale": 100.0,
            "default": True,
        }
    ]
}


def json_example(example: Any, model: type[BaseModel] | None = None) -> dict[int | str, Any]:
    """A ``responses=`` entry documenting a 200 JSON answer with ``example``."""
    entry: dict[str, Any] = {"content": {"application/json": {"example": example}}}
    if model is not None:
        entry["model"] = model
    return {200: entry}
