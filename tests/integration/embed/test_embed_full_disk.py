"""``clipserve embed`` on a disk that fills up: a clear error and exit status, the shards
written before kept whole, and a rerun (space freed) that finishes the job exactly.

The full disk is a file size limit on the job's process (:mod:`clipserve.testing.disk`): a
write past it fails with EFBIG, as one on a full disk fails with ENOSPC. The limit is per file,
so the last shard is made larger than the others (long captions in its metadata): the first
shards fit, the last does not.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from embedtools import png_bytes, read_output

from clipserve.cli import main
from clipserve.embed.output import shard_paths
from clipserve.files import TMP_PREFIX
from clipserve.testing.disk import with_file_size_limit
from clipserve.testing.synthetic import make_dataset

SHARD_SIZE = 8
SHARDS = 3


def _folder(root: Path) -> Path:
    """24 images with captions; the last shard's captions are long and incompressible."""
    folder = root / "in"
    folder.mkdir()
    rng = random.Random(3)
    for index, item in enumerate(make_dataset(SHARD_SIZE * SHARDS, seed=23)):
        (folder / f"{index:03d}.png").write_bytes(png_bytes(item.image))
        caption = item.caption
        if index >= SHARD_SIZE * (SHARDS - 1):
            caption += " " + "".join(rng.choices(string.ascii_letters, k=3000))
        (folder / f"{index:03d}.txt").write_text(caption)
    return folder


def _args(folder: Path, output: Path, model: Path) -> list[str]:
    return [
        "embed",
        str(folder),
        "--output",
        str(output),
        "--model",
        str(model),
        "--shard-size",
        str(SHARD_SIZE),
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--no-progress",
    ]


def _largest_file(output: Path, shards: range) -> int:
    return max(path.stat().st_size for i in shards for path in shard_paths(output, i).values())


def test_a_full_disk_stops_the_job_clearly_and_a_rerun_finishes_it(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    folder = _folder(tmp_path)
    env = {"CLIPSERVE_CACHE_DIR": str(clipserve_cache)}
    reference = tmp_path / "reference"
    done = CliRunner().invoke(main, _args(folder, reference, tiny_clip_dir), env=env)
    assert done.exit_code == 0, done.output
    fitting = _largest_file(reference, range(SHARDS - 1))
    last = shard_paths(reference, SHARDS - 1)["metadata"].stat().st_size
    assert last > fitting + 4096, "the last shard is not larger than the others"

    output = tmp_path / "out"
    command = [sys.executable, "-m", "clipserve.cli", *_args(folder, output, tiny_clip_dir)]
    limited = subprocess.run(
        with_file_size_limit(command, (fitting + last) // 2),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert limited.returncode == 2, limited.stderr
    (error,) = [line for line in limited.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: shard 2: cannot write "), error
    assert "metadata_2.parquet: [Errno 27] File too large" in error
    assert "the disk is full or a file size limit was reached" in error
    assert "run the same command again" in error
    # The shards before are whole; the failed one is not marked complete; nothing half-written.
    assert all(shard_paths(output, i)["metadata"].exists() for i in range(SHARDS - 1))
    assert not shard_paths(output, SHARDS - 1)["metadata"].exists()
    assert not list(output.rglob(f"{TMP_PREFIX}*"))
    assert not (output / "manifest.json").exists()

    rerun = CliRunner().invoke(main, _args(folder, output, tiny_clip_dir), env=env)
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert (summary["shards_written"], summary["shards_skipped"]) == (1, SHARDS - 1)
    resumed, expected = read_output(output), read_output(reference)
    assert [row["key"] for row in resumed.metadata] == [row["key"] for row in expected.metadata]
    assert [row["caption"] for row in resumed.metadata] == [
        row["caption"] for row in expected.metadata
    ]
    assert resumed.images is not None and expected.images is not None
    assert resumed.texts is not None and expected.texts is not None
    np.testing.assert_allclose(resumed.images, expected.images, atol=1e-3)
    np.testing.assert_allclose(resumed.texts, expected.texts, atol=1e-3)
