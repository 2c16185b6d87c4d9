"""The one settings object. Every part of clipserve receives it; none reads the environment.

Values come from keyword arguments, then ``CLIPSERVE_*`` environment variables, then defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Precision = Literal["fp32", "int8"]

DEFAULT_MODEL = "ViT-B-32::openai"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clipserve"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clipserve"


class Settings(BaseSettings):
    """Configuration of an :class:`~clipserve.Engine` (and later of the server).

    Example::

        Settings(models=["ViT-B-32::openai"], precision="int8")
    """

    model_config = SettingsConfigDict(env_prefix="CLIPSERVE_", env_nested_delimiter="__")

    models: list[str] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Models to load; the first is the default. Registry name, HF repo id or dir.",
    )
    precision: Precision = Field("fp32", description="fp32 (exact) or int8 (dynamic quantization).")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where exported ONNX graphs are kept (beside nothing else of ours).",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where named indexes live (one directory each under indexes/).",
    )
    threads: int = Field(0, ge=0, description="Inference threads; 0 means one per CPU core.")
    preprocess_workers: int = Field(
        0, ge=0, description="Image decode/preprocess threads; 0 means one per CPU core."
    )
    max_batch_size: int = Field(32, ge=1, description="Largest batch sent to the model at once.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="How long a batch waits for more requests while the model is busy."
    )
    max_queue: int = Field(
        1024, ge=1, description="Items waiting per model and modality before requests get 503."
    )
    request_timeout: float = Field(
        60.0, gt=0, description="Seconds a request may wait for its embeddings."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Images with more pixels than this are rejected."
    )
    max_text_chars: int = Field(
        100_000, ge=1, description="Texts longer than this many characters are rejected."
    )
    jpeg_draft: bool = Field(
        True, description="Let the JPEG decoder downscale in the DCT when parity allows."
    )
