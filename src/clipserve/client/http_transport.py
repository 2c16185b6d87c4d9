"""The HTTP transport: the native ``/v1`` API through one pooled ``httpx.AsyncClient``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

import clipserve
from clipserve.client.errors import ServerError, ServiceUnavailableError, http_error
from clipserve.client.inputs import Payload
from clipserve.client.results import (
    Classification,
    EncodeReply,
    Health,
    LabelScore,
    ModelInfo,
    RankResult,
    RankScore,
    parse_server_timing,
)
from clipserve.errors import ClipServeError, RequestTimeoutError

# Failures where the request may never have reached the server, or its answer never came
# back: safe to send again (every clipserve call is idempotent). A read timeout is not among
# them: the server is working on it, and sending it again would only add to its load.
_RETRYABLE = (
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


class HttpTransport:
    """Requests to ``url`` (``http://host:port``, optionally with a path prefix)."""

    name = "http"

    def __init__(self, url: str, *, api_key: str | None, timeout: float, connections: int) -> None:
        headers = {"User-Agent": f"clipserve-client/{clipserve.__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def encode(
        self, payloads: Sequence[Payload], *, model: str | None, normalize: bool
    ) -> EncodeReply:
        """One ``POST /v1/encode``; embeddings come back as base64 float32, not float lists."""
        body: dict[str, Any] = {
            "inputs": [_json_input(payload) for payload in payloads],
            "normalize": normalize,
            "encoding": "base64",
        }
        if model is not None:
            body["model"] = model
        response = await self._request("POST", "/v1/encode", json=body)
        document = _json(response)
        try:
            rows = [base64.b64decode(row["embedding"]) for row in document["data"]]
            vectors = np.frombuffer(b"".join(rows), "<f4").reshape(len(rows), document["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError(f"unexpected /v1/encode answer: {exc}") from exc
        timing = parse_server_timing(response.headers.get("server-timing"))
        return EncodeReply(document["model"], vectors.astype(np.float32), timing)

    async def rank(
        self, query: Payload, candidates: Sequence[Payload], *, model: str | None
    ) -> RankResult:
        """One ``POST /v1/rank``."""
        body: dict[str, Any] = {
            "query": _json_input(query),
            "candidates": [_json_input(payload) for payload in candidates],
        }
        if model is not None:
            body["model"] = model
        document = _json(await self._request("POST", "/v1/rank", json=body))
        scores = tuple(RankScore(**score) for score in document["results"])
        return RankResult(document["model"], scores)

    async def classify(
        self,
        images: Sequence[Payload],
        labels: Sequence[str],
        templates: Sequence[str] | None,
        *,
        model: str | None,
    ) -> list[Classification]:
        """One ``POST /v1/classify``."""
        body: dict[str, Any] = {
            "images": [_json_input(payload) for payload in images],
            "labels": list(labels),
        }
        if templates is not None:
            body["templates"] = list(templates)
        if model is not None:
            body["model"] = model
        document = _json(await self._request("POST", "/v1/classify", json=body))
        return [
            Classification(
                index=result["index"],
                label=result["label"],
                scores=tuple(LabelScore(**score) for score in result["scores"]),
            )
            for result in document["results"]
        ]

    async def models(self) -> list[ModelInfo]:
        """``GET /v1/models``."""
        document = _json(await self._request("GET", "/v1/models"))
        return [ModelInfo(**info) for info in document["data"]]

    async def health(self) -> Health:
        """``GET /readyz``: a 503 is an answer here (loading, failed), not an error."""
        try:
            response = await self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc
        if response.status_code not in (200, 503):
            raise _status_error(response)
        document = _json(response)
        return Health(
            status=document.get("status", "unknown"),
            ready=response.status_code == 200,
            models=tuple(document.get("models", ())),
            error=document.get("error"),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc
        if response.is_success:
            return response
        raise _status_error(response)


def _json_input(payload: Payload) -> dict[str, str]:
    # Objects, not bare strings: the server must not reinterpret a text as a URL or a URI.
    if payload.kind == "image":
        return {"image": base64.b64encode(payload.data).decode("ascii")}
    return {payload.kind: payload.text}


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(
            f"HTTP {response.status_code}: the answer is not JSON ({response.text[:200]!r})"
        ) from exc


def _status_error(response: httpx.Response) -> ClipServeError:
    try:
        detail = response.json()["error"]
        kind, message = str(detail["type"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = None, response.text[:500] or response.reason_phrase
    return http_error(response.status_code, kind, message, response.headers.get("retry-after"))


def _transport_error(exc: httpx.TransportError) -> ClipServeError:
    where = exc.request.url if _has_request(exc) else "the server"
    if isinstance(exc, _RETRYABLE):
        return ServiceUnavailableError(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeoutError(f"{where}: no answer in time ({type(exc).__name__})")
    return ServerError(f"{where}: {type(exc).__name__}: {exc}")


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018 - httpx raises RuntimeError when the request is not set
    except RuntimeError:
        return False
    return True
