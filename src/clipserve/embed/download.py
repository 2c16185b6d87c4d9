"""Downloading the images of a URL table: bounded concurrency, timeouts, retries.

A failed download is a result, not an exception: the reason (``HTTP 404``, ``timed out after
3 attempts``, ``larger than 32 MiB``) goes into the item's metadata and the job goes on.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import httpx

from clipserve.embed.options import DownloadSettings

# Worth another try: the server or the network may do better in a moment.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Download:
    """The body of a URL, or the reason there is none."""

    data: bytes | None
    error: str | None = None


class Downloader:
    """Fetches URLs with retries; thread-safe (one connection pool shared by the threads)."""

    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings
        limits = httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        )
        self._client = httpx.Client(timeout=settings.timeout, follow_redirects=True, limits=limits)

    def fetch(self, url: str) -> Download:
        """Download ``url``; retry what may succeed later; never raises for a bad URL."""
        error = "not attempted"
        for attempt in range(self.settings.attempts):
            if attempt:
                pause = self.settings.backoff * 2 ** (attempt - 1)
                time.sleep(pause * random.uniform(0.5, 1.5))
            result, retry = self._attempt(url)
            if result.data is not None or not retry:
                return result
            error = result.error or error
        return Download(None, f"{error} (after {self.settings.attempts} attempts)")

    def _attempt(self, url: str) -> tuple[Download, bool]:
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    retry = response.status_code in _RETRY_STATUSES
                    return Download(None, f"HTTP {response.status_code}"), retry
                return self._read_body(response), False
        except httpx.UnsupportedProtocol as exc:
            return Download(None, f"not an http(s) URL: {exc}"), False
        except httpx.TimeoutException:
            return Download(None, f"timed out after {self.settings.timeout:g} s"), True
        except httpx.TransportError as exc:
            return Download(None, f"{type(exc).__name__}: {exc}"), True
        except httpx.InvalidURL as exc:
            return Download(None, f"invalid URL: {exc}"), False
        except httpx.HTTPError as exc:  # e.g. an unsupported scheme
            return Download(None, f"{type(exc).__name__}: {exc}"), False

    def _read_body(self, response: httpx.Response) -> Download:
        limit = self.settings.max_bytes
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                return Download(None, f"larger than {limit} bytes")
            chunks.append(chunk)
        return Download(b"".join(chunks))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
