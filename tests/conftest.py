"""Shared fixtures: the test models (built once per machine, cached outside the repo) and
engines over them. Nothing here downloads anything."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipserve.engine import Engine
from clipserve.settings import Settings


def cache_root() -> Path:
    """Where built test models and their ONNX exports are kept between runs."""
    root = os.environ.get("CLIPSERVE_TEST_CACHE") or str(Path.home() / ".cache" / "clipserve-test")
    return Path(root)


@pytest.fixture(scope="session")
def clipserve_cache() -> Path:
    """``Settings.cache_dir`` for tests: exports of the test models are reused across runs."""
    return cache_root()


@pytest.fixture(scope="session")
def random_vit_dir() -> Path:
    """A random-initialised ViT-B/32 checkpoint in Hugging Face CLIPModel layout."""
    from clipserve.testing.models import ensure_random_vit_b32

    return ensure_random_vit_b32()


@pytest.fixture(scope="session")
def tiny_clip_dir() -> Path:
    """A tiny CLIP trained on synthetic shapes: ranking and search have a real signal."""
    from clipserve.testing.models import ensure_tiny_clip

    return ensure_tiny_clip()


def _engine(model_dir: Path, cache: Path, **overrides: object) -> Iterator[Engine]:
    settings = Settings(models=[str(model_dir)], cache_dir=cache, **overrides)  # type: ignore[arg-type]
    with Engine(settings) as engine:
        yield engine


@pytest.fixture(scope="session")
def random_engine(random_vit_dir: Path, clipserve_cache: Path) -> Iterator[Engine]:
    yield from _engine(random_vit_dir, clipserve_cache)


@pytest.fixture(scope="session")
def random_engine_int8(random_vit_dir: Path, clipserve_cache: Path) -> Iterator[Engine]:
    yield from _engine(random_vit_dir, clipserve_cache, precision="int8")


@pytest.fixture(scope="session")
def tiny_engine(tiny_clip_dir: Path, clipserve_cache: Path) -> Iterator[Engine]:
    yield from _engine(tiny_clip_dir, clipserve_cache)
