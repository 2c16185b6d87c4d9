"""Errors of the compatibility routers, each in its own system's error body.

A compat router's clients read errors the way the original system writes them (OpenAI's
``{"error": {"message", "type", "param", "code"}}``, FastAPI's ``{"detail": ...}``, ...), so
the app-wide handlers of :mod:`clipserve.server.errors` do not fit there. Instead each router
uses a route class (:func:`error_route`) that catches clipserve's errors — including those of
its dependencies, such as the API key check — and renders them with the router's own
function. The status codes stay those of :data:`clipserve.server.errors.STATUS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from clipserve.errors import ClipServeError, InvalidInputError
from clipserve.server.errors import error_response, error_type, validation_message
from clipserve.server.schemas import ErrorResponse


@dataclass(frozen=True)
class CompatError:
    """One error, ready to be rendered in a compat router's shape."""

    status: int
    kind: str  #: clipserve's machine-readable type, e.g. ``"invalid_image"``
    message: str
    headers: dict[str, str]
    param: str | None = None  #: the request field at fault, when known


class CompatInputError(InvalidInputError):
    """A request the compat router itself refuses (a 400, or ``status``), naming its field."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


Render = Callable[[CompatError], Response]


def to_compat_error(exc: Exception) -> CompatError | None:
    """The :class:`CompatError` for an exception a route may raise; ``None`` for a bug."""
    if isinstance(exc, CompatInputError):
        return CompatError(exc.status, "invalid_request", str(exc), {}, exc.param)
    if isinstance(exc, ClipServeError):
        base = error_response(exc)  # status and headers (Retry-After, WWW-Authenticate)
        headers = {
            key: value
            for key, value in base.headers.items()
            if key.lower() not in ("content-length", "content-type")
        }
        return CompatError(base.status_code, error_type(exc), str(exc), headers)
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        param = _param(errors)
        return CompatError(422, "validation_error", validation_message(errors), {}, param)
    if isinstance(exc, HTTPException):
        headers = dict(exc.headers or {})
        return CompatError(exc.status_code, "http_error", str(exc.detail), headers)
    return None


def _param(errors: Any) -> str | None:
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if loc:
            return ".".join(loc)
    return None


def error_route(render: Render) -> type[APIRoute]:
    """A route class whose handler answers clipserve's errors through ``render``.

    Use as ``APIRouter(route_class=error_route(render))``; exceptions that are not client
    or clipserve errors still reach the app's handler (a logged 500).
    """

    class CompatRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    error = to_compat_error(exc)
                    if error is None:
                        raise
                    response = render(error)  # the status is the renderer's choice
                    for key, value in error.headers.items():
                        response.headers[key] = value
                    return response

            return handle

    return CompatRoute


# ------------------------------------------------------------------ OpenAPI documentation
class DetailErrorBody(BaseModel):
    """FastAPI's error body, ``{"detail": "<message>"}`` (photofield-ai, immich)."""

    detail: str


#: Each error status a compat route may answer: what it means, its type and an example message.
_ERROR_DOCS: dict[int, tuple[str, str, str]] = {
    400: ("Bad input", "invalid_image", "items[0]: not an image (11 bytes Pillow cannot identify)"),
    401: ("Missing or wrong API key", "unauthorized", "invalid API key"),
    404: ("Unknown model or index", "model_not_found", "model 'x' is not served here"),
    413: ("Too large, or too many items", "too_many_items", "3000 items; the limit is 1024"),
    415: ("Unsupported Content-Encoding", "unsupported_media_type", "send gzip or nothing"),
    422: ("Invalid body", "validation_error", "body.items: Field required"),
    503: ("Loading or overloaded", "not_ready", "the models are still loading; retry shortly"),
    504: ("Timed out", "request_timeout", "no result within 60 s"),
}
#: The error statuses of a compat route that reads a body and embeds.
EMBED_ERRORS = (400, 401, 404, 413, 415, 422, 503, 504)
#: Statuses the request body check answers before any route runs (a body over
#: CLIPSERVE_MAX_BODY_BYTES, a corrupt gzip body, an unknown Content-Encoding, JSON that is not
#: Unicode): in clipserve's own error body, whichever router the request was for.
_BODY_CHECK = frozenset({400, 413, 415})


def error_docs(
    render: Render,
    body: type[BaseModel],
    statuses: Iterable[int] = EMBED_ERRORS,
    examples: Mapping[int, str] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting a compat route's errors in its router's body.

    Args:
        render: The router's error renderer; it makes each status's example.
        body: The model of what ``render`` returns.
        statuses: The error statuses the route can answer.
        examples: Example messages by status, instead of the generic ones.

    Example::

        @router.post("/x", responses={**ok_example, **error_docs(render_error, ErrorBody)})
    """
    docs: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, kind, message = _ERROR_DOCS[status]
        message = (examples or {}).get(status, message)
        rendered = render(CompatError(status, kind, message, {}))
        if rendered.status_code != status:  # e.g. OpenAI answers 422s as 400s
            continue
        model: Any = body | ErrorResponse if status in _BODY_CHECK else body
        docs[status] = {
            "model": model,
            "description": description,
            "content": {"application/json": {"example": json.loads(bytes(rendered.body))}},
        }
    return docs
