"""The transport interface and the choice of transport by URL scheme."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from clipserve.client.inputs import Payload
from clipserve.client.results import Classification, EncodeReply, Health, ModelInfo, RankResult

HTTP_SCHEMES = ("http", "https")
GRPC_SCHEMES = ("grpc", "grpcs")


class Transport(Protocol):
    """One connection to a server: every call is a single request, raising clipserve errors.

    Retries, batching and ordering are the client's job, the same for every transport.
    """

    name: str

    async def encode(
        self, payloads: Sequence[Payload], *, model: str | None, normalize: bool
    ) -> EncodeReply: ...

    async def rank(
        self, query: Payload, candidates: Sequence[Payload], *, model: str | None
    ) -> RankResult: ...

    async def classify(
        self,
        images: Sequence[Payload],
        labels: Sequence[str],
        templates: Sequence[str] | None,
        *,
        model: str | None,
    ) -> list[Classification]: ...

    async def models(self) -> list[ModelInfo]: ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...


def open_transport(url: str, *, api_key: str | None, timeout: float, connections: int) -> Transport:
    """The transport for ``url``: ``http(s)://`` over httpx, ``grpc(s)://`` over grpc.aio.

    Must be called with the event loop running that will use the transport.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in HTTP_SCHEMES:
        from clipserve.client.http_transport import HttpTransport

        return HttpTransport(url, api_key=api_key, timeout=timeout, connections=connections)
    if scheme in GRPC_SCHEMES:
        try:
            from clipserve.client.grpc_transport import GrpcTransport
        except ImportError as exc:
            raise ImportError("grpc:// URLs need grpcio: pip install 'clipserve[client]'") from exc
        return GrpcTransport(url, api_key=api_key, timeout=timeout)
    raise ValueError(
        f"unsupported URL {url!r}: use http://, https://, grpc:// or grpcs:// (host:port)"
    )
