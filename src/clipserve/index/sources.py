"""Where an indexed image came from, read back: the ``path`` that ``clipserve embed`` records.

A location is a local file, a member of an uncompressed tar shard (``/data/000.tar#key.jpg``),
or an ``http(s)`` URL. ``clipserve filter`` copies images out through this module, and
``clipserve index build`` reads local ones to make the search page's thumbnails.
"""

from __future__ import annotations

import functools
import os
import tarfile


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URL (reading it means a download)."""
    return location.startswith(("http://", "https://"))


def read_local(location: str) -> bytes:
    """The bytes of a local file or of a tar member.

    Raises:
        OSError: The file or member is missing or unreadable.
        tarfile.TarError: The shard is not a readable tar file.
    """
    shard, _, member = location.partition("#")
    if not member or not shard.endswith(".tar"):
        with open(location, "rb") as handle:
            return handle.read()
    entry = _members(shard, os.stat(shard).st_mtime_ns).get(member)
    if entry is None:
        raise OSError(f"{member} is not a file in {shard}")
    offset, size = entry
    with open(shard, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise OSError(f"{shard} ends inside {member}")
    return data


@functools.lru_cache(maxsize=16)
def _members(shard: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    # Where each member's data lies. Finding one member by name means reading every header
    # before it, so reading a shard's images one by one would cost O(members²) without this;
    # the modification time in the key drops the entry when the shard is rewritten.
    with tarfile.open(shard, "r:") as archive:
        return {info.name: (info.offset_data, info.size) for info in archive if info.isfile()}
