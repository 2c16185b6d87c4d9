"""The gRPC server next to the HTTP one: ``clipserve.v1.Clip``, health and reflection.

It runs on the HTTP server's event loop (started and stopped by the app's lifespan), so both
transports share one engine and its batchers: a gRPC call and an HTTP request can land in the
same model batch.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

from clipserve.server.rpc.servicer import ClipService
from clipserve.server.state import ServerState
from clipserve.v1 import clip_pb2, clip_pb2_grpc

log = logging.getLogger("clipserve.server.grpc")

#: The full name of the service, as health checks and reflection know it.
SERVICE_NAME: str = clip_pb2.DESCRIPTOR.services_by_name["Clip"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# grpc_compression_level (grpc/compression.h): NONE 0, LOW 1, MED 2, HIGH 3; LOW picks gzip.
_COMPRESSION_LEVEL_LOW = 1


class GrpcServer:
    """A started ``grpc.aio`` server serving ``state``; see :func:`start_grpc_server`."""

    def __init__(self, server: grpc.aio.Server, health: Any, port: int) -> None:
        self._server = server
        self._health = health
        self.port = port

    async def update_health(self, state: ServerState) -> None:
        """SERVING once the models are loaded and warm (as ``/readyz``), NOT_SERVING until then."""
        status = _SERVING if state.ready and state.load_error is None else _NOT_SERVING
        for service in (health.OVERALL_HEALTH, SERVICE_NAME):
            await self._health.set(service, status)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, give calls in flight ``grace`` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        log.info("gRPC server stopped")


async def start_grpc_server(state: ServerState) -> GrpcServer:
    """Start serving gRPC on ``settings.host:settings.grpc_port`` (TLS when configured).

    The bound port (useful with ``grpc_port=0``) is set on ``state.grpc_port``. Health reports
    NOT_SERVING until :meth:`GrpcServer.update_health` sees the models ready.

    Example::

        grpc_server = await start_grpc_server(state)
        ...
        await grpc_server.stop(grace=30)
    """
    settings = state.settings
    server = grpc.aio.server(options=_options(state))
    clip_pb2_grpc.add_ClipServicer_to_server(ClipService(state), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = _address(settings.host, settings.grpc_port or 0)
    port = _bind(server, address, state)
    grpc_server = GrpcServer(server, health_servicer, port)
    await grpc_server.update_health(state)
    await server.start()
    state.grpc_port = port
    scheme = "grpcs" if settings.tls_cert is not None else "grpc"
    log.info("gRPC listening on %s://%s", scheme, _address(settings.host, port))
    return grpc_server


def _options(state: ServerState) -> list[tuple[str, Any]]:
    settings = state.settings
    return [
        # The HTTP body limit is the gRPC message limit: one request, one bound.
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        # Without this, a second server could bind the same port and share its calls.
        ("grpc.so_reuseport", 0),
        # A compression *level* (unlike a fixed algorithm) is negotiated per call: responses
        # are gzip-compressed only for clients whose grpc-accept-encoding lists gzip.
        ("grpc.default_compression_level", _COMPRESSION_LEVEL_LOW),
    ]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(server: grpc.aio.Server, address: str, state: ServerState) -> int:
    settings = state.settings
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if not port:  # older grpcio reports a failed bind as port 0
        raise OSError(f"gRPC cannot listen on {address}")
    return port
