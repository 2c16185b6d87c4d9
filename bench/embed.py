"""Throughput of ``clipserve embed`` on a folder of photos against the model alone.

Prints one JSON document; both figures come from this one run on this machine:

* ``model_only_images_per_s``: the image tower on ready pixel batches (the ceiling);
* ``embed_items_per_s``: the whole batch job on a folder of 1920×1280 JPEGs — listing,
  reading, decoding in worker processes, inference, writing float16 shards and parquet
  metadata — from the call to the manifest written (model loading included);
* ``embed_pipeline_items_per_s``: the same run without its one-time model load (about 2 s,
  which a real job of millions of images amortises);
* ``ratio`` and ``pipeline_ratio``: each over model-only (target ≥ 0.9).

Model: the random-initialised ViT-B/32. Usage: ``python bench/embed.py [--images 256]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from clipserve.embed import EmbedOptions, folder_records, run_local
from clipserve.engine import Engine
from clipserve.settings import Settings
from clipserve.testing.models import ensure_random_vit_b32
from clipserve.testing.photos import make_jpegs


def model_only(settings: Settings, jpeg: bytes, batch: int, repeat: int) -> float:
    """Images/s of the image tower alone on a ready batch (best of ``repeat``)."""
    with Engine(settings) as engine:
        clip = engine.model()
        pixels = np.stack([next(engine.pixel_batches([jpeg], clip))[1][0]] * batch)
        clip.embed_pixels(pixels)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            clip.embed_pixels(pixels)
            best = min(best, time.perf_counter() - start)
    return batch / best


def embed_rates(
    settings: Settings, folder: Path, output: Path, options: dict[str, int]
) -> tuple[float, float]:
    """Items/s of the whole job (model load included) and of its pipeline (excluded)."""
    start = time.perf_counter()
    records = list(folder_records(folder))
    result = run_local(records, settings, EmbedOptions(output, texts=False, **options))
    return len(records) / (time.perf_counter() - start), len(records) / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="decode processes [one per core]")
    args = parser.parse_args()

    model = ensure_random_vit_b32()
    cache = Path(os.environ.get("CLIPSERVE_BENCH_CACHE", tempfile.gettempdir())) / "clipserve-bench"
    settings = Settings(models=[str(model)], cache_dir=cache)
    work = Path(tempfile.mkdtemp(prefix="clipserve-bench-embed-"))
    try:
        folder = work / "photos"
        folder.mkdir()
        for index, data in enumerate(make_jpegs(args.images)):
            (folder / f"photo{index:05d}.jpg").write_bytes(data)
        ceiling = model_only(settings, (folder / "photo00000.jpg").read_bytes(), args.batch_size, 2)
        options = {"batch_size": args.batch_size, "workers": args.workers}
        whole, pipeline = embed_rates(settings, folder, work / "out", options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "embed",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "model": "random ViT-B/32 (CLIPModel layout)",
        "images": {"count": args.images, "size": "1920x1280 JPEG q90"},
        "batch_size": args.batch_size,
        "workers": args.workers or os.cpu_count(),
        "model_only_images_per_s": ceiling,
        "embed_items_per_s": whole,
        "embed_pipeline_items_per_s": pipeline,
        "ratio": whole / ceiling,
        "pipeline_ratio": pipeline / ceiling,
        "target_ratio": 0.9,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
