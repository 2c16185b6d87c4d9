"""Reading an indexed image back from where it was embedded: files and tar members."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from clipserve.index.sources import is_remote, read_local


def _shard(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_files_and_tar_members_read_back_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "a#1.jpg").write_bytes(b"file with a hash in its name")
    members = {f"{i:04d}.jpg": os.urandom(700 + i) for i in range(50)}
    _shard(tmp_path / "000.tar", members)
    assert read_local(str(tmp_path / "a#1.jpg")) == b"file with a hash in its name"
    for name, data in members.items():
        assert read_local(f"{tmp_path / '000.tar'}#{name}") == data
    assert is_remote("https://example.com/x.jpg") and not is_remote(str(tmp_path / "a#1.jpg"))


def test_missing_files_and_members_are_os_errors(tmp_path: Path) -> None:
    _shard(tmp_path / "000.tar", {"a.jpg": b"x"})
    with pytest.raises(OSError, match=r"b\.jpg is not a file in"):
        read_local(f"{tmp_path / '000.tar'}#b.jpg")
    with pytest.raises(OSError):
        read_local(str(tmp_path / "gone.jpg"))
    with pytest.raises(OSError):
        read_local(f"{tmp_path / 'gone.tar'}#a.jpg")


def test_a_rewritten_shard_is_read_afresh(tmp_path: Path) -> None:
    shard = tmp_path / "000.tar"
    _shard(shard, {"a.jpg": b"old"})
    assert read_local(f"{shard}#a.jpg") == b"old"
    _shard(shard, {"pad.bin": b"p" * 5000, "a.jpg": b"new bytes"})
    os.utime(shard, ns=(0, os.stat(shard).st_mtime_ns + 1_000_000))  # a later mtime, surely
    assert read_local(f"{shard}#a.jpg") == b"new bytes"
