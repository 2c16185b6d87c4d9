"""A disk that fills up under an index: a clear error, nothing corrupted, every acknowledged
write still there when the index is opened again.

The full disk is a file size limit on a child process (:mod:`clipserve.testing.disk`): its
writes past the limit fail with EFBIG as they would with ENOSPC on a full disk. Each scenario
runs the index in such a child, which prints what it was told succeeded; this process then
opens the index with no limit — space freed — and checks it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.index import Catalog, NewItem
from clipserve.testing.disk import with_file_size_limit

DIM = 64
BATCH = 20
#: Random metadata per item, so each write adds a fair amount to the write-ahead log.
NOTE_BYTES = 2000

CHILD = """
import json, sys
import numpy as np
from pathlib import Path
from clipserve.errors import StorageError
from clipserve.index import Catalog, NewItem

root, scenario = Path(sys.argv[1]), sys.argv[2]
dim, size, note_bytes = (int(value) for value in sys.argv[3:6])
rng = np.random.default_rng(0)


def vectors(count):
    rows = rng.normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def batch(step):
    ids = [f"s{step}-{i}" for i in range(size)]
    notes = [rng.bytes(note_bytes // 2).hex() for _ in ids]
    rows = vectors(len(ids))
    return [NewItem(i, "vector", {"note": n}, v) for i, n, v in zip(ids, notes, rows)]


def report(**event):
    print(json.dumps(event), flush=True)


catalog = Catalog(root)
try:
    if scenario == "fill":
        index = catalog.create("full", model="m", dim=dim)
        for step in range(1000):
            items = batch(step)
            index.upsert(items)
            report(acknowledged=[item.id for item in items])
    elif scenario == "create":
        catalog.create("never", model="m", dim=dim)
        report(created=True)
    elif scenario == "snapshot":
        index = catalog.open("big")  # a stale snapshot: rebuilt, and saving it fails
        report(count=len(index), found=index.search(vectors(1), k=1)[0][0].id)
        index.delete(["b-0"])
        index.upsert(batch(0)[:1])
        report(acknowledged=["s0-0"], deleted="b-0")
except StorageError as exc:
    report(error=type(exc).__name__, message=str(exc))
catalog.close()  # saves snapshots where it can: it must not fail
report(closed=True)
"""


def run_limited(root: Path, scenario: str, limit: int) -> list[dict[str, Any]]:
    """Run scenario ``scenario`` on ``root`` under a ``limit``-byte file size limit."""
    command = [sys.executable, "-c", CHILD, str(root), scenario]
    command += [str(value) for value in (DIM, BATCH, NOTE_BYTES)]
    result = subprocess.run(
        with_file_size_limit(command, limit), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1] == {"closed": True}, result.stderr
    return events[:-1]


def test_writes_that_fill_the_disk_fail_clearly_and_every_acknowledged_one_stays(
    tmp_path: Path,
) -> None:
    events = run_limited(tmp_path, "fill", limit=512 * 1024)
    *written, failure = events
    assert failure["error"] == "StorageError"
    message = failure["message"]
    assert "items.sqlite" in message
    assert "the disk is full, a file size limit was reached" in message
    assert "this write was not applied" in message
    acknowledged = [item for event in written for item in event["acknowledged"]]
    assert len(written) >= 3, "the limit left no room for a single write"

    catalog = Catalog(tmp_path)
    index = catalog.open("full")
    assert len(index) == len(acknowledged)
    assert all(index.get(item) is not None for item in acknowledged)
    # The write that failed left nothing: not one item of its batch.
    failed_batch = [f"s{len(written)}-{i}" for i in range(BATCH)]
    assert all(index.get(item) is None for item in failed_batch)
    # The vectors agree with the store, and searching finds an item by its own vector.
    described = index.describe()
    assert described["indexed"] == described["count"] == len(acknowledged)
    vector = index.vector(acknowledged[-1])
    assert index.search(vector, k=1)[0][0].id == acknowledged[-1]
    # Space freed: the index takes writes again.
    index.upsert([NewItem("after", "vector", {}, vector)])
    catalog.close()
    assert len(Catalog(tmp_path).open("full")) == len(acknowledged) + 1


def test_an_index_that_cannot_be_created_is_not_left_half_made(tmp_path: Path) -> None:
    # Smaller than one SQLite page (16 KiB): not even the empty store fits.
    (event,) = run_limited(tmp_path, "create", limit=8 * 1024)
    assert event["error"] == "StorageError"
    assert "items.sqlite" in event["message"]
    catalog = Catalog(tmp_path)
    assert catalog.names() == []
    assert not (tmp_path / "never").exists()
    catalog.create("never", model="m", dim=DIM)  # with space, the name is free to use
    assert catalog.names() == ["never"]


def test_a_snapshot_that_cannot_be_saved_costs_no_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(2000, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    catalog = Catalog(tmp_path)
    index = catalog.create("big", model="m", dim=DIM)
    index.upsert([NewItem(f"b-{i}", "vector", {}, row) for i, row in enumerate(rows)])
    catalog.close()
    snapshot = tmp_path / "big" / "vectors.faiss"
    (tmp_path / "big" / "vectors.json").unlink()  # stale: the next open must rebuild it
    limit = snapshot.stat().st_size // 2  # the snapshot no longer fits; a small write does

    opened, written = run_limited(tmp_path, "snapshot", limit=limit)
    assert opened["count"] == 2000 and opened["found"].startswith("b-")
    assert written == {"acknowledged": ["s0-0"], "deleted": "b-0"}

    index = Catalog(tmp_path).open("big")
    assert len(index) == 2000
    assert index.get("b-0") is None and index.get("s0-0") is not None
    assert index.search(rows[1], k=1)[0][0].id == "b-1"
