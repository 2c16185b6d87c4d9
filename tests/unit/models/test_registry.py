"""Model names: registry lookups, repo ids, local directories and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipserve.errors import ModelNotFoundError
from clipserve.models import registry


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("ViT-B-32::openai", "openai/clip-vit-base-patch32"),
        ("ViT-B/32::openai", "openai/clip-vit-base-patch32"),
        ("vit-l-14-336::OpenAI", "openai/clip-vit-large-patch14-336"),
        ("ViT-B-32::laion2b-s34b-b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        ("ViT-H-14::laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ],
)
def test_registry_names_resolve_to_repos(name: str, repo: str) -> None:
    spec = registry.lookup(name)
    assert spec is not None and spec.repo_id == repo


def test_default_model_is_first_and_dimensions_are_known() -> None:
    specs = registry.known_models()
    assert specs[0].name == "ViT-B-32::openai"
    dims = {spec.name: spec.embed_dim for spec in specs}
    assert dims["ViT-L-14::openai"] == 768 and dims["ViT-H-14::laion2b_s32b_b79k"] == 1024
    assert {spec.image_size for spec in specs} == {224, 336}


def test_unknown_name_lists_what_is_known() -> None:
    with pytest.raises(ModelNotFoundError, match="ViT-B-32::openai"):
        registry.resolve("ViT-Z-99::nothing")


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    resolved = registry.resolve(str(tmp_path))
    assert resolved.directory == tmp_path.resolve() and resolved.source == "local"


def test_offline_without_cache_is_a_one_line_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "CLIPSERVE_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "clipserve.cli", "export", "ViT-B-32::openai"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "HF_HUB_OFFLINE" in lines[0] and "clipserve export" in lines[0]


def test_models_command_lists_dimensions_and_cache_state(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "clipserve.cli", "models", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    rows = json.loads(done.stdout)
    assert rows[0] == {
        "name": "ViT-B-32::openai",
        "repo": "openai/clip-vit-base-patch32",
        "dim": 512,
        "image_size": 224,
        "cached": False,
    }
