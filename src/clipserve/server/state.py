"""What one running app holds: its settings, the engine once loaded, metrics, the URL fetcher.

Kept on ``app.state.clipserve`` (never a module global) and handed to routes as dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from clipserve.engine import Engine
from clipserve.index.collection import Catalog
from clipserve.server.errors import NotReadyError
from clipserve.server.metrics import Metrics
from clipserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from clipserve.server.fetch import UrlFetcher


@dataclass
class ServerState:
    """Per-app state; ``engine`` is set by the lifespan, ``ready`` once the models are warm."""

    settings: ServerSettings
    metrics: Metrics = field(default_factory=lambda: Metrics())
    engine: Engine | None = None
    ready: bool = False
    load_error: str | None = None
    fetcher: UrlFetcher | None = None
    catalog: Catalog | None = None
    #: The port the gRPC server listens on, once started (``grpc_port=0`` picks a free one).
    grpc_port: int | None = None
    #: Called (on the event loop) when loading the models fails; ``clipserve serve`` stops
    #: the server then. Unset, the app keeps serving and reports the failure on /healthz.
    on_load_failure: Callable[[], None] | None = None

    def index_catalog(self) -> Catalog:
        """The indexes under ``settings.data_dir/indexes`` (opened on first use)."""
        if self.catalog is None:
            self.catalog = Catalog(self.settings.data_dir / "indexes")
        return self.catalog

    def ready_engine(self) -> Engine:
        """The engine, or ``NotReadyError`` (503) while models are loading or warming up."""
        if self.load_error is not None:
            raise NotReadyError(f"the models failed to load: {self.load_error}")
        if not self.ready or self.engine is None:
            raise NotReadyError("the models are still loading; retry shortly")
        return self.engine


def get_state(request: Request) -> ServerState:
    """Dependency: the app's :class:`ServerState`."""
    state: ServerState = request.app.state.clipserve
    return state


def get_engine(request: Request) -> Engine:
    """Dependency: the loaded and warmed engine (503 until then)."""
    return get_state(request).ready_engine()


StateDep = Annotated[ServerState, Depends(get_state)]
EngineDep = Annotated[Engine, Depends(get_engine)]
