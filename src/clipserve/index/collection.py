"""A persistent, incremental vector index with metadata: :class:`Index` and :class:`Catalog`.

An index directory holds ``items.sqlite`` (the truth: every item's id, modality, metadata and
vector, written in atomic, durable transactions) and a FAISS snapshot (``vectors.faiss`` +
``vectors.json``) tagged with the store generation it reflects. Opening an index loads the
snapshot when it is current and rebuilds it from the store otherwise, so a process killed at
any point leaves an index that opens and holds every acknowledged write.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import ClipServeError, InvalidInputError, StorageError
from clipserve.index.store import ItemStore, NewItem, StoredItem
from clipserve.index.vectors import DEFAULT_MEMORY_BUDGET, VectorIndex, choose_layout

#: Filters that leave at most this many items are answered exactly from the stored vectors.
EXACT_FILTER_LIMIT = 20_000
#: Stored vectors used as queries to tune an IVF layout's nprobe.
TUNING_QUERIES = 256
#: Save a FAISS snapshot after this many changed items (a rebuild replays the rest).
SNAPSHOT_EVERY = 50_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STORE_FILE = "items.sqlite"
MODALITIES = ("image", "text", "vector")

log = logging.getLogger("clipserve.index")


class IndexNotFoundError(ClipServeError):
    """No index of that name."""

    client_error = True


class ItemNotFoundError(ClipServeError):
    """No item with that id in the index."""

    client_error = True


class IndexExistsError(ClipServeError):
    """An index of that name exists already."""

    client_error = True


@dataclass(frozen=True)
class Hit:
    """A search result: the item and its cosine similarity to the query."""

    id: str
    score: float
    modality: str
    metadata: dict[str, Any]


class Index:
    """One named index. Thread-safe; writes are durable when a call returns.

    Use :meth:`Catalog.create` / :meth:`Catalog.open` rather than the constructor.
    """

    def __init__(self, directory: Path, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.directory = directory
        self.name = directory.name
        self._lock = threading.RLock()
        self._store = ItemStore(directory / _STORE_FILE)
        self.model = self._store.info("model") or ""
        self.dim = int(self._store.info("dim") or 0)
        if not self.dim:
            raise IndexNotFoundError(f"{directory} is not an index (no model or dimension)")
        self._memory_budget = memory_budget
        self._vectors = self._load_or_rebuild()
        self._unsaved = 0

    # ------------------------------------------------------------ vectors cache
    def _load_or_rebuild(self) -> VectorIndex:
        loaded = VectorIndex.load(self.directory)
        generation = self._store.generation
        if loaded is not None and loaded[1] == generation and loaded[0].dim == self.dim:
            return loaded[0]
        vectors = self._rebuilt()
        self._save_snapshot(vectors, generation)
        return vectors

    def _rebuilt(self) -> VectorIndex:
        count = self._store.count()
        layout = choose_layout(count, self.dim, self._memory_budget)
        if layout.kind == "flat":
            vectors = VectorIndex.empty(self.dim)
            for rows, batch in self._store.vectors():
                vectors.add(rows, batch)
            return vectors
        # k-means needs a few dozen points per centroid; more only costs time.
        sample = self._sample(40 * layout.nlist)
        vectors = VectorIndex.trained(self.dim, layout, sample)
        # The tuning queries come from the sample already read; their exact answers are
        # gathered in the same pass over the store that fills the index.
        step = max(1, len(sample) // TUNING_QUERIES)
        exact = _TopK(_near(sample[::step][:TUNING_QUERIES]), k=10)
        for rows, batch in self._store.vectors():
            vectors.add(rows, batch)
            exact.update(rows, batch)
        vectors.tune_nprobe(exact.queries, exact.rows)
        return vectors

    def _sample(self, wanted: int) -> np.ndarray:
        """About ``wanted`` stored vectors spread evenly over the collection."""
        step = max(1, self._store.count() // max(1, wanted))
        return np.concatenate([batch[::step] for _, batch in self._store.vectors()])[:wanted]

    # ------------------------------------------------------------ writes
    def upsert(self, items: Sequence[NewItem], *, maintain: bool = True) -> None:
        """Add ``items``; an item whose id exists replaces it. Durable on return.

        ``maintain=False`` defers re-choosing the layout (a bulk load calls :meth:`rebuild`
        once at the end instead of retraining as the collection grows).
        """
        self._check_items(items)
        self._write(items, (), maintain=maintain)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete the items with ``ids``; returns how many existed. Durable on return."""
        return len(self._write((), ids)[0])

    def _write(
        self, upserts: Sequence[NewItem], deletions: Sequence[str], *, maintain: bool = True
    ) -> tuple[list[int], list[int]]:
        with self._lock:
            removed, added = self._store.write(upserts, deletions)
            self._vectors.remove(removed)
            if upserts:
                vectors = np.stack([item.vector for item in upserts])
                self._vectors.add(np.asarray(added, dtype=np.int64), vectors)
            self._unsaved += len(removed) + len(added)
            if maintain:
                self._maintain()
        return removed, added

    def _maintain(self) -> None:
        count, current = self._vectors.count, self._vectors.layout
        layout = choose_layout(count, self.dim, self._memory_budget)
        # A new kind, or an IVF that has grown four-fold since it was trained: retrain.
        outgrown = current.kind != "flat" and count > 4 * current.trained_count
        if layout.kind != current.kind or outgrown:
            self._vectors = self._rebuilt()
            self._save_quietly()
        elif self._unsaved >= SNAPSHOT_EVERY:
            self._save_quietly()

    def rebuild(self) -> None:
        """Choose the layout for the current size, retrain and retune it from the store, and
        save a snapshot (after a bulk load with ``maintain=False``)."""
        with self._lock:
            self._vectors = self._rebuilt()
            self.save()

    def save(self) -> None:
        """Write a FAISS snapshot now (it spares the next open a rebuild).

        Raises:
            StorageError: The disk could not take it (the previous snapshot stays; the next
                open rebuilds from the store, which holds every write).
        """
        with self._lock:
            self._vectors.save(self.directory, self._store.generation)
            self._store.checkpoint()
            self._unsaved = 0

    def _save_quietly(self) -> None:
        # The snapshot is a cache of the store: failing to write it must not fail a write the
        # store has already made durable (nor an open, nor a close).
        try:
            self.save()
        except StorageError as exc:
            _snapshot_not_saved(self.name, exc)

    def _save_snapshot(self, vectors: VectorIndex, generation: int) -> None:
        try:
            vectors.save(self.directory, generation)
        except StorageError as exc:
            _snapshot_not_saved(self.name, exc)

    def _check_items(self, items: Sequence[NewItem]) -> None:
        seen: set[str] = set()
        for position, item in enumerate(items):
            where = f"items[{position}]"
            if not isinstance(item.id, str) or not item.id or len(item.id) > 512:
                raise InvalidInputError(f"{where}: an id is a non-empty string of ≤ 512 characters")
            if item.id in seen:
                raise InvalidInputError(f"{where}: id {item.id!r} appears twice in one request")
            seen.add(item.id)
            if item.modality not in MODALITIES:
                raise InvalidInputError(f"{where}: modality must be one of {', '.join(MODALITIES)}")
            if item.vector.shape != (self.dim,) or not np.isfinite(item.vector).all():
                raise InvalidInputError(
                    f"{where}: a vector must have {self.dim} finite values, got shape "
                    f"{tuple(item.vector.shape)}"
                )
            try:  # stored as JSON that SQLite's JSON functions (filters) must read back
                # and that answers must carry: UTF-8 has no lone surrogates ("\ud800").
                json.dumps(item.metadata, allow_nan=False, ensure_ascii=False).encode()
            except (TypeError, ValueError, RecursionError) as exc:
                raise InvalidInputError(
                    f"{where}: metadata must be plain JSON (no NaN or infinite numbers, no "
                    f"lone surrogates): {exc}"
                ) from exc

    # ------------------------------------------------------------ reads
    def __len__(self) -> int:
        # FAISS's count: constant time, and always equal to the store's (which SQLite counts
        # by scanning the table).
        with self._lock:
            return self._vectors.count

    def get(self, item_id: str) -> StoredItem | None:
        """The item with ``item_id``, or ``None``."""
        return self._store.get(item_id)

    def thumbnail(self, item_id: str) -> bytes | None:
        """The item's JPEG thumbnail, if it was added with one."""
        return self._store.thumbnail(item_id)

    def vector(self, item_id: str) -> np.ndarray:
        """The item's stored vector (to search for items like it)."""
        vector = self._store.vector(item_id)
        if vector is None:
            raise ItemNotFoundError(f"index {self.name!r} has no item {item_id!r}")
        return vector

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        filters: dict[str, Any] | None = None,
        modality: str | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest items of each query vector, best first.

        Args:
            queries: ``[Q, dim]`` (or ``[dim]``) query vectors, normalised.
            k: Results per query (1 to 10,000).
            filters: Metadata conditions (see :mod:`clipserve.index.filters`).
            modality: Only items of this modality (``image``, ``text``, ``vector``).
        """
        matrix = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        self._check_query(matrix, k, modality)
        allowed: np.ndarray | None = None
        with self._lock:
            if filters or modality:
                rows = self._store.matching_rows(filters, modality)
                if not rows:
                    return [[] for _ in matrix]
                if self._vectors.layout.kind != "flat" and len(rows) <= EXACT_FILTER_LIMIT:
                    return self._exact(matrix, k, rows)
                allowed = np.asarray(rows, dtype=np.int64)
            scores, found = self._vectors.search(matrix, min(k, max(1, len(self))), allowed)
            return self._hits(scores, found)

    def _exact(self, queries: np.ndarray, k: int, rows: list[int]) -> list[list[Hit]]:
        # A selective filter on an IVF index: few of the probed lists hold survivors, so
        # score the survivors directly instead.
        candidate_rows, vectors = self._store.vectors_of(rows)
        scores = queries @ vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return self._hits(np.take_along_axis(scores, top, axis=1), candidate_rows[top])

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        items = self._store.items([int(row) for row in np.unique(rows) if row >= 0])
        results = []
        for query_scores, query_rows in zip(scores, rows, strict=True):
            hits = []
            for score, row in zip(query_scores, query_rows, strict=True):
                item = items.get(int(row))
                if item is not None:
                    hits.append(Hit(item.id, float(score), item.modality, item.metadata))
            results.append(hits)
        return results

    def _check_query(self, queries: np.ndarray, k: int, modality: str | None) -> None:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidInputError(
                f"a query vector must have {self.dim} values, got shape {tuple(queries.shape)}"
            )
        if not np.isfinite(queries).all():
            raise InvalidInputError("a query vector has NaN or infinite values")
        if not 1 <= k <= 10_000:
            raise InvalidInputError(f"k must be between 1 and 10000, got {k}")
        if modality is not None and modality not in MODALITIES:
            raise InvalidInputError(f"modality must be one of {', '.join(MODALITIES)}")

    def describe(self) -> dict[str, Any]:
        """Name, model, dimension, items stored and indexed (always equal), and layout."""
        layout = self._vectors.layout
        return {
            "name": self.name,
            "model": self.model,
            "dim": self.dim,
            "count": self._store.count(),
            "indexed": self._vectors.count,
            "layout": layout.kind,
            "nlist": layout.nlist or None,
            "nprobe": layout.nprobe or None,
        }

    def close(self) -> None:
        """Save a snapshot if anything changed since the last one (if the disk can take it),
        and close the store."""
        with self._lock:
            if self._unsaved:
                self._save_quietly()
            self._store.close()


class Catalog:
    """The named indexes under one data directory (``<data_dir>/<name>/``)."""

    def __init__(self, root: Path, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.root = root
        self._memory_budget = memory_budget
        self._open: dict[str, Index] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The indexes present, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / _STORE_FILE).is_file())

    def create(self, name: str, *, model: str, dim: int, exist_ok: bool = False) -> Index:
        """Create index ``name`` for vectors of ``model`` (``dim`` floats)."""
        directory = self.root / _checked_name(name)
        with self._lock:
            if (directory / _STORE_FILE).is_file():
                if not exist_ok:
                    raise IndexExistsError(f"index {name!r} exists already")
            else:
                _create_store(directory, {"model": model, "dim": str(dim), "generation": "0"})
        index = self.open(name)
        if index.model != model or index.dim != dim:
            raise IndexExistsError(
                f"index {name!r} holds {index.model} ({index.dim}-d) vectors, not {model} ({dim}-d)"
            )
        return index

    def open(self, name: str) -> Index:
        """The index ``name`` (opened once and kept)."""
        directory = self.root / _checked_name(name)
        with self._lock:
            if name not in self._open:
                if not (directory / _STORE_FILE).is_file():
                    raise IndexNotFoundError(f"no index named {name!r}")
                self._open[name] = Index(directory, self._memory_budget)
            return self._open[name]

    def close(self) -> None:
        """Close every open index (saving snapshots)."""
        with self._lock:
            for index in self._open.values():
                index.close()
            self._open.clear()


class _TopK:
    """The exact top-``k`` ids of fixed queries, updated batch by batch over a collection."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = queries
        self._k = k
        self._scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.rows = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Take ``vectors`` (ids ``rows``) into account."""
        scores = np.concatenate([self._scores, self.queries @ vectors.T], axis=1)
        candidates = np.concatenate(
            [self.rows, np.broadcast_to(rows, (len(self.queries), len(rows)))], axis=1
        )
        top = np.argpartition(-scores, self._k - 1, axis=1)[:, : self._k]
        self._scores = np.take_along_axis(scores, top, axis=1)
        self.rows = np.take_along_axis(candidates, top, axis=1)


def _near(vectors: np.ndarray, distance: float = 0.3, seed: int = 0) -> np.ndarray:
    """Unit vectors about ``distance`` away from ``vectors``: queries that are not themselves
    in the index, so that tuning cannot lean on exact self-matches."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=vectors.shape).astype(np.float32)
    noise *= distance / np.linalg.norm(noise, axis=1, keepdims=True)
    moved = vectors + noise
    normalised: np.ndarray = moved / np.linalg.norm(moved, axis=1, keepdims=True)
    return normalised


def _create_store(directory: Path, info: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        store = ItemStore(directory / _STORE_FILE)
        try:
            store.set_info(info)
        finally:
            store.close()
    except StorageError:
        # A half-created index (a store without its model and dimension) must not be listed.
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _snapshot_not_saved(name: str, exc: StorageError) -> None:
    log.warning("index %r: snapshot not saved, the next open rebuilds it: %s", name, exc)


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "…"  # not echoed whole
        raise InvalidInputError(
            f"index name {shown}: 1 to 64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name
