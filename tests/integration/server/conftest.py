"""Fixtures for the server tests: the real server on loopback (uvicorn in a background thread),
driven with httpx over TCP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servertools import LiveServer, live_server, png

from clipserve.server.settings import ServerSettings
from clipserve.testing.synthetic import make_dataset


@pytest.fixture(scope="session")
def make_settings(tiny_clip_dir: Path, clipserve_cache: Path) -> Any:
    """``make_settings(**overrides)``: server settings for the tiny test model."""

    def make(**overrides: Any) -> ServerSettings:
        base: dict[str, Any] = {"models": [str(tiny_clip_dir)], "cache_dir": clipserve_cache}
        return ServerSettings(**{**base, **overrides})

    return make


@pytest.fixture(scope="session")
def server(make_settings: Any) -> Iterator[LiveServer]:
    """One server with default settings, shared by the tests that need nothing special."""
    with live_server(make_settings()) as running:
        yield running


@pytest.fixture(scope="session")
def grpc_server(make_settings: Any) -> Iterator[LiveServer]:
    """A server with gRPC on a free port beside HTTP, default settings otherwise."""
    with live_server(make_settings(grpc_port=0)) as running:
        yield running


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture(scope="session")
def shape_pngs() -> list[bytes]:
    """Eight small synthetic PNGs (coloured shapes the tiny model knows)."""
    return [png(item.image) for item in make_dataset(8, seed=11)]
