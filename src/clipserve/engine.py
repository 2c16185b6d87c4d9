"""The Engine: encode, rank and classify with one or more loaded CLIP models.

Every transport (CLI, HTTP, gRPC, batch jobs) goes through this class. Each call runs in three
stages — prepare (tokenize / decode + preprocess), run (the runtime session), finish (normalise)
— and image preparation runs in a thread pool so decoding the next batch overlaps inference of
the current one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import string
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipserve.batching import DynamicBatcher
from clipserve.errors import ClipServeError, InvalidInputError, TextTooLongError
from clipserve.models.loader import ClipModel, load_model
from clipserve.models.preprocess import ImageInput, preprocess
from clipserve.settings import Settings

#: Text or image: a ``str`` is always a text; images are bytes, paths, PIL images or arrays.
Item = str | ImageInput

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
#: The seven-template ensemble OpenAI found best for ImageNet zero-shot with ViT models.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


@dataclass(frozen=True)
class RankResult:
    """Scores of candidates against one query, in the candidates' order."""

    probabilities: np.ndarray  #: softmax(logit_scale · cosine) over the candidates
    cosines: np.ndarray  #: cosine similarity of each candidate to the query

    def order(self) -> np.ndarray:
        """Candidate indices, best first."""
        return np.argsort(-self.cosines, kind="stable")


@dataclass(frozen=True)
class ClassifyResult:
    """Zero-shot scores of one image against every label, in the labels' order."""

    labels: tuple[str, ...]
    probabilities: np.ndarray
    cosines: np.ndarray

    @property
    def label(self) -> str:
        """The most probable label."""
        return self.labels[int(np.argmax(self.probabilities))]


class Engine:
    """Encode texts and images, rank and classify, with the models named in ``settings``.

    Models are loaded (and exported to ONNX on first use) when the engine is built. Every
    method takes ``model=`` to pick one of them; the first in ``settings.models`` is the
    default. Sync methods block; ``a``-prefixed twins are awaitable.

    Example::

        engine = Engine(Settings(models=["ViT-B-32::openai"]))
        vectors = engine.encode_texts(["a photo of a cat", "a diagram"])
        result = engine.rank(Path("cat.jpg"), ["a photo of a cat", "a photo of a dog"])
        print(result.probabilities)
    """

    def __init__(
        self, settings: Settings | None = None, *, models: Mapping[str, ClipModel] | None = None
    ) -> None:
        self.settings = settings or Settings()
        if models is None:
            loaded = [load_model(name, self.settings) for name in self.settings.models]
            models = {model.name: model for model in loaded}
            # Requests may name a model the way the settings did, or by its canonical name.
            aliases = dict(zip(self.settings.models, loaded, strict=True))
            self._models: dict[str, ClipModel] = {**aliases, **models}
        else:
            self._models = dict(models)
        if not self._models:
            raise InvalidInputError("an engine needs at least one model")
        self.default_model = next(iter(models))
        workers = self.settings.preprocess_workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        # One inference thread: on a CPU, models running side by side only fight for cores.
        self._run_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}

    # ----------------------------------------------------------------- models
    @property
    def model_names(self) -> list[str]:
        """Canonical names of the loaded models, default first."""
        return list(dict.fromkeys(model.name for model in self._models.values()))

    def model(self, name: str | None = None) -> ClipModel:
        """The loaded model called ``name`` (the default model when ``None``)."""
        key = self.default_model if name is None else name
        try:
            return self._models[key]
        except KeyError:
            raise InvalidInputError(
                f"model {name!r} is not loaded; loaded: {', '.join(self.model_names)}"
            ) from None

    def close(self) -> None:
        """Stop the worker threads (call :meth:`aclose` first when batchers were used)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._run_pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """Stop the batchers' tasks, then the worker threads."""
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        self.close()

    @property
    def batchers(self) -> list[DynamicBatcher]:
        """The batchers created so far (one per model and modality), for metrics."""
        return list(self._batchers.values())

    def batcher(self, model: str | None, modality: str) -> DynamicBatcher:
        """The dynamic batcher of ``model`` for ``"text"`` or ``"image"`` (made on first use).

        Must be called on the event loop that will await it.
        """
        clip = self.model(model)
        key = (clip.name, modality)
        if key not in self._batchers:
            self._batchers[key] = self._new_batcher(clip, modality)
        return self._batchers[key]

    def _new_batcher(self, clip: ClipModel, modality: str) -> DynamicBatcher:
        def tokenize(text: str) -> list[int]:
            return clip.tokenizer.encode([text])[0]

        def run_texts(ids: list[list[int]]) -> np.ndarray:
            return clip.embed_token_ids(clip.tokenizer.pad(ids))

        def run_images(pixels: list[np.ndarray]) -> np.ndarray:
            return clip.embed_pixels(np.stack(pixels))

        text = modality == "text"
        return DynamicBatcher(
            f"{clip.name}/{modality}",
            prepare=tokenize if text else functools.partial(preprocess, cfg=clip.preprocess),
            run=run_texts if text else run_images,
            prepare_pool=self._pool,
            run_pool=self._run_pool,
            max_batch_size=self.settings.max_batch_size,
            max_wait=self.settings.max_wait_ms / 1000,
            max_queue=self.settings.max_queue,
            item_label=modality,
        )

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- encode
    def encode_texts(
        self, texts: Sequence[str], *, model: str | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed ``texts``; returns float32 ``[len(texts), dim]`` in input order.

        Texts over 77 tokens are truncated (keeping the end token). The batch is sorted by
        length and each slice padded only to its own longest text.
        """
        clip = self.model(model)
        items = self._checked_texts(texts)
        ids = clip.tokenizer.encode(items)
        out = np.empty((len(items), clip.embed_dim), np.float32)
        order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
        size = self.settings.max_batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            out[chunk] = clip.embed_token_ids(clip.tokenizer.pad([ids[i] for i in chunk]))
        return _finish(out, normalize)

    def encode_images(
        self, images: Sequence[ImageInput], *, model: str | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed ``images`` (bytes, file paths, PIL images or uint8 arrays), in input order.

        Raises :class:`~clipserve.errors.InvalidImageError` (or ``ImageTooLargeError``) naming
        the index of the first image that cannot be used.
        """
        clip = self.model(model)
        items = _checked_list(images, "images")
        out = np.empty((len(items), clip.embed_dim), np.float32)
        for start, pixels in self.pixel_batches(items, clip):
            out[start : start + len(pixels)] = clip.embed_pixels(pixels)
        return _finish(out, normalize)

    def encode(
        self, items: Sequence[Item], *, model: str | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed a mix of texts (``str``) and images (anything else), in input order."""
        items = _checked_list(items, "items")
        text_at = [i for i, item in enumerate(items) if isinstance(item, str)]
        image_at = [i for i, item in enumerate(items) if not isinstance(item, str)]
        clip = self.model(model)
        out = np.empty((len(items), clip.embed_dim), np.float32)
        if text_at:
            texts = [items[i] for i in text_at]
            out[text_at] = self.encode_texts(texts, model=model, normalize=normalize)
        if image_at:
            images = [items[i] for i in image_at]
            out[image_at] = self.encode_images(images, model=model, normalize=normalize)
        return out

    def pixel_batches(
        self, images: Sequence[ImageInput], clip: ClipModel | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, pixels)`` batches, preprocessing ahead of the consumer.

        At most two batches are being prepared at any time, so memory stays bounded while
        the pool keeps decoding as the model runs.
        """
        clip = clip or self.model()
        size = self.settings.max_batch_size
        prepare = functools.partial(preprocess, cfg=clip.preprocess)
        pending: deque[Future[np.ndarray]] = deque()
        submitted = 0
        try:
            for start in range(0, len(images), size):
                while submitted < min(len(images), start + 2 * size):
                    pending.append(self._pool.submit(prepare, images[submitted]))
                    submitted += 1
                count = min(size, len(images) - start)
                batch = [_result(pending.popleft(), start + k) for k in range(count)]
                yield start, np.stack(batch)
        finally:
            for future in pending:
                future.cancel()

    # ------------------------------------------------------------ rank, classify
    def rank(
        self, query: Item, candidates: Sequence[Item], *, model: str | None = None
    ) -> RankResult:
        """Score ``candidates`` against ``query``, in either direction (text or image query).

        Probabilities are ``softmax(logit_scale · cosine)`` over the candidates, as CLIP
        computes its logits.
        """
        candidates = _checked_list(candidates, "candidates")
        vectors = self.encode([query, *candidates], model=model)
        return _rank_result(self.model(model), vectors)

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        model: str | None = None,
    ) -> list[ClassifyResult]:
        """Zero-shot classify ``images`` among ``labels``.

        Each label is embedded through every prompt template (``"a photo of a {}."``); the
        normalised template embeddings are averaged and renormalised, as in the CLIP paper.
        """
        label_tuple, template_tuple = self._checked_labels(labels, templates)
        clip = self.model(model)
        classes = self._class_embeddings(clip.name, label_tuple, template_tuple)
        cosines = self.encode_images(images, model=model) @ classes.T
        return _classify_results(clip, label_tuple, cosines)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - the engine lives as long as its cache should
    def _class_embeddings(
        self, model: str, labels: tuple[str, ...], templates: tuple[str, ...]
    ) -> np.ndarray:
        prompts = [template.format(label) for label in labels for template in templates]
        vectors = self.encode_texts(prompts, model=model).reshape(len(labels), len(templates), -1)
        return _finish(vectors.mean(axis=1), normalize=True)

    # ------------------------------------------------------------------ async
    # The awaitable API goes through the dynamic batchers, so concurrent callers (the server's
    # requests) share model batches.
    async def aencode_texts(
        self, texts: Sequence[str], *, model: str | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Awaitable :meth:`encode_texts`, batched with other concurrent calls."""
        items = self._checked_texts(texts)
        rows = await self.batcher(model, "text").submit(items, self.settings.request_timeout)
        return _finish(rows, normalize)

    async def aencode_images(
        self, images: Sequence[ImageInput], *, model: str | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Awaitable :meth:`encode_images`, batched with other concurrent calls."""
        items = _checked_list(images, "images")
        rows = await self.batcher(model, "image").submit(items, self.settings.request_timeout)
        return _finish(rows, normalize)

    async def aencode(
        self, items: Sequence[Item], *, model: str | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Awaitable :meth:`encode`: texts and images are encoded concurrently."""
        items = _checked_list(items, "items")
        text_at = [i for i, item in enumerate(items) if isinstance(item, str)]
        image_at = [i for i, item in enumerate(items) if not isinstance(item, str)]
        out = np.empty((len(items), self.model(model).embed_dim), np.float32)
        jobs = []
        if text_at:
            texts = [items[i] for i in text_at]
            jobs.append(self.aencode_texts(texts, model=model, normalize=normalize))
        if image_at:
            images = [items[i] for i in image_at]
            jobs.append(self.aencode_images(images, model=model, normalize=normalize))
        results = await asyncio.gather(*jobs)
        for positions, rows in zip([p for p in (text_at, image_at) if p], results, strict=True):
            out[positions] = rows
        return out

    async def arank(
        self, query: Item, candidates: Sequence[Item], *, model: str | None = None
    ) -> RankResult:
        """Awaitable :meth:`rank`."""
        candidates = _checked_list(candidates, "candidates")
        vectors = await self.aencode([query, *candidates], model=model)
        return _rank_result(self.model(model), vectors)

    async def aclassify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        model: str | None = None,
    ) -> list[ClassifyResult]:
        """Awaitable :meth:`classify`."""
        label_tuple, template_tuple = self._checked_labels(labels, templates)
        clip = self.model(model)
        classes = await asyncio.to_thread(
            self._class_embeddings, clip.name, label_tuple, template_tuple
        )
        vectors = await self.aencode_images(images, model=model)
        return _classify_results(clip, label_tuple, vectors @ classes.T)

    # ------------------------------------------------------------- validation
    def _checked_labels(
        self, labels: Sequence[str], templates: Sequence[str]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(self._checked_texts(labels, "label")), _checked_templates(templates)

    def _checked_texts(self, texts: Sequence[str], what: str = "text") -> list[str]:
        items = _checked_list(texts, f"{what}s")
        limit = self.settings.max_text_chars
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"{what} {index} is a {type(text).__name__}, expected a string"
                )
            if len(text) > limit:
                raise TextTooLongError(
                    f"{what} {index} has {len(text)} characters; the limit is {limit}"
                )
        return list(items)


def _rank_result(clip: ClipModel, vectors: np.ndarray) -> RankResult:
    cosines = vectors[1:] @ vectors[0]
    return RankResult(probabilities=_softmax(clip.logit_scale * cosines), cosines=cosines)


def _classify_results(
    clip: ClipModel, labels: tuple[str, ...], cosines: np.ndarray
) -> list[ClassifyResult]:
    return [ClassifyResult(labels, _softmax(clip.logit_scale * row), row) for row in cosines]


def _checked_list(items: Any, what: str) -> list[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidInputError(f"{what} must be a list, got {type(items).__name__}")
    if not items:
        raise InvalidInputError(f"{what} must not be empty")
    return list(items)


def _checked_templates(templates: Sequence[str]) -> tuple[str, ...]:
    items = _checked_list(templates, "templates")
    for template in items:
        if not isinstance(template, str) or not _one_label_field(template):
            shown = repr(template) if len(repr(template)) <= 80 else repr(template)[:80] + "…"
            raise InvalidInputError(
                f"prompt template {shown} must be a string with one '{{}}' for the label "
                "and no other braces (write a literal brace as '{{' or '}}')"
            )
    return tuple(items)


def _one_label_field(template: str) -> bool:
    """Whether ``template.format(label)`` works and has exactly one plain ``{}`` field.

    Templates are formatted with ``str.format``: a stray brace, a named or second field would
    raise there (a 500 for what is the client's mistake), so they are refused up front.
    """
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError:  # an unmatched '{' or '}'
        return False
    return fields == [("", "", None)]


def _result(future: Future[np.ndarray], index: int) -> np.ndarray:
    try:
        return future.result()
    except ClipServeError as exc:
        raise type(exc)(f"image {index}: {exc}") from exc


def _finish(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    if not normalize:
        return vectors
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return np.asarray(shifted / shifted.sum(), dtype=np.float32)
