"""The output of ``clipserve embed``: the layout clip-retrieval users know, written atomically.

::

    OUTPUT/
      img_emb/img_emb_{N}.npy           float16 [rows, dim], L2-normalised (zeros: no image)
      text_emb/text_emb_{N}.npy         float16 [rows, dim], L2-normalised (zeros: no caption)
      metadata/metadata_{N}.parquet     one row per item: key, source, caption, width, height,
                                        sha256, path, status, error, carried columns
      job.json                          what the job is (model, inputs, shard size): a rerun
                                        must match it to resume
      manifest.json                     written when the job completes: counts and shards

Row ``i`` of every file of shard ``N`` describes the same item. Each file is written under a
temporary name and renamed into place; the metadata file is renamed last, so a shard whose
metadata exists is complete, and a rerun skips exactly those.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import InvalidInputError
from clipserve.files import TMP_PREFIX, atomic_write

IMAGE_DIR, TEXT_DIR, METADATA_DIR = "img_emb", "text_emb", "metadata"
JOB_FILE, MANIFEST_FILE = "job.json", "manifest.json"


@dataclass(frozen=True)
class JobSpec:
    """What a job computes; a rerun into the same output must have the same spec."""

    model: str
    precision: str
    dim: int
    images: bool
    texts: bool
    shard_size: int
    items: int
    inputs_sha256: str

    def check_or_write(self, output: Path) -> None:
        """Write ``job.json``, or check that the one there describes this same job."""
        path = output / JOB_FILE
        if path.exists():
            existing = json.loads(path.read_text())
            if existing != asdict(self):
                changed = sorted(k for k, v in asdict(self).items() if existing.get(k) != v)
                raise InvalidInputError(
                    f"{output} holds the output of a different job (differs in: "
                    f"{', '.join(changed)}); use a new output directory to start over"
                )
            return
        atomic_write(path, json.dumps(asdict(self), indent=2).encode())


@dataclass
class ShardRows:
    """The rows of one output shard, in input order."""

    index: int
    keys: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    heights: list[int | None] = field(default_factory=list)
    sha256: list[str | None] = field(default_factory=list)
    paths: list[str | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    image_vectors: np.ndarray | None = None
    text_vectors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


def shard_paths(output: Path, index: int) -> dict[str, Path]:
    """The files of shard ``index``: ``img``, ``text`` and ``metadata``."""
    return {
        "img": output / IMAGE_DIR / f"img_emb_{index}.npy",
        "text": output / TEXT_DIR / f"text_emb_{index}.npy",
        "metadata": output / METADATA_DIR / f"metadata_{index}.parquet",
    }


def is_complete(output: Path, index: int, spec: JobSpec) -> bool:
    """Whether shard ``index`` was fully written (its metadata is renamed last)."""
    paths = shard_paths(output, index)
    needed = [paths["metadata"]]
    needed += [paths["img"]] if spec.images else []
    needed += [paths["text"]] if spec.texts else []
    return all(path.exists() for path in needed)


def prepare(output: Path) -> None:
    """Create the directories; remove temporary files a killed run left behind."""
    for name in (IMAGE_DIR, TEXT_DIR, METADATA_DIR):
        (output / name).mkdir(parents=True, exist_ok=True)
        for leftover in (output / name).glob(f"{TMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)


def write_shard(output: Path, rows: ShardRows) -> None:
    """Write shard files atomically, the metadata last (it marks the shard complete)."""
    paths = shard_paths(output, rows.index)
    for kind, vectors in (("img", rows.image_vectors), ("text", rows.text_vectors)):
        if vectors is not None:
            atomic_write(paths[kind], _npy_bytes(vectors.astype(np.float16)))
    atomic_write(paths["metadata"], _parquet_bytes(rows))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _parquet_bytes(rows: ShardRows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "key": pa.array(rows.keys, pa.string()),
        "source": pa.array(rows.sources, pa.string()),
        "caption": pa.array(rows.captions, pa.string()),
        "width": pa.array(rows.widths, pa.int32()),
        "height": pa.array(rows.heights, pa.int32()),
        "sha256": pa.array(rows.sha256, pa.string()),
        "path": pa.array(rows.paths, pa.string()),
        "status": pa.array(["error" if e else "ok" for e in rows.errors], pa.string()),
        "error": pa.array(rows.errors, pa.string()),
    }
    for name in _extra_names(rows.extra):
        columns.setdefault(name, pa.array([extra.get(name) for extra in rows.extra]))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return bytes(sink.getvalue().to_pybytes())


def _extra_names(extras: Sequence[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for extra in extras:
        names.update(dict.fromkeys(extra))
    return list(names)


def write_manifest(output: Path, spec: JobSpec, shards: int, errors: int) -> dict[str, Any]:
    """Write ``manifest.json`` for a completed job; returns it."""
    manifest = {
        **asdict(spec),
        "shards": shards,
        "errors": errors,
        "layout": {
            "images": f"{IMAGE_DIR}/img_emb_{{N}}.npy" if spec.images else None,
            "texts": f"{TEXT_DIR}/text_emb_{{N}}.npy" if spec.texts else None,
            "metadata": f"{METADATA_DIR}/metadata_{{N}}.parquet",
            "dtype": "float16",
            "normalized": True,
        },
    }
    atomic_write(output / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    return manifest
