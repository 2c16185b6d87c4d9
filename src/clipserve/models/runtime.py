"""The inference runtime boundary. Everything onnxruntime-specific lives in this module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from clipserve.errors import ModelUnavailableError


class EmbeddingSession(Protocol):
    """One graph that maps a batch of model inputs to a batch of embeddings."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embed ``batch`` (pixel values or token ids); returns float32 ``[len(batch), dim]``."""
        ...


class OnnxSession:
    """An :class:`EmbeddingSession` backed by an onnxruntime CPU session."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle inference threads must not spin: image decoding runs beside inference on the
        # same cores, and a spinning pool would take its time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
            raise ModelUnavailableError(
                f"cannot load ONNX graph {path} ({_size(path)}): {exc} — the file is missing, "
                "truncated or corrupt: export the model again (clipserve export)"
            ) from exc
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        output = self._session.run(None, {self._input: batch})[0]
        return np.asarray(output, dtype=np.float32)


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError:
        return "missing"
