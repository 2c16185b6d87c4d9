"""Writing files so that a crash leaves either the old version or the new one, never half."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from clipserve.errors import StorageError

#: Prefix of the staging names atomic writes use (left-overs of a crash can be globbed).
TMP_PREFIX = ".tmp-"
#: errno values that mean "the disk cannot take more": full, over a file size limit
#: (RLIMIT_FSIZE), over a quota.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is either all there or not at all.

    Raises:
        StorageError: The disk is full, or a file size limit or quota was reached; ``path``
            is left as it was and no staging file remains.
    """
    staging = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException as exc:
        staging.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            raise StorageError(no_space_message(path, exc)) from exc
        raise
    _fsync_directory(path.parent)


def no_space_message(path: Path, exc: OSError) -> str:
    """``"cannot write PATH: [Errno 28] No space left on device"`` with what it means."""
    return f"cannot write {path}: {exc} (the disk is full or a file size limit was reached)"


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
