"""The client's retries: the policy itself, a full queue (503) retried until served, and a
server stopped and restarted on the same port in the middle of a long ``encode``."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from servertools import GatedSession, LiveServer, live_server
from test_client import (
    ATOL,
    AppServer,
    Background,
    encode_requests,
    free_port,
    image_input,
    mixed_items,
    server_vectors,
    wait_for,
)

from clipserve.client import Client, Retry, ServiceUnavailableError
from clipserve.client.errors import grpc_error, http_error, parse_retry_after
from clipserve.errors import InvalidInputError, OverloadedError, RequestTimeoutError


# ------------------------------------------------------------------ the policy
def test_delays_grow_with_jitter_and_honour_retry_after() -> None:
    policy = Retry(backoff=0.1, max_backoff=1.0, rng=random.Random(0))
    for retry in range(8):
        ceiling = min(1.0, 0.1 * 2**retry)
        for _ in range(20):
            assert ceiling / 2 <= policy.delay(retry) <= ceiling
            assert 3.0 + ceiling / 2 <= policy.delay(retry, retry_after=3.0) <= 3.0 + ceiling
    assert len({policy.delay(3) for _ in range(10)}) > 1  # jitter: clients do not move in step


def _failing(errors: list[Exception]) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An operation that raises ``errors`` one call at a time, then succeeds; and its calls."""
    calls: list[int] = []

    async def operation() -> str:
        calls.append(len(calls))
        if errors:
            raise errors.pop(0)
        return "done"

    return operation, calls


def test_only_conditions_that_pass_are_retried_within_the_budget() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def run(policy: Retry, operation: Callable[[], Awaitable[str]]) -> str:
        return asyncio.run(policy.call(operation, sleep=sleep))

    operation, calls = _failing(
        [OverloadedError("full", retry_after=2), ServiceUnavailableError("x")]
    )
    assert run(Retry(), operation) == "done"
    assert len(calls) == 3
    assert sleeps[0] >= 2  # the server's Retry-After is a floor
    for permanent in (InvalidInputError("bad"), RequestTimeoutError("slow"), ValueError("bug")):
        operation, calls = _failing([permanent])
        with pytest.raises(type(permanent)):
            run(Retry(), operation)
        assert len(calls) == 1
    operation, calls = _failing([ServiceUnavailableError("down") for _ in range(10)])
    with pytest.raises(ServiceUnavailableError):
        run(Retry(attempts=4), operation)
    assert len(calls) == 4
    # A wait that would end past the deadline is not started.
    operation, calls = _failing([OverloadedError("full", retry_after=30)])
    with pytest.raises(OverloadedError):
        run(Retry(deadline=10), operation)
    assert len(calls) == 1


def test_server_answers_map_to_typed_errors() -> None:
    overloaded = http_error(503, "overloaded", "queue full", "3")
    assert isinstance(overloaded, OverloadedError)
    assert overloaded.retry_after == 3
    assert "queue full" in str(overloaded)
    assert isinstance(http_error(429, None, "slow down", None), OverloadedError)
    assert isinstance(http_error(503, "not_ready", "loading", "5"), ServiceUnavailableError)
    assert isinstance(http_error(413, "too_many_items", "split", None), InvalidInputError)
    assert not isinstance(http_error(500, "internal_error", "bug", None), InvalidInputError)
    assert isinstance(grpc_error("RESOURCE_EXHAUSTED", "queue full", "1"), OverloadedError)
    assert isinstance(grpc_error("RESOURCE_EXHAUSTED", "too big", None), InvalidInputError)
    assert isinstance(grpc_error("UNAVAILABLE", "loading", None), ServiceUnavailableError)
    assert isinstance(grpc_error("INVALID_ARGUMENT", "bad", None), InvalidInputError)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("soon") is None


# ------------------------------------------------------------------ a full queue
def test_a_full_queue_is_retried_until_served(
    make_settings: Any, server: LiveServer, shape_pngs: list[bytes]
) -> None:
    settings = make_settings(max_queue=2, max_batch_size=2, preprocess_workers=1)
    images = [shape_pngs[index % 8] for index in range(24)]
    # A queue of 2 cannot take the reference request: the shared server answers that.
    expected = server_vectors(server.url, [image_input(data) for data in images])
    with live_server(settings) as small:
        clip = small.app.state.clipserve.engine.model()
        gate = threading.Event()
        clip.visual = session = GatedSession(clip.visual, gate)
        before = encode_requests(small.url, "503")
        retry = Retry(attempts=50, deadline=300)
        with Client(small.url, max_concurrency=8, retry=retry) as client:
            call = Background(lambda: client.encode(images, batch_size=2))
            try:
                assert session.entered.wait(60)
                # Eight requests against a pipeline that holds fewer: some get a 503.
                wait_for(lambda: encode_requests(small.url, "503") > before, "a 503")
            finally:
                gate.set()
            vectors = call.result()
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


# ------------------------------------------------------------------ a restart
class _DiesMidResponse:
    """ASGI wrapper: serves ``count`` ``/v1/encode`` requests, then starts every later answer
    and never finishes it, so stopping the server drops those connections mid-response."""

    def __init__(self, app: Any, count: int) -> None:
        self.app = app
        self.count = count
        self.served = 0
        self.held = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/encode":
            if self.served >= self.count:
                self.held += 1
                headers = [(b"content-type", b"application/json"), (b"content-length", b"99999")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await asyncio.sleep(3600)  # cancelled when the server stops
            self.served += 1
        await self.app(scope, receive, send)


def test_a_restart_mid_run_loses_and_repeats_nothing(
    make_settings: Any, shape_pngs: list[bytes]
) -> None:
    settings = make_settings()
    port = free_port()
    wrappers: list[_DiesMidResponse] = []

    def wrap(app: Any) -> Any:
        wrappers.append(_DiesMidResponse(app, count=10))
        return wrappers[0]

    items, inputs = mixed_items(400, shape_pngs)
    first = AppServer(settings, port, wrap=wrap, graceful_seconds=1).start().wait_ready()
    retry = Retry(attempts=60, max_backoff=1.0, deadline=300)
    with Client(first.url, retry=retry, max_concurrency=4) as client:
        call = Background(lambda: client.encode(items, batch_size=8))
        try:
            wait_for(lambda: wrappers[0].held >= 1, "a request on the dying server")
        finally:
            first.stop()
        # Same port, a new process's worth of state: it loads (503 + Retry-After) first.
        second = AppServer(settings, port).start()
        try:
            vectors = call.result()
            served_by_second = encode_requests(second.url, "200")
            expected = server_vectors(second.url, inputs)
        finally:
            second.stop()
    assert wrappers[0].served == 10
    assert served_by_second >= (400 - 10 * 8) / 8  # the rest of the batches, at least once
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


def test_an_unreachable_server_is_retried_then_reported(make_settings: Any) -> None:
    delays: list[int] = []

    class Counting(Retry):
        def delay(self, retry: int, retry_after: float = 0.0) -> float:
            delays.append(retry)
            return 0.01

    client = Client(f"http://127.0.0.1:{free_port()}", retry=Counting(attempts=4))
    with client, pytest.raises(ServiceUnavailableError, match="ConnectError"):
        client.encode(["a text"])
    assert delays == [0, 1, 2]
