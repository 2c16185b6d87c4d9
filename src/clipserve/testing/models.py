"""CLIP checkpoints the test suite and benchmarks build for themselves (no model hub needed).

Two models, each built once per machine into a versioned directory of the test cache
(``$CLIPSERVE_TEST_CACHE`` or ``~/.cache/clipserve-test``) in Hugging Face ``CLIPModel`` layout
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``, tokenizer files):

- :func:`ensure_random_vit_b32` — a randomly initialised ViT-B/32 with exactly the architecture
  and config of ``openai/clip-vit-base-patch32``: the real model's cost, none of its knowledge.
  For speed, export and parity checks.
- :func:`ensure_tiny_clip` — a tiny CLIP of the same architecture trained for about a minute on
  the synthetic coloured shapes of :mod:`clipserve.testing.synthetic`, so ranking, zero-shot and
  search tests see a real signal. The build measures zero-shot accuracy on fresh held-out images,
  writes it to ``train_report.json`` and fails below 95 %.

Builds happen in a temporary directory moved into place with :func:`os.replace`, under an
``fcntl`` lock, so concurrent test processes neither race nor see half-written models; a
finished build (its marker file present) is reused by every later call.

torch and transformers (the ``export`` extra) are imported only when a model must be built.

Example::

    from clipserve.testing.models import ensure_tiny_clip

    model_dir = ensure_tiny_clip()  # builds on first use, then returns at once

or from a shell: ``python -m clipserve.testing.models all``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipserve.models.onnx_store import file_lock
from clipserve.testing.synthetic import (
    COLORS,
    SHAPES,
    SyntheticItem,
    class_captions,
    make_dataset,
)

#: Environment variable overriding the cache root.
CACHE_ENV = "CLIPSERVE_TEST_CACHE"
#: Versioned directory names: bump the suffix when a builder's output changes.
RANDOM_VIT_B32_NAME = "random-vit-b32-v1"
TINY_CLIP_NAME = "tiny-clip-v5"
#: File written last into a finished model directory.
MARKER_FILE = "BUILD_COMPLETE.json"
#: Training summary of the tiny model.
TRAIN_REPORT_FILE = "train_report.json"
#: Zero-shot top-1 the tiny model must reach on held-out images.
MIN_ACCURACY = 0.95
#: Wordings of a class in training (``{what}`` is e.g. "red circle"), so that short queries like
#: "a red circle" work as well as the zero-shot captions ("a photo of a red circle"): trained on
#: the first wording only, "a red circle" found its class 0.90 of the time at 4, "red circle"
#: 0.77; trained on all four, 1.0 for each.
CAPTION_TEMPLATES = ("a photo of {an} {what}", "{an} {what}", "{what}", "a picture of {an} {what}")

# OpenAI CLIP's normalisation, as in the real repos' preprocessor_config.json.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# The real openai/clip-* configs carry the legacy text-tower token ids (from before
# transformers PR #24773); with eos_token_id == 2 transformers pools the text at
# argmax(input_ids), i.e. at <|endoftext|> (49407, the largest id), exactly like OpenAI.
_LEGACY_TEXT_TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
_LOGIT_SCALE_INIT = 2.6592  # ln(1 / 0.07)


@dataclass(frozen=True)
class TinyRecipe:
    """Architecture and training schedule of the tiny CLIP (part of its cache version)."""

    image_size: int = 64
    # Small patches: with 16-pixel ones the tiny ViT learns colours at once but shapes slowly.
    patch_size: int = 8
    vision_width: int = 48
    vision_layers: int = 2
    text_width: int = 64
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    train_items: int = 3200
    render_size: int = 128
    # Drawn words made the shapes much slower to learn within the time budget; they stay
    # available in the synthetic world but are off in training.
    word_probability: float = 0.0
    caption_words: bool = False
    # Measured on this 2-core machine (one thread, the other core busy). Vision tower alone
    # as a classifier: with the whitened patch embedding this 48-wide, 2-layer tower reaches
    # 0.99 held-out top-1 after 250 steps (0.15 s each); the 64-wide, 3-layer one with a
    # random patch embedding was at 0.77 after 415 steps (0.30 s each). Whole CLIP with the
    # caption templates: 400 steps gave 0.944 (seed 0), 500 steps 0.984 in 118 s.
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    whitening_epsilon: float = 0.01
    seed: int = 0
    eval_items: int = 320
    eval_seed: int = 1_000_003
    threads: int = 2


TINY_RECIPE = TinyRecipe()


def cache_root() -> Path:
    """Where test models live: ``$CLIPSERVE_TEST_CACHE`` or ``~/.cache/clipserve-test``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "clipserve-test"


def ensure_random_vit_b32() -> Path:
    """A random-initialised ``openai/clip-vit-base-patch32`` look-alike, built once and cached.

    Same architecture and config values as the real checkpoint (ViT-B/32 at 224 px, 12-layer
    512-wide text tower, 512-d projections, quick_gelu, legacy text token ids), weights from
    ``torch.manual_seed(0)``; plus the real repo's ``preprocessor_config.json`` and tokenizer
    files. About 600 MB on disk.

    Returns:
        The model directory, loadable with ``transformers.CLIPModel.from_pretrained``.

    Example::

        model = transformers.CLIPModel.from_pretrained(ensure_random_vit_b32())
    """
    return _ensure(RANDOM_VIT_B32_NAME, _build_random_vit_b32)


def ensure_tiny_clip() -> Path:
    """A tiny CLIP trained on synthetic coloured shapes, built once (about a minute) and cached.

    See :data:`TINY_RECIPE` for its architecture. The directory also holds
    ``train_report.json`` (held-out zero-shot accuracy, seconds, steps, seed).

    Returns:
        The model directory, loadable with ``transformers.CLIPModel.from_pretrained``.

    Raises:
        RuntimeError: the trained model's held-out zero-shot top-1 is below 95 %.

    Example::

        model_dir = ensure_tiny_clip()
        json.loads((model_dir / "train_report.json").read_text())["accuracy"]  # >= 0.95
    """
    return _ensure(TINY_CLIP_NAME, lambda out: _build_tiny_clip(out, TINY_RECIPE))


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of an OpenAI CLIP repo, for ``image_size`` pixels."""
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(IMAGE_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(IMAGE_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


# --- cache ------------------------------------------------------------------------------------


def _ensure(name: str, build: Callable[[Path], None]) -> Path:
    root = cache_root()
    target = root / name
    if (target / MARKER_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{name}.lock"):
        if (target / MARKER_FILE).is_file():  # another process built it while we waited
            return target
        # Holding the lock, any staging directory left is from a build that was killed.
        for stale in root.glob(f".{name}-building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-building-", dir=root))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
            started = time.monotonic()
            build(staging)
            marker = {"name": name, "build_seconds": round(time.monotonic() - started, 1)}
            (staging / MARKER_FILE).write_text(json.dumps(marker) + "\n")
            if target.exists():  # a directory without marker: never finished, replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# --- building -----------------------------------------------------------------------------------


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            "building clipserve test models needs torch and transformers: "
            "pip install 'clipserve[export]'"
        ) from exc
    return torch, transformers


def _clip_config(
    transformers: Any, *, text: dict[str, Any], vision: dict[str, Any], projection_dim: int
) -> Any:
    common = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": projection_dim}
    text_config = {
        "vocab_size": 49408, "max_position_embeddings": 77, "attention_dropout": 0.0,
        **common, **_LEGACY_TEXT_TOKEN_IDS, **text,
    }  # fmt: skip
    vision_config = {"num_channels": 3, "attention_dropout": 0.0, **common, **vision}
    return transformers.CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=projection_dim,
        logit_scale_init_value=_LOGIT_SCALE_INIT,
        initializer_factor=1.0,
    )


def _save(model: Any, out: Path, image_size: int) -> None:
    from clipserve.models.tokenizer import write_hf_tokenizer_files

    model.save_pretrained(out)  # safetensors: the default (and only format) of transformers 5
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out}")
    config = json.dumps(preprocessor_config(image_size), indent=2) + "\n"
    (out / "preprocessor_config.json").write_text(config)
    write_hf_tokenizer_files(out)


def _build_random_vit_b32(out: Path) -> None:
    torch, transformers = _import_torch()
    torch.manual_seed(0)
    config = _clip_config(
        transformers,
        text={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
              "num_attention_heads": 8},
        vision={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
        projection_dim=512,
    )  # fmt: skip
    _save(transformers.CLIPModel(config).eval(), out, image_size=224)


def _tiny_config(transformers: Any, recipe: TinyRecipe) -> Any:
    return _clip_config(
        transformers,
        text={"hidden_size": recipe.text_width, "intermediate_size": 4 * recipe.text_width,
              "num_hidden_layers": recipe.text_layers, "num_attention_heads": recipe.heads},
        vision={"hidden_size": recipe.vision_width, "intermediate_size": 4 * recipe.vision_width,
                "num_hidden_layers": recipe.vision_layers, "num_attention_heads": recipe.heads,
                "image_size": recipe.image_size, "patch_size": recipe.patch_size},
        projection_dim=recipe.projection_dim,
    )  # fmt: skip


def _build_tiny_clip(out: Path, recipe: TinyRecipe) -> None:
    torch, transformers = _import_torch()
    threads = _thread_count(recipe.threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(recipe.seed)
        started = time.monotonic()
        data = _training_data(torch, recipe)
        data_seconds = time.monotonic() - started
        model = transformers.CLIPModel(_tiny_config(transformers, recipe))
        _whiten_patch_embedding(torch, model, data.pixels, recipe.whitening_epsilon)
        train_seconds, cpu_seconds = _train(torch, model, data, recipe)
        accuracy = _held_out_accuracy(torch, model, recipe)
    finally:
        torch.set_num_threads(previous_threads)
    report = {
        "accuracy": round(accuracy, 4),
        "eval_items": recipe.eval_items,
        "eval_seed": recipe.eval_seed,
        "seconds": round(train_seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "steps": recipe.steps,
        "seed": recipe.seed,
        "torch_threads": threads,
        "recipe": asdict(recipe),
    }
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(
            f"tiny CLIP reached only {accuracy:.3f} held-out zero-shot top-1 "
            f"(needs {MIN_ACCURACY}): {json.dumps(report)}"
        )
    _save(model.eval(), out, image_size=recipe.image_size)
    (out / TRAIN_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def _thread_count(wanted: int) -> int:
    """``wanted`` torch threads, or 1 when other processes already keep the cores busy.

    Oversubscribed OpenMP threads wait for each other at every operator: measured on this
    2-core machine with another busy process, a training step took 6.3 s with 2 threads and
    0.8 s with 1.
    """
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0]  # includes this process, busy preparing data
    return 1 if busy > cores - wanted + 1.0 else max(1, min(wanted, cores))


# --- tiny CLIP training -----------------------------------------------------------------------


@dataclass(frozen=True)
class _TrainingData:
    pixels: Any  # float32 [N, 3, S, S]
    token_ids: Any  # int64 [K, L], every caption used in training
    matches: Any  # float32 [N, K], 1 where caption k describes image n
    wordings: Any  # int64 [C, T], caption index of class c in template t (the first C * T)


def _training_data(torch: Any, recipe: TinyRecipe) -> _TrainingData:
    items = make_dataset(
        recipe.train_items,
        recipe.seed,
        word_probability=recipe.word_probability,
        size=recipe.render_size,
    )
    descriptions = [_descriptions(item, recipe.caption_words) for item in items]
    captions = _training_captions(descriptions)
    index = {caption: i for i, caption in enumerate(captions)}
    matches = np.zeros((len(items), len(captions)), dtype=np.float32)
    for n, described in enumerate(descriptions):
        for caption in described:
            matches[n, index[caption]] = 1.0
    classes, templates = len(class_captions()), len(CAPTION_TEMPLATES)
    return _TrainingData(
        pixels=torch.from_numpy(_pixels(items, recipe.image_size)),
        token_ids=torch.from_numpy(_token_ids(captions)),
        matches=torch.from_numpy(matches),
        wordings=torch.arange(classes * templates).reshape(classes, templates),
    )


def _wordings(color: str, shape: str) -> list[str]:
    """The class in every :data:`CAPTION_TEMPLATES` wording; the first is its zero-shot
    caption (:func:`~clipserve.testing.synthetic.caption_for`)."""
    article = "an" if color[0] in "aeiou" else "a"
    return [t.format(an=article, what=f"{color} {shape}") for t in CAPTION_TEMPLATES]


def _descriptions(item: SyntheticItem, caption_words: bool) -> list[str]:
    """Training captions true of ``item``: its class in every wording, and its word if captioned."""
    described = _wordings(item.color, item.shape)
    if caption_words and item.word is not None:
        described.append(item.caption_with_word)
    return described


def _training_captions(descriptions: Sequence[Sequence[str]]) -> list[str]:
    """Every class wording, class-major (see ``_TrainingData.wordings``), then word captions."""
    wordings = [w for color in COLORS for shape in SHAPES for w in _wordings(color, shape)]
    extra = sorted({c for described in descriptions for c in described} - set(wordings))
    return wordings + extra


def _pixels(items: Sequence[SyntheticItem], image_size: int) -> npt.NDArray[np.float32]:
    """The model input of each item, through the product's own preprocessing."""
    from clipserve.models.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(image_size=image_size, resize_size=image_size)
    return np.stack([preprocess(item.image, cfg) for item in items]).astype(np.float32)


def _token_ids(captions: Sequence[str]) -> npt.NDArray[np.int64]:
    from clipserve.models.tokenizer import load_tokenizer

    return load_tokenizer()(list(captions))


def _whiten_patch_embedding(torch: Any, model: Any, pixels: Any, epsilon: float) -> None:
    """Start the patch embedding as PCA whitening of training patches (a data-dependent init).

    Its filters become the strongest principal directions of the image patches, scaled to unit
    variance: a well-conditioned basis of colours and edges from the first step, with which
    the tiny ViT learns shapes several times faster than from a random projection (the same
    trick fast CIFAR-10 training uses for its first convolution).
    """
    conv = model.vision_model.embeddings.patch_embedding
    size = conv.kernel_size[0]
    patches = pixels[:512].unfold(2, size, size).unfold(3, size, size)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * size * size)
    patches = patches - patches.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    top = torch.argsort(eigenvalues, descending=True)[: conv.out_channels]
    weight = eigenvectors[:, top].T / torch.sqrt(eigenvalues[top] + epsilon)[:, None]
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))


def _features(torch: Any, output: Any) -> Any:
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _embed(torch: Any, model: Any, *, pixels: Any = None, token_ids: Any = None) -> Any:
    if pixels is not None:
        features = _features(torch, model.get_image_features(pixel_values=pixels))
    else:
        features = _features(torch, model.get_text_features(input_ids=token_ids))
    return torch.nn.functional.normalize(features, dim=-1)


def _clip_loss(torch: Any, logits: Any, matches: Any) -> Any:
    """Symmetric CLIP loss where several captions may describe an image and vice versa.

    Each side's softmax target is spread evenly over its true matches: an image's over the
    captions describing it, a caption's (among those present in the batch) over its images.
    """
    log_softmax = torch.nn.functional.log_softmax
    image_targets = matches / matches.sum(dim=1, keepdim=True)
    image_loss = -(image_targets * log_softmax(logits, dim=1)).sum(dim=1).mean()
    present = matches.sum(dim=0) > 0
    text_matches = matches[:, present]
    text_targets = text_matches / text_matches.sum(dim=0, keepdim=True)
    text_loss = -(text_targets * log_softmax(logits[:, present], dim=0)).sum(dim=0).mean()
    return (image_loss + text_loss) / 2


def _train(torch: Any, model: Any, data: _TrainingData, recipe: TinyRecipe) -> tuple[float, float]:
    """Train ``model`` in place; return the wall and CPU seconds it took."""
    model.train()
    # fused: one kernel per tensor; the 49,408-row token embedding makes the unfused
    # optimizer step a quarter of the training time on CPU.
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay, fused=True
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, recipe))
    generator = torch.Generator().manual_seed(recipe.seed)
    batches = _batches(torch, len(data.pixels), recipe, generator)
    started, cpu_started = time.monotonic(), time.process_time()
    classes, templates = data.wordings.shape
    extra = torch.arange(classes * templates, len(data.token_ids))
    for batch in batches:
        # One wording per class each step: the text tower sees every template, at the cost
        # of one caption per class.
        wording = torch.randint(0, templates, (classes,), generator=generator)
        captions = torch.cat([data.wordings[torch.arange(classes), wording], extra])
        images = _embed(torch, model, pixels=data.pixels[batch])
        texts = _embed(torch, model, token_ids=data.token_ids[captions])
        logits = model.logit_scale.exp() * images @ texts.T
        loss = _clip_loss(torch, logits, data.matches[batch][:, captions])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return time.monotonic() - started, time.process_time() - cpu_started


def _batches(torch: Any, n: int, recipe: TinyRecipe, generator: Any) -> list[Any]:
    order = torch.cat(
        [
            torch.randperm(n, generator=generator)
            for _ in range(math.ceil(recipe.steps * recipe.batch_size / n))
        ]
    )
    return [order[i * recipe.batch_size : (i + 1) * recipe.batch_size] for i in range(recipe.steps)]


def _lr_factor(step: int, recipe: TinyRecipe) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _held_out_accuracy(torch: Any, model: Any, recipe: TinyRecipe) -> float:
    """Zero-shot top-1 over all class captions on images generated with ``eval_seed``."""
    items = make_dataset(
        recipe.eval_items,
        recipe.eval_seed,
        word_probability=recipe.word_probability,
        size=recipe.render_size,
    )
    model.eval()
    with torch.no_grad():
        texts = _embed(torch, model, token_ids=torch.from_numpy(_token_ids(class_captions())))
        images = _embed(torch, model, pixels=torch.from_numpy(_pixels(items, recipe.image_size)))
        predicted = (images @ texts.T).argmax(dim=1).numpy()
    labels = np.array([item.label for item in items])
    return float((predicted == labels).mean())


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipserve.testing.models [random|tiny|all]``: build and print the paths."""
    parser = argparse.ArgumentParser(prog="python -m clipserve.testing.models")
    parser.add_argument("which", nargs="?", choices=("random", "tiny", "all"), default="all")
    args = parser.parse_args(argv)
    builders: dict[str, Callable[[], Path]] = {
        "random": ensure_random_vit_b32,
        "tiny": ensure_tiny_clip,
    }
    for name, builder in builders.items():
        if args.which in (name, "all"):
            print(f"{name}: {builder()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
