"""clipserve fp32 against the reference pipeline (transformers CLIPModel + CLIPProcessor, torch).

Text: our tokenizer + ONNX text graph (padding to the batch's longest) against
``CLIPProcessor(text=..., padding=True)`` + ``get_text_features``.
Images: bytes → our decode/preprocess → ONNX visual graph against
``CLIPProcessor(images=exif_transpose(open(bytes)))`` + ``get_image_features``, over a varied set
(1×1 to 4000×3000, every mode and format, extreme aspect ratios, EXIF orientations, and JPEGs
big enough for DCT downscaling). Both must reach cosine ≥ 0.9999 for every item.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipserve.engine import Engine
from clipserve.models.onnx_store import cosine_rows

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "models"))
import imagecases

PARITY = 0.9999


@pytest.fixture(scope="module")
def reference(random_vit_dir: Path) -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    model = transformers.CLIPModel.from_pretrained(random_vit_dir).eval()
    processor = transformers.CLIPProcessor.from_pretrained(random_vit_dir)
    return model, processor


def _features(output: Any) -> np.ndarray:
    tensor = output if not hasattr(output, "pooler_output") else output.pooler_output
    return np.asarray(tensor.detach().numpy(), dtype=np.float32)


def _reference_texts(reference: tuple[Any, Any], texts: list[str]) -> np.ndarray:
    import torch

    model, processor = reference
    inputs = processor(text=texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        return _features(model.get_text_features(**inputs))


def _reference_image(reference: tuple[Any, Any], data: bytes) -> np.ndarray:
    import torch

    model, processor = reference
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    inputs = processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        return _features(model.get_image_features(**inputs))[0]


TEXTS = [
    "",
    "a photo of a dog",
    "A PHOTO OF A DOG!!!",
    "two cats sleeping on a sofa, next to a window; the sun shines through",
    "émigré café naïve — 東京 😀 👩‍👩‍👧",
    " ".join(["word"] * 500),  # truncated to 77 tokens, end token kept
    "it's 3:45pm and we'll   be\tthere\n soon",
]


def test_text_embeddings_match_reference(random_engine: Engine, reference: Any) -> None:
    ours = random_engine.encode_texts(TEXTS, normalize=False)
    theirs = _reference_texts(reference, TEXTS)
    cosines = cosine_rows(ours, theirs)
    assert cosines.min() >= PARITY, dict(zip(TEXTS, cosines.round(6), strict=True))


CASES = [imagecases.Case(name, imagecases.parity_case(name)) for name in imagecases.PARITY_CASES]
CASES += imagecases.draft_cases()


def test_image_embeddings_match_reference(random_engine: Engine, reference: Any) -> None:
    data = [case.data for case in CASES]
    ours = random_engine.encode_images(data, normalize=False)
    theirs = np.stack([_reference_image(reference, item) for item in data])
    cosines = cosine_rows(ours, theirs)
    worst = sorted(zip(cosines.round(7), (case.name for case in CASES), strict=True))[:5]
    print(f"{len(CASES)} images, min cosine {cosines.min():.7f}, worst {worst}")
    assert cosines.min() >= PARITY, worst
