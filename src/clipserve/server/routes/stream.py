"""``/v1/stream``: streaming encode over a WebSocket, for browsers and long-running feeders.

Protocol (one connection, any number of items):

* Connect to ``ws://host/v1/stream?model=&normalize=&encoding=`` (query parameters as in
  ``/v1/encode``). With API keys on, send ``Authorization: Bearer <key>``, or — browsers cannot
  set headers on a WebSocket — offer the subprotocols ``clipserve`` and ``bearer.<key>`` (the
  server chooses ``clipserve``).
* Send items: a text frame ``{"id": 7, "input": "a photo of a cat"}`` (``input`` as in
  ``/v1/encode``: a string, a data URI, a URL, or ``{"text"|"image"|"url": ...}``; ``id`` is
  any JSON value, echoed back), or a binary frame holding one image file.
* Receive one message per item, in the order sent:
  ``{"index": 0, "id": 7, "modality": "text", "embedding": [...]}``, or
  ``{"index": 3, "id": ..., "error": {"type": "invalid_image", "message": "..."}}`` for an item
  that fails — the stream goes on. ``index`` counts the items of the connection from 0.
* Send ``{"end": true}`` to finish: the server answers every pending item, then
  ``{"done": true, "items": N, "errors": E}``, and closes normally.

At most :data:`WINDOW` items are in flight per connection; beyond that the server stops
reading, so a fast sender is slowed by TCP flow control instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from clipserve.engine import Engine
from clipserve.errors import ClipServeError
from clipserve.server.auth import key_matches
from clipserve.server.errors import UnauthorizedError, error_body, error_type, validation_message
from clipserve.server.formats import encode_vectors
from clipserve.server.inputs import ImageBytes, resolve, served_model, validate
from clipserve.server.schemas import EncodeOptions, InputItem
from clipserve.server.state import ServerState
from clipserve.server.streaming import encode_when_queue_allows

log = logging.getLogger("clipserve.server")
router = APIRouter(prefix="/v1", tags=["embeddings"])

#: Items in flight (received, not yet answered) per connection.
WINDOW = 256
#: WebSocket close codes (RFC 6455 §7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
_SUBPROTOCOL = "clipserve"
_BEARER_PREFIX = "bearer."
_INPUT = TypeAdapter[Any](InputItem)
_END = object()


@dataclass
class _Connection:
    """One stream's settings and counters."""

    state: ServerState
    engine: Engine
    model: str
    options: EncodeOptions
    received: int = 0
    errors: int = 0
    pending: set[asyncio.Task[dict[str, Any]]] = field(default_factory=set)


@router.websocket("/stream", name="stream")
async def stream(websocket: WebSocket) -> None:
    """Streaming encode: send items, read embeddings in order (see the module docstring)."""
    state: ServerState = websocket.app.state.clipserve
    await websocket.accept(subprotocol=_chosen_subprotocol(websocket))
    try:
        connection = _open(websocket, state)
    except ClipServeError as exc:
        await _refuse(websocket, exc)
        return
    except RequestValidationError as exc:
        body = error_body("validation_error", validation_message(exc.errors()))
        await websocket.send_json(body)
        await websocket.close(CLOSE_POLICY, "invalid query parameters")
        return
    await _serve(websocket, connection)


def _open(websocket: WebSocket, state: ServerState) -> _Connection:
    _check_key(websocket, state)
    engine = state.ready_engine()
    options = validate(EncodeOptions, dict(websocket.query_params), "query")
    return _Connection(state, engine, served_model(state, options.model), options)


def _chosen_subprotocol(websocket: WebSocket) -> str | None:
    """``clipserve`` if offered, else an offered ``bearer.<key>``: a browser fails a connection
    whose answer names no subprotocol, or one it did not offer, once it offered any."""
    offered: list[str] = websocket.scope.get("subprotocols", [])
    if _SUBPROTOCOL in offered:
        return _SUBPROTOCOL
    return next((protocol for protocol in offered if protocol.startswith(_BEARER_PREFIX)), None)


def _offered_key(websocket: WebSocket) -> str | None:
    """The API key from ``Authorization: Bearer`` or a ``bearer.<key>`` subprotocol."""
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(_BEARER_PREFIX):
            return str(protocol[len(_BEARER_PREFIX) :])
    return None


def _check_key(websocket: WebSocket, state: ServerState) -> None:
    keys = state.settings.api_keys
    if not keys:
        return
    key = _offered_key(websocket)
    if key is None:
        raise UnauthorizedError(
            "this server needs an API key: send Authorization: Bearer <key> or offer the "
            "WebSocket subprotocol bearer.<key>"
        )
    if not key_matches(key, keys):
        raise UnauthorizedError("invalid API key")


async def _refuse(websocket: WebSocket, exc: ClipServeError) -> None:
    await websocket.send_json(error_body(error_type(exc), str(exc)))
    retry = getattr(exc, "retry_after", None) is not None
    await websocket.close(CLOSE_TRY_AGAIN if retry else CLOSE_POLICY, type(exc).__name__)


async def _serve(websocket: WebSocket, connection: _Connection) -> None:
    # Reader and writer meet in a bounded queue of answers-to-be, in arrival order: when
    # WINDOW items are pending the reader blocks, and so does the client's sending.
    answers: asyncio.Queue[object] = asyncio.Queue(maxsize=WINDOW)
    reader = asyncio.create_task(_read(websocket, connection, answers))
    writer = asyncio.create_task(_write(websocket, connection, answers))
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a disconnect or send failure surfaces here
        await writer
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away: nothing to answer to
    finally:
        tasks: list[asyncio.Task[Any]] = [reader, writer, *connection.pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read(
    websocket: WebSocket, connection: _Connection, answers: asyncio.Queue[object]
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL))
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        if text is not None and _is_end(text):
            await answers.put(_END)
            return
        index = connection.received
        connection.received += 1
        task = asyncio.create_task(_answer(connection, index, text, data))
        connection.pending.add(task)
        task.add_done_callback(connection.pending.discard)
        await answers.put(task)


def _is_end(text: str) -> bool:
    # Cheap pre-check: only short messages can be the end marker.
    if len(text) > 64:
        return False
    with contextlib.suppress(ValueError):
        message = json.loads(text)
        return isinstance(message, dict) and message.get("end") is True
    return False


async def _write(
    websocket: WebSocket, connection: _Connection, answers: asyncio.Queue[object]
) -> None:
    while True:
        answer = await answers.get()
        if answer is _END:
            break
        assert isinstance(answer, Awaitable)
        await websocket.send_text(json.dumps(await answer, separators=(",", ":")))
    done = {"done": True, "items": connection.received, "errors": connection.errors}
    await websocket.send_json(done)
    await websocket.close(CLOSE_NORMAL)


async def _answer(
    connection: _Connection, index: int, text: str | None, data: bytes | None
) -> dict[str, Any]:
    """One item's answer: its embedding, or the error that item alone ran into."""
    item_id: Any = index
    try:
        if data is not None:
            raw: Any = ImageBytes(data)
        else:
            item_id, raw = _parse_message(text or "", index)
        items = await resolve([raw], "input", connection.state)
        vectors = await encode_when_queue_allows(
            connection.engine,
            items,
            model=connection.model,
            normalize=connection.options.normalize,
        )
        modality = "text" if isinstance(items[0], str) else "image"
        embedding = encode_vectors(vectors, connection.options.encoding)[0]
        return {"index": index, "id": item_id, "modality": modality, "embedding": embedding}
    except ClipServeError as exc:
        return _failed(connection, index, item_id, error_type(exc), str(exc))
    except RequestValidationError as exc:
        return _failed(
            connection, index, item_id, "validation_error", validation_message(exc.errors())
        )
    except Exception:
        # A bug, not the client's fault: log it, answer this item, keep the stream.
        log.exception("stream item %d failed", index)
        return _failed(connection, index, item_id, "internal_error", "internal server error")


def _parse_message(text: str, index: int) -> tuple[Any, Any]:
    """``(id, input item)`` of a text frame; a malformed one raises a validation error."""
    where = f"message[{index}]"
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise _invalid(where, f"malformed JSON: {exc}") from exc
    if not isinstance(message, dict) or "input" not in message:
        raise _invalid(where, 'a message is {"id": ..., "input": ...} or {"end": true}')
    unknown = set(message) - {"id", "input"}
    if unknown:
        raise _invalid(where, f"unknown fields {sorted(unknown)}; fields are 'id' and 'input'")
    try:
        item = _INPUT.validate_python(message["input"])
    except ValidationError as exc:
        raise _invalid(f"{where}.input", validation_message(exc.errors())) from exc
    return message.get("id", index), item


def _invalid(where: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": (where,), "msg": message}])


def _failed(
    connection: _Connection, index: int, item_id: Any, kind: str, message: str
) -> dict[str, Any]:
    connection.errors += 1
    return {"index": index, "id": item_id, "error": {"type": kind, "message": message}}
