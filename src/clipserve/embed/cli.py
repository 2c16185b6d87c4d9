"""``clipserve embed``: the batch job on the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from clipserve.embed.options import DownloadSettings, EmbedOptions
from clipserve.embed.records import (
    Record,
    expand_braces,
    folder_records,
    table_records,
    tar_records,
)
from clipserve.errors import InvalidInputError
from clipserve.settings import DEFAULT_MODEL, Settings

TABLE_SUFFIXES = frozenset({".parquet", ".csv", ".tsv"})


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Output dir.")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Model name.")
@click.option("--precision", "-p", type=click.Choice(["fp32", "int8"]), default="fp32")
@click.option("--images/--no-images", default=True, show_default=True, help="Embed images.")
@click.option("--texts/--no-texts", default=True, show_default=True, help="Embed captions.")
@click.option("--shard-size", type=int, default=10_000, show_default=True, help="Items per shard.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per run.")
@click.option("--workers", type=int, default=0, help="Decode processes [one per core].")
@click.option("--url-column", default="url", show_default=True, help="Table column of URLs.")
@click.option("--caption-column", default="caption", show_default=True, help="Caption column.")
@click.option("--carry", default="", help="Table columns to copy into metadata (a,b,c).")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Downloads at once.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per try.")
@click.option("--attempts", type=int, default=3, show_default=True, help="Tries per URL.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address [a local Ray].")
@click.option("--progress/--no-progress", default=True, show_default=True)
def embed(
    inputs: tuple[str, ...],
    output: Path,
    model: str,
    precision: str,
    images: bool,
    texts: bool,
    shard_size: int,
    batch_size: int,
    workers: int,
    url_column: str,
    caption_column: str,
    carry: str,
    concurrency: int,
    timeout: float,
    attempts: int,
    engine: str,
    address: str | None,
    progress: bool,
) -> None:
    """Embed a folder of images, webdataset tar shards, or a parquet/CSV of URLs.

    Writes img_emb/img_emb_{N}.npy, text_emb/text_emb_{N}.npy (float16, L2-normalised) and
    metadata/metadata_{N}.parquet to OUTPUT. Rerun the same command after a crash or Ctrl-C
    to finish the job: completed shards are kept, the rest is redone.

    \b
    clipserve embed photos/ -o out/
    clipserve embed 'shards/{00000..00099}.tar' -o out/ --shard-size 10000
    clipserve embed urls.parquet -o out/ --caption-column text --carry id,license
    """
    records = read_inputs(inputs, url_column, caption_column, _columns(carry))
    if not records:
        raise InvalidInputError(f"nothing to embed: no images or rows in {', '.join(inputs)}")
    options = EmbedOptions(
        output=output,
        images=images,
        texts=texts,
        shard_size=shard_size,
        batch_size=batch_size,
        workers=workers,
        download=DownloadSettings(concurrency=concurrency, timeout=timeout, attempts=attempts),
        show_progress=progress,
    )
    settings = Settings(models=[model], precision=precision)
    from clipserve.embed.pipeline import run_local

    try:
        if engine == "ray":
            from clipserve.embed.ray_engine import run_ray

            result = run_ray(records, settings, options, address=address)
        else:
            result = run_local(records, settings, options)
    except KeyboardInterrupt:
        click.echo("interrupted: completed shards are kept; rerun to finish", err=True)
        sys.exit(130)
    _report(result)


def read_inputs(
    inputs: Sequence[str], url_column: str, caption_column: str, carry: Sequence[str]
) -> list[Record]:
    """All records of INPUTS: one folder, one table, or any number of tar shards."""
    paths = [path for pattern in inputs for path in expand_braces(pattern)]
    first = Path(paths[0])
    if len(paths) == 1 and first.is_dir():
        return list(folder_records(first))
    if len(paths) == 1 and first.suffix.lower() in TABLE_SUFFIXES:
        return list(
            table_records(
                first,
                url_column=url_column,
                caption_column=caption_column or None,
                extra_columns=carry,
            )
        )
    if all(path.endswith(".tar") for path in paths):
        return list(tar_records(paths))
    raise InvalidInputError(
        "INPUTS must be one folder, one .parquet/.csv/.tsv table, or .tar shards "
        f"(got {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})"
    )


def _columns(carry: str) -> list[str]:
    return [name.strip() for name in carry.split(",") if name.strip()]


def _report(result: Any) -> None:
    manifest = result.manifest
    summary = {
        "items": manifest["items"],
        "errors": manifest["errors"],
        "shards": manifest["shards"],
        "shards_written": result.shards_written,
        "shards_skipped": result.shards_skipped,
        "model": manifest["model"],
        "dim": manifest["dim"],
    }
    click.echo(json.dumps(summary))
