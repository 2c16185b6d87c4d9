"""What a batch job embeds: every input item as a :class:`Record`, in one deterministic order.

Three kinds of input, each enumerated the same way on every run (that order is what makes a
resumed job skip exactly the finished shards):

* a folder tree: image files in sorted relative-path order; ``photo.txt`` beside ``photo.jpg``
  is its caption;
* tar shards in webdataset layout: members grouped by key (the name up to the first dot, in
  its directory), ``.jpg``/``.png``/… the image, ``.txt`` the caption, ``.json`` extra
  metadata; shards in the order given (brace patterns ``shards/{00000..00099}.tar`` expanded);
* a parquet or CSV table with a URL column and optionally a caption column, in row order;
  other columns can be carried into the metadata.

Records only locate their content (a path, a tar member's offset and size, a URL): reading it
happens later, in the decode workers.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipserve.errors import InvalidInputError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
)
CAPTION_SUFFIXES = (".txt", ".caption")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class TarMember:
    """Where a tar member's bytes lie: read ``size`` bytes at ``offset`` of ``path``."""

    path: str
    offset: int
    size: int
    #: The member's name in the archive (to find it again without the offset).
    member: str = ""


@dataclass(frozen=True)
class Url:
    """An image to download (only http and https are fetched; anything else is an error)."""

    url: str


@dataclass(frozen=True)
class Record:
    """One input item.

    Attributes:
        key: A name unique within the job (relative path without suffix, ``shard/key``, or
            the table row number).
        source: Where it came from, for people: a path, ``shard.tar#member`` or a URL.
        image: How to get the image bytes: a file path, a :class:`TarMember`, a :class:`Url`,
            or ``None`` when the item has no image (a caption-only table row).
        caption: The item's text, if any.
        extra: Carried metadata columns (JSON-serialisable values).
    """

    key: str
    source: str
    image: str | TarMember | Url | None
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def expand_braces(pattern: str) -> list[str]:
    """``shards/{000..002}.tar`` -> ``shards/000.tar``, ``shards/001.tar``, ``shards/002.tar``.

    Numeric ranges only (the webdataset convention); the width of the first bound is kept.
    Several ranges expand as a product, left to right.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise InvalidInputError(f"{pattern}: the range {{{first}..{last}}} is empty")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        expanded
        for number in range(int(first), int(last) + 1)
        for expanded in expand_braces(f"{head}{number:0{len(first)}d}{tail}")
    ]


def folder_records(root: Path) -> Iterator[Record]:
    """The images under ``root`` (recursively), sorted by relative path, with captions."""
    root = root.resolve()
    paths = sorted(
        path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    for path in paths:
        relative = path.relative_to(root)
        yield Record(
            key=str(relative.with_suffix("")),
            source=str(relative),
            image=str(path),
            caption=_caption_beside(path),
        )


def _caption_beside(path: Path) -> str | None:
    for suffix in CAPTION_SUFFIXES:
        caption = path.with_suffix(suffix)
        if caption.is_file():
            return caption.read_text(encoding="utf-8", errors="replace").strip()
    return None


def tar_records(shards: Sequence[str]) -> Iterator[Record]:
    """The samples of webdataset tar shards, shard by shard, in member order."""
    for shard in shards:
        if not os.path.isfile(shard):
            raise InvalidInputError(f"{shard}: no such tar shard")
        yield from _shard_records(shard)


def _shard_records(given: str) -> Iterator[Record]:
    shard = os.path.abspath(given)  # the decode workers and `clipserve filter` read it later
    name = Path(shard).name
    try:
        with tarfile.open(shard, "r:") as archive:
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            for member in archive:
                if member.isfile():
                    key, suffix = _split_member(member.name)
                    samples.setdefault(key, {})[suffix] = member
            for key, parts in samples.items():
                record = _sample_record(archive, shard, f"{name}/{key}", parts)
                if record is not None:
                    yield record
    except tarfile.TarError as exc:
        raise InvalidInputError(f"{shard}: not a readable (uncompressed) tar file: {exc}") from exc


def _split_member(name: str) -> tuple[str, str]:
    # webdataset: the key is everything up to the first dot of the base name.
    directory, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, f".{suffix.lower()}" if dot else ""


def _sample_record(
    archive: tarfile.TarFile, shard: str, key: str, parts: dict[str, tarfile.TarInfo]
) -> Record | None:
    # "photo.jpg" or "photo.seg.jpg": the last dotted part says what the member is.
    image = next((parts[s] for s in parts if "." + s.rpartition(".")[2] in IMAGE_SUFFIXES), None)
    caption_member = next((parts[s] for s in CAPTION_SUFFIXES if s in parts), None)
    if image is None and caption_member is None:
        return None  # a sample of other files only (e.g. .json alone): nothing to embed
    caption = _member_text(archive, caption_member)
    extra: dict[str, Any] = {}
    if ".json" in parts:
        extra = _member_json(archive, parts[".json"])
    location = (
        TarMember(shard, image.offset_data, image.size, image.name) if image is not None else None
    )
    member = image.name if image is not None else key
    return Record(key, f"{Path(shard).name}#{member}", location, caption, extra)


def _member_text(archive: tarfile.TarFile, member: tarfile.TarInfo | None) -> str | None:
    if member is None:
        return None
    handle = archive.extractfile(member)
    return None if handle is None else handle.read().decode("utf-8", "replace").strip()


def _member_json(archive: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    text = _member_text(archive, member)
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return {"json": json.dumps(value)} if not isinstance(value, dict) else value


def table_records(
    path: Path,
    *,
    url_column: str = "url",
    caption_column: str | None = "caption",
    extra_columns: Sequence[str] = (),
) -> Iterator[Record]:
    """The rows of a parquet or CSV file: one record per row, in row order."""
    table = _read_table(path)
    names = set(table.column_names)
    missing = [name for name in (url_column, *extra_columns) if name not in names]
    if missing:
        raise InvalidInputError(
            f"{path}: no column {missing[0]!r}; columns: {', '.join(table.column_names)}"
        )
    urls = table.column(url_column).to_pylist()
    captions = (
        table.column(caption_column).to_pylist()
        if caption_column and caption_column in names
        else itertools.repeat(None)
    )
    extras = {name: table.column(name).to_pylist() for name in extra_columns}
    for row, (url, caption) in enumerate(zip(urls, captions, strict=False)):
        yield Record(
            key=str(row),
            source=str(url) if url else "",
            image=Url(str(url)) if url else None,
            caption=None if caption is None else str(caption),
            extra={name: values[row] for name, values in extras.items()},
        )


def _read_table(path: Path) -> Any:
    import pyarrow.csv
    import pyarrow.parquet

    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            options = pyarrow.csv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
            return pyarrow.csv.read_csv(path, parse_options=options)
        return pyarrow.parquet.read_table(path)
    except Exception as exc:  # pyarrow's errors are many and untyped for our purpose
        raise InvalidInputError(f"{path}: cannot read it as a table: {exc}") from exc
