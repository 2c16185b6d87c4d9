"""The index RPCs: each builds the HTTP route's body from the message and calls the route
function itself, so both transports check, embed and write the same way."""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np

from clipserve.errors import InvalidInputError
from clipserve.server.index_schemas import (
    AddItemsRequest,
    CreateIndexRequest,
    IndexInfo,
    ItemIn,
    SearchRequest,
)
from clipserve.server.inputs import check_count, validate
from clipserve.server.routes import indexes as routes
from clipserve.server.rpc.convert import raw_input
from clipserve.server.state import ServerState
from clipserve.v1 import clip_pb2

_DEFAULT_K = 10


async def create_index(
    state: ServerState, request: clip_pb2.CreateIndexRequest
) -> clip_pb2.IndexInfo:
    """``CreateIndex``: as ``POST /v1/indexes``."""
    body = validate(
        CreateIndexRequest, {"name": request.name, "model": request.model or None}, "request"
    )
    return _index_info(await routes.create_index(body, state.ready_engine(), state))


async def list_indexes(state: ServerState) -> clip_pb2.ListIndexesResponse:
    """``ListIndexes``: as ``GET /v1/indexes``."""
    listed = await routes.list_indexes(state)
    return clip_pb2.ListIndexesResponse(indexes=[_index_info(info) for info in listed.data])


async def add_items(
    state: ServerState, request: clip_pb2.AddItemsRequest
) -> clip_pb2.AddItemsResponse:
    """``AddItems``: as ``POST /v1/indexes/{name}/items``."""
    check_count(len(request.items), "items", state)
    if not request.items:
        raise InvalidInputError("items: at least one item is needed")
    # Built without validation: image bytes have no JSON spelling; the route and the index
    # check every field (ids, vectors, inputs) and name the failing item.
    items = [_item(item, f"items[{i}]") for i, item in enumerate(request.items)]
    body = AddItemsRequest.model_construct(items=items)
    added = await routes.add_items(request.index, body, state.ready_engine(), state)
    return clip_pb2.AddItemsResponse(index=added.index, added=added.added, count=added.count)


async def delete_item(
    state: ServerState, request: clip_pb2.DeleteItemRequest
) -> clip_pb2.DeleteItemResponse:
    """``DeleteItem``: as ``DELETE /v1/indexes/{name}/items/{id}``."""
    deleted = await routes.delete_item(request.index, request.id, state)
    return clip_pb2.DeleteItemResponse(deleted=deleted.deleted)


async def search(state: ServerState, request: clip_pb2.SearchRequest) -> clip_pb2.SearchResponse:
    """``Search``: as ``POST /v1/indexes/{name}/search``."""
    fields: dict[str, Any] = {
        "k": request.k or _DEFAULT_K,
        "filter": _json_object(request.filter_json, "filter_json") if request.filter_json else None,
        "modality": request.modality or None,
    }
    query = request.WhichOneof("query")
    if query is None:
        raise InvalidInputError("a search needs a query: 'input' or 'vector'")
    # k, filter and modality are checked as in the JSON body; the query itself (maybe image
    # bytes, which JSON cannot carry) is checked by the route.
    body = validate(SearchRequest, {**fields, "vector": [1.0]}, "request")
    if query == "vector":
        body = body.model_copy(update={"vector": _floats(request.vector, "vector")})
    else:
        body = body.model_copy(update={"vector": None, "input": raw_input(request.input, "input")})
    found = await routes.search_index(request.index, body, state.ready_engine(), state)
    hits = [
        clip_pb2.SearchHit(
            id=hit.id,
            score=hit.score,
            modality=hit.modality,
            metadata_json=json.dumps(hit.metadata),
        )
        for hit in found.results
    ]
    return clip_pb2.SearchResponse(index=found.index, model=found.model, results=hits)


def _item(item: clip_pb2.IndexItem, where: str) -> ItemIn:
    content = item.WhichOneof("content")
    if content is None:
        raise InvalidInputError(f"{where}: an item needs 'input' or 'vector'")
    metadata = (
        _json_object(item.metadata_json, f"{where}.metadata_json") if item.metadata_json else {}
    )
    if content == "vector":
        return ItemIn.model_construct(
            id=item.id,
            input=None,
            vector=_floats(item.vector, f"{where}.vector"),
            metadata=metadata,
        )
    return ItemIn.model_construct(
        id=item.id,
        input=cast(Any, raw_input(item.input, f"{where}.input")),
        vector=None,
        metadata=metadata,
    )


def _floats(data: bytes, where: str) -> list[float]:
    if not data or len(data) % 4:
        raise InvalidInputError(f"{where}: little-endian float32 bytes are needed")
    values: list[float] = np.frombuffer(data, dtype="<f4").astype(np.float64).tolist()
    return values


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where}: a JSON object is needed")
    return value


def _index_info(info: IndexInfo) -> clip_pb2.IndexInfo:
    return clip_pb2.IndexInfo(
        name=info.name, model=info.model, dim=info.dim, count=info.count, layout=info.layout
    )
