"""Load a model by name: resolve it, export it to ONNX once, open the runtime sessions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipserve.errors import InvalidInputError, ModelUnavailableError
from clipserve.models import registry
from clipserve.models.onnx_store import (
    ExportMeta,
    check_not_partial_export,
    checkpoint_fingerprint,
    export_dir_for,
    file_lock,
    graph_files,
    is_export_dir,
    quantize_int8,
)
from clipserve.models.preprocess import PreprocessConfig
from clipserve.models.runtime import EmbeddingSession, OnnxSession
from clipserve.models.tokenizer import ClipTokenizer, load_tokenizer
from clipserve.settings import Settings


@dataclass
class ClipModel:
    """A loaded CLIP model: the two runtime sessions and what prepares their inputs."""

    name: str
    precision: str
    meta: ExportMeta
    directory: Path
    visual: EmbeddingSession
    textual: EmbeddingSession
    tokenizer: ClipTokenizer
    preprocess: PreprocessConfig

    @property
    def embed_dim(self) -> int:
        return self.meta.embed_dim

    @property
    def logit_scale(self) -> float:
        return self.meta.logit_scale

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Run the image tower on a float32 ``[B, 3, S, S]`` batch (unnormalised output)."""
        return self.visual.run(pixels)

    def embed_token_ids(self, ids: np.ndarray) -> np.ndarray:
        """Run the text tower on an int64 ``[B, L]`` batch (unnormalised output)."""
        return self.textual.run(ids)


def prepare_export(name: str, settings: Settings) -> tuple[str, Path]:
    """Resolve ``name`` and make sure an ONNX pair of ``settings.precision`` exists.

    Returns the model's display name and its export directory. Exports (torch) and
    quantizes only when nothing usable is cached.
    """
    if settings.precision not in ("fp32", "int8"):
        raise InvalidInputError(f"unknown precision {settings.precision!r}: use fp32 or int8")
    resolved = registry.resolve(name)
    directory = resolved.directory
    if not _has_weights(directory):
        check_not_partial_export(directory)
    if not is_export_dir(directory):
        weights = registry.weights_file(directory)
        fingerprint = checkpoint_fingerprint(directory, weights)
        directory = export_dir_for(settings.cache_dir, resolved.name, fingerprint)
        with file_lock(directory.with_name(directory.name + ".lock")):
            if not is_export_dir(directory):
                from clipserve.models.export import export_checkpoint

                export_checkpoint(resolved.directory, directory)
    if settings.precision != "fp32":
        with file_lock(directory.with_name(directory.name + ".lock")):
            if not all(path.is_file() for path in graph_files(directory, settings.precision)):
                quantize_int8(directory)
    return resolved.name, directory


def _has_weights(directory: Path) -> bool:
    try:
        registry.weights_file(directory)
    except ModelUnavailableError:
        return False
    return True


def load_model(name: str, settings: Settings) -> ClipModel:
    """Load ``name`` at ``settings.precision``, exporting it first if needed."""
    display_name, directory = prepare_export(name, settings)
    meta = ExportMeta.read(directory)
    visual_path, textual_path = graph_files(directory, settings.precision)
    return ClipModel(
        name=display_name,
        precision=settings.precision,
        meta=meta,
        directory=directory,
        visual=OnnxSession(visual_path, settings.threads),
        textual=OnnxSession(textual_path, settings.threads),
        tokenizer=load_tokenizer(meta.context_length),
        preprocess=PreprocessConfig.from_hf_dir(
            directory, max_pixels=settings.max_image_pixels, jpeg_draft=settings.jpeg_draft
        ),
    )
