"""The batch job on a Ray cluster (``clipserve embed --engine ray``), with Ray Data.

Reading, downloading and decoding run as Ray tasks spread over the cluster; inference runs in
a pool of actors, each loading the model once; the driver gathers the results in input order
and writes the same shards, through the same code, as the local engine. Resumption works the
same way: only shards without their metadata file are sent to the cluster.

Needs the ``ray`` extra (``pip install 'clipserve[ray]'``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from clipserve.embed.decode import Decoded, decode
from clipserve.embed.download import Downloader
from clipserve.embed.options import DownloadSettings, EmbedOptions
from clipserve.embed.output import ShardRows
from clipserve.embed.pipeline import (
    EmbedResult,
    Progress,
    ShardWriter,
    add_row,
    caption_vectors,
    finish_job,
    job_spec,
    plan_job,
)
from clipserve.embed.records import Record, TarMember, Url
from clipserve.engine import Engine
from clipserve.errors import ClipServeError
from clipserve.models.loader import prepare_export
from clipserve.models.onnx_store import ExportMeta
from clipserve.models.preprocess import PreprocessConfig
from clipserve.settings import Settings


class RayUnavailableError(ClipServeError):
    """``--engine ray`` without Ray installed, or a cluster that cannot be reached."""


def run_ray(
    records: Sequence[Record],
    settings: Settings,
    options: EmbedOptions,
    *,
    address: str | None = None,
    actors: int | None = None,
) -> EmbedResult:
    """Embed ``records`` on a Ray cluster (a local one when ``address`` is ``None``).

    Args:
        records: The inputs, in job order.
        settings: The model settings; the model is exported here, once, before any actor
            starts, so the actors only load it.
        options: Output and layout, as for :func:`~clipserve.embed.pipeline.run_local`.
        address: A Ray cluster address (``ray://host:10001`` or ``auto``).
        actors: Inference actors (default: one per two CPUs of the cluster, at least one).
    """
    ray = _import_ray()
    name, directory = prepare_export(settings.models[0], settings)
    meta = ExportMeta.read(directory)
    spec = job_spec(records, name, meta.embed_dim, settings, options)
    plan = plan_job(records, spec, options)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    local = settings.model_copy(update={"models": [str(directory)]})
    cfg = PreprocessConfig.from_hf_dir(
        directory, max_pixels=settings.max_image_pixels, jpeg_draft=settings.jpeg_draft
    )
    work = [(i, plan.shards[i]) for i in plan.pending]
    start = time.perf_counter()
    rows = [row for index, shard in work for row in _rows(index, shard)]
    if rows:
        results = _results(ray, rows, local, cfg, options, actors)
        writer = ShardWriter(options.output)
        try:
            with Progress(len(records), plan.done_items, options.show_progress) as progress:
                for index, shard in work:
                    writer.put(_shard(index, shard, results, meta.embed_dim, options, progress))
        finally:
            writer.close()
    return finish_job(plan, options, time.perf_counter() - start)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--engine ray needs Ray: pip install 'clipserve[ray]'") from exc
    return ray


def _rows(index: int, shard: Sequence[Record]) -> Iterator[dict[str, Any]]:
    # Plain columns only: what Ray Data moves between tasks is Arrow.
    for position, record in enumerate(shard):
        location, offset, length = _location(record.image)
        yield {
            "shard": index,
            "position": position,
            "location": location,
            "offset": offset,
            "length": length,
            "caption": record.caption if record.caption is not None else "",
            "has_caption": record.caption is not None,
        }


# The "offset" column: a byte offset into a tar file, or one of these.
_WHOLE_FILE, _URL = -1, -2


def _location(image: str | TarMember | Url | None) -> tuple[str, int, int]:
    if isinstance(image, TarMember):
        return image.path, image.offset, image.size
    if isinstance(image, Url):
        return image.url, _URL, -1
    return image or "", _WHOLE_FILE, -1


def _results(
    ray: Any,
    rows: list[dict[str, Any]],
    settings: Settings,
    cfg: PreprocessConfig,
    options: EmbedOptions,
    actors: int | None,
) -> Iterator[dict[str, Any]]:
    from ray.data import DataContext

    DataContext.get_current().execution_options.preserve_order = True
    count = actors or max(1, int(ray.cluster_resources().get("CPU", 2)) // 2)
    dataset = ray.data.from_items(rows)
    dataset = dataset.map_batches(
        _decode_batch,
        fn_kwargs={"cfg": cfg, "images": options.images, "download": options.download},
        batch_size=16,
        batch_format="numpy",
        # Less than the actors' one CPU: Ray then keeps decoding as separate tasks (it
        # would otherwise fuse them into the actors) and runs several per core.
        num_cpus=0.5,
    )
    dataset = dataset.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={
            "settings": settings,
            "images": options.images,
            "texts": options.texts,
        },
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=count),
    )
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        for offset in range(len(batch["position"])):
            yield {column: values[offset] for column, values in batch.items()}


def _decode_batch(
    batch: dict[str, np.ndarray], cfg: PreprocessConfig, images: bool, download: DownloadSettings
) -> dict[str, np.ndarray]:
    """Ray task: read or download, then preprocess, a batch of images."""
    size = cfg.image_size
    count = len(batch["position"])
    pixels = np.zeros((count, 3, size, size), np.float32)
    outcome: dict[str, list[Any]] = {"width": [], "height": [], "sha256": [], "error": []}
    downloader = Downloader(download) if images else None
    try:
        for row in range(count):
            item = _decode_row(batch, row, cfg, downloader) if downloader else Decoded(None)
            if item.pixels is not None:
                pixels[row] = item.pixels
            outcome["width"].append(-1 if item.width is None else item.width)
            outcome["height"].append(-1 if item.height is None else item.height)
            outcome["sha256"].append(item.sha256 or "")
            outcome["error"].append(item.error or "")
    finally:
        if downloader is not None:
            downloader.close()
    columns = {name: np.asarray(values) for name, values in outcome.items()}
    return {**batch, **columns, "pixels": pixels}


def _decode_row(
    batch: dict[str, np.ndarray], row: int, cfg: PreprocessConfig, downloader: Downloader
) -> Decoded:
    location = str(batch["location"][row])
    offset, length = int(batch["offset"][row]), int(batch["length"][row])
    if not location:
        return Decoded(None, error="no image")
    if offset == _URL:
        fetched = downloader.fetch(location)
        if fetched.data is None:
            return Decoded(None, error=f"download failed: {fetched.error}")
        return decode(fetched.data, cfg)
    if offset >= 0:
        return decode(TarMember(location, offset, length), cfg)
    return decode(location, cfg)


class _EmbedActor:
    """Ray actor: loads the model once, embeds the images and captions of each batch."""

    def __init__(self, settings: Settings, images: bool, texts: bool) -> None:
        # Share the node's cores among the actors rather than each taking all of them.
        threads = settings.threads or max(1, (os.cpu_count() or 2) // 2)
        self._engine = Engine(settings.model_copy(update={"threads": threads}))
        self._clip = self._engine.model()
        self._images, self._texts = images, texts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count, dim = len(batch["position"]), self._clip.embed_dim
        image_vectors = np.zeros((count, dim), np.float32)
        ok = np.array([not error for error in batch["error"]], dtype=bool)
        if self._images and ok.any():
            vectors = self._clip.embed_pixels(np.ascontiguousarray(batch["pixels"][ok]))
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            image_vectors[ok] = vectors / np.maximum(norms, 1e-12)
        captions = [
            str(caption) if present else None
            for caption, present in zip(batch["caption"], batch["has_caption"], strict=True)
        ]
        text_vectors = (
            caption_vectors(self._engine, captions, dim)
            if self._texts
            else np.zeros((count, dim), np.float32)
        )
        kept = {k: v for k, v in batch.items() if k != "pixels"}
        return {**kept, "image_vector": image_vectors, "text_vector": text_vectors}


def _shard(
    index: int,
    shard: Sequence[Record],
    results: Iterator[dict[str, Any]],
    dim: int,
    options: EmbedOptions,
    progress: Progress,
) -> ShardRows:
    rows = ShardRows(index)
    image_vectors = np.zeros((len(shard), dim), np.float32)
    text_vectors = np.zeros((len(shard), dim), np.float32)
    for position, record in enumerate(shard):
        result = next(results)
        if (int(result["shard"]), int(result["position"])) != (index, position):
            raise RuntimeError("Ray returned results out of order")  # preserve_order broken
        item = Decoded(
            None,
            None if result["width"] < 0 else int(result["width"]),
            None if result["height"] < 0 else int(result["height"]),
            str(result["sha256"]) or None,
            str(result["error"]) or None,
        )
        add_row(rows, record, item, options)
        image_vectors[position] = result["image_vector"]
        text_vectors[position] = result["text_vector"]
        progress.advance(failed=rows.errors[-1] is not None)
    rows.image_vectors = image_vectors if options.images else None
    rows.text_vectors = text_vectors if options.texts else None
    return rows
