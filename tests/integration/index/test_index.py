"""The persistent index: search, filters, deletes and updates, restarts, layouts, crashes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipserve.errors import InvalidInputError
from clipserve.index import Catalog, IndexExistsError, IndexNotFoundError, NewItem

DIM = 32


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def clustered(count: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors from a mixture of Gaussian clusters (like real embeddings, unlike noise)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, DIM)))
    members = centres[rng.integers(0, clusters, count)]
    return unit(members + rng.normal(scale=0.25, size=(count, DIM)))


def items(vectors: np.ndarray, prefix: str = "item", start: int = 0) -> list[NewItem]:
    return [
        NewItem(
            f"{prefix}-{start + i}",
            "image" if (start + i) % 4 else "text",
            {"n": start + i, "parity": "even" if (start + i) % 2 == 0 else "odd"},
            vector,
        )
        for i, vector in enumerate(vectors)
    ]


def test_search_finds_each_item_and_filters_narrow_it(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    index = catalog.create("photos", model="test-model", dim=DIM)
    vectors = clustered(400, 10)
    index.upsert(items(vectors))
    assert len(index) == 400 and catalog.names() == ["photos"]

    hits = index.search(vectors[:50], k=3)
    assert [found[0].id for found in hits] == [f"item-{i}" for i in range(50)]
    assert all(found[0].score == pytest.approx(1.0, abs=1e-5) for found in hits)
    assert all(found[0].score >= found[1].score >= found[2].score for found in hits)

    odd = index.search(vectors[0], k=5, filters={"parity": "odd"})[0]
    assert len(odd) == 5 and all(hit.metadata["parity"] == "odd" for hit in odd)
    ranged = index.search(vectors[0], k=400, filters={"n": {"gte": 100, "lt": 110}})[0]
    assert sorted(hit.metadata["n"] for hit in ranged) == list(range(100, 110))
    texts = index.search(vectors[0], k=400, modality="text")[0]
    assert len(texts) == 100 and {hit.modality for hit in texts} == {"text"}
    assert index.search(vectors[0], k=5, filters={"parity": "none"}) == [[]]
    # k larger than the collection: everything, once.
    assert len({hit.id for hit in index.search(vectors[0], k=1000)[0]}) == 400


def test_deletes_and_updates_show_at_once_and_after_a_restart(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    index = catalog.create("photos", model="test-model", dim=DIM)
    vectors = clustered(100, 5, seed=1)
    index.upsert(items(vectors))
    assert index.delete(["item-3", "item-4", "no-such-item"]) == 2
    moved = unit(np.ones(DIM))
    index.upsert([NewItem("item-7", "text", {"n": 7, "edited": True}, moved)])

    def check(current: object) -> None:
        assert len(current) == 98  # type: ignore[arg-type]
        assert current.get("item-3") is None  # type: ignore[attr-defined]
        assert current.get("item-7").metadata == {"n": 7, "edited": True}  # type: ignore[attr-defined]
        top = current.search(moved, k=1)[0][0]  # type: ignore[attr-defined]
        assert (top.id, top.modality) == ("item-7", "text")
        found = {hit.id for hit in current.search(vectors[3], k=100)[0]}  # type: ignore[attr-defined]
        assert "item-3" not in found and "item-4" not in found

    check(index)
    catalog.close()
    check(Catalog(tmp_path).open("photos"))


def test_a_stale_or_missing_snapshot_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    index = catalog.create("photos", model="test-model", dim=DIM)
    vectors = clustered(60, 3, seed=2)
    index.upsert(items(vectors))
    index.save()
    index.upsert(items(clustered(5, 1, seed=3), prefix="late"))  # not in the snapshot
    # No close(): as if the process died here.
    reopened = Catalog(tmp_path).open("photos")
    assert len(reopened) == 65
    assert reopened.search(vectors[10], k=1)[0][0].id == "item-10"
    (tmp_path / "photos" / "vectors.faiss").write_bytes(b"garbage")
    again = Catalog(tmp_path).open("photos")
    assert again.search(vectors[11], k=1)[0][0].id == "item-11"


def test_a_large_collection_moves_to_ivf_and_keeps_recall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("clipserve.index.vectors.EXACT_LIMIT", 1000)
    catalog = Catalog(tmp_path)
    index = catalog.create("big", model="test-model", dim=DIM)
    vectors = clustered(6000, 40, seed=4)
    for start in range(0, 6000, 1500):
        index.upsert(items(vectors[start : start + 1500], start=start))
    assert index.describe()["layout"] == "ivf"
    queries = unit(vectors[:200] + np.random.default_rng(5).normal(scale=0.1, size=(200, DIM)))
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = index.search(queries, k=10)
    recall = np.mean(
        [
            len({int(hit.id.split("-")[1]) for hit in hits} & set(truth.tolist())) / 10
            for hits, truth in zip(found, exact, strict=True)
        ]
    )
    assert recall >= 0.9
    # A selective filter is answered exactly, even on the IVF layout.
    narrow = index.search(queries[0], k=5, filters={"n": {"lt": 30}})[0]
    truth = np.argsort(-(queries[0] @ vectors[:30].T))[:5]
    assert [hit.metadata["n"] for hit in narrow] == truth.tolist()
    catalog.close()
    assert Catalog(tmp_path).open("big").describe()["layout"] == "ivf"


def test_bad_requests_are_clear_errors(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    index = catalog.create("photos", model="test-model", dim=DIM)
    vector = unit(np.ones(DIM))
    with pytest.raises(InvalidInputError, match=r"items\[0\]: a vector must have 32"):
        index.upsert([NewItem("a", "image", {}, np.ones(8, np.float32))])
    with pytest.raises(InvalidInputError, match="appears twice"):
        index.upsert([NewItem("a", "image", {}, vector), NewItem("a", "image", {}, vector)])
    with pytest.raises(InvalidInputError, match="modality"):
        index.upsert([NewItem("a", "video", {}, vector)])
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search(vector, k=0)
    with pytest.raises(InvalidInputError, match="32 values"):
        index.search(np.ones(5, np.float32))
    with pytest.raises(IndexExistsError):
        catalog.create("photos", model="test-model", dim=DIM)
    with pytest.raises(IndexExistsError, match="not other-model"):
        catalog.create("photos", model="other-model", dim=DIM, exist_ok=True)
    with pytest.raises(IndexNotFoundError):
        catalog.open("nothing")
    with pytest.raises(InvalidInputError, match="index name"):
        catalog.open("../escape")
    with pytest.raises(InvalidInputError, match="index name") as refused:
        catalog.open("x" * 100_000)
    assert len(str(refused.value)) < 200  # a huge name is not echoed whole
    assert len(index) == 0  # nothing half-written by the refused requests


WRITER = """
import json, sys
import numpy as np
from pathlib import Path
from clipserve.index import Catalog, NewItem

catalog = Catalog(Path(sys.argv[1]))
index = catalog.create("log", model="m", dim=16, exist_ok=True)
rng = np.random.default_rng(int(sys.argv[2]))
for step in range(100000):
    batch = [f"w{sys.argv[2]}-{step}-{i}" for i in range(5)]
    vectors = rng.normal(size=(5, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.upsert([NewItem(item, "vector", {"step": step}, v) for item, v in zip(batch, vectors)])
    if step % 3 == 2:
        index.delete([batch[0]])
        print(json.dumps({"deleted": batch[0]}), flush=True)
    print(json.dumps({"added": batch}), flush=True)
"""


def test_sigkill_mid_write_leaves_an_index_holding_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(7)
    added: set[str] = set()
    deleted: set[str] = set()
    for run in range(5):
        process = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "data"), str(run)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        time.sleep(rng.uniform(1.5, 3.0))
        process.kill()
        output, _ = process.communicate(timeout=30)
        for line in output.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill: not acknowledged
            added.update(event.get("added", []))
            if "deleted" in event:
                deleted.add(event["deleted"])
        # Every run opens what the last one left: it must open and hold every acknowledged write.
        catalog = Catalog(tmp_path / "data")
        index = catalog.open("log")
        present = {item for item in added if index.get(item) is not None}
        assert present >= added - deleted
        assert not (present & deleted)
        # The vectors agree with the store: FAISS holds exactly the stored items.
        described = index.describe()
        assert described["indexed"] == described["count"] == len(index)
        query = np.ones(16, np.float32) / 4.0
        assert len(index.search(query, k=10_000)[0]) == min(len(index), 10_000)
        assert len(index.search(query, k=10_000, modality="vector")[0]) == min(len(index), 10_000)
        catalog.close()
    assert len(added) > 50


def test_filter_records_why_an_image_was_not_copied(tmp_path: Path) -> None:
    from clipserve.index.filter import filter_index

    index = Catalog(tmp_path / "indexes").create("f", model="test-model", dim=DIM)
    vectors = clustered(3, 1, seed=9)
    index.upsert(
        [
            NewItem("api", "image", {}, vectors[0]),
            NewItem("gone", "image", {"path": str(tmp_path / "missing.jpg")}, vectors[1]),
            NewItem("here", "image", {"path": str(tmp_path / "here.png")}, vectors[2]),
        ]
    )
    (tmp_path / "here.png").write_bytes(b"png bytes")
    result = filter_index(index, vectors[0], tmp_path / "out", num_results=3)
    assert (result.matched, result.copied, result.skipped) == (3, 1, 2)
    log = {
        entry["id"]: entry
        for entry in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())
    }
    assert "no source path recorded" in log["api"]["skipped"]
    assert "cannot copy" in log["gone"]["skipped"]
    assert (tmp_path / "out" / log["here"]["file"]).read_bytes() == b"png bytes"
    with pytest.raises(InvalidInputError, match="exactly one of"):
        filter_index(index, vectors[0], tmp_path / "out")
