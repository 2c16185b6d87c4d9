"""The gRPC transport: ``clipserve.v1.Clip`` unary calls over one ``grpc.aio`` channel."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
import numpy as np

from clipserve.client.errors import ServerError, grpc_error
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
from clipserve.errors import ClipServeError
from clipserve.v1 import clip_pb2, clip_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")

DEFAULT_PORTS = {"grpc": 50051, "grpcs": 443}
# gRPC's default 4 MiB receive cap is below a batch of a few photos; the server has its own.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = 1


class GrpcTransport:
    """Calls to ``grpc://host:port`` (plaintext) or ``grpcs://host:port`` (TLS)."""

    name = "grpc"

    def __init__(self, url: str, *, api_key: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}: use grpc://host:port")
        port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        target = f"{parts.hostname}:{port}"
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            # The channel reconnects on its own schedule (by default backing off to 2 min);
            # keep it close to the client's retry pace so a restarted server is found soon.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if parts.scheme.lower() == "grpcs":
            credentials = grpc.ssl_channel_credentials()
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = clip_pb2_grpc.ClipStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self._timeout = timeout

    async def encode(
        self, payloads: Sequence[Payload], *, model: str | None, normalize: bool
    ) -> EncodeReply:
        """One ``Encode`` call; vectors arrive as packed little-endian float32."""
        request = clip_pb2.EncodeRequest(
            inputs=[_input(payload) for payload in payloads],
            model=model or "",
            normalize=normalize,
        )
        response, timing = await self._call(self._stub.Encode, request)
        embeddings = sorted(response.embeddings, key=lambda embedding: embedding.index)
        if [embedding.index for embedding in embeddings] != list(range(len(payloads))):
            raise ServerError(f"Encode answered {len(embeddings)} rows for {len(payloads)} inputs")
        vectors = np.frombuffer(b"".join(e.vector for e in embeddings), "<f4")
        return EncodeReply(response.model, vectors.reshape(len(embeddings), response.dim), timing)

    async def rank(
        self, query: Payload, candidates: Sequence[Payload], *, model: str | None
    ) -> RankResult:
        """One ``Rank`` call."""
        request = clip_pb2.RankRequest(
            query=_input(query),
            candidates=[_input(payload) for payload in candidates],
            model=model or "",
        )
        response, _ = await self._call(self._stub.Rank, request)
        scores = tuple(RankScore(s.index, s.probability, s.cosine) for s in response.results)
        return RankResult(response.model, scores)

    async def classify(
        self,
        images: Sequence[Payload],
        labels: Sequence[str],
        templates: Sequence[str] | None,
        *,
        model: str | None,
    ) -> list[Classification]:
        """One ``Classify`` call."""
        request = clip_pb2.ClassifyRequest(
            images=[_input(payload) for payload in images],
            labels=list(labels),
            templates=list(templates or ()),
            model=model or "",
        )
        response, _ = await self._call(self._stub.Classify, request)
        return [
            Classification(
                index=result.index,
                label=result.label,
                scores=tuple(LabelScore(s.label, s.probability, s.cosine) for s in result.scores),
            )
            for result in response.results
        ]

    async def models(self) -> list[ModelInfo]:
        """One ``ListModels`` call."""
        response, _ = await self._call(self._stub.ListModels, clip_pb2.ListModelsRequest())
        return [
            ModelInfo(
                name=info.name,
                dim=info.dim,
                image_size=info.image_size,
                context_length=info.context_length,
                precision=info.precision,
                logit_scale=info.logit_scale,
                default=info.default,
            )
            for info in response.models
        ]

    async def health(self) -> Health:
        """The standard ``grpc.health.v1`` check (overall server), then the model names.

        Spoken without the ``grpcio-health-checking`` package: an empty request, and a
        response whose field 1 (a varint) is the serving status.
        """
        check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=_empty, response_deserializer=_serving_status
        )
        try:
            status = await check(b"", metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise _rpc_error(exc) from exc
            status = _SERVING  # no health service: answering ListModels below is the test
        if status != _SERVING:
            return Health(status="not_serving", ready=False)
        names = tuple(info.name for info in await self.models())
        return Health(status="ready", ready=True, models=names)

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> tuple[Resp, dict[str, float]]:
        call = method(request, metadata=self._metadata, timeout=self._timeout)
        try:
            response = await call
            metadata = [*(await call.initial_metadata() or ()), *(await call.trailing_metadata())]
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc) from exc
        # The proto has no timing fields; a server may still send "server-timing" metadata.
        return response, parse_server_timing(_metadata_value(metadata, "server-timing"))


def _input(payload: Payload) -> clip_pb2.Input:
    if payload.kind == "image":
        return clip_pb2.Input(image=payload.data)
    if payload.kind == "url":
        return clip_pb2.Input(url=payload.text)
    return clip_pb2.Input(text=payload.text)


def _rpc_error(exc: grpc.aio.AioRpcError) -> ClipServeError:
    retry_after = _metadata_value(exc.trailing_metadata() or (), "retry-after")
    return grpc_error(exc.code().name, exc.details() or "", retry_after)


def _metadata_value(metadata: Iterable[tuple[str, Any]], key: str) -> str | None:
    for name, value in metadata:
        if name.lower() == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _empty(_: bytes) -> bytes:
    return b""


def _serving_status(data: bytes) -> int:
    # HealthCheckResponse { ServingStatus status = 1; }: tag 0x08, then a small varint.
    return data[1] if len(data) >= 2 and data[0] == 0x08 else 0
