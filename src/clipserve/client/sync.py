"""``Client``: the blocking face of :class:`~clipserve.client.aio.AsyncClient`.

Every call runs the async client's coroutine on a private event loop in a daemon thread, so
batching, ordering and retries exist once, and the client works where a loop is already
running in the calling thread (Jupyter).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar, Unpack

import numpy as np

from clipserve.client.aio import DEFAULT_BATCH_SIZE, AsyncClient, ClientOptions
from clipserve.client.inputs import Item
from clipserve.client.results import Classification, Health, ModelInfo, RankResult

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread; ``run`` blocks on a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="clipserve-client", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a Client method was called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: stop the requests too
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Client:
    """A blocking client of a clipserve server, over HTTP or gRPC by the URL's scheme.

    Takes the same arguments as :class:`~clipserve.AsyncClient` (``url``, ``api_key``,
    ``timeout``, ``retry``, ``max_concurrency``); its methods are the async client's, blocking.
    Safe to share between threads.

    Example::

        from pathlib import Path
        from clipserve import Client

        with Client("http://127.0.0.1:8000") as client:
            vectors = client.encode(["a photo of a cat", Path("cat.jpg")], show_progress=True)
            best = client.rank("a photo of a cat", [Path("cat.jpg"), Path("dog.jpg")]).best
    """

    def __init__(self, url: str | None = None, **options: Unpack[ClientOptions]) -> None:
        self._async = AsyncClient(url, **options)
        self._loop = _LoopThread()

    @property
    def url(self) -> str:
        """The server's URL."""
        return self._async.url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the client's loop thread."""
        if not self._loop.loop.is_closed():
            self._loop.run(self._async.aclose())
            self._loop.close()

    def encode(
        self,
        items: Iterable[Item],
        *,
        model: str | None = None,
        normalize: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed texts and images, mixed, in input order; see :meth:`AsyncClient.encode`."""
        return self._loop.run(
            self._async.encode(
                items,
                model=model,
                normalize=normalize,
                batch_size=batch_size,
                show_progress=show_progress,
            )
        )

    def rank(
        self, query: Item, candidates: Iterable[Item], *, model: str | None = None
    ) -> RankResult:
        """Score candidates against a query, best first; see :meth:`AsyncClient.rank`."""
        return self._loop.run(self._async.rank(query, candidates, model=model))

    def classify(
        self,
        images: Iterable[Item],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        *,
        model: str | None = None,
    ) -> list[Classification]:
        """Zero-shot classify images among labels; see :meth:`AsyncClient.classify`."""
        return self._loop.run(self._async.classify(images, labels, templates, model=model))

    def models(self) -> list[ModelInfo]:
        """The served models, default first."""
        return self._loop.run(self._async.models())

    def health(self) -> Health:
        """Whether the server is ready; see :meth:`AsyncClient.health`."""
        return self._loop.run(self._async.health())

    def profile(
        self, sample: Sequence[Item] | None = None, *, model: str | None = None, repeat: int = 3
    ) -> dict[str, Any]:
        """Round trip and server-side timings of encode requests; see
        :meth:`AsyncClient.profile`."""
        return self._loop.run(self._async.profile(sample, model=model, repeat=repeat))
