"""DynamicBatcher with stand-in prepare/run functions: coalescing, limits, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from clipserve.batching import DynamicBatcher
from clipserve.errors import InvalidImageError, OverloadedError, RequestTimeoutError


class Model:
    """Records every batch it runs; can be held back to simulate a busy model."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.release = threading.Event()
        self.release.set()

    def run(self, prepared: list[Any]) -> np.ndarray:
        self.release.wait(10)
        self.batches.append(list(prepared))
        return np.array([[float(p), 0.0] for p in prepared], np.float32)


def prepare(item: Any) -> Any:
    if item == "bad":
        raise InvalidImageError("cannot identify image format")
    return item


async def _batcher(
    model: Model, prepare_item: Callable[[Any], Any] = prepare, **overrides: Any
) -> DynamicBatcher:
    options: dict[str, Any] = {"max_batch_size": 8, "max_wait": 0.01, "max_queue": 64}
    options.update(overrides)
    return DynamicBatcher(
        "test/item",
        prepare=prepare_item,
        run=model.run,
        prepare_pool=ThreadPoolExecutor(2),
        run_pool=ThreadPoolExecutor(1),
        **options,
    )


def test_concurrent_requests_share_batches_and_keep_order() -> None:
    async def scenario() -> tuple[Model, list[np.ndarray]]:
        model = Model()
        batcher = await _batcher(model)
        requests = [batcher.submit([10 * r + i for i in range(3)]) for r in range(5)]
        results = await asyncio.gather(*requests)
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    for r, rows in enumerate(results):
        assert rows[:, 0].tolist() == [10 * r + i for i in range(3)]
    assert sum(len(b) for b in model.batches) == 15
    assert max(len(b) for b in model.batches) == 8  # coalesced across requests, capped
    assert len(model.batches) < 5


def test_items_wait_while_the_model_is_busy_then_go_together() -> None:
    async def scenario() -> Model:
        model = Model()
        model.release.clear()
        batcher = await _batcher(model, max_batch_size=32)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the first batch is now running (held)
        later = [asyncio.ensure_future(batcher.submit([n])) for n in range(2, 12)]
        await asyncio.sleep(0.05)
        model.release.set()
        await asyncio.gather(first, *later)
        await batcher.close()
        return model

    model = asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [1, 10]


def test_full_queue_is_refused_at_once() -> None:
    async def scenario() -> None:
        model = Model()
        model.release.clear()
        batcher = await _batcher(model, max_queue=4, max_batch_size=1)
        running = [asyncio.ensure_future(batcher.submit([n])) for n in range(3)]
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit([7, 8, 9]))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as caught:
            await batcher.submit([1, 2, 3, 4])
        assert caught.value.retry_after >= 1
        model.release.set()
        await asyncio.gather(*running, queued)
        await batcher.close()

    asyncio.run(scenario())


def test_cancelled_request_never_reaches_the_model() -> None:
    async def scenario() -> Model:
        model = Model()
        model.release.clear()
        batcher = await _batcher(model)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit([666, 667]))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.01)
        model.release.set()
        await asyncio.gather(first, kept)
        assert batcher.stats.dropped == 2
        await batcher.close()
        return model

    model = asyncio.run(scenario())
    ran = [item for batch in model.batches for item in batch]
    assert 666 not in ran and 667 not in ran and sorted(ran) == [1, 2]


def test_a_bad_item_fails_its_request_only() -> None:
    async def scenario() -> None:
        batcher = await _batcher(Model())
        good = batcher.submit([1, 2])
        bad = batcher.submit([3, "bad"])
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert isinstance(results[0], np.ndarray)
        assert isinstance(results[1], InvalidImageError)
        assert str(results[1]) == "item 1: cannot identify image format"
        await batcher.close()

    asyncio.run(scenario())


def test_timeout_is_a_typed_error() -> None:
    async def scenario() -> None:
        model = Model()
        model.release.clear()
        batcher = await _batcher(model)
        with pytest.raises(RequestTimeoutError):
            await batcher.submit([1], timeout=0.05)
        model.release.set()
        await batcher.close()

    asyncio.run(scenario())


def test_next_batch_is_prepared_while_this_one_runs() -> None:
    prepared_during_run = threading.Event()
    running = threading.Event()

    def slow_prepare(item: Any) -> Any:
        if running.is_set():
            prepared_during_run.set()
        return item

    class Watching(Model):
        def run(self, prepared: list[Any]) -> np.ndarray:
            running.set()
            # The collector prepares the next batch meanwhile; wait (bounded) to see it.
            prepared_during_run.wait(5)
            running.clear()
            return super().run(prepared)

    async def scenario() -> None:
        model = Watching()
        batcher = await _batcher(model, slow_prepare, max_batch_size=2)
        first = asyncio.ensure_future(batcher.submit([1, 2]))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher.submit([3, 4]))
        await batcher.close()

    asyncio.run(scenario())
    assert prepared_during_run.is_set()
