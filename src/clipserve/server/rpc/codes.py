"""Every error a gRPC call can end with, mapped to a status code in this one place.

The gRPC twin of :data:`clipserve.server.errors.STATUS`: the most specific class in an error's
MRO wins. Anything that is not a clipserve error is a bug: it is logged in full and the client
gets ``INTERNAL`` with a message that reveals nothing but an id to find the log line by.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from fastapi.exceptions import RequestValidationError

from clipserve.errors import (
    ClipServeError,
    ExportUnavailableError,
    ImageTooLargeError,
    InvalidInputError,
    ModelNotFoundError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    StorageError,
    TextTooLongError,
)
from clipserve.index.collection import IndexExistsError, IndexNotFoundError, ItemNotFoundError
from clipserve.server.errors import (
    NotReadyError,
    PayloadTooLargeError,
    TooManyItemsError,
    UnauthorizedError,
    validation_message,
)

log = logging.getLogger("clipserve.server.grpc")

Code = grpc.StatusCode

#: gRPC status of each error class. Like HTTP's 413s, everything "too large or too many" —
#: and a full queue, HTTP's 503 — is RESOURCE_EXHAUSTED: split, shrink or slow down. So is a
#: full disk (HTTP's 507), as the gRPC status documentation suggests for "the entire file
#: system is out of space".
CODES: Mapping[type[ClipServeError], grpc.StatusCode] = {
    PayloadTooLargeError: Code.RESOURCE_EXHAUSTED,
    TooManyItemsError: Code.RESOURCE_EXHAUSTED,
    ImageTooLargeError: Code.RESOURCE_EXHAUSTED,
    TextTooLongError: Code.RESOURCE_EXHAUSTED,
    OverloadedError: Code.RESOURCE_EXHAUSTED,
    InvalidInputError: Code.INVALID_ARGUMENT,
    UnauthorizedError: Code.UNAUTHENTICATED,
    ModelNotFoundError: Code.NOT_FOUND,
    IndexNotFoundError: Code.NOT_FOUND,
    ItemNotFoundError: Code.NOT_FOUND,
    IndexExistsError: Code.ALREADY_EXISTS,
    NotReadyError: Code.UNAVAILABLE,
    ModelUnavailableError: Code.UNAVAILABLE,
    RequestTimeoutError: Code.DEADLINE_EXCEEDED,
    StorageError: Code.RESOURCE_EXHAUSTED,
    ExportUnavailableError: Code.INTERNAL,
}

#: Codes that mean the server, not the caller, could not do it: logged as warnings.
_SERVER_SIDE = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL})


@dataclass(frozen=True)
class Failure:
    """How a call (or one stream item) fails: a status code, a message, trailing metadata."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str], ...] = ()


def code_of(exc: ClipServeError) -> grpc.StatusCode:
    """The gRPC status code for ``exc``."""
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return Code.INVALID_ARGUMENT if exc.client_error else Code.INTERNAL


def failure_of(exc: Exception, method: str) -> Failure:
    """The status a call that raised ``exc`` ends with; unexpected errors are logged here.

    ``retry-after`` (whole seconds) goes into the trailing metadata of errors that carry one:
    a full queue and models still loading.
    """
    if isinstance(exc, ClipServeError):
        code = code_of(exc)
        retry_after = getattr(exc, "retry_after", None)
        trailers = (("retry-after", str(int(retry_after))),) if retry_after is not None else ()
        if code in _SERVER_SIDE or isinstance(exc, OverloadedError | StorageError):
            log.warning("%s failed: %s: %s", method, type(exc).__name__, exc)
        return Failure(code, str(exc), trailers)
    if isinstance(exc, RequestValidationError):
        return Failure(Code.INVALID_ARGUMENT, validation_message(exc.errors()))
    # A bug, not the caller's fault: the log has everything, the caller only an id.
    incident = uuid.uuid4().hex
    log.error("unhandled error in %s (incident %s)", method, incident, exc_info=exc)
    return Failure(Code.INTERNAL, f"internal server error (incident {incident})")
