"""The local batch pipeline: decode in worker processes, infer in large batches, write behind.

Three stages run at once: worker processes read and preprocess images (URLs are downloaded by
a thread pool first), the main thread runs the model on batches as soon as they are ready, and
a writer thread writes each finished shard. A bounded window of items in flight keeps memory
flat however large the job is.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.embed.decode import Decoded, decode, init_worker, warm_up
from clipserve.embed.download import Downloader
from clipserve.embed.options import EmbedOptions
from clipserve.embed.output import (
    JobSpec,
    ShardRows,
    is_complete,
    prepare,
    shard_paths,
    write_manifest,
    write_shard,
)
from clipserve.embed.records import Record, TarMember, Url
from clipserve.engine import Engine
from clipserve.errors import StorageError
from clipserve.models.loader import ClipModel
from clipserve.models.preprocess import PreprocessConfig
from clipserve.settings import Settings


@dataclass(frozen=True)
class EmbedResult:
    """What a run did: the manifest of the completed job, and this run's share of it."""

    manifest: dict[str, Any]
    shards_written: int
    shards_skipped: int
    #: Seconds spent embedding and writing this run's shards (after the model was loaded).
    seconds: float = 0.0


def job_spec(
    records: Sequence[Record], model: str, dim: int, settings: Settings, options: EmbedOptions
) -> JobSpec:
    """The spec of embedding ``records``: the inputs' fingerprint, the model, the layout."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.key}\0{record.source}\0".encode())
    return JobSpec(
        model=model,
        precision=settings.precision,
        dim=dim,
        images=options.images,
        texts=options.texts,
        shard_size=options.shard_size,
        items=len(records),
        inputs_sha256=digest.hexdigest(),
    )


@dataclass(frozen=True)
class JobPlan:
    """A job's spec, its shards, and which of them are still to be written."""

    spec: JobSpec
    shards: list[Sequence[Record]]
    pending: list[int]

    @property
    def done_items(self) -> int:
        """Items in the shards a previous run completed."""
        pending = set(self.pending)
        return sum(len(shard) for i, shard in enumerate(self.shards) if i not in pending)


def plan_job(records: Sequence[Record], spec: JobSpec, options: EmbedOptions) -> JobPlan:
    """Check ``options.output`` against ``spec`` (resuming the same job) and list what is left.

    Raises:
        InvalidInputError: ``options.output`` holds a different job's output.
    """
    options.output.mkdir(parents=True, exist_ok=True)
    spec.check_or_write(options.output)
    prepare(options.output)
    size = options.shard_size
    shards = [records[start : start + size] for start in range(0, len(records), size)]
    pending = [i for i in range(len(shards)) if not is_complete(options.output, i, spec)]
    return JobPlan(spec, shards, pending)


def finish_job(plan: JobPlan, options: EmbedOptions, seconds: float) -> EmbedResult:
    """Write the manifest of a job whose shards are all complete."""
    errors = count_errors(options.output, len(plan.shards))
    manifest = write_manifest(options.output, plan.spec, len(plan.shards), errors)
    skipped = len(plan.shards) - len(plan.pending)
    return EmbedResult(manifest, len(plan.pending), skipped, seconds)


def run_local(records: Sequence[Record], settings: Settings, options: EmbedOptions) -> EmbedResult:
    """Embed ``records`` into ``options.output`` on this machine; resumes a previous run.

    Raises:
        InvalidInputError: ``options.output`` holds a different job's output.
    """
    # The decode workers start (and import) while the model loads.
    with _Decoder(options) as decoder, Engine(settings) as engine:
        clip = engine.model()
        spec = job_spec(records, clip.name, clip.embed_dim, settings, options)
        plan = plan_job(records, spec, options)
        work = [(i, plan.shards[i]) for i in plan.pending]
        start = time.perf_counter()
        with Progress(len(records), plan.done_items, options.show_progress) as progress:
            _embed_shards(engine, clip, decoder, work, options, progress)
        seconds = time.perf_counter() - start
    return finish_job(plan, options, seconds)


def count_errors(output: Path, shards: int) -> int:
    """Rows with status ``error`` over all shards."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    total = 0
    for index in range(shards):
        status = pq.read_table(shard_paths(output, index)["metadata"], columns=["status"])
        total += int(pc.sum(pc.equal(status.column("status"), "error")).as_py() or 0)
    return total


def _embed_shards(
    engine: Engine,
    clip: ClipModel,
    decoder: _Decoder,
    shards: list[tuple[int, Sequence[Record]]],
    options: EmbedOptions,
    progress: Progress,
) -> None:
    writer = ShardWriter(options.output)
    try:
        records = (record for _, shard in shards for record in shard)
        decoded = decoder.decode_in_order(records, clip.preprocess)
        for index, shard in shards:
            rows = _shard_rows(index, shard, decoded, engine, clip, options, progress)
            writer.put(rows)
    finally:
        writer.close()


def _shard_rows(
    index: int,
    shard: Sequence[Record],
    decoded: Iterator[Decoded],
    engine: Engine,
    clip: ClipModel,
    options: EmbedOptions,
    progress: Progress,
) -> ShardRows:
    rows = ShardRows(index)
    if options.images:
        rows.image_vectors = np.zeros((len(shard), clip.embed_dim), np.float32)
    batch: list[tuple[int, np.ndarray]] = []
    for position, record in enumerate(shard):
        item = next(decoded) if options.images else Decoded(None)
        add_row(rows, record, item, options)
        if item.pixels is not None:
            batch.append((position, item.pixels))
        if len(batch) == options.batch_size:
            _run_images(clip, batch, rows)
            batch = []
        progress.advance(failed=rows.errors[-1] is not None)
    if batch:
        _run_images(clip, batch, rows)
    if options.texts:
        rows.text_vectors = caption_vectors(engine, rows.captions, clip.embed_dim)
    return rows


def add_row(rows: ShardRows, record: Record, item: Decoded, options: EmbedOptions) -> None:
    """Append ``record``'s metadata and its decode outcome to ``rows``."""
    rows.keys.append(record.key)
    rows.sources.append(record.source)
    rows.captions.append(record.caption)
    rows.widths.append(item.width)
    rows.heights.append(item.height)
    rows.sha256.append(item.sha256)
    rows.paths.append(image_location(record))
    rows.extra.append(record.extra)
    error = item.error if options.images else None
    if error is None and options.texts and not options.images and record.caption is None:
        error = "no caption"
    rows.errors.append(error)


def image_location(record: Record) -> str | None:
    """Where the item's image can be read again: an absolute file path, ``/abs/shard.tar#member``,
    or its URL (``clipserve filter`` copies images from there)."""
    image = record.image
    if isinstance(image, TarMember):
        return f"{image.path}#{image.member}"
    if isinstance(image, Url):
        return image.url
    return image


def _run_images(clip: ClipModel, batch: list[tuple[int, np.ndarray]], rows: ShardRows) -> None:
    assert rows.image_vectors is not None
    vectors = clip.embed_pixels(np.stack([pixels for _, pixels in batch]))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    rows.image_vectors[[position for position, _ in batch]] = vectors / np.maximum(norms, 1e-12)


def caption_vectors(engine: Engine, captions: list[str | None], dim: int) -> np.ndarray:
    """Normalised embeddings of the captions; zero rows where there is none."""
    vectors = np.zeros((len(captions), dim), np.float32)
    present = [i for i, caption in enumerate(captions) if caption is not None]
    if present:
        # Only the first 77 tokens count; cutting a huge caption at the engine's character
        # limit changes nothing but keeps it from failing the job.
        limit = engine.settings.max_text_chars
        texts = [(captions[i] or "")[:limit] for i in present]
        vectors[present] = engine.encode_texts(texts, normalize=True)
    return vectors


class _Decoder:
    """Decodes records in worker processes, yielding results in input order."""

    def __init__(self, options: EmbedOptions) -> None:
        workers = max(1, options.workers or os.cpu_count() or 1)
        # forkserver: the parent holds onnxruntime threads, which a plain fork must not copy.
        context = multiprocessing.get_context("forkserver")
        self._pool = cf.ProcessPoolExecutor(
            workers, mp_context=context, initializer=init_worker, initargs=(os.getpid(),)
        )
        # Start the workers now: they import while the model loads, not after.
        for _ in range(workers):
            self._pool.submit(warm_up)
        self._downloads = cf.ThreadPoolExecutor(options.download.concurrency)
        self._downloader = Downloader(options.download)
        self._window = max(2 * options.batch_size, 4 * workers, options.download.concurrency)

    def decode_in_order(
        self, records: Iterator[Record], cfg: PreprocessConfig
    ) -> Iterator[Decoded]:
        """Results of ``records`` in order, with up to a window of them being worked on."""
        pending: deque[cf.Future[Decoded]] = deque()
        for record in records:
            pending.append(self._submit(record, cfg))
            if len(pending) >= self._window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _submit(self, record: Record, cfg: PreprocessConfig) -> cf.Future[Decoded]:
        image = record.image
        if image is None:
            return _done(Decoded(None, error="no image"))
        if isinstance(image, Url):
            return self._downloads.submit(self._download_and_decode, image.url, cfg)
        return self._pool.submit(decode, image, cfg)

    def _download_and_decode(self, url: str, cfg: PreprocessConfig) -> Decoded:
        download = self._downloader.fetch(url)
        if download.data is None:
            return Decoded(None, error=f"download failed: {download.error}")
        return self._pool.submit(decode, download.data, cfg).result()

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._downloader.close()


def _done(value: Decoded) -> cf.Future[Decoded]:
    future: cf.Future[Decoded] = cf.Future()
    future.set_result(value)
    return future


class ShardWriter:
    """Writes shards in a background thread; errors surface in the main thread."""

    def __init__(self, output: Path) -> None:
        self._output = output
        self._queue: queue.Queue[ShardRows | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="clipserve-writer", daemon=True)
        self._thread.start()

    def put(self, rows: ShardRows) -> None:
        """Queue a shard (blocks while two are waiting); re-raise an earlier write error."""
        self._raise_if_failed()
        self._queue.put(rows)

    def close(self) -> None:
        """Finish the queued shards (each is atomic) and stop; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (rows := self._queue.get()) is not None:
            if self._error is None:
                try:
                    write_shard(self._output, rows)
                except StorageError as exc:  # a full disk: say how to go on, write no more
                    self._error = StorageError(
                        f"shard {rows.index}: {exc}; the shards written before it are kept: "
                        "free some space and run the same command again to finish the job"
                    )
                    self._error.__cause__ = exc
                except BaseException as exc:  # report it, write no more
                    self._error = exc


class Progress:
    """A tqdm bar (items/s, ETA, errors so far) when shown; a no-op otherwise."""

    def __init__(self, total: int, done: int, show: bool) -> None:
        self._bar: Any = None
        self._errors = 0
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="item", dynamic_ncols=True)

    def advance(self, *, failed: bool) -> None:
        """One more item done."""
        self._errors += failed
        if self._bar is not None:
            self._bar.update(1)
            if failed:
                self._bar.set_postfix(errors=self._errors, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
