"""Dynamic batching: coalesce items from many concurrent requests into model-sized batches.

One :class:`DynamicBatcher` serves one (model, modality). Requests put their items on a bounded
queue and await one future per item. A collector takes up to ``max_batch_size`` live items
(waiting at most ``max_wait`` for more once the first arrives), prepares them in a thread pool
(decode + preprocess, or tokenize) and hands the batch to a runner that executes the model —
so preparing the next batch overlaps inference of this one. Items whose request has gone
(cancelled, timed out) are dropped before they cost inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipserve.errors import ClipServeError, OverloadedError, RequestTimeoutError

PrepareItem = Callable[[Any], Any]
RunBatch = Callable[[list[Any]], np.ndarray]


@dataclass
class _BatchTiming:
    taken_at: float  #: perf_counter when the collector took the batch off the queue
    prepare_seconds: float = 0.0
    run_seconds: float = 0.0


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future[np.ndarray]
    prepared: Any = None
    queued_at: float = field(default_factory=time.perf_counter)
    batch: _BatchTiming | None = None


@dataclass
class RequestTiming:
    """Where one request's items spent their time in the batchers, in seconds.

    Filled by :meth:`DynamicBatcher.submit` for the code inside :func:`measure_batching`;
    the HTTP server reports it as a ``Server-Timing`` header.
    """

    queue: float = 0.0  #: longest wait of an item before its batch was taken
    prepare: float = 0.0  #: wall time preparing the request's batches (summed)
    inference: float = 0.0  #: model runs of the request's batches (summed; shared batches too)


_request_timing: ContextVar[RequestTiming | None] = ContextVar("request_timing", default=None)


@contextlib.contextmanager
def measure_batching() -> Iterator[RequestTiming]:
    """Collect the batching times of every ``submit`` awaited inside the block.

    A context variable carries the collector, so the engine's API needs no extra argument
    and concurrent requests each see their own.
    """
    timing = RequestTiming()
    token = _request_timing.set(timing)
    try:
        yield timing
    finally:
        _request_timing.reset(token)


@dataclass
class BatcherStats:
    """Counters a metrics exporter reads; updated only on the event loop thread."""

    batches: int = 0
    items: int = 0
    dropped: int = 0  #: items whose request went away before inference
    batch_sizes: list[int] = field(default_factory=list)  #: drained by the metrics exporter
    busy_seconds: float = 0.0  #: time spent in model runs


class DynamicBatcher:
    """Batch items of one kind across concurrent requests; see the module docstring.

    Args:
        name: for errors and metrics, e.g. ``"ViT-B-32::openai/image"``.
        prepare: turns one item into model input (runs in ``prepare_pool``); may raise a
            :class:`~clipserve.errors.ClipServeError`, which fails only that item.
        run: runs the model on a list of prepared items and returns one row per item.
        max_batch_size: most items per model run.
        max_wait: seconds to wait for more items once one is queued.
        max_queue: most items waiting; beyond it :meth:`submit` raises ``OverloadedError``.
    """

    def __init__(
        self,
        name: str,
        *,
        prepare: PrepareItem,
        run: RunBatch,
        prepare_pool: Executor,
        run_pool: Executor,
        max_batch_size: int,
        max_wait: float,
        max_queue: int,
        item_label: str = "item",
    ) -> None:
        self.name = name
        self.stats = BatcherStats()
        self._prepare, self._run = prepare, run
        self._prepare_pool, self._run_pool = prepare_pool, run_pool
        self._max_batch, self._max_wait, self._max_queue = max_batch_size, max_wait, max_queue
        self._label = item_label
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        # One prepared batch may wait for the runner: enough to overlap, bounded in memory.
        self._ready: asyncio.Queue[list[_Pending]] = asyncio.Queue(maxsize=1)
        self._in_flight = 0
        self._tasks = [
            asyncio.create_task(self._collect(), name=f"{name}-collect"),
            asyncio.create_task(self._execute(), name=f"{name}-run"),
        ]

    @property
    def queue_depth(self) -> int:
        """Items waiting to be batched."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items taken from the queue: being prepared, waiting for the model, or running."""
        return self._in_flight

    @property
    def idle(self) -> bool:
        """Nothing queued, being prepared or running."""
        return not self._queue and self._in_flight == 0

    async def submit(self, items: Sequence[Any], timeout: float | None = None) -> np.ndarray:
        """Embed ``items``; returns their rows stacked in input order.

        Raises ``OverloadedError`` at once when the queue is full, ``RequestTimeoutError``
        after ``timeout`` seconds, or the first item's error (naming its index).
        """
        if len(self._queue) + len(items) > self._max_queue:
            raise OverloadedError(
                f"{self.name}: {len(self._queue)} items queued, limit {self._max_queue}",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future()) for item in items]
        self._queue.extend(pending)
        self._arrived.set()
        futures = [entry.future for entry in pending]
        try:
            done, waiting = await asyncio.wait(
                futures, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION
            )
        finally:
            for future in futures:  # on cancel, timeout or error: free the rest at once
                if not future.done():
                    future.cancel()
        for index, future in enumerate(futures):
            if future in done and future.exception() is not None:
                raise _with_index(future.exception(), self._label, index)
        if waiting:
            raise RequestTimeoutError(f"{self.name}: no result within {timeout:g} s")
        _note_timing(pending)
        return np.stack([future.result() for future in futures])

    async def close(self) -> None:
        """Stop the batcher's tasks; queued requests are cancelled."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            self._queue.popleft().future.cancel()

    # ------------------------------------------------------------------ stages
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            # Wait for company only while the model is busy anyway: an idle model takes a
            # lone request at once, so batching never adds latency to a quiet server.
            deadline = loop.time() + (self._max_wait if self._in_flight else 0.0)
            while self._live_count() < self._max_batch and loop.time() < deadline:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            batch = self._take_batch()
            if not self._queue:
                self._arrived.clear()
            if batch:
                self._in_flight += len(batch)
                timing = _BatchTiming(taken_at=time.perf_counter())
                for entry in batch:
                    entry.batch = timing
                await self._prepare_all(batch)
                timing.prepare_seconds = time.perf_counter() - timing.taken_at
                await self._ready.put(batch)

    def _live_count(self) -> int:
        return sum(1 for entry in self._queue if not entry.future.done())

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if entry.future.done():  # cancelled: the client went away
                self.stats.dropped += 1
            else:
                batch.append(entry)
        return batch

    async def _prepare_all(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self._prepare_pool, self._prepare, e.item) for e in batch]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not entry.future.done():
                    entry.future.set_exception(result)
            else:
                entry.prepared = result

    async def _execute(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._ready.get()
            live = [e for e in batch if not e.future.done()]
            self.stats.dropped += sum(1 for e in batch if e.future.cancelled())
            try:
                if live:
                    started = time.perf_counter()
                    rows = await loop.run_in_executor(
                        self._run_pool, self._run, [e.prepared for e in live]
                    )
                    elapsed = time.perf_counter() - started
                    self._record(len(live), elapsed)
                    if live[0].batch is not None:
                        live[0].batch.run_seconds = elapsed
                    for entry, row in zip(live, rows, strict=True):
                        if not entry.future.done():
                            entry.future.set_result(row)
            except Exception as exc:  # a model failure fails this batch, not the batcher
                for entry in live:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
            finally:
                self._in_flight -= len(batch)

    def _record(self, size: int, seconds: float) -> None:
        self.stats.batches += 1
        self.stats.items += size
        self.stats.busy_seconds += seconds
        self.stats.batch_sizes.append(size)


def _note_timing(pending: list[_Pending]) -> None:
    timing = _request_timing.get()
    batches = {id(entry.batch): entry.batch for entry in pending if entry.batch is not None}
    if timing is None or not batches:
        return
    waits = [entry.batch.taken_at - entry.queued_at for entry in pending if entry.batch]
    timing.queue = max(timing.queue, *waits)
    timing.prepare += sum(batch.prepare_seconds for batch in batches.values())
    timing.inference += sum(batch.run_seconds for batch in batches.values())


def _with_index(exc: BaseException | None, label: str, index: int) -> BaseException:
    if isinstance(exc, ClipServeError):
        return type(exc)(f"{label} {index}: {exc}")
    return exc if exc is not None else RuntimeError("unknown batch failure")
