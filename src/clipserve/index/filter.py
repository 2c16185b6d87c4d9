"""``clipserve filter``: copy the images that match a query out of an index's sources.

What clip-retrieval's ``filter`` does, on clipserve's indexes: search (top ``k`` or every item
over a score threshold), then copy each hit's image from where ``clipserve embed`` read it —
a file, a member of a tar shard, or a URL (downloaded) — into the output folder as
``{rank:05d}_{id}{ext}``. ``results.jsonl`` lists every hit with its score, metadata and the
file written, or why none was (no source recorded, source gone, download failed).
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import InvalidInputError
from clipserve.index.collection import Hit, Index
from clipserve.index.sources import is_remote, read_local

#: Most hits a threshold filter looks at (the index's search limit).
MAX_THRESHOLD_HITS = 10_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class FilterResult:
    """How many items matched, how many images were copied, and how many could not be."""

    matched: int
    copied: int
    skipped: int


def filter_index(
    index: Index,
    query: np.ndarray,
    output: Path,
    *,
    num_results: int | None = None,
    threshold: float | None = None,
    filters: dict[str, Any] | None = None,
) -> FilterResult:
    """Copy the images of the items matching ``query`` into ``output``.

    Exactly one of ``num_results`` (the best ``k``) and ``threshold`` (every item whose cosine
    is at least it, up to 10,000) selects the hits; only image items are considered.
    """
    if (num_results is None) == (threshold is None):
        raise InvalidInputError("give exactly one of --num-results and --threshold")
    k = num_results if num_results is not None else MAX_THRESHOLD_HITS
    hits = index.search(query, k, filters=filters, modality="image")[0]
    if threshold is not None:
        hits = [hit for hit in hits if hit.score >= threshold]
    output.mkdir(parents=True, exist_ok=True)
    copied = 0
    with open(output / "results.jsonl", "w", encoding="utf-8") as log:
        for rank, hit in enumerate(hits):
            written, reason = _copy(hit, output, rank)
            copied += written is not None
            entry = {"rank": rank, "id": hit.id, "score": hit.score, "metadata": hit.metadata}
            entry |= {"file": written} if written else {"skipped": reason}
            log.write(json.dumps(entry) + "\n")
    return FilterResult(len(hits), copied, len(hits) - copied)


def _copy(hit: Hit, output: Path, rank: int) -> tuple[str | None, str | None]:
    location = hit.metadata.get("path")
    if not isinstance(location, str) or not location:
        return None, "no source path recorded (an item added through the API)"
    name = f"{rank:05d}_{_UNSAFE.sub('_', hit.id)[:100]}{_suffix(location)}"
    target = output / name
    try:
        if is_remote(location):
            _download(location, target)
        else:
            target.write_bytes(read_local(location))
    except (OSError, tarfile.TarError, _DownloadFailed) as exc:
        target.unlink(missing_ok=True)
        return None, f"cannot copy {location}: {exc}"
    return name, None


def _suffix(location: str) -> str:
    suffix = Path(location.rpartition("#")[2].split("?")[0]).suffix.lower()
    return suffix if suffix in _IMAGE_SUFFIXES else ".jpg"


class _DownloadFailed(Exception):
    pass


def _download(url: str, target: Path) -> None:
    from clipserve.embed.download import Downloader
    from clipserve.embed.options import DownloadSettings

    downloader = Downloader(DownloadSettings(concurrency=1))
    try:
        fetched = downloader.fetch(url)
    finally:
        downloader.close()
    if fetched.data is None:
        raise _DownloadFailed(fetched.error)
    target.write_bytes(fetched.data)
