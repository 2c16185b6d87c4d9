"""Search with the tiny trained model: embed → index build → text→image, image→image, image→text."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipserve.cli import main
from clipserve.embed import EmbedOptions, folder_records, run_local
from clipserve.engine import Engine
from clipserve.index import Catalog, Index
from clipserve.index.build import CAPTION_SUFFIX, build_index
from clipserve.settings import Settings
from clipserve.testing.synthetic import COLORS, SHAPES, caption_for, make_dataset

IMAGES = 256


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()


@pytest.fixture(scope="module")
def embedded(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, clipserve_cache: Path
) -> Path:
    """``clipserve embed`` output of 256 shape images, each with its caption and class."""
    root = tmp_path_factory.mktemp("search")
    folder = root / "photos"
    folder.mkdir()
    for index, item in enumerate(make_dataset(IMAGES, seed=31)):
        (folder / f"{item.color}-{item.shape}-{index:03d}.png").write_bytes(_png(item.image))
        (folder / f"{item.color}-{item.shape}-{index:03d}.txt").write_text(item.caption)
    settings = Settings(models=[str(tiny_clip_dir)], cache_dir=clipserve_cache)
    run_local(list(folder_records(folder)), settings, EmbedOptions(root / "out", shard_size=100))
    return root / "out"


@pytest.fixture()
def index(embedded: Path, tmp_path: Path) -> Iterator[Index]:
    catalog = Catalog(tmp_path / "indexes")
    result = build_index(embedded, catalog, "shapes")
    assert (result.images, result.texts, result.skipped) == (IMAGES, IMAGES, 0)
    assert result.thumbnails == IMAGES
    yield catalog.open("shapes")
    catalog.close()


def _class_of(key: str) -> tuple[str, str]:
    color, shape, _ = key.split("-")
    return color, shape


def test_a_text_query_finds_its_colour_and_shape_first(index: Index, tiny_engine: Engine) -> None:
    classes = [(color, shape) for color in COLORS for shape in SHAPES]
    queries = tiny_engine.encode_texts([caption_for(color, shape) for color, shape in classes])
    results = index.search(queries, k=5, modality="image")
    right = sum(
        _class_of(hits[0].id) == wanted for hits, wanted in zip(results, classes, strict=True)
    )
    # The tiny model's held-out zero-shot accuracy is about 0.98: allow it a miss or two.
    assert right >= 0.9 * len(classes), f"{right} of {len(classes)} top-1 right"
    assert all(hit.modality == "image" for hits in results for hit in hits)


def test_image_to_image_and_image_to_text(index: Index, tiny_engine: Engine) -> None:
    held_out = make_dataset(32, seed=999)
    vectors = tiny_engine.encode_images([_png(item.image) for item in held_out])
    images = index.search(vectors, k=1, modality="image")
    texts = index.search(vectors, k=1, modality="text")
    same_image = sum(
        _class_of(hits[0].id) == (item.color, item.shape)
        for hits, item in zip(images, held_out, strict=True)
    )
    same_text = sum(
        hits[0].metadata["caption"] == item.caption
        for hits, item in zip(texts, held_out, strict=True)
    )
    assert same_image >= 29 and same_text >= 29
    assert all(hits[0].id.endswith(CAPTION_SUFFIX) for hits in texts)


def test_filters_on_carried_metadata_and_a_rebuild_is_idempotent(
    index: Index, embedded: Path, tiny_engine: Engine, tmp_path: Path
) -> None:
    query = tiny_engine.encode_texts([caption_for("red", "circle")])
    hits = index.search(query, k=20, filters={"caption": {"ne": caption_for("red", "circle")}})
    assert hits[0] and all(h.metadata["caption"] != caption_for("red", "circle") for h in hits[0])
    assert all({"source", "width", "height", "sha256"} <= set(h.metadata) for h in hits[0])
    before = len(index)
    build_index(embedded, Catalog(tmp_path / "indexes"), "shapes")
    assert len(Catalog(tmp_path / "indexes").open("shapes")) == before


def test_built_images_get_thumbnails_of_their_source(index: Index, embedded: Path) -> None:
    from PIL import Image

    key = _first_key(embedded)
    jpeg = index.thumbnail(key)
    assert jpeg is not None
    with Image.open(io.BytesIO(jpeg)) as thumbnail:
        item = index.get(key)
        assert item is not None
        source = embedded.parent / "photos" / item.metadata["source"]
        with Image.open(source) as original:
            assert thumbnail.format == "JPEG"
            assert max(thumbnail.size) == min(256, max(original.size))
    assert index.thumbnail(key + CAPTION_SUFFIX) is None  # texts have no picture


def test_a_source_gone_since_embedding_costs_only_its_thumbnail(
    tmp_path: Path, tiny_clip_dir: Path, clipserve_cache: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, item in enumerate(make_dataset(4, seed=5)):
        (folder / f"{index}.png").write_bytes(_png(item.image))
    settings = Settings(models=[str(tiny_clip_dir)], cache_dir=clipserve_cache)
    run_local(list(folder_records(folder)), settings, EmbedOptions(tmp_path / "out"))
    (folder / "0.png").unlink()
    catalog = Catalog(tmp_path / "indexes")
    result = build_index(tmp_path / "out", catalog, "gone")
    assert (result.images, result.thumbnails) == (4, 3)
    built = catalog.open("gone")
    assert len(built) == 4 and built.thumbnail("0") is None and built.thumbnail("1") is not None
    skipped = build_index(tmp_path / "out", catalog, "none", thumbnails=False)
    assert skipped.thumbnails == 0 and catalog.open("none").thumbnail("1") is None
    catalog.close()


def _first_key(embedded: Path) -> str:
    import pyarrow.parquet as pq

    return str(pq.read_table(embedded / "metadata" / "metadata_0.parquet").column("key")[0])


def test_the_command_line_builds_and_searches(
    embedded: Path, tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = {"CLIPSERVE_CACHE_DIR": str(clipserve_cache), "CLIPSERVE_DATA_DIR": str(tmp_path)}
    built = runner.invoke(main, ["index", "build", str(embedded), "--name", "cli"], env=env)
    assert built.exit_code == 0, built.output
    summary = json.loads(built.stdout)
    assert summary["count"] == 2 * IMAGES and summary["added_images"] == IMAGES
    assert summary["thumbnails"] == IMAGES
    listed = runner.invoke(main, ["index", "list"], env=env)
    assert json.loads(listed.stdout)["name"] == "cli"

    args = ["search", "cli", caption_for("blue", "square"), "--k", "3", "--modality", "image"]
    found = runner.invoke(main, args, env=env)
    assert found.exit_code == 0, found.output
    lines = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(lines) == 3 and _class_of(lines[0]["id"]) == ("blue", "square")

    image = embedded.parent / "photos" / lines[0]["metadata"]["source"]
    by_image = runner.invoke(main, ["search", "cli", str(image), "--k", "1"], env=env)
    assert json.loads(by_image.stdout)["id"] == lines[0]["id"]  # itself, score 1

    bad = runner.invoke(main, ["search", "cli", "x", "--filter", "{nope"], env=env)
    assert bad.exit_code == 2 and "--filter is not JSON" in bad.stderr
    missing = runner.invoke(main, ["search", "nothing", "x"], env=env)
    assert missing.exit_code == 2 and "no index named 'nothing'" in missing.stderr


def test_filter_copies_the_matching_images_from_files_and_tar_shards(
    embedded: Path, tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    import tarfile

    from clipserve.embed import tar_records

    runner = CliRunner()
    env = {"CLIPSERVE_CACHE_DIR": str(clipserve_cache), "CLIPSERVE_DATA_DIR": str(tmp_path)}
    assert runner.invoke(main, ["index", "build", str(embedded), "-n", "f"], env=env).exit_code == 0
    query = caption_for("green", "triangle")
    args = ["filter", "f", "--query", query, "--output", str(tmp_path / "top")]
    done = runner.invoke(main, [*args, "--num-results", "5"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["copied"] == 5
    copied = sorted((tmp_path / "top").glob("*.png"))
    assert len(copied) == 5 and all("green-triangle" in path.name for path in copied)
    log = [
        json.loads(line) for line in (tmp_path / "top" / "results.jsonl").read_text().splitlines()
    ]
    source = embedded.parent / "photos" / log[0]["metadata"]["source"]
    assert (tmp_path / "top" / log[0]["file"]).read_bytes() == source.read_bytes()

    by_threshold = runner.invoke(
        main, ["filter", "f", "-q", query, "-o", str(tmp_path / "t"), "--threshold", "0.2"], env=env
    )
    assert by_threshold.exit_code == 0, by_threshold.output
    scores = [json.loads(line)["score"] for line in (tmp_path / "t" / "results.jsonl").open()]
    assert scores and min(scores) >= 0.2
    both = runner.invoke(main, [*args, "--num-results", "5", "--threshold", "0.2"], env=env)
    assert both.exit_code == 2 and "exactly one of" in both.stderr

    # A tar shard as the source: members are extracted byte for byte.
    shard = tmp_path / "shard.tar"
    items = make_dataset(8, seed=71)
    with tarfile.open(shard, "w") as archive:
        for i, item in enumerate(items):
            data = _png(item.image)
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    settings = Settings(models=[str(tiny_clip_dir)], cache_dir=clipserve_cache)
    run_local(list(tar_records([str(shard)])), settings, EmbedOptions(tmp_path / "tar-out"))
    catalog = Catalog(tmp_path / "indexes")
    assert build_index(tmp_path / "tar-out", catalog, "tar").thumbnails == len(items)
    catalog.close()
    out = runner.invoke(
        main,
        ["filter", "tar", "-q", items[0].caption, "-o", str(tmp_path / "x"), "--num-results", "8"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    extracted = {
        path.name.split("_", 1)[1]: path.read_bytes() for path in (tmp_path / "x").glob("*.png")
    }
    with tarfile.open(shard) as archive:
        for member in archive.getmembers():
            key = f"shard.tar_{member.name.removesuffix('.png')}.png"
            handle = archive.extractfile(member)
            assert handle is not None
            assert extracted[key] == handle.read()
