"""Encoding throughput of clipserve against the machine's GEMM peak and the reference pipeline.

Prints one JSON document. Every figure comes from this one run on this machine:

* ``gemm_fp32_gflops`` — numpy float32 matrix multiply, all cores; ``limit_img_s`` is that
  divided by the 8.74 GFLOP a ViT-B/32 image costs: no fp32 CPU pipeline beats it;
* clipserve images/s end to end (JPEG bytes in, embeddings out) for fp32 and int8, and the
  model alone on ready pixel batches;
* texts/s for short prompts and for mixed-length captions, fp32 and int8;
* the same workloads through the reference pipeline (transformers ``CLIPModel`` +
  ``CLIPProcessor``, torch fp32), as a baseline.

Model: the random-initialised ViT-B/32 (same cost as the real one). Images: 1920×1280 JPEGs
made from scikit-image's photos. Usage: ``python bench/encode.py [--images 96] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.engine import Engine
from clipserve.settings import Settings
from clipserve.testing.models import ensure_random_vit_b32
from clipserve.testing.photos import make_jpegs

VIT_B32_GFLOP_PER_IMAGE = 8.74
SHORT_PROMPTS = [
    f"a photo of a {thing}"
    for thing in ("dog", "cat", "car", "tree", "house", "bird", "boat", "person")
]
WORDS = [
    "the",
    "a",
    "red",
    "blue",
    "dog",
    "runs",
    "over",
    "green",
    "hills",
    "under",
    "cloudy",
    "sky",
    "near",
    "old",
    "stone",
    "bridge",
]


def gemm_gflops(size: int = 2048, repeat: int = 5) -> float:
    """Best float32 matmul rate numpy reaches on this machine, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * size**3 / best / 1e9


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def throughput(work: Callable[[], object], items: int, repeat: int) -> float:
    """Items per second of ``work`` (best of ``repeat`` runs after one warm-up)."""
    work()
    return items / min(_timed(work) for _ in range(repeat))


def captions(count: int, seed: int = 0) -> list[str]:
    """Captions of 3 to 60 words, like a mixed real-world text workload."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 61)))) for _ in range(count)]


def clipserve_figures(
    model_dir: Path, jpegs: list[bytes], texts: dict[str, list[str]], repeat: int, cache: Path
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for precision in ("fp32", "int8"):
        settings = Settings(models=[str(model_dir)], precision=precision, cache_dir=cache)
        with Engine(settings) as engine:
            clip = engine.model()
            figures[f"{precision}_images_per_s"] = throughput(
                lambda: engine.encode_images(jpegs), len(jpegs), repeat
            )
            pixels = np.stack([next(engine.pixel_batches(jpegs[:1], clip))[1][0]] * 32)
            figures[f"{precision}_model_only_images_per_s"] = throughput(
                functools.partial(clip.embed_pixels, pixels), len(pixels), repeat
            )
            for name, batch in texts.items():
                figures[f"{precision}_{name}_texts_per_s"] = throughput(
                    functools.partial(engine.encode_texts, batch), len(batch), repeat
                )
            figures[f"{precision}_parity"] = clip.meta.parity.get(precision, {})
    return figures


def reference_figures(
    model_dir: Path, jpegs: list[bytes], texts: dict[str, list[str]], repeat: int, batch: int
) -> dict[str, Any]:
    """The reference pipeline as its users run it: batches through processor and model."""
    import torch
    from PIL import Image, ImageOps
    from transformers import CLIPModel, CLIPProcessor

    torch.set_num_threads(os.cpu_count() or 1)
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)

    def features(output: Any) -> Any:
        return output if torch.is_tensor(output) else output.pooler_output

    def encode_images() -> None:
        for start in range(0, len(jpegs), batch):
            images = [
                ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
                for data in jpegs[start : start + batch]
            ]
            inputs = processor(images=images, return_tensors="pt")
            with torch.no_grad():
                features(model.get_image_features(**inputs))

    def encode_texts(items: list[str]) -> None:
        for start in range(0, len(items), batch):
            inputs = processor(
                text=items[start : start + batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
            )
            with torch.no_grad():
                features(model.get_text_features(**inputs))

    figures = {"images_per_s": throughput(encode_images, len(jpegs), repeat)}
    for name, items in texts.items():
        figures[f"{name}_texts_per_s"] = throughput(
            functools.partial(encode_texts, items), len(items), repeat
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="reference pipeline batch size")
    args = parser.parse_args()

    gflops = gemm_gflops()
    limit = gflops / VIT_B32_GFLOP_PER_IMAGE
    model_dir = ensure_random_vit_b32()
    jpegs = make_jpegs(args.images)
    texts = {
        "short": [SHORT_PROMPTS[i % 8] for i in range(args.texts)],
        "mixed": captions(args.texts // 2),
    }
    cache = Path(os.environ.get("CLIPSERVE_BENCH_CACHE", tempfile.gettempdir())) / "clipserve-bench"
    ours = clipserve_figures(model_dir, jpegs, texts, args.repeat, cache)
    reference = reference_figures(model_dir, jpegs, texts, args.repeat, args.batch)
    fp32, int8 = ours["fp32_images_per_s"], ours["int8_images_per_s"]
    result = {
        "benchmark": "encode",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "model": "random ViT-B/32 (CLIPModel layout)",
        "images": {"count": len(jpegs), "size": "1920x1280 JPEG q90"},
        "gemm_fp32_gflops": gflops,
        "limit_img_s": limit,
        "clipserve": ours,
        "reference": reference,
        "ratios": {
            "fp32_e2e_over_limit": fp32 / limit,
            "fp32_e2e_over_reference": fp32 / reference["images_per_s"],
            "int8_over_fp32_images": int8 / fp32,
            "fp32_short_texts_over_reference": ours["fp32_short_texts_per_s"]
            / reference["short_texts_per_s"],
            "int8_short_texts_over_reference": ours["int8_short_texts_per_s"]
            / reference["short_texts_per_s"],
            "fp32_mixed_texts_over_reference": ours["fp32_mixed_texts_per_s"]
            / reference["mixed_texts_per_s"],
        },
    }
    result["targets"] = {
        "fp32_e2e_ge_0.85_limit": result["ratios"]["fp32_e2e_over_limit"] >= 0.85,
        "fp32_e2e_ge_2x_reference": result["ratios"]["fp32_e2e_over_reference"] >= 2.0,
        "int8_ge_2.2x_fp32": result["ratios"]["int8_over_fp32_images"] >= 2.2,
        "fp32_short_texts_ge_1.3x_reference": result["ratios"]["fp32_short_texts_over_reference"]
        >= 1.3,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
