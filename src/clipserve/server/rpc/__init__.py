"""gRPC transport: the ``clipserve.v1.Clip`` service (``src/clipserve/v1/clip.proto``), plus the
standard health (``grpc.health.v1``) and reflection services.

Enabled by ``ServerSettings.grpc_port`` (``clipserve serve --grpc-port N``): the app's lifespan
starts it beside HTTP on the same event loop, sharing the engine, limits, API keys, URL rules
and metrics. Modules: :mod:`.server` (lifecycle), :mod:`.servicer` (the RPCs), :mod:`.stream`
(``EncodeStream``), :mod:`.calls` (auth, status, metrics per call), :mod:`.codes` (errors →
status codes), :mod:`.convert` (messages ↔ the HTTP parsers and formatters), :mod:`.auth`.
"""

from __future__ import annotations

from clipserve.server.rpc.server import SERVICE_NAME, GrpcServer, start_grpc_server

__all__ = ["SERVICE_NAME", "GrpcServer", "start_grpc_server"]
