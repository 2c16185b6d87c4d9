"""The options of a batch job (no heavy imports: the command line reads them first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipserve.errors import InvalidInputError


@dataclass(frozen=True)
class DownloadSettings:
    """How URLs are fetched.

    Attributes:
        concurrency: Downloads at once.
        timeout: Seconds for one attempt (connect, and each read).
        attempts: Tries per URL for retryable failures (timeouts, connection errors, 5xx, 429).
        max_bytes: Largest image accepted.
        backoff: Seconds before the second try; doubled for each further one (with jitter).
    """

    concurrency: int = 16
    timeout: float = 10.0
    attempts: int = 3
    max_bytes: int = 32 * 1024 * 1024
    backoff: float = 0.5


@dataclass(frozen=True)
class EmbedOptions:
    """How ``clipserve embed`` runs.

    Attributes:
        output: The output directory (created; resumed if it holds this job's shards).
        images: Embed the images.
        texts: Embed the captions.
        shard_size: Items per output shard (the unit of resumption).
        batch_size: Images per model run.
        workers: Decode worker processes (0: one per core, but at least 1).
        download: How URLs are fetched.
        show_progress: Show a progress bar on stderr.
    """

    output: Path
    images: bool = True
    texts: bool = True
    shard_size: int = 10_000
    batch_size: int = 64
    workers: int = 0
    download: DownloadSettings = field(default_factory=DownloadSettings)
    show_progress: bool = False

    def __post_init__(self) -> None:
        if not (self.images or self.texts):
            raise InvalidInputError("nothing to embed: enable images, texts or both")
        if self.shard_size < 1 or self.batch_size < 1:
            raise InvalidInputError("shard_size and batch_size must be at least 1")
