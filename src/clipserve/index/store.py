"""The durable half of an index: SQLite holds every item — id, modality, metadata and vector.

SQLite in WAL mode with ``synchronous=FULL`` makes each write transaction atomic and durable:
once :meth:`ItemStore.write` returns, the change survives a killed process or a power cut;
a transaction interrupted half-way is rolled back on the next open. The FAISS structure is
derived from this table and can always be rebuilt from it (see :mod:`clipserve.index.vectors`).
Every committed write bumps ``generation``, which tells a saved FAISS snapshot whether it is
current.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import InvalidInputError, StorageError
from clipserve.index.filters import where_clause

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS thumbnails (id TEXT PRIMARY KEY, jpeg BLOB NOT NULL);
"""
#: Primary SQLite result codes of a write the disk could not take: SQLITE_IOERR (10; a write
#: over RLIMIT_FSIZE fails with EFBIG and surfaces as SQLITE_IOERR_WRITE) and SQLITE_FULL (13).
_STORAGE_CODES = frozenset({10, 13})


@dataclass(frozen=True)
class StoredItem:
    """One item as stored: ``row`` is its FAISS id."""

    row: int
    id: str
    modality: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class NewItem:
    """An item to add or replace: its id, modality, metadata, (normalised) vector and, for an
    image, optionally a small JPEG to show it by."""

    id: str
    modality: str
    metadata: dict[str, Any]
    vector: np.ndarray
    thumbnail: bytes | None = None


class ItemStore:
    """SQLite storage of one index's items; thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            with self._storage_errors():
                # A 512-d vector row is just over 2 KiB: on SQLite's default 4 KiB pages only
                # one fits per page, doubling the file. 16 KiB pages hold seven. (No effect on
                # existing files.)
                self._db.execute("PRAGMA page_size=16384")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ info
    def info(self, key: str) -> str | None:
        """A value of the ``info`` table (model, dim, generation, ...)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_info(self, values: dict[str, str]) -> None:
        """Write ``info`` values in one transaction."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO info (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    @property
    def generation(self) -> int:
        """How many write transactions the store has committed."""
        return int(self.info("generation") or 0)

    # ------------------------------------------------------------------ writes
    def write(
        self, upserts: Sequence[NewItem], deletions: Sequence[str] = ()
    ) -> tuple[list[int], list[int]]:
        """Replace or add ``upserts`` and delete ``deletions``, atomically.

        Returns:
            ``(removed_rows, added_rows)``: the FAISS ids to drop (deleted or replaced items)
            and the new ids of ``upserts``, in order.
        """
        with self._transaction():
            ids = [*deletions, *(item.id for item in upserts)]
            removed = self._rows_of(ids)
            if removed:
                marks = ", ".join("?" * len(removed))
                self._db.execute(f"DELETE FROM items WHERE row IN ({marks})", removed)
            self._db.executemany("DELETE FROM thumbnails WHERE id = ?", [(i,) for i in ids])
            added = [self._insert(item) for item in upserts]
            self._db.executemany(
                "INSERT INTO thumbnails (id, jpeg) VALUES (?, ?)",
                [(item.id, item.thumbnail) for item in upserts if item.thumbnail is not None],
            )
            self._db.execute(
                "INSERT INTO info (key, value) VALUES ('generation', '1') ON CONFLICT(key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
        return removed, added

    def _insert(self, item: NewItem) -> int:
        vector = np.ascontiguousarray(item.vector, dtype=np.float32)
        cursor = self._db.execute(
            "INSERT INTO items (id, modality, metadata, vector) VALUES (?, ?, ?, ?)",
            (item.id, item.modality, json.dumps(item.metadata), vector.tobytes()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _rows_of(self, ids: Sequence[str]) -> list[int]:
        rows: list[int] = []
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT row FROM items WHERE id IN ({marks})"
            rows += [row for (row,) in self._db.execute(query, chunk)]
        return rows

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock, self._storage_errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself after some failures (a COMMIT the disk could not
                # take): a second ROLLBACK would raise and hide the real error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """Turn SQLite's "disk full" and "disk I/O error" into a :class:`StorageError`."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0)
            if code & 0xFF not in _STORAGE_CODES:
                raise
            name = getattr(exc, "sqlite_errorname", "")
            raise StorageError(
                f"cannot write {self.path}: {exc} ({name}): the disk is full, a file size "
                "limit was reached or the disk failed; this write was not applied, earlier "
                "ones are intact"
            ) from exc

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        """Items stored."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def items(self, rows: Sequence[int]) -> dict[int, StoredItem]:
        """The items of FAISS ids ``rows`` (missing ones are left out)."""
        found: dict[int, StoredItem] = {}
        with self._lock:
            for start in range(0, len(rows), 500):
                chunk = list(rows[start : start + 500])
                marks = ", ".join("?" * len(chunk))
                query = f"SELECT row, id, modality, metadata FROM items WHERE row IN ({marks})"
                for row, item_id, modality, metadata in self._db.execute(query, chunk):
                    found[row] = StoredItem(row, item_id, modality, json.loads(metadata))
        return found

    def get(self, item_id: str) -> StoredItem | None:
        """The item with id ``item_id``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT row, id, modality, metadata FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        return None if row is None else StoredItem(row[0], row[1], row[2], json.loads(row[3]))

    def thumbnail(self, item_id: str) -> bytes | None:
        """The JPEG thumbnail of ``item_id``, if one was stored."""
        with self._lock:
            row = self._db.execute(
                "SELECT jpeg FROM thumbnails WHERE id = ?", (item_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored vector of ``item_id``, if the item exists."""
        dim = int(self.info("dim") or 0)
        with self._lock:
            row = self._db.execute("SELECT vector FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).reshape(dim)

    def matching_rows(self, filters: dict[str, Any] | None, modality: str | None) -> list[int]:
        """FAISS ids of the items that pass ``filters`` and have ``modality`` (if given)."""
        sql, parameters = where_clause(filters)
        if modality is not None:
            sql, parameters = f"({sql}) AND modality = ?", [*parameters, modality]
        with self._lock:
            try:
                cursor = self._db.execute(f"SELECT row FROM items WHERE {sql}", parameters)
                return [row for (row,) in cursor]
            except sqlite3.OperationalError as exc:  # e.g. comparing malformed JSON
                raise InvalidInputError(f"filter cannot be applied: {exc}") from exc

    def vectors(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All ``(rows, vectors)``, in batches: what a FAISS rebuild reads."""
        dim = int(self.info("dim") or 0)
        with self._lock:
            cursor = self._db.execute("SELECT row, vector FROM items ORDER BY row")
            while chunk := cursor.fetchmany(batch):
                rows = np.array([row for row, _ in chunk], dtype=np.int64)
                data = b"".join(vector for _, vector in chunk)
                yield rows, np.frombuffer(data, dtype=np.float32).reshape(len(chunk), dim)

    def vectors_of(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, vectors)`` of the given FAISS ids that exist."""
        dim = int(self.info("dim") or 0)
        found_rows: list[int] = []
        blobs: list[bytes] = []
        with self._lock:
            for start in range(0, len(rows), 500):
                chunk = list(rows[start : start + 500])
                marks = ", ".join("?" * len(chunk))
                query = f"SELECT row, vector FROM items WHERE row IN ({marks})"
                for row, vector in self._db.execute(query, chunk):
                    found_rows.append(row)
                    blobs.append(vector)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)
        return np.asarray(found_rows, dtype=np.int64), vectors

    def checkpoint(self) -> None:
        """Move the write-ahead log into the database file and truncate it (after a bulk load
        the log can be as large as the biggest transaction)."""
        with self._lock, self._storage_errors():
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the connection (committed data is already on disk)."""
        with self._lock:
            self._db.close()
