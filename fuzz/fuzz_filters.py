"""atheris target: metadata filters (JSON) applied to a real index (SQLite + FAISS).

Bytes that parse as JSON are used as the ``filters`` of :meth:`clipserve.index.Index.search`
on a small index on disk: the answer must be hits of that index, or
:class:`~clipserve.errors.InvalidInputError`. (Bytes that are not JSON exercise only the
standard library's parser and are skipped.)

Run: ``python fuzz/fuzz_filters.py -runs=2000 CORPUS_DIR`` (seeds: ``fuzz/seeds.py filters``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["clipserve"]):
    import fuzzkit
    import numpy as np

    from clipserve.errors import InvalidInputError
    from clipserve.index import Catalog, Index, NewItem

METADATA: list[dict[str, Any]] = [
    {"color": "red", "n": 1, "flag": True, "exif": {"iso": 100}, "a-b": 1.5},
    {"color": "blue", "n": 2, "flag": False, "tags": ["x", "y"]},
    {"color": None, "n": 2.5, "source": "https://example.com/a.png"},
    {"n": -(2**63), "caption": "a red circle"},
]
_DIRECTORY = tempfile.TemporaryDirectory(prefix="clipserve-fuzz-filters-")


def _index() -> Index:
    index = Catalog(Path(_DIRECTORY.name)).create("filters", model="none", dim=4)
    vectors = np.eye(4, dtype=np.float32)
    index.upsert(
        [
            NewItem(f"item-{i}", "text" if i % 2 else "image", metadata, vectors[i])
            for i, metadata in enumerate(METADATA)
        ]
    )
    return index


INDEX = _index()
QUERY = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
IDS = {f"item-{i}" for i in range(len(METADATA))}


def target(data: bytes) -> None:
    """One run: search the index with the filter ``data`` spells."""
    try:
        filters = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON: nothing of clipserve's runs
    try:
        hits = INDEX.search(QUERY, 4, filters=filters)
    except InvalidInputError:
        return
    if len(hits) != 1 or not {hit.id for hit in hits[0]} <= IDS:
        raise AssertionError(f"unexpected hits {hits}")


if __name__ == "__main__":
    fuzzkit.run(target)
