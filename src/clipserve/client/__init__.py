"""The Python client of a clipserve server: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), over HTTP (``http://``, ``https://``) or gRPC (``grpc://``,
``grpcs://``).

Needs the ``client`` extra: ``pip install 'clipserve[client]'``.

Example::

    from pathlib import Path
    from clipserve import Client

    with Client("http://127.0.0.1:8000") as client:
        vectors = client.encode(["a photo of a cat", Path("cat.jpg")])  # float32 [2, dim]
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401 - only to fail early, naming the extra
    import tqdm  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"the clipserve client needs the 'client' extra ({exc.name} is missing): "
        "pip install 'clipserve[client]'"
    ) from exc

from clipserve.client.aio import AsyncClient
from clipserve.client.errors import AuthenticationError, ServerError, ServiceUnavailableError
from clipserve.client.inputs import Item
from clipserve.client.results import (
    Classification,
    Health,
    LabelScore,
    ModelInfo,
    RankResult,
    RankScore,
)
from clipserve.client.retry import Retry
from clipserve.client.sync import Client

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Classification",
    "Client",
    "Health",
    "Item",
    "LabelScore",
    "ModelInfo",
    "RankResult",
    "RankScore",
    "Retry",
    "ServerError",
    "ServiceUnavailableError",
]
