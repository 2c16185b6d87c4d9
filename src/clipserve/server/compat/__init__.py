"""Compatibility routers: other systems' HTTP APIs, mounted at their original paths.

Each module translates one system's requests and responses into engine calls (see
``docs/compat.md`` for the shapes and their sources). ``CLIPSERVE_COMPAT`` picks which are
mounted: a comma-separated list of :data:`~clipserve.server.settings.COMPAT_NAMES`, ``all``
(the default) or ``none``.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter

from clipserve.server.settings import COMPAT_NAMES, ServerSettings

from . import bentoml, clip_as_service, clip_retrieval, immich, openai, photofield

#: The router of each compat name.
ROUTERS: Mapping[str, APIRouter] = {
    "bentoml": bentoml.router,
    "clip_as_service": clip_as_service.router,
    "photofield": photofield.router,
    "immich": immich.router,
    "openai": openai.router,
    "clip_retrieval": clip_retrieval.router,
}
assert tuple(ROUTERS) == COMPAT_NAMES, "compat routers and setting names disagree"


def enabled_routers(settings: ServerSettings) -> list[APIRouter]:
    """The routers ``settings.compat`` enables, in a fixed order.

    Example::

        for router in enabled_routers(ServerSettings(compat=["openai"])):
            app.include_router(router)
    """
    return [router for name, router in ROUTERS.items() if name in settings.compat]


__all__ = ["ROUTERS", "enabled_routers"]
