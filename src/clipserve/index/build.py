"""``clipserve index build``: turn the shards of ``clipserve embed`` into an index.

Each row whose status is ``ok`` becomes an item: its image embedding under the row's ``key``
(modality ``image``) and, when the row has a caption and the job embedded texts, its caption
embedding under ``key#caption`` (modality ``text``). The metadata of both is the row's
metadata (source, caption, width, height, sha256 and the carried columns). Rebuilding into an
existing index replaces items with the same ids, so a rerun is idempotent.

Image items read from local files or tar shards also get a thumbnail (what the search page
shows), made from the recorded ``path``; URL sources are not downloaded again, and an image that
has gone missing since the embedding only costs its picture.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import InvalidInputError
from clipserve.index.collection import Catalog
from clipserve.index.sources import is_remote, read_local
from clipserve.index.store import NewItem
from clipserve.index.thumbnails import make_thumbnail

CAPTION_SUFFIX = "#caption"
_SKIPPED_COLUMNS = frozenset({"status", "error"})


@dataclass(frozen=True)
class BuildResult:
    """What a build added: items per modality, rows skipped for their error status, and
    thumbnails made."""

    images: int
    texts: int
    skipped: int
    thumbnails: int = 0


def build_index(
    embed_dir: Path,
    catalog: Catalog,
    name: str,
    *,
    images: bool = True,
    texts: bool = True,
    thumbnails: bool = True,
) -> BuildResult:
    """Add every good row of ``embed_dir`` to index ``name`` (created for its model if new),
    with thumbnails of the images that are local files or tar members (unless ``thumbnails``
    is false).

    Raises:
        InvalidInputError: ``embed_dir`` is not a finished ``clipserve embed`` output, or the
            index holds another model's vectors.
    """
    manifest = _manifest(embed_dir)
    index = catalog.create(name, model=manifest["model"], dim=manifest["dim"], exist_ok=True)
    counts = {"image": 0, "text": 0, "skipped": 0, "thumbnails": 0}
    # Decoding releases the GIL: one thread per core makes the thumbnails in parallel.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for shard in range(manifest["shards"]):
            batch = list(_shard_items(embed_dir, shard, manifest, images, texts, counts))
            if thumbnails:
                batch = _with_thumbnails(batch, pool)
                counts["thumbnails"] += sum(item.thumbnail is not None for item in batch)
            if batch:
                index.upsert(batch, maintain=False)
    index.rebuild()  # one layout choice (and IVF training) for the whole collection
    return BuildResult(counts["image"], counts["text"], counts["skipped"], counts["thumbnails"])


def _with_thumbnails(batch: list[NewItem], pool: Executor) -> list[NewItem]:
    return list(pool.map(_thumbnailed, batch))


def _thumbnailed(item: NewItem) -> NewItem:
    location = item.metadata.get("path")
    if item.modality != "image" or not isinstance(location, str) or not location:
        return item
    if is_remote(location):
        return item
    try:
        data = read_local(location)
    except (OSError, tarfile.TarError):
        return item  # moved or deleted since it was embedded: the item stays, unpictured
    return replace(item, thumbnail=make_thumbnail(data))


def _manifest(embed_dir: Path) -> dict[str, Any]:
    path = embed_dir / "manifest.json"
    if not path.is_file():
        raise InvalidInputError(
            f"{embed_dir} has no manifest.json: not a finished clipserve embed output "
            "(rerun clipserve embed to finish it)"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def _shard_items(
    embed_dir: Path,
    shard: int,
    manifest: dict[str, Any],
    images: bool,
    texts: bool,
    counts: dict[str, int],
) -> Iterator[NewItem]:
    import pyarrow.parquet as pq

    rows = pq.read_table(embed_dir / "metadata" / f"metadata_{shard}.parquet").to_pylist()
    image_vectors = _vectors(embed_dir / "img_emb" / f"img_emb_{shard}.npy", images)
    text_vectors = _vectors(embed_dir / "text_emb" / f"text_emb_{shard}.npy", texts)
    for position, row in enumerate(rows):
        if row.get("status") != "ok":
            counts["skipped"] += 1
            continue
        metadata = {k: _json_safe(v) for k, v in row.items() if k not in _SKIPPED_COLUMNS}
        if image_vectors is not None and manifest.get("images"):
            counts["image"] += 1
            yield NewItem(row["key"], "image", metadata, image_vectors[position])
        if text_vectors is not None and manifest.get("texts") and row.get("caption") is not None:
            counts["text"] += 1
            yield NewItem(row["key"] + CAPTION_SUFFIX, "text", metadata, text_vectors[position])


def _vectors(path: Path, wanted: bool) -> np.ndarray | None:
    if not wanted or not path.is_file():
        return None
    vectors: np.ndarray = np.load(path).astype(np.float32)
    # Stored as float16: renormalise so that scores are exact cosines again.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: np.ndarray = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return normalised


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
