"""Turn a Hugging Face ``CLIPModel`` checkpoint into two ONNX graphs (visual, textual).

Needs the ``export`` extra (torch, transformers); nothing else in clipserve imports torch.
The graphs have a dynamic batch axis, and the text graph a dynamic length axis so a batch is
padded only to its longest text. Each export is checked against torch before it is kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.errors import ExportUnavailableError, ModelUnavailableError
from clipserve.models.onnx_store import (
    CHECKPOINT_FILES_KEPT,
    META_FILE,
    TEXTUAL_FILE,
    VISUAL_FILE,
    ExportMeta,
    cosine_rows,
    probe_pixels,
    probe_token_ids,
)
from clipserve.models.registry import weights_file

OPSET = 17
#: Smallest cosine between ONNX and torch outputs accepted for an fp32 export.
FP32_PARITY = 0.99999


def _require_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ExportUnavailableError(
            "exporting a checkpoint to ONNX needs torch and transformers: "
            "pip install 'clipserve[export]'"
        ) from exc
    return torch, transformers


def _features(output: Any) -> Any:
    # transformers 5 returns an output object from get_*_features; 4.x returns the tensor.
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output


def export_checkpoint(checkpoint: Path, destination: Path) -> ExportMeta:
    """Export ``checkpoint`` (a ``CLIPModel`` directory) as an ONNX pair into ``destination``.

    The pair is written to a temporary directory beside ``destination`` and renamed into place
    once complete and verified, so a crash never leaves a half-written export behind.

    Returns the metadata written to ``destination/meta.json``.
    """
    # Clear errors about missing files before torch loads anything. Without its config,
    # transformers would build a default one and fail on the first mismatched weight.
    weights = weights_file(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise ModelUnavailableError(
            f"{checkpoint} has no config.json: a CLIPModel checkpoint needs it beside "
            f"{weights.name}"
        )
    torch, transformers = _require_torch()
    try:
        model = transformers.CLIPModel.from_pretrained(checkpoint, torch_dtype=torch.float32)
    except Exception as exc:  # OSError, ValueError, safetensors' own error on a truncated file
        raise ModelUnavailableError(
            f"cannot load the checkpoint in {checkpoint} (weights {weights.name}, "
            f"{weights.stat().st_size} bytes): {type(exc).__name__}: {exc}"
        ) from exc
    model.eval().requires_grad_(False)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=destination.parent))
    try:
        meta = _export_into(torch, model, checkpoint, staging)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _export_into(torch: Any, model: Any, checkpoint: Path, out: Path) -> ExportMeta:
    config = model.config
    image_size = int(config.vision_config.image_size)

    class Tower(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, modality: str) -> None:
            super().__init__()
            self.clip = model  # registered, so the tracer sees parameters, not constants
            self.modality = modality

        def forward(self, inputs: Any) -> Any:
            if self.modality == "visual":
                return _features(self.clip.get_image_features(pixel_values=inputs))
            # No attention mask: the text tower is causal and pools at the end token, so
            # padding after it cannot change the result.
            return _features(self.clip.get_text_features(input_ids=inputs))

    visual, textual = Tower("visual"), Tower("textual")

    pixels = probe_pixels(image_size)
    ids = probe_token_ids()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python scalars are expected
        _export_graph(torch, visual, pixels, "pixel_values", {0: "batch"}, out / VISUAL_FILE)
        _export_graph(
            torch, textual, ids, "input_ids", {0: "batch", 1: "length"}, out / TEXTUAL_FILE
        )
        visual_ref = visual(torch.from_numpy(pixels)).numpy()
        textual_ref = textual(torch.from_numpy(ids)).numpy()

    visual_cos = _onnx_parity(out / VISUAL_FILE, "pixel_values", pixels, visual_ref)
    textual_cos = _onnx_parity(out / TEXTUAL_FILE, "input_ids", ids, textual_ref)
    if min(visual_cos, textual_cos) < FP32_PARITY:
        raise ModelUnavailableError(
            f"ONNX export of {checkpoint} does not match torch (cosine visual {visual_cos:.6f}, "
            f"textual {textual_cos:.6f})"
        )
    for filename in CHECKPOINT_FILES_KEPT:
        if (checkpoint / filename).is_file():
            shutil.copyfile(checkpoint / filename, out / filename)
    meta = ExportMeta(
        embed_dim=int(config.projection_dim),
        image_size=image_size,
        logit_scale=float(model.logit_scale.exp().item()),
        context_length=int(config.text_config.max_position_embeddings),
        parity={
            "fp32": {"visual_cosine_vs_torch": visual_cos, "textual_cosine_vs_torch": textual_cos}
        },
        exported_with={"torch": str(torch.__version__), "opset": str(OPSET)},
    )
    (out / META_FILE).write_text(json.dumps(meta.to_json(), indent=2))
    return meta


def _export_graph(
    torch: Any, module: Any, example: np.ndarray, input_name: str, axes: dict[int, str], path: Path
) -> None:
    torch.onnx.export(
        module,
        (torch.from_numpy(example),),
        str(path),
        input_names=[input_name],
        output_names=["embeddings"],
        dynamic_axes={input_name: axes, "embeddings": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter handles the dynamic text length directly
    )


def _onnx_parity(path: Path, input_name: str, example: np.ndarray, reference: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {input_name: example})[0]
    return float(cosine_rows(output, reference).min())
