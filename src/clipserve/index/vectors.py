"""The fast half of an index: FAISS over the stored vectors, by inner product (= cosine).

Two layouts, chosen from the collection size and a memory budget:

* ``flat`` — exact search; used while the collection is small enough that scanning it is
  fast (below :data:`EXACT_LIMIT` vectors);
* ``ivf`` — an inverted file: vectors are grouped around ``nlist`` centroids (k-means on a
  sample) and a query scans the ``nprobe`` nearest groups. ``IVF-Flat`` keeps full vectors
  when they fit the memory budget; ``IVF-PQ`` stores product-quantised codes otherwise.

A layout is a cache of the SQLite store: it is saved as a snapshot with the store generation it
reflects, and rebuilt from the store when that does not match (after a crash, for instance).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.files import atomic_write

#: Below this many vectors, exact search is fast enough (about 10 ms on one core at 512-d).
EXACT_LIMIT = 50_000
#: Default memory budget for the vectors of one index.
DEFAULT_MEMORY_BUDGET = 4 * 1024**3
#: k-means rounds when training an IVF layout.
TRAINING_ROUNDS = 10
#: Recall@10 (against exact search) that nprobe is tuned to reach.
RECALL_TARGET = 0.95


@dataclass(frozen=True)
class Layout:
    """How the vectors are indexed: ``kind`` ``flat``/``ivf``/``ivfpq`` and its parameters."""

    kind: str
    nlist: int = 0
    nprobe: int = 0
    pq_bytes: int = 0
    #: How many vectors the layout was chosen (and trained) for.
    trained_count: int = 0


def choose_layout(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Layout:
    """The layout for ``count`` vectors of ``dim`` floats within ``memory_budget`` bytes.

    ``nlist`` ≈ 4·√count (the usual rule: lists of a few hundred vectors for a million).
    ``nprobe`` starts at nlist/8; :meth:`VectorIndex.tune_nprobe` then lowers it to the
    smallest value that keeps recall@10 ≥ 0.95 on a sample of the collection itself.
    """
    if count < EXACT_LIMIT:
        return Layout("flat", trained_count=count)
    nlist = int(min(65_536, max(256, 4 * math.sqrt(count))))
    nprobe = max(32, nlist // 8)
    if count * dim * 4 * 1.1 <= memory_budget:
        return Layout("ivf", nlist, nprobe, trained_count=count)
    # Largest code (bytes per vector) that fits the budget, a divisor of dim, at most dim/2.
    fitting = max(8, int(memory_budget / 1.1 / count))
    pq_bytes = max(m for m in range(1, dim // 2 + 1) if dim % m == 0 and m <= fitting)
    return Layout("ivfpq", nlist, nprobe, pq_bytes, count)


class VectorIndex:
    """A FAISS index of normalised vectors, addressed by int64 ids (the store's rows)."""

    def __init__(self, dim: int, layout: Layout, faiss_index: Any) -> None:
        self.dim = dim
        self.layout = layout
        self._index = faiss_index

    @classmethod
    def empty(cls, dim: int) -> VectorIndex:
        """An exact index with nothing in it."""
        faiss = _faiss()

        return cls(dim, Layout("flat"), faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def trained(cls, dim: int, layout: Layout, sample: np.ndarray) -> VectorIndex:
        """An empty index of ``layout``, trained on ``sample`` when it is an IVF."""
        faiss = _faiss()

        if layout.kind == "flat":
            return cls.empty(dim)
        quantizer = faiss.IndexFlatIP(dim)
        if layout.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, layout.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(
                quantizer, dim, layout.nlist, layout.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT
            )
        # Ten k-means rounds instead of FAISS's 25: the centroids barely move after that,
        # and training is most of the build time of a large index.
        index.cp.niter = TRAINING_ROUNDS
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.nprobe = layout.nprobe
        index.own_fields = True
        quantizer.this.disown()  # the IVF index owns its quantizer now
        return cls(dim, layout, index)

    def tune_nprobe(
        self, queries: np.ndarray, exact: np.ndarray, target: float = RECALL_TARGET
    ) -> float:
        """Set ``nprobe`` to the smallest power of two whose recall@k on ``queries`` reaches
        ``target``, given their exact top-k ids ``exact``; returns that recall.

        Clustered collections (real embeddings) often need only a handful of lists, and each
        list probed costs latency, so the search starts at one.
        """
        if self.layout.kind == "flat":
            return 1.0
        data = np.ascontiguousarray(queries, dtype=np.float32)
        k = exact.shape[1]
        nprobe, recall = 1, 0.0
        while True:
            self._index.nprobe = min(nprobe, self.layout.nlist)
            _, found = self._index.search(data, k)
            recall = float(
                np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)])
            )
            if recall >= target or nprobe >= self.layout.nlist:
                break
            nprobe *= 2
        self.layout = replace(self.layout, nprobe=int(self._index.nprobe))
        return recall

    @property
    def count(self) -> int:
        """Vectors indexed."""
        return int(self._index.ntotal)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Index ``vectors`` under ids ``rows``."""
        if len(rows):
            data = np.ascontiguousarray(vectors, dtype=np.float32)
            self._index.add_with_ids(data, np.asarray(rows, dtype=np.int64))

    def remove(self, rows: list[int]) -> None:
        """Drop the vectors of ids ``rows`` (unknown ids are ignored)."""
        if rows:
            self._index.remove_ids(np.asarray(rows, dtype=np.int64))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ``(scores, rows)`` per query; rows are -1 where fewer than ``k`` exist.

        ``allowed`` restricts the search to those ids (a metadata filter's survivors).
        """
        faiss = _faiss()

        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            if self.layout.kind == "flat":
                params = faiss.SearchParameters(sel=selector)
            else:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.layout.nprobe)
        data = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self._index.search(data, k, params=params)
        return scores, rows

    # ------------------------------------------------------------ snapshots
    def save(self, directory: Path, generation: int) -> None:
        """Write the index and the store generation it reflects, each file atomically."""
        faiss = _faiss()

        data = faiss.serialize_index(self._index)
        atomic_write(directory / "vectors.faiss", data.tobytes())
        state = {"generation": generation, "dim": self.dim, "layout": asdict(self.layout)}
        atomic_write(directory / "vectors.json", json.dumps(state).encode())

    @classmethod
    def load(cls, directory: Path) -> tuple[VectorIndex, int] | None:
        """The saved index and its generation, or ``None`` if there is no usable snapshot."""
        faiss = _faiss()

        try:
            state = json.loads((directory / "vectors.json").read_text())
            data = np.frombuffer((directory / "vectors.faiss").read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except (OSError, ValueError, RuntimeError):
            return None
        layout = Layout(**state["layout"])
        if layout.kind != "flat":
            index.nprobe = layout.nprobe
        if not layout.trained_count:  # a snapshot from before the field existed
            layout = replace(layout, trained_count=int(index.ntotal))
        return cls(int(state["dim"]), layout, index), int(state["generation"])


def _faiss() -> Any:
    # FAISS is a SWIG module whose bundled type stubs miss most keyword arguments.
    import faiss

    return faiss
