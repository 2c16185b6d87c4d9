"""Retries with exponential backoff and jitter, bounded in attempts and in total time."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from clipserve.client.errors import retry_hint

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How the client retries a request that failed for a reason that passes.

    Retried: a full queue (HTTP 503 ``overloaded``, 429, gRPC RESOURCE_EXHAUSTED with
    ``retry-after``), a server that is loading (503 ``not_ready``) or unreachable (connection
    refused, reset or dropped; gRPC UNAVAILABLE). Never retried: bad input (4xx, gRPC
    INVALID_ARGUMENT), a wrong API key, an unknown model, a server bug (500).

    The n-th retry waits a random time in ``[b/2, b]`` with ``b = backoff * 2**n`` capped at
    ``max_backoff`` — the jitter keeps many clients from coming back in step — and never less
    than the server's ``Retry-After``. Every request (every batch of ``encode``) gets at most
    ``attempts`` tries within ``deadline`` seconds; then the last error is raised.

    ``Retry(attempts=1)`` turns retries off.
    """

    attempts: int = 10
    backoff: float = 0.2
    max_backoff: float = 5.0
    deadline: float = 120.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.deadline < 0:
            raise ValueError("Retry times must not be negative")

    def delay(self, retry: int, retry_after: float = 0.0) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0**retry)
        jittered = self.rng.uniform(ceiling / 2, ceiling)
        # The server's hint is a floor; the jitter on top still spreads clients out.
        return retry_after + jittered if retry_after > 0 else jittered

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """Await ``operation()`` until it succeeds, fails for good, or the budget is spent."""
        started = time.monotonic()
        retry = 0
        while True:
            try:
                return await operation()
            except Exception as exc:
                hint = retry_hint(exc)
                if hint is None or retry + 1 >= self.attempts:
                    raise
                wait = self.delay(retry, hint)
                if time.monotonic() - started + wait > self.deadline:
                    raise
            await sleep(wait)
            retry += 1
