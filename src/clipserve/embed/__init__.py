"""Offline batch embedding (``clipserve embed``): folders, tar shards and URL tables to
embedding shards, resumable, on one machine or on a Ray cluster.

Example::

    from clipserve.embed import EmbedOptions, folder_records, run_local
    from clipserve.settings import Settings

    records = list(folder_records(Path("photos")))
    run_local(records, Settings(), EmbedOptions(output=Path("out")))
"""

from __future__ import annotations

from typing import Any

from clipserve.embed.options import DownloadSettings, EmbedOptions
from clipserve.embed.records import (
    Record,
    expand_braces,
    folder_records,
    table_records,
    tar_records,
)

__all__ = [
    "DownloadSettings",
    "EmbedOptions",
    "Record",
    "expand_braces",
    "folder_records",
    "run_local",
    "run_ray",
    "table_records",
    "tar_records",
]


def __getattr__(name: str) -> Any:
    # The runners need the batch extra (httpx, pyarrow) or Ray: imported on first use only.
    if name == "run_local":
        from clipserve.embed.pipeline import run_local

        return run_local
    if name == "run_ray":
        from clipserve.embed.ray_engine import run_ray

        return run_ray
    raise AttributeError(f"module 'clipserve.embed' has no attribute {name!r}")
