"""``AsyncClient``: encode, rank and classify against a clipserve server, over HTTP or gRPC."""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipserve.client.errors import ServerError
from clipserve.client.inputs import Item, Payload, checked_items, to_payload, to_payloads
from clipserve.client.results import Classification, Health, ModelInfo, RankResult
from clipserve.client.retry import Retry
from clipserve.client.transport import GRPC_SCHEMES, HTTP_SCHEMES, Transport, open_transport
from clipserve.errors import InvalidInputError

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_BATCH_SIZE = 32
#: Server-Timing metrics the server sends on /v1/encode, as ``profile`` reports them.
_SERVER_TIMINGS = ("queue", "prepare", "inference", "total")


class ClientOptions(TypedDict, total=False):
    """Keyword options of :class:`AsyncClient` and :class:`~clipserve.Client`."""

    api_key: str | None
    timeout: float
    retry: Retry | None
    max_concurrency: int


class AsyncClient:
    """An asyncio client of a clipserve server; the transport follows the URL's scheme.

    Args:
        url: ``http://host:port`` or ``https://...`` (the HTTP API), ``grpc://host:port`` or
            ``grpcs://...`` (the gRPC API). Default: ``$CLIPSERVE_URL``, else
            ``http://127.0.0.1:8000``.
        api_key: Sent as ``Authorization: Bearer <key>`` (HTTP header or gRPC metadata).
            Default: ``$CLIPSERVE_API_KEY``; none if unset.
        timeout: Seconds one request may take.
        retry: The retry policy (see :class:`~clipserve.client.Retry`); ``Retry(attempts=1)``
            turns retries off.
        max_concurrency: Most requests in flight at once (``encode`` sends batches in
            parallel up to this bound).

    Example::

        async with AsyncClient("http://127.0.0.1:8000") as client:
            vectors = await client.encode(["a photo of a cat", Path("cat.jpg")])
            ranked = await client.rank(Path("cat.jpg"), ["a cat", "a dog"])

    The connection opens on first use, in the running event loop; use one client per loop.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: Retry | None = None,
        max_concurrency: int = 4,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.url = url or os.environ.get("CLIPSERVE_URL") or DEFAULT_URL
        if urlsplit(self.url).scheme.lower() not in (*HTTP_SCHEMES, *GRPC_SCHEMES):
            raise ValueError(
                f"unsupported URL {self.url!r}: use http://, https://, grpc:// or grpcs://"
            )
        self.retry = retry or Retry()
        self.max_concurrency = max_concurrency
        self._api_key = api_key if api_key is not None else os.environ.get("CLIPSERVE_API_KEY")
        self._timeout = timeout
        self._transport: Transport | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()

    # ------------------------------------------------------------------ encode
    async def encode(
        self,
        items: Iterable[Item],
        *,
        model: str | None = None,
        normalize: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed texts and images, mixed, in input order: float32 ``[len(items), dim]``.

        Args:
            items: Texts (``str``), image URLs (a ``str`` starting with ``http(s)://`` and
                without spaces; the server must allow URL inputs), ``data:image/`` URIs,
                image files (``pathlib.Path`` — a path given as ``str`` is a *text*), image
                bytes, PIL images or uint8 arrays (H×W×3). See :mod:`clipserve.client.inputs`.
            model: A served model; the server's default if ``None``.
            normalize: L2-normalise the embeddings.
            batch_size: Inputs per request. Requests run concurrently (up to
                ``max_concurrency``); each is retried on its own, so a retry never loses or
                repeats an input.
            show_progress: Show a tqdm progress bar (on stderr), counted in inputs.

        Raises:
            InvalidInputError: (or a subclass) an input the server refuses; the message
                names it. Other :class:`~clipserve.errors.ClipServeError` types for a full
                queue or an unreachable server once retries are spent.

        Example::

            vectors = await client.encode(["a cat", Path("cat.jpg")], batch_size=64)
        """
        listed = checked_items(items)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        starts = range(0, len(listed), batch_size)
        parts: list[np.ndarray] = [np.empty((0, 0), np.float32)] * len(starts)
        with tqdm(total=len(listed), unit="item", desc="encode", disable=not show_progress) as bar:

            async def send_batch(number: int) -> None:
                start = starts[number]
                chunk = listed[start : start + batch_size]
                parts[number] = await self._encode_batch(
                    chunk, start, model=model, normalize=normalize
                )
                bar.update(len(chunk))

            await _run_bounded(send_batch, len(starts), self.max_concurrency)
        return np.concatenate(parts)

    async def _encode_batch(
        self, chunk: list[Item], start: int, *, model: str | None, normalize: bool
    ) -> np.ndarray:
        # Reading files and PNG-encoding arrays block: off the event loop, one batch at a
        # time per worker, so memory holds at most max_concurrency batches of payloads.
        payloads = await asyncio.to_thread(to_payloads, chunk, start)
        try:
            reply = await self._send(
                lambda transport: transport.encode(payloads, model=model, normalize=normalize)
            )
        except InvalidInputError as exc:
            # The server numbers inputs within its request; say which batch of the call it was.
            raise type(exc)(f"items[{start}:{start + len(chunk)}]: {exc}") from exc
        if reply.vectors.shape[0] != len(chunk):
            raise ServerError(
                f"the server answered {reply.vectors.shape[0]} rows for {len(chunk)} inputs"
            )
        return reply.vectors

    # ------------------------------------------------------------ rank, classify
    async def rank(
        self, query: Item, candidates: Iterable[Item], *, model: str | None = None
    ) -> RankResult:
        """Score ``candidates`` against ``query``, best first; texts or images in either role.

        Example::

            result = await client.rank(Path("cat.jpg"), ["a cat", "a dog", "a car"])
            result.best.index, result.best.probability
        """
        listed = checked_items(candidates, "candidates")
        query_payload, payloads = await asyncio.to_thread(_query_and_candidates, query, listed)
        return await self._send(
            lambda transport: transport.rank(query_payload, payloads, model=model)
        )

    async def classify(
        self,
        images: Iterable[Item],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        *,
        model: str | None = None,
    ) -> list[Classification]:
        """Zero-shot classify ``images`` among ``labels``; one result per image, in order.

        Args:
            images: Images in any form :meth:`encode` takes (a text is refused).
            labels: Class names.
            templates: Prompt templates with ``{}`` for the label; the server's default
                (``"a photo of a {}."``) if ``None``.

        Example::

            [result] = await client.classify([Path("cat.jpg")], ["cat", "dog"])
            result.label, result.scores[0].probability
        """
        _check_labels(labels)
        listed = checked_items(images, "images")
        payloads = await asyncio.to_thread(to_payloads, listed, 0, "images")
        return await self._send(
            lambda transport: transport.classify(payloads, labels, templates, model=model)
        )

    # ------------------------------------------------------------- operations
    async def models(self) -> list[ModelInfo]:
        """The served models, default first."""
        return await self._send(lambda transport: transport.models())

    async def health(self) -> Health:
        """Whether the server is ready (one attempt, no retries: this is a probe).

        Raises ``ServiceUnavailableError`` when the server cannot be reached.
        """
        return await self._connection().health()

    async def profile(
        self, sample: Sequence[Item] | None = None, *, model: str | None = None, repeat: int = 3
    ) -> dict[str, Any]:
        """Time ``repeat`` encode requests of ``sample`` (default: a text and a small image).

        Returns the median round trip and, as far as the server reports them (HTTP:
        ``Server-Timing``), its queue wait, preprocessing, inference and total handling time,
        all in milliseconds; ``overhead_ms`` is what the round trip adds to the server's own
        time (network, serialisation, HTTP). ``unavailable`` lists what the server did not
        report — everything but the round trip over gRPC, whose API carries no timings.
        Requests are not retried here: a retry would be counted as latency.
        """
        listed = checked_items(sample if sample is not None else _default_sample(), "sample")
        payloads = await asyncio.to_thread(to_payloads, listed, 0, "sample")
        transport = self._connection()
        round_trips: list[float] = []
        timings: list[dict[str, float]] = []
        for _ in range(max(1, repeat)):
            started = time.perf_counter()
            reply = await transport.encode(payloads, model=model, normalize=True)
            round_trips.append((time.perf_counter() - started) * 1000)
            timings.append(reply.timing)
        return _profile_report(transport.name, self.url, len(listed), round_trips, timings)

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> Transport:
        if self._transport is None:
            self._transport = open_transport(
                self.url,
                api_key=self._api_key,
                timeout=self._timeout,
                connections=self.max_concurrency,
            )
        return self._transport

    async def _send(self, operation: Callable[[Transport], Awaitable[T]]) -> T:
        transport = self._connection()
        return await self.retry.call(lambda: operation(transport))


async def _run_bounded(job: Callable[[int], Awaitable[None]], count: int, limit: int) -> None:
    """Run ``job(0) ... job(count - 1)``, at most ``limit`` at a time; the first error cancels
    the rest and is raised as it is (not wrapped in an ExceptionGroup)."""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:  # shared iterator: each number is taken by one worker
            await job(number)

    tasks = [asyncio.create_task(worker()) for _ in range(min(limit, count))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _query_and_candidates(query: Item, candidates: list[Item]) -> tuple[Payload, list[Payload]]:
    return to_payload(query, "query"), to_payloads(candidates, 0, "candidates")


def _default_sample() -> list[Item]:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, format="PNG")
    return ["a photo of a cat", buffer.getvalue()]


def _profile_report(
    transport: str,
    url: str,
    items: int,
    round_trips: list[float],
    timings: list[dict[str, float]],
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "transport": transport,
        "url": url,
        "items": items,
        "requests": len(round_trips),
        "round_trip_ms": statistics.median(round_trips),
    }
    unavailable = []
    for name in _SERVER_TIMINGS:
        values = [timing[name] for timing in timings if name in timing]
        report[f"server_{name}_ms"] = statistics.median(values) if values else None
        if not values:
            unavailable.append(f"server_{name}_ms")
    total = report["server_total_ms"]
    report["overhead_ms"] = None if total is None else max(0.0, report["round_trip_ms"] - total)
    if total is None:
        unavailable.append("overhead_ms")
    report["unavailable"] = unavailable
    return report


def _check_labels(labels: Sequence[str]) -> None:
    if isinstance(labels, str):
        raise InvalidInputError("labels must be a list of strings, got a str")
