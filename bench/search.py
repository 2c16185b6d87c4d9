"""Index build time, memory, query latency and recall at a million vectors.

Prints one JSON document. For two collections of 1,000,000 512-d unit vectors — a mixture of
1,000 Gaussian clusters (like CLIP embeddings: neighbours share a cluster) and uniform random
directions (the hard case: no structure to exploit) — with 1,000 queries drawn the same way
but not from the indexed set:

* building a clipserve :class:`~clipserve.index.Index` (SQLite store, then the FAISS layout
  chosen for the size: IVF, trained and nprobe-tuned on the collection itself), and an exact
  flat layout beside it: seconds and resident memory;
* single-query latency p50/p99 of both, and recall@10 of the IVF against exact search.

Targets on the clustered set: ANN p50 ≤ 2 ms with recall@10 ≥ 0.95; exact p50 reported.
Usage: ``python bench/search.py [--count 1000000]`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.index import Catalog, NewItem
from clipserve.index.vectors import VectorIndex

DIM = 512
CLUSTERS = 1000
# Per-coordinate noise around a cluster centre: a member's cosine to its centre is about 0.75,
# and two members of a cluster about 0.55 — the spread of CLIP image embeddings of one topic.
NOISE = 0.04
BATCH = 20_000


def unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def clustered(count: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    members = centres[rng.integers(0, len(centres), count)]
    return unit(members + rng.normal(scale=NOISE, size=(count, DIM)).astype(np.float32))


def uniform(count: int, rng: np.random.Generator) -> np.ndarray:
    return unit(rng.normal(size=(count, DIM)).astype(np.float32))


def peak_rss_bytes() -> int:
    """The most memory this process has held (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def latencies_ms(search: Any, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None, :])
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), float(np.percentile(times, 99))


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))


def measure(name: str, vectors: np.ndarray, queries: np.ndarray, root: Path) -> dict[str, Any]:
    """Build both layouts over ``vectors`` and measure them with ``queries``."""
    start = time.perf_counter()
    exact = VectorIndex.empty(DIM)
    exact.add(np.arange(len(vectors), dtype=np.int64), vectors)
    exact_build = time.perf_counter() - start
    exact_memory = exact.count * DIM * 4  # the flat index holds the vectors, nothing else

    catalog = Catalog(root / name)
    index = catalog.create(name, model="bench", dim=DIM)
    start = time.perf_counter()
    for offset in range(0, len(vectors), BATCH):
        chunk = vectors[offset : offset + BATCH]
        index.upsert(
            [NewItem(str(offset + i), "vector", {}, row) for i, row in enumerate(chunk)],
            maintain=False,
        )
    store_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index.rebuild()
    layout_seconds = time.perf_counter() - start
    described = index.describe()
    store_bytes = sum(path.stat().st_size for path in (root / name).rglob("*") if path.is_file())

    truth = exact.search(queries, 10)[1]
    ann_found = np.array(
        [[int(hit.id) for hit in hits] for hits in index.search(queries, k=10)], dtype=np.int64
    )
    exact_p50, exact_p99 = latencies_ms(lambda q: exact.search(q, 10), queries[:200])
    ann_p50, ann_p99 = latencies_ms(lambda q: index.search(q, k=10), queries)
    catalog.close()
    return {
        "vectors": len(vectors),
        "exact": {
            "build_seconds": exact_build,
            "memory_bytes": exact_memory,
            "p50_ms": exact_p50,
            "p99_ms": exact_p99,
            "recall_at_10": 1.0,
        },
        "ann": {
            "layout": described["layout"],
            "nlist": described["nlist"],
            "nprobe": described["nprobe"],
            "store_write_seconds": store_seconds,
            "layout_build_seconds": layout_seconds,
            "on_disk_bytes": store_bytes,
            "p50_ms": ann_p50,
            "p99_ms": ann_p99,
            "recall_at_10": recall_at_10(ann_found, truth),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(CLUSTERS, DIM)).astype(np.float32))
    root = Path(tempfile.mkdtemp(prefix="clipserve-bench-search-"))
    try:
        collections = {
            "clustered": (
                clustered(args.count, centres, rng),
                clustered(args.queries, centres, rng),
            ),
            "uniform": (uniform(args.count, rng), uniform(args.queries, rng)),
        }
        results = {}
        for name in list(collections):
            vectors, queries = collections.pop(name)
            results[name] = measure(name, vectors, queries, root)
            del vectors
    finally:
        shutil.rmtree(root, ignore_errors=True)
    clustered_ann = results["clustered"]["ann"]
    print(
        json.dumps(
            {
                "benchmark": "search",
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                },
                "dim": DIM,
                "clusters": CLUSTERS,
                "queries": args.queries,
                **results,
                "peak_rss_bytes": peak_rss_bytes(),
                "targets": {
                    "clustered_ann_p50_ms": clustered_ann["p50_ms"],
                    "clustered_ann_p50_target_ms": 2.0,
                    "clustered_ann_recall_at_10": clustered_ann["recall_at_10"],
                    "clustered_ann_recall_target": 0.95,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
