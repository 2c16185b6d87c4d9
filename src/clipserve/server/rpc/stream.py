"""``EncodeStream``: any number of items in, one answer per item out, in the order sent.

A reader task takes items off the call as long as the window has room — at most
:data:`WINDOW` items and ``max_body_bytes`` of them in flight (one item always fits) — and
starts each one's encoding at once, so items of one stream share model batches. The handler
answers them in arrival order. When the window is full the reader stops reading: HTTP/2 flow
control then holds the client back instead of the server's memory growing.

An item that fails (a corrupt image, an unknown model) gets an answer with ``error`` set, and
the stream goes on. A full batch queue makes the stream wait (up to the request timeout), as
the WebSocket stream does: its window already is its flow control, and a failed item would
only have to be sent again. A client that cancels cancels every item in flight: they leave
the batch queues before they cost inference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from clipserve.engine import Engine
from clipserve.server.inputs import resolve, served_model
from clipserve.server.rpc.codes import failure_of
from clipserve.server.rpc.convert import modality, packed, raw_input
from clipserve.server.state import ServerState
from clipserve.server.streaming import encode_when_queue_allows
from clipserve.v1 import clip_pb2

#: Items in flight (read, not yet answered) per stream.
WINDOW = 256
_METHOD = "EncodeStream"

_Answer = asyncio.Task[clip_pb2.EncodeStreamResponse]


class _End:
    """Marks the end of the client's items in the answer queue."""


class _Window:
    """Admits items while fewer than ``items`` and ``size`` bytes are in flight."""

    def __init__(self, items: int, size: int) -> None:
        self._items, self._size = items, size
        self._count = self._bytes = 0
        self._freed = asyncio.Event()

    async def admit(self, cost: int) -> None:
        # One item is always admitted, however large: the message size limit bounds it.
        while self._count and (self._count >= self._items or self._bytes + cost > self._size):
            self._freed.clear()
            await self._freed.wait()
        self._count += 1
        self._bytes += cost

    def release(self, cost: int) -> None:
        self._count -= 1
        self._bytes -= cost
        self._freed.set()


class EncodeStream:
    """The ``EncodeStream`` handler of one call (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._pending: set[_Answer] = set()
        self._answers: asyncio.Queue[tuple[_Answer, int] | _End | Exception] = asyncio.Queue()

    async def run(
        self, requests: AsyncIterator[clip_pb2.EncodeStreamRequest]
    ) -> AsyncGenerator[clip_pb2.EncodeStreamResponse, None]:
        """Answer every item of ``requests`` in order; cancelled, it cancels them all."""
        engine = self.state.ready_engine()  # loading: UNAVAILABLE before any item is read
        window = _Window(WINDOW, self.state.settings.max_body_bytes)
        reader = asyncio.create_task(self._read(requests, engine, window))
        try:
            while True:
                entry = await self._answers.get()
                if isinstance(entry, _End):
                    return
                if isinstance(entry, Exception):
                    raise entry
                answer, cost = entry
                try:
                    response = await answer
                finally:
                    window.release(cost)
                yield response
        finally:
            tasks = [reader, *self._pending]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(
        self,
        requests: AsyncIterator[clip_pb2.EncodeStreamRequest],
        engine: Engine,
        window: _Window,
    ) -> None:
        try:
            async for request in requests:
                cost = request.ByteSize()
                await window.admit(cost)
                answer = asyncio.create_task(self._answer(request, engine))
                self._pending.add(answer)
                answer.add_done_callback(self._pending.discard)
                self._answers.put_nowait((answer, cost))
        except Exception as exc:  # reading the call failed: end the stream with it
            self._answers.put_nowait(exc)
            return
        self._answers.put_nowait(_End())

    async def _answer(
        self, request: clip_pb2.EncodeStreamRequest, engine: Engine
    ) -> clip_pb2.EncodeStreamResponse:
        """One item's embedding, or the error that item alone ran into."""
        try:
            model = served_model(self.state, request.model or None)
            items = await resolve([raw_input(request.input, "input")], "input", self.state)
            normalize = request.normalize if request.HasField("normalize") else True
            vectors = await encode_when_queue_allows(
                engine, items, model=model, normalize=normalize
            )
        except Exception as exc:
            failure = failure_of(exc, _METHOD)
            error = clip_pb2.ItemError(code=failure.code.name, message=failure.message)
            return clip_pb2.EncodeStreamResponse(id=request.id, error=error)
        return clip_pb2.EncodeStreamResponse(
            id=request.id,
            modality=modality(items[0]),
            dim=int(vectors.shape[1]),
            vector=packed(vectors)[0],
        )
