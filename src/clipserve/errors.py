"""One exception hierarchy for every clipserve failure a caller can act on.

Transports map these to status codes in one place (HTTP 4xx/5xx, gRPC codes); library users
catch :class:`ClipServeError` or one of its subclasses.
"""

from __future__ import annotations


class ClipServeError(Exception):
    """Base of every error clipserve raises on purpose."""

    #: Whether the caller's input caused it (a 4xx) rather than the service (a 5xx).
    client_error: bool = False


class InvalidInputError(ClipServeError):
    """The request itself is malformed: wrong type, empty list, unknown field value."""

    client_error = True


class InvalidImageError(InvalidInputError):
    """Image bytes that cannot be decoded (corrupt, truncated, empty, unsupported format)."""


class ImageTooLargeError(InvalidInputError):
    """An image whose pixel count exceeds the configured limit."""


class TextTooLongError(InvalidInputError):
    """A text longer (in characters) than the configured limit."""


class ModelNotFoundError(ClipServeError):
    """A model name that is neither in the registry, a local directory nor a reachable repo."""

    client_error = True


class ModelUnavailableError(ClipServeError):
    """A known model that cannot be loaded here: not cached while offline, files missing."""


class ExportUnavailableError(ClipServeError):
    """Exporting to ONNX needs the ``export`` extra (torch, transformers)."""


class OverloadedError(ClipServeError):
    """The server's queue is full; retry after ``retry_after`` seconds (HTTP 503)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(ClipServeError):
    """A request did not get its result in time (HTTP 504)."""


class StorageError(ClipServeError):
    """A write to disk failed — no space left, a file size limit, a disk I/O error — and was
    not applied: what was written before is intact (HTTP 507)."""
