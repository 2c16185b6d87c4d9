"""``clipserve index build|list|delete-items`` and ``clipserve search`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from clipserve.errors import InvalidInputError
from clipserve.settings import Settings

_DATA_DIR_HELP = "Where indexes live [$CLIPSERVE_DATA_DIR or ~/.local/share/clipserve]."


def _catalog(data_dir: Path | None) -> Any:
    from clipserve.index.collection import Catalog

    root = data_dir or Settings().data_dir
    return Catalog(root / "indexes")


@click.group()
def index() -> None:
    """Build and inspect the search indexes."""


@index.command("build")
@click.argument("embed_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", "-n", required=True, help="Index name (created if new).")
@click.option("--images/--no-images", default=True, show_default=True, help="Add image vectors.")
@click.option("--texts/--no-texts", default=True, show_default=True, help="Add caption vectors.")
@click.option(
    "--thumbnails/--no-thumbnails",
    default=True,
    show_default=True,
    help="Store a small JPEG of each local image (file or tar member) for the search page.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), help=_DATA_DIR_HELP)
def build(
    embed_dir: Path,
    name: str,
    images: bool,
    texts: bool,
    thumbnails: bool,
    data_dir: Path | None,
) -> None:
    """Index the output of `clipserve embed` (rerunning replaces items, never duplicates).

    \b
    clipserve embed photos/ -o out/ && clipserve index build out/ --name photos
    """
    from clipserve.index.build import build_index

    catalog = _catalog(data_dir)
    try:
        result = build_index(
            embed_dir, catalog, name, images=images, texts=texts, thumbnails=thumbnails
        )
        summary = {**catalog.open(name).describe(), "added_images": result.images}
        summary |= {"added_texts": result.texts, "skipped_rows": result.skipped}
        summary |= {"thumbnails": result.thumbnails}
    finally:
        catalog.close()
    click.echo(json.dumps(summary))


@index.command("list")
@click.option("--data-dir", type=click.Path(path_type=Path), help=_DATA_DIR_HELP)
def list_indexes(data_dir: Path | None) -> None:
    """The indexes, one JSON object per line: name, model, dim, count, layout."""
    catalog = _catalog(data_dir)
    try:
        for name in catalog.names():
            click.echo(json.dumps(catalog.open(name).describe()))
    finally:
        catalog.close()


@click.command()
@click.argument("name")
@click.argument("query")
@click.option("--k", "-k", type=int, default=10, show_default=True, help="Results.")
@click.option(
    "--filter", "filter_json", help='Metadata conditions, e.g. \'{"year": {"gte": 2020}}\'.'
)
@click.option("--modality", type=click.Choice(["image", "text"]), help="Only these items.")
@click.option("--data-dir", type=click.Path(path_type=Path), help=_DATA_DIR_HELP)
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32")
def search(
    name: str,
    query: str,
    k: int,
    filter_json: str | None,
    modality: str | None,
    data_dir: Path | None,
    precision: str,
) -> None:
    """Search index NAME with QUERY: a text, or the path of an image file.

    Prints one JSON object per result, best first: id, score, modality, metadata.

    \b
    clipserve search photos "a red car" --k 10
    clipserve search photos query.jpg --modality image --filter '{"width": {"gte": 1000}}'
    """
    filters = _filters(filter_json)
    catalog = _catalog(data_dir)
    try:
        target = catalog.open(name)
        vector = _query_vector(target.model, query, precision)
        hits = target.search(vector, k, filters=filters, modality=modality)[0]
    finally:
        catalog.close()
    for hit in hits:
        result = {"id": hit.id, "score": round(hit.score, 6), "modality": hit.modality}
        click.echo(json.dumps({**result, "metadata": hit.metadata}))


@click.command("filter")
@click.argument("name")
@click.option("--query", "-q", required=True, help="A text, or the path of an image file.")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Folder.")
@click.option("--num-results", type=int, help="Copy the best K images.")
@click.option("--threshold", type=float, help="Copy every image at least this similar.")
@click.option("--filter", "filter_json", help="Metadata conditions as a JSON object.")
@click.option("--data-dir", type=click.Path(path_type=Path), help=_DATA_DIR_HELP)
def filter_command(
    name: str,
    query: str,
    output: Path,
    num_results: int | None,
    threshold: float | None,
    filter_json: str | None,
    data_dir: Path | None,
) -> None:
    """Copy the images of index NAME that match a query into OUTPUT.

    Images are copied from where `clipserve embed` read them (files, tar shards, URLs);
    OUTPUT/results.jsonl lists every match with its score, and why any was not copied.

    \b
    clipserve filter photos --query "a cat" --output cats/ --num-results 100
    clipserve filter photos --query "a cat" --output cats/ --threshold 0.28
    """
    from clipserve.index.filter import filter_index

    filters = _filters(filter_json)
    catalog = _catalog(data_dir)
    try:
        target = catalog.open(name)
        vector = _query_vector(target.model, query)
        result = filter_index(
            target, vector, output, num_results=num_results, threshold=threshold, filters=filters
        )
    finally:
        catalog.close()
    click.echo(
        json.dumps(
            {
                "matched": result.matched,
                "copied": result.copied,
                "skipped": result.skipped,
                "output": str(output),
            }
        )
    )


def _query_vector(model: str, query: str, precision: str = "fp32") -> Any:
    """The embedding of QUERY (a text, or an existing image file) by ``model``."""
    from clipserve.engine import Engine

    item: str | Path = Path(query) if Path(query).is_file() else query
    with Engine(Settings(models=[model], precision=precision)) as engine:
        return engine.encode([item])[0]


def _filters(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"--filter is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInputError("--filter must be a JSON object of conditions")
    return value
