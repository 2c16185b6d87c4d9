"""Every error the HTTP server answers with, mapped to a status code in this one place.

Domain errors (:mod:`clipserve.errors`) and the server's own (below) become
``{"error": {"type": "...", "message": "..."}}`` with the status of :data:`STATUS`; FastAPI's
validation errors keep their 422 with a readable message; anything unexpected is logged and
becomes a 500 that reveals nothing about the internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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

log = logging.getLogger("clipserve.server")


class PayloadTooLargeError(InvalidInputError):
    """A request body (after gzip decoding) or a fetched image over its size limit."""


class TooManyItemsError(InvalidInputError):
    """More inputs in one request than ``max_items_per_request``."""


class UnsupportedMediaTypeError(InvalidInputError):
    """A body whose ``Content-Type`` or ``Content-Encoding`` the route does not read."""


class UrlNotAllowedError(InvalidInputError):
    """A URL input the server refuses to fetch: fetching off, host not allowed, private address."""


class UrlFetchError(InvalidInputError):
    """A URL input that could not be fetched: network error, HTTP error status, timeout."""


class UnauthorizedError(ClipServeError):
    """A missing or wrong API key."""

    client_error = True


class NotReadyError(ClipServeError):
    """The models are still loading or warming up."""

    retry_after = 5


#: HTTP status of each error class; the most specific class in an error's MRO wins.
#: TextTooLongError is a 413 like every other "too large" input, so clients can treat
#: "split or shrink the request" uniformly. A write the disk could not take is 507
#: (Insufficient Storage, RFC 4918): the server's fault, not the request's, and unlike a 500
#: it tells the operator what to fix; sending it again helps only once space is freed.
STATUS: Mapping[type[ClipServeError], int] = {
    PayloadTooLargeError: 413,
    TooManyItemsError: 413,
    ImageTooLargeError: 413,
    TextTooLongError: 413,
    UnsupportedMediaTypeError: 415,
    InvalidInputError: 400,
    UnauthorizedError: 401,
    ModelNotFoundError: 404,
    IndexNotFoundError: 404,
    ItemNotFoundError: 404,
    IndexExistsError: 409,
    OverloadedError: 503,
    NotReadyError: 503,
    ModelUnavailableError: 503,
    RequestTimeoutError: 504,
    StorageError: 507,
    ExportUnavailableError: 500,
}


def status_of(exc: ClipServeError) -> int:
    """The HTTP status for ``exc``."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400 if exc.client_error else 500


def error_type(exc: BaseException) -> str:
    """``ImageTooLargeError`` -> ``"image_too_large"``: the machine-readable error type."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(kind: str, message: str) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"type": kind, "message": message}}


def error_response(exc: ClipServeError) -> JSONResponse:
    """The response for a clipserve error: status, body and the headers a client acts on."""
    status = status_of(exc)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if status == 503 and retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="clipserve"'
    if status >= 500:
        log.warning("request failed: %s: %s", type(exc).__name__, exc)
    return JSONResponse(error_body(error_type(exc), str(exc)), status, headers=headers)


def validation_message(errors: Sequence[Any], limit: int = 5) -> str:
    """One readable line from pydantic/FastAPI error dicts: ``"body.inputs.0: ... ; ..."``."""
    parts = []
    for error in errors[:limit]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid"))
        detail = (error.get("ctx") or {}).get("error")
        if detail and str(detail) not in message:
            message = f"{message}: {detail}"
        parts.append(f"{where}: {message}" if where else message)
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts) or "invalid request"


async def _clipserve_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClipServeError)
    return error_response(exc)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = validation_message(exc.errors())
    return JSONResponse(error_body("validation_error", message), 422)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "error"
    kind = phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse(
        error_body(kind, str(exc.detail)), exc.status_code, headers=dict(exc.headers or {})
    )


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # Input errors never get here (they are ClipServeErrors); this is a bug: log it in full,
    # tell the client only that it happened and which request it was.
    request_id = getattr(request.state, "request_id", "-")
    log.error("unhandled error in request %s", request_id, exc_info=exc)
    message = f"internal server error (request id {request_id})"
    return JSONResponse(error_body("internal_error", message), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the error body above."""
    app.add_exception_handler(ClipServeError, _clipserve_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
