"""ASGI middleware: request ids, access logs and metrics; request body limits and gzip bodies.

Pure ASGI (not ``BaseHTTPMiddleware``) so responses stream through untouched and a client
that disconnects cancels the request as it should.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
import zlib

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipserve.errors import InvalidInputError
from clipserve.server.errors import (
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    error_response,
)
from clipserve.server.metrics import Metrics

access_log = logging.getLogger("clipserve.server.access")

REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED_REQUEST = 499
# A client's request id is echoed into headers and logs: keep it short and plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_GZIP = frozenset({"gzip", "x-gzip"})
#: A JSON escape of a UTF-16 surrogate (``\ud800``-``\udfff``).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class RequestContextMiddleware:
    """Per request: an id (``X-Request-ID`` honoured or made), one access log line, metrics.

    The route label is the matched route's path template (``/v1/encode``), never the raw
    path, so metrics stay bounded whatever clients send; unmatched paths share one label.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        # 499 (nginx's "client closed request") unless an answer starts or the app raises.
        status = CLIENT_CLOSED_REQUEST
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.in_progress.dec()
            self._record(scope, request_id, status, time.perf_counter() - started)

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.observe_request(method, label, status, seconds)
        client = scope.get("client")
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            scope["path"],
            status,
            seconds * 1000,
            extra={
                "request_id": request_id,
                "method": method,
                "route": label,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "client": client[0] if client else None,
            },
        )


def _request_id(given: str | None) -> str:
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestBodyMiddleware:
    """Reads the whole body up front, within ``limit``; cancels the request if the client goes.

    The body is decoded if sent with ``Content-Encoding: gzip``. The limit applies to the bytes
    received *and* to the decompressed bytes, so a small gzip bomb cannot expand past it. Over
    the limit: 413 before the app sees anything. The app then gets the plain body
    (``Content-Encoding`` removed, ``Content-Length`` fixed).

    With the body read, the connection is watched: a client that disconnects before its answer
    has its request cancelled, so its items leave the batch queue before they cost inference
    (uvicorn alone would let the handler run to the end for nobody).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self._check_declared(headers.get("content-length"))
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if encoding not in _GZIP and encoding != "identity":
                raise UnsupportedMediaTypeError(
                    f"Content-Encoding {encoding!r} is not supported: send gzip or nothing"
                )
            body = await self._read(receive, gzip=encoding in _GZIP)
            if body is not None:
                _check_unicode(body)
        except InvalidInputError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if body is None:  # the client went away mid-body: nobody to answer
            return
        if encoding in _GZIP:
            scope = {**scope, "headers": _decoded_headers(scope, len(body))}
        await _cancel_on_disconnect(self.app, scope, body, receive, send)

    def _check_declared(self, declared: str | None) -> None:
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise self._too_large(f"the request body ({declared} bytes)")

    async def _read(self, receive: Receive, *, gzip: bool) -> bytes | None:
        # 16 + MAX_WBITS: expect a gzip header and trailer.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        body = bytearray()
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                raise self._too_large("the request body")
            body += self._inflate(inflater, chunk, len(body)) if inflater else chunk
            if not message.get("more_body", False):
                break
        if inflater is not None and not inflater.eof and received:
            raise InvalidInputError("gzip request body is truncated or corrupt")
        return bytes(body)

    def _inflate(self, inflater: zlib._Decompress, chunk: bytes, have: int) -> bytes:
        out = bytearray()
        try:
            while chunk:
                # Never ask for more than one byte past the limit: a bomb stops right there.
                out += inflater.decompress(chunk, self.limit + 1 - have - len(out))
                if have + len(out) > self.limit:
                    raise self._too_large("the decompressed request body")
                chunk = inflater.unconsumed_tail
        except zlib.error as exc:
            raise InvalidInputError(f"gzip request body is corrupt: {exc}") from exc
        return bytes(out)

    def _too_large(self, what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"{what} is larger than the limit of {self.limit} bytes (CLIPSERVE_MAX_BODY_BYTES)"
        )


def _check_unicode(body: bytes) -> None:
    """Refuse a JSON body with a lone surrogate escape (``"\\ud800"`` without its pair).

    JSON allows the escape; Python decodes it into a ``str`` that is not Unicode and cannot be
    encoded as UTF-8 again — which then fails far from the input, as a 500 or a dropped
    connection (binding it to SQLite, rendering an answer that echoes it). Checked once
    here for every route, and only for bodies that hold such an escape at all: pairs are how
    ASCII-only JSON spells emoji.
    """
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON (an image, a form): its route says what is wrong with it
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidInputError(
            "the JSON body holds a lone surrogate escape (one of \\ud800-\\udfff without its "
            "pair): that is not valid Unicode text"
        ) from exc


def _decoded_headers(scope: Scope, length: int) -> list[tuple[bytes, bytes]]:
    kept = [
        (name, value)
        for name, value in scope["headers"]
        if name.lower() not in (b"content-encoding", b"content-length")
    ]
    return [*kept, (b"content-length", str(length).encode())]


async def _cancel_on_disconnect(
    app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send
) -> None:
    """Run ``app`` with ``body``; cancel it if the client disconnects before the answer ends."""
    disconnected = asyncio.Event()
    answered = False
    body_sent = False

    async def app_receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def app_send(message: Message) -> None:
        nonlocal answered
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered = True
        await send(message)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # nothing else can arrive once the body is read
        disconnected.set()

    async def handle() -> None:
        await app(scope, app_receive, app_send)

    handler = asyncio.create_task(handle())
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        # uvicorn also reports "disconnect" once the answer is complete: that one is no reason
        # to cancel what the app still does after answering.
        if watcher.done() and not handler.done() and not answered:
            handler.cancel()
            await asyncio.wait({handler})
            if handler.cancelled():
                return  # the client is gone: nobody to answer
        await handler  # its result, or its exception
    finally:
        watcher.cancel()
        handler.cancel()
