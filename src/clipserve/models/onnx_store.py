"""The on-disk ONNX pair of a model: file names, metadata, cache keys, int8 variants.

A directory holding ``visual.onnx``, ``textual.onnx`` and ``meta.json`` is a complete model
for clipserve; it is what ``clipserve export`` writes and what the engine loads (no torch).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import ModelUnavailableError

#: Bump when the exported graphs change meaning, so stale caches are not reused.
EXPORT_FORMAT = 1
VISUAL_FILE = "visual.onnx"
TEXTUAL_FILE = "textual.onnx"
META_FILE = "meta.json"
#: Checkpoint files copied beside the graphs so the export directory stands on its own.
CHECKPOINT_FILES_KEPT = ("config.json", "preprocessor_config.json")

PRECISIONS = ("fp32", "int8")


@dataclass
class ExportMeta:
    """What the engine needs to know about an exported pair, kept in ``meta.json``."""

    embed_dim: int
    image_size: int
    logit_scale: float
    context_length: int = 77
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    exported_with: dict[str, str] = field(default_factory=dict)
    format: int = EXPORT_FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, directory: Path) -> ExportMeta:
        """Load ``meta.json`` from an export directory."""
        try:
            data = json.loads((directory / META_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelUnavailableError(f"{directory / META_FILE} is missing or invalid") from exc

    def write(self, directory: Path) -> None:
        tmp = directory / f".{META_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, directory / META_FILE)


def graph_files(directory: Path, precision: str) -> tuple[Path, Path]:
    """Paths of the (visual, textual) graphs of ``precision`` in an export directory."""
    if precision == "fp32":
        return directory / VISUAL_FILE, directory / TEXTUAL_FILE
    return directory / f"visual.{precision}.onnx", directory / f"textual.{precision}.onnx"


def is_export_dir(directory: Path) -> bool:
    """Whether ``directory`` already holds an fp32 ONNX pair with its metadata."""
    return not missing_export_files(directory)


def missing_export_files(directory: Path) -> list[str]:
    """The files of a complete fp32 export (graphs and ``meta.json``) ``directory`` lacks."""
    needed = [*graph_files(directory, "fp32"), directory / META_FILE]
    return [path.name for path in needed if not path.is_file()]


def check_not_partial_export(directory: Path) -> None:
    """Raise a clear error for an export directory with some of its files gone.

    Without this, such a directory would be taken for a checkpoint and fail with "no weights
    to export from", naming nothing of what is actually wrong.
    """
    missing = missing_export_files(directory)
    if missing and len(missing) < 3:
        raise ModelUnavailableError(
            f"{directory} is an incomplete ONNX export: {', '.join(missing)} missing; "
            "export the model again (clipserve export) or restore the file"
        )


def checkpoint_fingerprint(checkpoint: Path, weights: Path) -> str:
    """A short key that changes whenever the checkpoint's weights or config change."""
    real = weights.resolve()  # in the HF cache this is the content-addressed blob
    stat = real.stat()
    digest = hashlib.sha256()
    digest.update(f"{EXPORT_FORMAT}|{real}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    config = checkpoint / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()[:16]


def export_dir_for(cache_dir: Path, model_name: str, fingerprint: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-")[-60:] or "model"
    return cache_dir / "onnx" / f"{slug}-{fingerprint}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (servers and tests exporting the same model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped 2-D arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray((a64 * b64).sum(axis=1) / np.maximum(norms, 1e-30))


_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32).reshape(3, 1, 1)
_STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32).reshape(3, 1, 1)


def probe_pixels(image_size: int, count: int = 4) -> np.ndarray:
    """Deterministic image-like inputs (smooth gradients, discs, texture) for parity checks.

    Natural-looking structure matters: quantization error on white noise says little about
    its error on photos.
    """
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float32) / image_size
    images = []
    for index in range(count):
        phase = index * 0.7
        base = np.stack(
            [np.sin(3 * x + phase) * 0.5 + 0.5, y, np.cos(4 * (x + y) + phase) * 0.5 + 0.5]
        )
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
        base[:, disc] = rng.uniform(0, 1, size=(3, 1))
        base += rng.normal(0, 0.03, size=base.shape).astype(np.float32)
        images.append((np.clip(base, 0, 1) - _MEAN) / _STD)
    return np.stack(images).astype(np.float32)


PROBE_TEXTS = (
    "a photo of a dog",
    "a diagram",
    "a red car parked on a street at night, in the rain",
    "",
    "two cats sleeping on a sofa next to a window with the sun shining through",
)


def probe_token_ids() -> np.ndarray:
    """Token ids of a few captions of different lengths, padded to the longest."""
    from clipserve.models.tokenizer import load_tokenizer

    return load_tokenizer()(list(PROBE_TEXTS))


def quantize_int8(directory: Path) -> dict[str, float]:
    """Write int8 (dynamic quantization) graphs beside the fp32 ones; return their cosines.

    The cosine of each graph against fp32 on the probe inputs is recorded in ``meta.json``
    under ``parity["int8"]``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_visual, fp32_textual = graph_files(directory, "fp32")
    int8_visual, int8_textual = graph_files(directory, "int8")
    meta = ExportMeta.read(directory)
    for source, target in ((fp32_visual, int8_visual), (fp32_textual, int8_textual)):
        staging = target.with_name(f".{target.name}.tmp")
        quantize_dynamic(str(source), str(staging), weight_type=QuantType.QInt8)
        os.replace(staging, target)
    pixels, ids = probe_pixels(meta.image_size), probe_token_ids()
    cosines = {
        "visual_cosine_vs_fp32": _min_cosine(fp32_visual, int8_visual, "pixel_values", pixels),
        "textual_cosine_vs_fp32": _min_cosine(fp32_textual, int8_textual, "input_ids", ids),
    }
    meta.parity["int8"] = cosines
    meta.write(directory)
    return cosines


def _min_cosine(reference: Path, candidate: Path, input_name: str, example: np.ndarray) -> float:
    import onnxruntime as ort

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {input_name: example})[0])

    return float(cosine_rows(run(reference), run(candidate)).min())
