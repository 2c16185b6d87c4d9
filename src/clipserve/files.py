"""Writing files so that a crash leaves either the old version or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path

#: Prefix of the staging names atomic writes use (left-overs of a crash can be globbed).
TMP_PREFIX = ".tmp-"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is either all there or not at all."""
    staging = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
