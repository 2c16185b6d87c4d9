"""The native HTTP API's routers, one per resource; :data:`ROUTERS` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from clipserve.server.routes import (
    classify,
    encode,
    health,
    indexes,
    models,
    page,
    rank,
    stream,
)

ROUTERS: tuple[APIRouter, ...] = (
    encode.router,
    rank.router,
    classify.router,
    models.router,
    health.router,
    stream.router,
    indexes.router,
    page.router,
)

__all__ = ["ROUTERS"]
