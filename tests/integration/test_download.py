"""The real download → export → cache path, against a Hugging Face–shaped server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clipserve.testing.hf_server import ServedRequest, serve_repos

REPO = "test-org/tiny-clip"


def _clipserve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipserve.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_download_export_then_offline_reuse(tiny_clip_dir: Path, tmp_path: Path) -> None:
    log: list[ServedRequest] = []
    base_env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "CLIPSERVE_CACHE_DIR": str(tmp_path / "clipserve"),
    }
    with serve_repos({REPO: tiny_clip_dir}, log=log) as url:
        online = {**base_env, "HF_ENDPOINT": url}
        first = _clipserve(["export", REPO], online)
        assert first.returncode == 0, first.stderr
        exported = json.loads(first.stdout)
        downloads = sorted(Path(r.path).name for r in log if r.is_download)
        # Config, preprocessing config and one weights format; nothing else is fetched.
        assert downloads == ["config.json", "model.safetensors", "preprocessor_config.json"]

        served_before = len(log)
        offline = {**online, "HF_HUB_OFFLINE": "1"}
        encoded = _clipserve(["encode", "a photo of a red circle", "--model", REPO], offline)
        assert encoded.returncode == 0, encoded.stderr
        assert len(log) == served_before  # offline: the cache answered, the server saw nothing

    directory = Path(exported["directory"])
    assert directory.is_relative_to(tmp_path / "clipserve")
    assert {"visual.onnx", "textual.onnx", "meta.json"} <= {p.name for p in directory.iterdir()}
    assert exported["parity"]["fp32"]["visual_cosine_vs_torch"] >= 0.99999
    document = json.loads(encoded.stdout)
    assert document["model"] == REPO and document["dim"] == exported["embed_dim"]
    assert len(document["data"][0]["embedding"]) == exported["embed_dim"]


def test_export_directory_serves_without_the_checkpoint(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "CLIPSERVE_CACHE_DIR": str(tmp_path / "clipserve")}
    exported = json.loads(_clipserve(["export", str(tiny_clip_dir)], env).stdout)
    # The export directory alone is a model: encode from it, no torch-side files needed.
    done = _clipserve(["encode", "a blue star", "--model", exported["directory"]], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dim"] == exported["embed_dim"]


def test_unknown_repo_is_a_clear_error(tmp_path: Path, tiny_clip_dir: Path) -> None:
    with serve_repos({REPO: tiny_clip_dir}) as url:
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": url}
        done = _clipserve(["export", "test-org/missing"], env)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: no model repository 'test-org/missing' on the hub"
