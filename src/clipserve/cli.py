"""The ``clipserve`` command line."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from clipserve.errors import ClipServeError
from clipserve.settings import DEFAULT_MODEL, Settings

PRECISION = click.Choice(["fp32", "int8"])


class _Group(click.Group):
    """Turns clipserve errors into a one-line message and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipServeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="clipserve")
def main() -> None:
    """CLIP embeddings: encode, rank, classify, serve, index and search."""


@main.command()
@click.argument("items", nargs=-1, required=True)
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Model name.")
@click.option("--precision", "-p", type=PRECISION, default="fp32", show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["json", "npy"]), default="json", show_default=True
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@click.option("--text", "as_text", is_flag=True, help="Treat every item as text, even file names.")
@click.option("--no-normalize", is_flag=True, help="Return raw (unnormalised) embeddings.")
def encode(
    items: tuple[str, ...],
    model: str,
    precision: str,
    fmt: str,
    output: Path | None,
    as_text: bool,
    no_normalize: bool,
) -> None:
    """Embed texts and image files; an ITEM naming an existing file is an image.

    \b
    clipserve encode "a photo of a cat" cat.jpg --format json
    clipserve encode cat.jpg dog.png --format npy -o vectors.npy
    """
    from clipserve.engine import Engine

    inputs: list[str | Path] = [
        Path(item) if not as_text and Path(item).is_file() else item for item in items
    ]
    with Engine(Settings(models=[model], precision=precision)) as engine:
        vectors = engine.encode(inputs, normalize=not no_normalize)
        name = engine.model().name
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        _emit(buffer.getvalue(), output)
        return
    rows = [
        {
            "input": str(item),
            "modality": "image" if isinstance(item, Path) else "text",
            "embedding": vector.tolist(),
        }
        for item, vector in zip(inputs, vectors, strict=True)
    ]
    document = {"model": name, "precision": precision, "dim": int(vectors.shape[1]), "data": rows}
    _emit((json.dumps(document) + "\n").encode(), output)


def _emit(payload: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
    else:
        output.write_bytes(payload)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(as_json: bool) -> None:
    """List the registry's models: embedding dimension, image size, whether cached."""
    from clipserve.models.registry import is_cached, known_models

    rows = [
        {
            "name": spec.name,
            "repo": spec.repo_id,
            "dim": spec.embed_dim,
            "image_size": spec.image_size,
            "cached": is_cached(spec.repo_id),
        }
        for spec in known_models()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':34} {'dim':>5} {'image':>5}  cached  repo")
    for row in rows:
        cached = "yes" if row["cached"] else "no"
        click.echo(
            f"{row['name']:34} {row['dim']:>5} {row['image_size']:>5}  {cached:6}  {row['repo']}"
        )


@main.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--precision", "-p", type=PRECISION, default="fp32", show_default=True)
def export(model: str, precision: str) -> None:
    """Download MODEL if needed and export it to ONNX (cached; reused by every later start).

    Prints the export directory and the parity it measured. The directory is a complete model:
    pass it as --model to serve without torch.
    """
    from clipserve.models.loader import prepare_export
    from clipserve.models.onnx_store import ExportMeta

    settings = Settings(models=[model], precision=precision)
    name, directory = prepare_export(model, settings)
    meta = ExportMeta.read(directory)
    click.echo(json.dumps({"model": name, "directory": str(directory), **meta.to_json()}, indent=2))


def _register_commands() -> None:
    from clipserve.embed.cli import embed
    from clipserve.index.cli import filter_command, index, search
    from clipserve.server.cli import serve

    main.add_command(serve)
    main.add_command(embed)
    main.add_command(index)
    main.add_command(search)
    main.add_command(filter_command)


_register_commands()

if __name__ == "__main__":
    main()
