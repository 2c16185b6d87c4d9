"""Fixtures for the input-fuzzing tests: one live server (tiny model, every compat router,
an index to search) and an index on disk for the filter properties.

The live-server helpers of ``tests/integration/server`` are reused, not copied: that
directory goes on ``sys.path`` as pytest puts it there for its own tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "server"))

from fuzztools import INDEX, METADATA
from servertools import LiveServer, live_server

from clipserve.index import Catalog, Index, NewItem
from clipserve.server.settings import ServerSettings


@pytest.fixture(scope="session")
def fuzz_server(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The real server on loopback: tiny model, all compat routers, URL fetching off, and
    an index named :data:`INDEX` with a few texts."""
    settings = ServerSettings(
        models=[str(tiny_clip_dir)],
        cache_dir=clipserve_cache,
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
    )
    with live_server(settings) as running, running.client() as http:
        _fill_index(http)
        yield running


@pytest.fixture(scope="module")
def http(fuzz_server: LiveServer) -> Iterator[httpx.Client]:
    """A keep-alive client of :func:`fuzz_server`."""
    with fuzz_server.client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def disk_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    """A real index (SQLite store + FAISS) of dimension 4 holding :data:`METADATA`."""
    catalog = Catalog(tmp_path_factory.mktemp("filters"))
    index = catalog.create("filters", model="none", dim=4)
    vectors = np.eye(4, dtype=np.float32)
    index.upsert(
        [
            NewItem(f"item-{i}", "image" if i % 2 else "text", metadata, vectors[i])
            for i, metadata in enumerate(METADATA)
        ]
    )
    yield index
    catalog.close()


def _fill_index(http: httpx.Client) -> None:
    created = http.post("/v1/indexes", json={"name": INDEX})
    assert created.status_code == 201, created.text
    items = [
        {"id": f"item-{i}", "input": {"text": f"text number {i}"}, "metadata": metadata}
        for i, metadata in enumerate(METADATA)
    ]
    added = http.post(f"/v1/indexes/{INDEX}/items", json={"items": items})
    assert added.status_code == 200, added.text
