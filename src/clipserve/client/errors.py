"""The client's side of the error mapping: server answers (HTTP or gRPC) to clipserve errors.

Both transports end up here, so a caller catches the same types whichever it uses:
:class:`~clipserve.errors.InvalidInputError` and its subclasses for bad input (never retried),
:class:`~clipserve.errors.OverloadedError` and :class:`ServiceUnavailableError` for conditions
that pass (retried), and the three classes below for what :mod:`clipserve.errors` has no type
for on the client side.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from clipserve.errors import (
    ClipServeError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    ModelNotFoundError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    TextTooLongError,
)


class AuthenticationError(ClipServeError):
    """The server wants an API key, or refused the one sent (HTTP 401, gRPC UNAUTHENTICATED)."""

    client_error = True


class ServiceUnavailableError(ClipServeError):
    """The server cannot answer now: unreachable, connection dropped, or models still loading.

    Retried by the client; raised once the retry budget is spent.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(ClipServeError):
    """The server failed on a valid request (HTTP 5xx, gRPC INTERNAL/UNKNOWN), or answered
    something the client cannot read."""


#: The server's ``error.type`` (see ``clipserve.server.errors.error_type``) to a class.
_BY_TYPE: Mapping[str, type[ClipServeError]] = {
    "invalid_image": InvalidImageError,
    "image_too_large": ImageTooLargeError,
    "text_too_long": TextTooLongError,
    "model_not_found": ModelNotFoundError,
    "model_unavailable": ModelUnavailableError,
    "overloaded": OverloadedError,
    "not_ready": ServiceUnavailableError,
    "request_timeout": RequestTimeoutError,
    "unauthorized": AuthenticationError,
}

#: Fallbacks by HTTP status, for answers without a known type (a proxy's, say).
_BY_STATUS: Mapping[int, type[ClipServeError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: ModelNotFoundError,
    429: OverloadedError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: RequestTimeoutError,
}

#: gRPC status code names (see clip.proto) to classes; RESOURCE_EXHAUSTED is decided apart.
_BY_GRPC_CODE: Mapping[str, type[ClipServeError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "OUT_OF_RANGE": InvalidInputError,
    "FAILED_PRECONDITION": InvalidInputError,
    "NOT_FOUND": ModelNotFoundError,
    "DEADLINE_EXCEEDED": RequestTimeoutError,
    "UNAVAILABLE": ServiceUnavailableError,
    # The server cancels calls in flight when it shuts down; the client never cancels a call
    # itself without also abandoning it, so a CANCELLED status means "try again elsewhere".
    "CANCELLED": ServiceUnavailableError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": AuthenticationError,
}


def http_error(
    status: int, kind: str | None, message: str, retry_after: str | None
) -> ClipServeError:
    """The error for an HTTP answer ``status`` with body ``{"error": {"type", "message"}}``."""
    cls = _BY_TYPE.get(kind or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = InvalidInputError if 400 <= status < 500 else ServerError
    return _make(cls, f"HTTP {status}: {message}", parse_retry_after(retry_after))


def grpc_error(code: str, message: str, retry_after: str | None) -> ClipServeError:
    """The error for a gRPC status ``code`` (its name, ``"INVALID_ARGUMENT"``)."""
    seconds = parse_retry_after(retry_after)
    if code == "RESOURCE_EXHAUSTED":
        # A full queue comes with "retry-after"; a request over a limit (too many items, a
        # message over the size cap) does not, and sending it again cannot help.
        cls: type[ClipServeError] = OverloadedError if seconds is not None else InvalidInputError
    else:
        cls = _BY_GRPC_CODE.get(code, ServerError)
    return _make(cls, f"{code}: {message}", seconds)


def _make(cls: type[ClipServeError], message: str, retry_after: float | None) -> ClipServeError:
    if issubclass(cls, OverloadedError):
        return cls(message, retry_after=max(1, round(retry_after or 1)))
    if issubclass(cls, ServiceUnavailableError):
        return cls(message, retry_after=retry_after)
    return cls(message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_hint(exc: BaseException) -> float | None:
    """``None`` if ``exc`` must not be retried, else the server's wait hint (0.0: none given).

    Only conditions that pass are retried: a full queue and an unreachable or loading server.
    Bad input, a wrong key, an unknown model or a server bug would fail the same way again.
    """
    if isinstance(exc, OverloadedError | ServiceUnavailableError):
        return float(exc.retry_after or 0.0)
    return None
