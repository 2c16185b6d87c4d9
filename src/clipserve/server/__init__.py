"""The HTTP server: ``create_app(settings)`` builds the FastAPI app, ``clipserve serve`` runs it.

Needs the ``server`` extra (``pip install 'clipserve[server]'``). Importing this package stays
light — FastAPI is imported only when :func:`create_app` is first used — so the command line
works without the extra.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from clipserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from clipserve.server.app import create_app

__all__ = ["ServerSettings", "create_app", "require_server_extra"]


def require_server_extra() -> None:
    """Raise an ImportError naming the extra to install when the server's packages are missing."""
    for module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client", "httpx"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"the clipserve server needs the 'server' extra ({module} is missing): "
                "pip install 'clipserve[server]'"
            )


def __getattr__(name: str) -> Any:
    if name == "create_app":
        require_server_extra()
        from clipserve.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
