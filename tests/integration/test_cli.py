"""`clipserve encode` as a user runs it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipserve.engine import Engine
from clipserve.testing.synthetic import make_dataset


@pytest.fixture(scope="module")
def env(clipserve_cache: Path) -> dict[str, str]:
    return {**os.environ, "CLIPSERVE_CACHE_DIR": str(clipserve_cache)}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "clipserve.cli", *args], env=env, capture_output=True, timeout=300
    )


def test_encode_json_mixes_texts_and_image_files(
    tiny_clip_dir: Path, tiny_engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    image = tmp_path / "shape.png"
    make_dataset(1, seed=4)[0].image.save(image)
    done = _run(["encode", "a photo of a red circle", str(image), "-m", str(tiny_clip_dir)], env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [row["modality"] for row in document["data"]] == ["text", "image"]
    got = np.array([row["embedding"] for row in document["data"]], np.float32)
    np.testing.assert_allclose(
        got[0], tiny_engine.encode_texts(["a photo of a red circle"])[0], atol=1e-6
    )
    np.testing.assert_allclose(got[1], tiny_engine.encode_images([image])[0], atol=1e-6)


def test_encode_npy_to_a_file(tiny_clip_dir: Path, env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"
    done = _run(
        ["encode", "one", "two", "--format", "npy", "-o", str(out), "-m", str(tiny_clip_dir)], env
    )
    assert done.returncode == 0, done.stderr
    vectors = np.load(out)
    assert vectors.shape[0] == 2 and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_npy_to_stdout(tiny_clip_dir: Path, env: dict[str, str]) -> None:
    done = _run(["encode", "one", "--format", "npy", "-m", str(tiny_clip_dir)], env)
    assert np.load(io.BytesIO(done.stdout)).shape[0] == 1


def test_corrupt_image_file_is_a_one_line_error(
    tiny_clip_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    done = _run(["encode", str(bad), "-m", str(tiny_clip_dir)], env)
    assert done.returncode == 2
    message = done.stderr.decode().strip()
    assert message.startswith("error: image 0:") and "\n" not in message
