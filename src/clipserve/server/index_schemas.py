"""Bodies of the index routes (``/v1/indexes/...``), with OpenAPI examples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipserve.server.schemas import (
    EXAMPLE_DATA_URI,
    InputItem,
    JsonInt,
    StrictJsonModel,
    exactly_one_of,
)

SearchModality = Literal["image", "text", "vector"]


class IndexInfo(BaseModel):
    """An index: its model, dimension, size and vector layout."""

    name: str
    model: str
    dim: int
    count: int
    layout: str = Field(description="flat (exact), ivf or ivfpq (approximate).")


class IndexList(BaseModel):
    """The indexes of this server."""

    data: list[IndexInfo]


class CreateIndexRequest(StrictJsonModel):
    """A new, empty index for one served model's vectors."""

    name: str = Field(description="1 to 64 letters, digits, '_', '-' or '.'.")
    model: str | None = Field(None, description="A served model; the default model if omitted.")


def _one_of_input_or_vector(input_item: Any, vector: Any, what: str) -> None:
    if (input_item is None) == (vector is None):
        raise ValueError(f"{what} needs exactly one of 'input' and 'vector'")


class ItemIn(StrictJsonModel):
    """An item to add: an input to embed (text, image, URL) or a ready vector, and metadata."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("input", "vector"))

    id: str = Field(min_length=1, max_length=512)
    input: InputItem | None = Field(None, description="A text, data URI, URL or input object.")
    vector: list[float] | None = Field(None, description="A ready embedding of the index's dim.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one(self) -> ItemIn:
        _one_of_input_or_vector(self.input, self.vector, "an item")
        return self


class AddItemsRequest(StrictJsonModel):
    """Items to add; an existing id is replaced."""

    items: list[ItemIn] = Field(min_length=1)


class AddItemsResponse(BaseModel):
    """How many items were written (durably) and the index's new size."""

    index: str
    added: int
    count: int


class SearchRequest(StrictJsonModel):
    """A query — text, image, vector or an indexed item's id — and what to return."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("input", "vector", "id"))

    input: InputItem | None = Field(None, description="A text, data URI, URL or input object.")
    vector: list[float] | None = Field(None, description="A ready query embedding.")
    id: str | None = Field(None, description="An item of this index: find items like it.")
    k: JsonInt = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(
        None, description='Metadata conditions: {"year": {"gte": 2020}, "tag": "cat"}.'
    )
    modality: SearchModality | None = Field(
        None, description="Only items of this modality (image→text: an image query, 'text')."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchRequest:
        given = [name for name in ("input", "vector", "id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a search needs exactly one of 'input', 'vector' and 'id'")
        return self


class SearchHit(BaseModel):
    """A result: the item's id, cosine similarity to the query, modality and metadata."""

    id: str
    score: float
    modality: str
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    """Results, best first."""

    index: str
    model: str
    results: list[SearchHit]


class ItemOut(BaseModel):
    """A stored item (its vector is not returned)."""

    id: str
    modality: str
    metadata: dict[str, Any]


class DeleteResponse(BaseModel):
    """Whether the item existed (it does not any more)."""

    index: str
    id: str
    deleted: bool


SEARCH_EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {
        "summary": "Text → image, with a filter",
        "value": {
            "input": "a red car at night",
            "k": 10,
            "modality": "image",
            "filter": {"year": {"gte": 2020}},
        },
    },
    "image": {
        "summary": "Image → text",
        "value": {"input": EXAMPLE_DATA_URI, "k": 5, "modality": "text"},
    },
}

ADD_EXAMPLES: dict[str, dict[str, Any]] = {
    "mixed": {
        "summary": "An image and a caption, with metadata",
        "value": {
            "items": [
                {"id": "photo-1", "input": EXAMPLE_DATA_URI, "metadata": {"year": 2021}},
                {"id": "caption-1", "input": {"text": "a red square"}, "metadata": {}},
            ]
        },
    }
}

INDEX_INFO_EXAMPLE: dict[str, Any] = {
    "name": "photos",
    "model": "ViT-B-32::openai",
    "dim": 512,
    "count": 1200,
    "layout": "flat",
}

SEARCH_RESPONSE_EXAMPLE: dict[str, Any] = {
    "index": "photos",
    "model": "ViT-B-32::openai",
    "results": [
        {"id": "photo-1", "score": 0.31, "modality": "image", "metadata": {"year": 2021}},
    ],
}
