"""The ``clipserve.v1.Clip`` servicer: each RPC parses with the HTTP server's parsers, makes
one engine call through the dynamic batchers, and formats with the HTTP formatters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from clipserve.engine import DEFAULT_TEMPLATES
from clipserve.server.formats import classify_response, rank_response
from clipserve.server.inputs import check_count, parse_classify, parse_rank, resolve, served_model
from clipserve.server.routes.models import list_models
from clipserve.server.rpc import convert, indexes
from clipserve.server.rpc.calls import Calls, Context
from clipserve.server.rpc.stream import EncodeStream
from clipserve.server.schemas import ClassifyRequest, RankRequest
from clipserve.server.state import ServerState
from clipserve.v1 import clip_pb2, clip_pb2_grpc


class ClipService(clip_pb2_grpc.ClipServicer):
    """``clipserve.v1.Clip`` over the app's :class:`ServerState` (its engine, limits, fetcher).

    Every call goes through :class:`Calls`: the API key, the error → status mapping, metrics.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.calls = Calls(state)

    async def Encode(
        self, request: clip_pb2.EncodeRequest, context: Context
    ) -> clip_pb2.EncodeResponse:
        """Texts and images, mixed, to embeddings in input order."""
        return await self.calls.unary("Encode", context, lambda: self._encode(request))

    async def EncodeStream(
        self, request_iterator: AsyncIterator[clip_pb2.EncodeStreamRequest], context: Context
    ) -> AsyncIterator[clip_pb2.EncodeStreamResponse]:
        """Any number of items, answered in the order sent (see :mod:`.stream`)."""
        handler = EncodeStream(self.state)
        async for response in self.calls.stream(
            "EncodeStream", context, lambda: handler.run(request_iterator)
        ):
            yield response

    async def Rank(self, request: clip_pb2.RankRequest, context: Context) -> clip_pb2.RankResponse:
        """Candidates scored against the query, best first."""
        return await self.calls.unary("Rank", context, lambda: self._rank(request))

    async def Classify(
        self, request: clip_pb2.ClassifyRequest, context: Context
    ) -> clip_pb2.ClassifyResponse:
        """Each image's labels, most probable first."""
        return await self.calls.unary("Classify", context, lambda: self._classify(request))

    async def ListModels(
        self, request: clip_pb2.ListModelsRequest, context: Context
    ) -> clip_pb2.ListModelsResponse:
        """The served models, default first."""
        return await self.calls.unary("ListModels", context, self._list_models)

    async def CreateIndex(
        self, request: clip_pb2.CreateIndexRequest, context: Context
    ) -> clip_pb2.IndexInfo:
        """A new, empty index for a served model's vectors."""
        return await self.calls.unary(
            "CreateIndex", context, lambda: indexes.create_index(self.state, request)
        )

    async def ListIndexes(
        self, request: clip_pb2.ListIndexesRequest, context: Context
    ) -> clip_pb2.ListIndexesResponse:
        """The indexes, with model, size and layout."""
        return await self.calls.unary(
            "ListIndexes", context, lambda: indexes.list_indexes(self.state)
        )

    async def AddItems(
        self, request: clip_pb2.AddItemsRequest, context: Context
    ) -> clip_pb2.AddItemsResponse:
        """Add or replace items; durable on return."""
        return await self.calls.unary(
            "AddItems", context, lambda: indexes.add_items(self.state, request)
        )

    async def DeleteItem(
        self, request: clip_pb2.DeleteItemRequest, context: Context
    ) -> clip_pb2.DeleteItemResponse:
        """Delete an item; durable on return."""
        return await self.calls.unary(
            "DeleteItem", context, lambda: indexes.delete_item(self.state, request)
        )

    async def Search(
        self, request: clip_pb2.SearchRequest, context: Context
    ) -> clip_pb2.SearchResponse:
        """The k nearest items to a text, image or vector, best first."""
        return await self.calls.unary(
            "Search", context, lambda: indexes.search(self.state, request)
        )

    # ------------------------------------------------------------------ handlers
    async def _encode(self, request: clip_pb2.EncodeRequest) -> clip_pb2.EncodeResponse:
        engine = self.state.ready_engine()
        # Before anything is built per input, as the JSON body's size limit would have.
        check_count(len(request.inputs), "inputs", self.state)
        model = served_model(self.state, request.model or None)
        raw = convert.raw_inputs(request.inputs, "inputs")
        items = await resolve(raw, "inputs", self.state)
        normalize = request.normalize if request.HasField("normalize") else True
        vectors = await engine.aencode(items, model=model, normalize=normalize)
        return convert.encode_response(vectors, items, model)

    async def _rank(self, request: clip_pb2.RankRequest) -> clip_pb2.RankResponse:
        engine = self.state.ready_engine()
        check_count(len(request.candidates) + 1, "query and candidates", self.state)
        # The JSON body, built without validation: image bytes have no JSON spelling, and
        # resolve() (inside parse_rank) reads ImageBytes as it reads a multipart file.
        body = RankRequest.model_construct(
            query=cast(Any, convert.raw_input(request.query, "query")),
            candidates=cast(Any, convert.raw_inputs(request.candidates, "candidates")),
            model=request.model or None,
        )
        job = await parse_rank(body, self.state)
        result = await engine.arank(job.query, job.candidates, model=job.model)
        return convert.rank_response(rank_response(result, job.model))

    async def _classify(self, request: clip_pb2.ClassifyRequest) -> clip_pb2.ClassifyResponse:
        engine = self.state.ready_engine()
        check_count(len(request.images), "images", self.state)
        body = ClassifyRequest.model_construct(
            images=cast(Any, convert.raw_inputs(request.images, "images")),
            labels=list(request.labels),
            templates=list(request.templates) or None,
            model=request.model or None,
        )
        job = await parse_classify(body, self.state)
        results = await engine.aclassify(
            job.images, job.labels, templates=job.templates or DEFAULT_TEMPLATES, model=job.model
        )
        return convert.classify_response(classify_response(results, job.model))

    async def _list_models(self) -> clip_pb2.ListModelsResponse:
        # The HTTP route function itself: FastAPI leaves decorated functions callable.
        return convert.models_response(await list_models(self.state.ready_engine()))
