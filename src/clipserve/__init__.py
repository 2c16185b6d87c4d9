"""clipserve: CLIP embeddings as a library, a server, a batch job and a search index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipserve.errors import ClipServeError
from clipserve.settings import Settings

if TYPE_CHECKING:
    from clipserve.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "ClipServeError", "Settings"]
__version__ = "0.1.0"

# The client needs the 'client' extra (httpx, tqdm, grpcio): imported on first use only, so
# `import clipserve` works without it.
_LAZY = {"Client": "clipserve.client", "AsyncClient": "clipserve.client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipserve' has no attribute {name!r}")
