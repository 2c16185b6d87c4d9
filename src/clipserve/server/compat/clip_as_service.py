"""clip-as-service over HTTP: ``POST /post`` with Jina's request envelope.

``clip_client.Client("http://host:port")`` hands its documents to Jina's HTTP client, which
posts ``{"header": {...}, "parameters": {...}, "exec_endpoint": "/encode", "data": [docs]}``
to ``/post`` (``jina/clients/base/helper.py``: ``HTTPClientlet.send_message``; the README's
curl examples spell it ``execEndpoint``). Documents are docarray's JSON form
(``docarray/document/pydantic_model.py``): ``text``, ``blob`` (base64 bytes), ``uri``,
``tags``, ``matches`` ... The answer is the same envelope, whose ``data`` the client reads back
with ``DocumentArray.from_dict`` and the rest as a ``DataRequest``; so only the fields of
Jina's request proto appear there.

* any endpoint but ``/rank`` encodes (as the executor's default ``@requests`` handler does);
  ``/encode/<model>`` picks a served model. Each document comes back as sent plus
  ``embedding`` (unnormalised, as the executor's model returns it).
* ``/rank`` (or ``/rank/<model>``): every document is a query and its ``matches`` the
  candidates; the matches come back sorted by ``scores.clip_score.value`` (softmax of
  ``logit_scale · cosine``) with ``scores.clip_score_cosine.value`` (the cosine).

A document's image is its ``blob``, else its ``uri`` (a data URI, or an http(s) URL fetched
under the server's URL rules — never a local path); else its ``text``. Errors keep the
envelope, with ``header.status`` holding the message, and a 4xx status.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipserve.engine import Engine, RankResult
from clipserve.server.auth import RequireKey
from clipserve.server.inputs import resolve, served_model
from clipserve.server.schemas import EXAMPLE_PNG_B64, InputObject
from clipserve.server.state import EngineDep, ServerState, StateDep

from .common import check_total, image_reference
from .errors import CompatError, CompatInputError, error_docs, error_route

#: jina's ``StatusProto.ERROR``.
_STATUS_ERROR = 1
_EXECUTOR = "clip_t"
_HEADER_FIELDS = ("request_id", "target_executor", "timeout")
#: Deepest nesting of a request's documents, parameters or header (they are sent back).
MAX_DEPTH = 64


class JinaException(BaseModel):
    """The exception of a failed Jina request."""

    name: str
    args: list[str]


class JinaStatus(BaseModel):
    """Jina's ``StatusProto`` of a failed request."""

    code: int
    description: str
    exception: JinaException


class JinaErrorHeader(BaseModel):
    """The header of a failed Jina request."""

    status: JinaStatus


class JinaErrorBody(BaseModel):
    """Jina's envelope of a failed request: its status, no documents."""

    header: JinaErrorHeader
    data: None


def render_error(error: CompatError) -> JSONResponse:
    """Jina's envelope with an error status (its HTTP client raises on the 4xx)."""
    status = {
        "code": _STATUS_ERROR,
        "description": error.message,
        "exception": {"name": error.kind, "args": [error.message]},
    }
    return JSONResponse({"header": {"status": status}, "data": None}, error.status)


router = APIRouter(
    tags=["compat: clip-as-service"],
    dependencies=[RequireKey],
    route_class=error_route(render_error),
)

Doc = dict[str, Any]


class JinaRequest(BaseModel):
    """Jina's HTTP request envelope (fields the gateway reads; others are ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    data: list[Doc] | dict[str, list[Doc]] = Field(description="Documents (or {'docs': [...]}).")
    exec_endpoint: str | None = Field(None, alias="execEndpoint")
    header: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _sendable_back(self) -> JinaRequest:
        # Documents, parameters and the header come back in the answer, which must be JSON:
        # refuse NaN and ±Infinity (Python's json reads and writes them) and deep nesting.
        for name in ("data", "header", "parameters"):
            _check_echoable(getattr(self, name), name)
        return self

    def docs(self) -> list[Doc]:
        """The documents, whichever way they were wrapped."""
        return self.data.get("docs", []) if isinstance(self.data, dict) else self.data

    def endpoint(self) -> str:
        """The executor endpoint: the body's, else the header's, else ``/``."""
        return self.exec_endpoint or str(self.header.get("exec_endpoint") or "/")


_EXAMPLES = {
    "encode": {
        "summary": "Encode a text and an image",
        "value": {
            "data": [{"text": "a photo of a cat"}, {"blob": EXAMPLE_PNG_B64}],
            "execEndpoint": "/",
        },
    },
    "rank": {
        "summary": "Rank texts against an image",
        "value": {
            "data": [
                {
                    "blob": EXAMPLE_PNG_B64,
                    "matches": [{"text": "a red square"}, {"text": "a blue circle"}],
                }
            ],
            "execEndpoint": "/rank",
        },
    },
}
_RESPONSES: dict[int | str, Any] = {
    200: {
        "content": {
            "application/json": {
                "example": {
                    "header": {"request_id": "9f1c...", "exec_endpoint": "/"},
                    "parameters": {},
                    "routes": [{"executor": "gateway"}, {"executor": _EXECUTOR}],
                    "data": [{"text": "a photo of a cat", "embedding": [0.12, -0.34]}],
                }
            }
        }
    },
    **error_docs(
        render_error,
        JinaErrorBody,
        examples={400: "data[0]: the document has no text, blob or uri"},
    ),
}


@router.post(
    "/post",
    summary="clip-as-service: encode or rank (Jina HTTP)",
    responses=_RESPONSES,
    openapi_extra={"requestBody": {"content": {"application/json": {"examples": _EXAMPLES}}}},
)
async def post(body: JinaRequest, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Encode documents, or rank each document's matches (``execEndpoint: "/rank"``)."""
    started = _now()
    endpoint = body.endpoint()
    docs = body.docs()
    if not docs:
        raise CompatInputError("data: no documents", param="data")
    if endpoint == "/rank" or endpoint.startswith("/rank/"):
        model = served_model(state, endpoint.removeprefix("/rank").lstrip("/") or None)
        data = await _rank(docs, model, engine, state)
    else:
        name = endpoint.removeprefix("/encode/") if endpoint.startswith("/encode/") else None
        model = served_model(state, name)
        data = await _encode(docs, model, engine, state)
    # Only HeaderProto's fields: the client parses the answer's header as that proto.
    header = {key: value for key, value in body.header.items() if key in _HEADER_FIELDS}
    header["exec_endpoint"] = endpoint
    header.setdefault("request_id", uuid.uuid4().hex)
    route = {"start_time": started, "end_time": _now()}
    return JSONResponse(
        {
            "header": header,
            "parameters": body.parameters or {},
            "routes": [{"executor": "gateway", **route}, {"executor": _EXECUTOR, **route}],
            "data": data,
        }
    )


async def _encode(docs: list[Doc], model: str, engine: Engine, state: ServerState) -> list[Doc]:
    raw = [_content(doc, f"data[{index}]") for index, doc in enumerate(docs)]
    items = await resolve(raw, "data", state)
    vectors = await engine.aencode(items, model=model, normalize=False)
    return [{**doc, "embedding": row} for doc, row in zip(docs, vectors.tolist(), strict=True)]


async def _rank(docs: list[Doc], model: str, engine: Engine, state: ServerState) -> list[Doc]:
    check_total(sum(1 + _match_count(doc) for doc in docs), "queries and matches", state)
    jobs = []
    for index, doc in enumerate(docs):
        matches = doc.get("matches")
        if not isinstance(matches, list) or not matches:
            raise CompatInputError(f"data[{index}]: /rank needs documents with matches")
        where = f"data[{index}]"
        query = await resolve([_content(doc, where)], where, state)
        candidates = [_match(match, f"{where}.matches[{k}]") for k, match in enumerate(matches)]
        resolved = await resolve(candidates, f"{where}.matches", state)
        jobs.append(engine.arank(query[0], resolved, model=model))
    results = await asyncio.gather(*jobs)
    return [_ranked(doc, result) for doc, result in zip(docs, results, strict=True)]


def _match_count(doc: Doc) -> int:
    # Counted before the documents are checked: anything but a list counts as none here,
    # and is refused with a message below.
    matches = doc.get("matches")
    return len(matches) if isinstance(matches, list) else 0


def _ranked(doc: Doc, result: RankResult) -> Doc:
    matches = doc["matches"]
    ranked = []
    for index in result.order():
        scores = {
            **(matches[index].get("scores") or {}),
            "clip_score": {"value": float(result.probabilities[index]), "op_name": "softmax"},
            "clip_score_cosine": {"value": float(result.cosines[index]), "op_name": "cosine"},
        }
        ranked.append({**matches[index], "scores": scores})
    return {**doc, "matches": ranked}


def _match(match: Any, where: str) -> InputObject:
    content = _content(match, where)
    scores = match.get("scores")
    if scores is not None and not isinstance(scores, dict):
        # The answer adds clip_score to the match's own named scores.
        raise CompatInputError(f"{where}.scores: must be an object of named scores", param="data")
    return content


def _check_echoable(value: Any, where: str) -> None:
    """``ValueError`` naming the first place in ``value`` that JSON cannot carry back:
    a NaN or infinite number, or nesting deeper than :data:`MAX_DEPTH`."""
    pending: list[tuple[Any, str, int]] = [(value, where, 0)]
    while pending:  # iterative: the nesting is what is being checked
        item, at, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{at}: {item} is not a JSON number")
        if depth > MAX_DEPTH:
            raise ValueError(f"{at}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            pending.extend((child, f"{at}.{key}", depth + 1) for key, child in item.items())
        elif isinstance(item, list):
            pending.extend((child, f"{at}[{i}]", depth + 1) for i, child in enumerate(item))


def _content(doc: Any, where: str) -> InputObject:
    if not isinstance(doc, dict):
        raise CompatInputError(f"{where}: a document must be a JSON object", param="data")
    blob, uri, text = doc.get("blob"), doc.get("uri"), doc.get("text")
    if isinstance(blob, str) and blob:
        return InputObject(image=blob)
    if isinstance(uri, str) and uri:
        return image_reference(uri, f"{where}.uri")
    if isinstance(text, str):
        return InputObject(text=text)
    if doc.get("tensor") is not None:
        raise CompatInputError(f"{where}: tensor inputs are not supported; send blob or uri")
    raise CompatInputError(f"{where}: the document has no text, blob or uri", param="data")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
