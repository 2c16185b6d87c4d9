"""A job killed with SIGKILL at random points, rerun each time, loses and duplicates nothing."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from embedtools import png_bytes, read_output

from clipserve.embed import EmbedOptions, folder_records, run_local
from clipserve.settings import Settings
from clipserve.testing.synthetic import make_dataset

ITEMS, SHARD_SIZE, KILLS = 240, 6, 5


def _command(folder: Path, output: Path, model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clipserve.cli",
        "embed",
        str(folder),
        "--output",
        str(output),
        "--model",
        str(model),
        "--shard-size",
        str(SHARD_SIZE),
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--no-progress",
    ]


@contextlib.contextmanager
def _ctrl_c_not_ignored() -> Iterator[None]:
    """Children started inside get SIGINT's default action, as from a terminal.

    A shell starts background jobs with SIGINT ignored, children inherit that, and Python
    then rightly leaves Ctrl-C ignored: run under ``cmd &`` (as CI may be), the job would
    never see the signal. A handler, unlike "ignore", is reset to the default by exec.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _orphaned_workers() -> list[int]:
    """Processes of a multiprocessing forkserver whose parent has died (re-parented to 1)."""
    orphans = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"multiprocessing.forkserver" in command and parent == 1:
            orphans.append(int(entry.name))
    return orphans


def _completed(output: Path) -> int:
    return len(list((output / "metadata").glob("metadata_*.parquet")))


def test_sigkill_at_random_points_then_rerun_gives_every_item_once(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, item in enumerate(make_dataset(ITEMS, seed=17)):
        (folder / f"{index:04d}.png").write_bytes(png_bytes(item.image))
        (folder / f"{index:04d}.txt").write_text(item.caption)
    output = tmp_path / "out"
    env = {**os.environ, "CLIPSERVE_CACHE_DIR": str(clipserve_cache)}
    shards = ITEMS // SHARD_SIZE
    rng = random.Random(1234)
    killed_mid_job = 0
    for _ in range(KILLS):
        # Kill once the job has written a random number of further shards: always mid-job.
        before = _completed(output) if output.exists() else 0
        if before >= shards - 1:
            break
        target = rng.randint(before + 1, shards - 1)
        process = subprocess.Popen(_command(folder, output, tiny_clip_dir), env=env)
        deadline = time.monotonic() + 300
        while _completed(output) < target and process.poll() is None:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.005)
        process.kill()
        process.wait(30)
        if process.returncode == -9:
            killed_mid_job += 1
    assert killed_mid_job >= 3, "the kills did not land mid-job"
    # The killed jobs' decode workers notice and exit; none is left behind.
    deadline = time.monotonic() + 30
    while _orphaned_workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _orphaned_workers() == []

    final = subprocess.run(
        _command(folder, output, tiny_clip_dir),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr
    out = read_output(output)
    assert [row["key"] for row in out.metadata] == [f"{i:04d}" for i in range(ITEMS)]
    assert out.manifest["items"] == ITEMS and out.manifest["errors"] == 0
    assert not list(output.rglob(".tmp-*"))

    # The same numbers as one uninterrupted run.
    settings = Settings(models=[str(tiny_clip_dir)], cache_dir=clipserve_cache)
    clean = tmp_path / "clean"
    options = EmbedOptions(clean, shard_size=SHARD_SIZE, batch_size=4, workers=1)
    run_local(list(folder_records(folder)), settings, options)
    reference = read_output(clean)
    assert out.images is not None and reference.images is not None
    assert out.texts is not None and reference.texts is not None
    np.testing.assert_allclose(out.images, reference.images, atol=2e-3)
    np.testing.assert_allclose(out.texts, reference.texts, atol=2e-3)


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # Enough items that the job is still running when the signal lands, however late a
    # loaded machine schedules this test after the third shard (120 items were done in ~1 s).
    items = 480
    for index, item in enumerate(make_dataset(items, seed=18)):
        (folder / f"{index:04d}.png").write_bytes(png_bytes(item.image))
    output = tmp_path / "out"
    env = {**os.environ, "CLIPSERVE_CACHE_DIR": str(clipserve_cache)}
    # Its own process group, as a terminal's Ctrl-C reaches the job and its workers.
    with _ctrl_c_not_ignored():
        process = subprocess.Popen(
            _command(folder, output, tiny_clip_dir),
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    while _completed(output) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.005)
    assert process.poll() is None, "the job finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: completed shards are kept; rerun to finish" in stderr
    assert "Traceback" not in stderr
    assert 3 <= _completed(output) < items // SHARD_SIZE

    final = subprocess.run(
        _command(folder, output, tiny_clip_dir),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr
    assert [row["key"] for row in read_output(output).metadata] == [
        f"{i:04d}" for i in range(items)
    ]
