"""The Engine end to end on real exported models: shapes, order, rank, classify, errors."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipserve.engine import Engine
from clipserve.errors import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    TextTooLongError,
)
from clipserve.models.onnx_store import ExportMeta
from clipserve.testing.synthetic import COLORS, SHAPES, caption_for, make_dataset


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_embeddings_are_unit_length_in_input_order(random_engine: Engine) -> None:
    texts = ["a dog", "a long caption about a red car parked on a street at night " * 3, "x"]
    together = random_engine.encode_texts(texts)
    one_by_one = np.stack([random_engine.encode_texts([text])[0] for text in texts])
    assert together.shape == (3, 512)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Sorting by length and padding per slice must not change any vector or its place.
    np.testing.assert_allclose(together, one_by_one, atol=2e-5)


def test_large_text_batch_spans_several_model_batches(tiny_engine: Engine) -> None:
    texts = [f"caption number {i} " + "word " * (i % 40) for i in range(100)]
    batched = tiny_engine.encode_texts(texts)
    np.testing.assert_allclose(batched[57], tiny_engine.encode_texts([texts[57]])[0], atol=2e-5)


def test_image_inputs_of_every_kind_agree(tiny_engine: Engine, tmp_path: Path) -> None:
    image = make_dataset(1, seed=3)[0].image
    data = _png(image)
    path = tmp_path / "image.png"
    path.write_bytes(data)
    vectors = tiny_engine.encode_images([data, path, str(path), image, np.asarray(image)])
    for vector in vectors[1:]:
        np.testing.assert_allclose(vector, vectors[0], atol=1e-5)


def test_images_keep_input_order_across_batches(tiny_engine: Engine) -> None:
    items = [_png(item.image) for item in make_dataset(70, seed=5)]
    vectors = tiny_engine.encode_images(items)  # 70 > max_batch_size: three model batches
    np.testing.assert_allclose(vectors[41], tiny_engine.encode_images([items[41]])[0], atol=1e-5)


def test_mixed_encode_matches_single_modalities(tiny_engine: Engine) -> None:
    image = _png(make_dataset(1, seed=8)[0].image)
    mixed = tiny_engine.encode(["a photo", image, "another"])
    np.testing.assert_allclose(mixed[1], tiny_engine.encode_images([image])[0], atol=1e-6)
    np.testing.assert_allclose(mixed[2], tiny_engine.encode_texts(["another"])[0], atol=1e-6)


def test_unnormalized_output_keeps_the_norm(tiny_engine: Engine) -> None:
    raw = tiny_engine.encode_texts(["a cat"], normalize=False)
    unit = tiny_engine.encode_texts(["a cat"])
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-6)


def test_tiny_model_ranks_the_matching_caption_first(tiny_engine: Engine) -> None:
    captions = [caption_for(color, shape) for color in COLORS for shape in SHAPES]
    hits = 0
    items = make_dataset(24, seed=99)
    for item in items:
        result = tiny_engine.rank(_png(item.image), captions)
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        hits += captions[int(result.order()[0])] == item.caption
    assert hits / len(items) >= 0.9


def test_text_query_ranks_matching_images_first(tiny_engine: Engine) -> None:
    items = make_dataset(48, seed=7)
    result = tiny_engine.rank("a photo of a red circle", [_png(item.image) for item in items])
    best = items[int(result.order()[0])]
    assert (best.color, best.shape) == ("red", "circle")


def test_classify_averages_templates_and_finds_the_class(tiny_engine: Engine) -> None:
    labels = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
    items = make_dataset(48, seed=11)
    results = tiny_engine.classify([_png(item.image) for item in items], labels)
    correct = sum(
        r.label == f"{item.color} {item.shape}" for r, item in zip(results, items, strict=True)
    )
    assert correct / len(items) >= 0.9
    assert results[0].probabilities.shape == (len(labels),)


def test_classify_ensemble_is_mean_of_template_embeddings(tiny_engine: Engine) -> None:
    templates = ["a photo of a {}", "a picture of a {}"]
    image = _png(make_dataset(1, seed=2)[0].image)
    result = tiny_engine.classify([image], ["red circle", "blue star"], templates=templates)[0]
    prompts = tiny_engine.encode_texts([t.format("red circle") for t in templates])
    mean = prompts.mean(axis=0)
    expected = tiny_engine.encode_images([image])[0] @ (mean / np.linalg.norm(mean))
    assert result.cosines[0] == pytest.approx(float(expected), abs=1e-5)


def test_async_methods_match_sync(tiny_engine: Engine) -> None:
    async def run() -> np.ndarray:
        return await tiny_engine.aencode_texts(["a photo of a blue star"])

    np.testing.assert_allclose(
        asyncio.run(run()), tiny_engine.encode_texts(["a photo of a blue star"]), atol=1e-6
    )


def test_int8_records_its_cosine_against_fp32(random_engine_int8: Engine) -> None:
    model = random_engine_int8.model()
    assert model.precision == "int8"
    int8 = ExportMeta.read(model.directory).parity["int8"]
    assert 0.9 < int8["visual_cosine_vs_fp32"] <= 1.0
    assert 0.9 < int8["textual_cosine_vs_fp32"] <= 1.0


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([b"not an image at all"], InvalidImageError, "image 0"),
        ([b""], InvalidImageError, "empty"),
        ([], InvalidInputError, "must not be empty"),
        ("just a string", InvalidInputError, "must be a list"),
        ([np.zeros((4, 4), np.float64)], InvalidImageError, "image 0"),
    ],
)
def test_bad_images_raise_typed_errors(
    random_engine: Engine, images: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        random_engine.encode_images(images)  # type: ignore[arg-type]


def test_huge_image_is_rejected_before_decoding(random_engine: Engine) -> None:
    huge = Image.new("1", (10_000, 10_000))  # 100 megapixels, a few kB as PNG
    with pytest.raises(ImageTooLargeError, match="image 1"):
        random_engine.encode_images([_png(Image.new("RGB", (8, 8))), _png(huge)])


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        ([], InvalidInputError, "must not be empty"),
        (["ok", 3], InvalidInputError, "text 1 is a int"),
        (["ok", None], InvalidInputError, "text 1 is a NoneType"),
        (["x" * 200_000], TextTooLongError, "200000 characters"),
    ],
)
def test_bad_texts_raise_typed_errors(
    random_engine: Engine, texts: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        random_engine.encode_texts(texts)  # type: ignore[arg-type]


def test_long_text_is_truncated_not_rejected(random_engine: Engine) -> None:
    long_text = " ".join(["word"] * 500)
    vector = random_engine.encode_texts([long_text])
    assert np.isfinite(vector).all()


def test_unknown_model_name_is_a_clear_error(random_engine: Engine) -> None:
    with pytest.raises(InvalidInputError, match="not loaded"):
        random_engine.encode_texts(["a"], model="nope")


def test_bad_templates_are_rejected(tiny_engine: Engine) -> None:
    with pytest.raises(InvalidInputError, match="must be a string with one"):
        tiny_engine.classify([_png(Image.new("RGB", (8, 8)))], ["cat"], templates=["no slot"])
