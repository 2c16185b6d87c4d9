"""Where an indexed image came from, read back: the ``path`` that ``clipserve embed`` records.

A location is a local file, a member of an uncompressed tar shard (``/data/000.tar#key.jpg``),
or an ``http(s)`` URL. ``clipserve filter`` copies images out through this module, and
``clipserve index build`` reads local ones to make the search page's thumbnails.
"""

from __future__ import annotations

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
    with tarfile.open(shard, "r:") as archive:
        extracted = archive.extractfile(member)
        if extracted is None:
            raise OSError(f"{member} is not a file in {shard}")
        return extracted.read()
