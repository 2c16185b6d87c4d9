"""The test-model builders: the tiny CLIP really learned, the random ViT-B/32 is well-formed,
and both are built once and then reused from the cache.

The first run on a machine builds both models (about two minutes); later runs take seconds.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipserve.testing import models
from clipserve.testing.synthetic import class_captions, make_dataset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Different from the training seed (0) and from the builder's own held-out check.
INDEPENDENT_SEED = 20_240_607


def features(output: Any) -> Any:
    """transformers 5.x returns an output object from get_*_features, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def dims(config: Any) -> tuple[int, int, int]:
    """Width, depth and heads of a tower's config."""
    return (config.hidden_size, config.num_hidden_layers, config.num_attention_heads)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return models.ensure_tiny_clip()


@pytest.fixture(scope="module")
def random_dir() -> Path:
    return models.ensure_random_vit_b32()


def test_tiny_clip_train_report_meets_the_bar(tiny_dir: Path) -> None:
    report = json.loads((tiny_dir / models.TRAIN_REPORT_FILE).read_text())
    assert report["accuracy"] >= models.MIN_ACCURACY
    assert report["seed"] == models.TINY_RECIPE.seed
    assert report["steps"] == models.TINY_RECIPE.steps
    assert report["seconds"] > 0


def test_tiny_clip_zero_shot_on_fresh_images(tiny_dir: Path) -> None:
    """Re-check with transformers' own loader, tokenizer and image processor."""
    model = transformers.CLIPModel.from_pretrained(tiny_dir).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny_dir)
    processor = transformers.CLIPImageProcessor.from_pretrained(tiny_dir)
    items = make_dataset(
        200,
        INDEPENDENT_SEED,
        word_probability=models.TINY_RECIPE.word_probability,
    )
    text_inputs = tokenizer(class_captions(), padding=True, return_tensors="pt")
    pixels = processor(images=[item.image for item in items], return_tensors="pt")
    with torch.no_grad():
        texts = features(model.get_text_features(input_ids=text_inputs["input_ids"]))
        images = features(model.get_image_features(pixel_values=pixels["pixel_values"]))
    texts = torch.nn.functional.normalize(texts, dim=-1)
    images = torch.nn.functional.normalize(images, dim=-1)
    predicted = (images @ texts.T).argmax(dim=1).numpy()
    accuracy = float((predicted == np.array([item.label for item in items])).mean())
    assert accuracy >= 0.95


def test_tiny_clip_short_queries_find_their_shapes(tiny_dir: Path) -> None:
    """Text-to-image search with a short query ("a red circle") returns that class first."""
    model = transformers.CLIPModel.from_pretrained(tiny_dir).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny_dir)
    processor = transformers.CLIPImageProcessor.from_pretrained(tiny_dir)
    items = make_dataset(4 * len(class_captions()), INDEPENDENT_SEED + 1)
    queries = [caption.removeprefix("a photo of ") for caption in class_captions()]
    text_inputs = tokenizer(queries, padding=True, return_tensors="pt")
    pixels = processor(images=[item.image for item in items], return_tensors="pt")
    with torch.no_grad():
        texts = features(model.get_text_features(input_ids=text_inputs["input_ids"]))
        images = features(model.get_image_features(pixel_values=pixels["pixel_values"]))
    texts = torch.nn.functional.normalize(texts, dim=-1)
    images = torch.nn.functional.normalize(images, dim=-1)
    top = (texts @ images.T).topk(4, dim=1).indices.numpy()
    labels = np.array([item.label for item in items])
    precision = float((labels[top] == np.arange(len(queries))[:, None]).mean())
    assert precision >= 0.9, queries


def test_tiny_clip_has_the_clip_layout(tiny_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"):
        assert (tiny_dir / name).is_file(), name
    config = transformers.CLIPConfig.from_pretrained(tiny_dir)
    assert config.text_config.vocab_size == 49408
    assert config.text_config.max_position_embeddings == 77
    assert config.text_config.eos_token_id == 2
    assert config.vision_config.image_size == models.TINY_RECIPE.image_size


def test_random_vit_b32_matches_openai_architecture(random_dir: Path) -> None:
    model = transformers.CLIPModel.from_pretrained(random_dir).eval()
    config = model.config
    assert config.projection_dim == 512
    vision, text = config.vision_config, config.text_config
    assert dims(vision) == (768, 12, 12)
    assert (vision.patch_size, vision.image_size) == (32, 224)
    assert dims(text) == (512, 12, 8)
    assert (text.vocab_size, text.max_position_embeddings) == (49408, 77)
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (0, 2, 1)
    assert vision.hidden_act == text.hidden_act == "quick_gelu"

    tokenizer = transformers.CLIPTokenizer.from_pretrained(random_dir)
    ids = tokenizer(["a photo of a cat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        texts = features(model.get_text_features(input_ids=ids))
        images = features(model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224)))
    assert texts.shape == images.shape == (1, 512)

    processor = json.loads((random_dir / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 224, "width": 224}
    assert processor["size"] == {"shortest_edge": 224}


def test_builders_reuse_the_cache(
    tiny_dir: Path, random_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_build(*args: object) -> None:
        raise AssertionError("a cached model was rebuilt")

    monkeypatch.setattr(models, "_build_tiny_clip", must_not_build)
    monkeypatch.setattr(models, "_build_random_vit_b32", must_not_build)
    builders = {tiny_dir: models.ensure_tiny_clip, random_dir: models.ensure_random_vit_b32}
    for path, ensure in builders.items():
        marker = path / models.MARKER_FILE
        before = marker.stat().st_mtime_ns
        assert ensure() == path
        assert marker.stat().st_mtime_ns == before


def test_concurrent_first_calls_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    builds: list[Path] = []

    def slow_build(out: Path) -> None:
        builds.append(out)
        time.sleep(0.3)
        (out / "weights.bin").write_bytes(b"x")

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(models._ensure("fake-v1", slow_build)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert results == [tmp_path / "fake-v1"] * 4
    assert (tmp_path / "fake-v1" / "weights.bin").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["fake-v1"]


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))

    def broken_build(out: Path) -> None:
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        models._ensure("broken-v1", broken_build)
    assert not (tmp_path / "broken-v1").exists()
    assert not [p for p in tmp_path.iterdir() if "building" in p.name]
