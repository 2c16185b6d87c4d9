"""``/v1/indexes``: create indexes, add, get and delete items, and search them.

Index writes are durable when the response is sent (SQLite commits with fsync); one the disk
cannot take (full, over a file size limit) answers 507 and changes nothing. Inputs are
checked and embedded exactly as in ``/v1/encode``; blocking index work runs in a thread so the
event loop keeps answering.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Response

from clipserve.engine import Engine
from clipserve.errors import InvalidInputError, ModelNotFoundError
from clipserve.index import Hit, Index, ItemNotFoundError, NewItem
from clipserve.index.thumbnails import make_thumbnail
from clipserve.server.auth import RequireKey
from clipserve.server.index_schemas import (
    ADD_EXAMPLES,
    INDEX_INFO_EXAMPLE,
    SEARCH_EXAMPLES,
    SEARCH_RESPONSE_EXAMPLE,
    AddItemsRequest,
    AddItemsResponse,
    CreateIndexRequest,
    DeleteResponse,
    IndexInfo,
    IndexList,
    ItemIn,
    ItemOut,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from clipserve.server.inputs import check_count, resolve, served_model
from clipserve.server.schemas import (
    ERROR_RESPONSES,
    WRITE_ERROR_RESPONSES,
    ErrorResponse,
    InputItem,
    error_example,
    json_example,
)
from clipserve.server.state import EngineDep, ServerState, StateDep

router = APIRouter(prefix="/v1/indexes", tags=["indexes"], dependencies=[RequireKey])


@router.get(
    "",
    summary="List the indexes",
    responses={**json_example({"data": [INDEX_INFO_EXAMPLE]}), **ERROR_RESPONSES},
)
async def list_indexes(state: StateDep) -> IndexList:
    """Every index under the server's data directory, with its model, size and layout."""
    catalog = state.index_catalog()

    def describe_all() -> list[IndexInfo]:
        # Opening an index may rebuild its vectors: never on the event loop.
        return [_info(catalog.open(name)) for name in catalog.names()]

    return IndexList(data=await asyncio.to_thread(describe_all))


@router.post(
    "",
    status_code=201,
    summary="Create an index",
    responses={
        201: {"content": {"application/json": {"example": INDEX_INFO_EXAMPLE}}},
        409: {
            "model": ErrorResponse,
            "description": "An index of that name exists",
            "content": {
                "application/json": {
                    "example": error_example("index_exists", "index 'photos' exists already")
                }
            },
        },
        **WRITE_ERROR_RESPONSES,
    },
)
async def create_index(body: CreateIndexRequest, engine: EngineDep, state: StateDep) -> IndexInfo:
    """Create an empty index for a served model's vectors (409 if the name is taken)."""
    model = served_model(state, body.model)
    dim = engine.model(model).embed_dim
    catalog = state.index_catalog()
    index = await asyncio.to_thread(catalog.create, body.name, model=model, dim=dim)
    return _info(index)


@router.get(
    "/{name}",
    summary="Describe an index",
    responses={**json_example(INDEX_INFO_EXAMPLE), **ERROR_RESPONSES},
)
async def get_index(name: str, state: StateDep) -> IndexInfo:
    """The index's model, dimension, item count and layout."""
    return _info(await open_index(state, name))


@router.post(
    "/{name}/items",
    summary="Add or replace items",
    responses={
        **json_example({"index": "photos", "added": 2, "count": 1202}),
        **WRITE_ERROR_RESPONSES,
    },
)
async def add_items(
    name: str,
    body: Annotated[AddItemsRequest, Body(openapi_examples=ADD_EXAMPLES)],
    engine: EngineDep,
    state: StateDep,
) -> AddItemsResponse:
    """Embed the items' inputs (or take their vectors) and write them; an existing id is
    replaced. Durable when the response arrives."""
    index = await open_index(state, name)
    check_count(len(body.items), "items", state)
    model = index_model(state, index)
    embedded = await _item_vectors(body.items, index, engine, model, state)
    items = [
        NewItem(item.id, modality, item.metadata, vector, thumbnail)
        for item, (modality, vector, thumbnail) in zip(body.items, embedded, strict=True)
    ]
    await asyncio.to_thread(index.upsert, items)
    return AddItemsResponse(index=name, added=len(items), count=len(index))


@router.get(
    "/{name}/items/{item_id}",
    summary="Get an item",
    responses={
        **json_example({"id": "photo-1", "modality": "image", "metadata": {}}),
        **ERROR_RESPONSES,
    },
)
async def get_item(name: str, item_id: str, state: StateDep) -> ItemOut:
    """The item's modality and metadata; 404 if there is no such item."""
    index = await open_index(state, name)
    stored = await asyncio.to_thread(index.get, item_id)
    if stored is None:
        raise ItemNotFoundError(f"index {name!r} has no item {item_id!r}")
    return ItemOut(id=stored.id, modality=stored.modality, metadata=stored.metadata)


@router.get(
    "/{name}/items/{item_id}/thumbnail",
    summary="An item's thumbnail",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {"example": "<JPEG bytes>"}}, "description": "A JPEG"},
        **ERROR_RESPONSES,
    },
)
async def get_thumbnail(name: str, item_id: str, state: StateDep) -> Response:
    """A JPEG of at most 256 pixels a side, for image items added with an image input; 404
    for other items (texts, vectors, items built from `clipserve embed` output)."""
    index = await open_index(state, name)
    jpeg = await asyncio.to_thread(index.thumbnail, item_id)
    if jpeg is None:
        raise ItemNotFoundError(f"index {name!r} has no thumbnail for item {item_id!r}")
    # Immutable per id until the item is replaced: let the browser keep it briefly.
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})


@router.delete(
    "/{name}/items/{item_id}",
    summary="Delete an item",
    responses={
        **json_example({"index": "photos", "id": "photo-1", "deleted": True}),
        **WRITE_ERROR_RESPONSES,
    },
)
async def delete_item(name: str, item_id: str, state: StateDep) -> DeleteResponse:
    """Delete the item (``deleted: false`` if it did not exist). Durable on response."""
    index = await open_index(state, name)
    deleted = await asyncio.to_thread(index.delete, [item_id])
    return DeleteResponse(index=name, id=item_id, deleted=bool(deleted))


@router.post(
    "/{name}/search",
    summary="Search an index",
    responses={**json_example(SEARCH_RESPONSE_EXAMPLE), **ERROR_RESPONSES},
)
async def search_index(
    name: str,
    body: Annotated[SearchRequest, Body(openapi_examples=SEARCH_EXAMPLES)],
    engine: EngineDep,
    state: StateDep,
) -> SearchResponse:
    """The ``k`` items nearest to the query (a text, an image, a vector, or the ``id`` of an
    item already in the index: "more like this"), best first.

    ``modality`` restricts the results (``image`` for text→image, ``text`` for image→text);
    ``filter`` applies metadata conditions (equality, ``gt``/``gte``/``lt``/``lte``, ``in``,
    ``ne``; dotted keys reach nested fields).
    """
    index = await open_index(state, name)
    index_model(state, index)  # a 404 when the model is not served, even for a vector query
    if body.vector is not None:
        query = unit_vector(body.vector, index, "vector")
    elif body.id is not None:
        query = await asyncio.to_thread(index.vector, body.id)
    else:
        assert body.input is not None
        query = await embed_query(body.input, "body.input", index, engine, state)
    results = await asyncio.to_thread(
        index.search, query, body.k, filters=body.filter, modality=body.modality
    )
    return SearchResponse(index=name, model=index.model, results=_hits(results[0]))


# ----------------------------------------------------------------------------- helpers
async def open_index(state: ServerState, name: str) -> Index:
    """The index ``name`` of the server's catalog (404 if there is none; opened in a thread)."""
    return await asyncio.to_thread(state.index_catalog().open, name)


async def embed_query(
    raw: InputItem, where: str, index: Index, engine: Engine, state: ServerState
) -> np.ndarray:
    """The normalised embedding of one query input (text, image or URL) by the index's model.

    Checked as in ``/v1/encode`` (``where`` names the field in errors); a 404 when the index's
    model is not served here.
    """
    model = index_model(state, index)
    items = await resolve([raw], where, state)
    vector: np.ndarray = (await engine.aencode(items, model=model, normalize=True))[0]
    return vector


def _info(index: Index) -> IndexInfo:
    described = index.describe()
    return IndexInfo(**{key: described[key] for key in IndexInfo.model_fields})


def index_model(state: ServerState, index: Index) -> str:
    """The served model whose vectors ``index`` holds (a 404 if it is not served here)."""
    try:
        return served_model(state, index.model)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"index {index.name!r} holds vectors of {index.model!r}, which this server does "
            "not serve: start it with that model to add or search by text or image"
        ) from exc


_Embedded = tuple[str, np.ndarray, bytes | None]


async def _item_vectors(
    items: list[ItemIn], index: Index, engine: Engine, model: str, state: ServerState
) -> list[_Embedded]:
    """``(modality, vector, thumbnail)`` per item: inputs embedded in one engine call, images
    given a thumbnail, ready vectors checked."""
    to_embed = [(i, item.input) for i, item in enumerate(items) if item.input is not None]
    out: list[_Embedded | None] = [None] * len(items)
    if to_embed:
        # One input per resolve, so that an error names the item's own position.
        parts = await asyncio.gather(
            *(resolve([raw], f"items[{i}].input", state) for i, raw in to_embed)
        )
        resolved = [part[0] for part in parts]
        vectors = await engine.aencode(resolved, model=model, normalize=True)
        thumbnails = await asyncio.to_thread(
            lambda: [None if isinstance(item, str) else make_thumbnail(item) for item in resolved]
        )
        for (i, _), ready, vector, thumbnail in zip(
            to_embed, resolved, vectors, thumbnails, strict=True
        ):
            out[i] = ("text" if isinstance(ready, str) else "image", vector, thumbnail)
    for i, item in enumerate(items):
        if item.vector is not None:
            out[i] = ("vector", unit_vector(item.vector, index, f"items[{i}].vector"), None)
    return [entry for entry in out if entry is not None]


def unit_vector(values: list[float], index: Index, where: str) -> np.ndarray:
    """``values`` as a unit vector of the index's dimension; a 400 naming ``where`` otherwise."""
    with np.errstate(over="ignore"):  # beyond float32: infinite, and refused just below
        vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (index.dim,) or not np.isfinite(vector).all():
        raise InvalidInputError(f"{where}: a vector of {index.dim} finite numbers is needed")
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        raise InvalidInputError(f"{where}: the zero vector has no direction")
    return vector / norm


def _hits(hits: list[Hit]) -> list[SearchHit]:
    return [
        SearchHit(id=hit.id, score=hit.score, modality=hit.modality, metadata=hit.metadata)
        for hit in hits
    ]
