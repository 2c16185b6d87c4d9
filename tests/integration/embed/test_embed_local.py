"""``clipserve embed`` on this machine: folders, tar shards, URL tables; alignment and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embedtools import CORRUPT, ImageHost, read_output

from clipserve.embed import (
    DownloadSettings,
    EmbedOptions,
    expand_braces,
    folder_records,
    run_local,
    table_records,
    tar_records,
)
from clipserve.embed.decode import read_bytes
from clipserve.engine import Engine
from clipserve.errors import InvalidInputError
from clipserve.settings import Settings

# float16 storage: about 3 significant digits.
F16_ATOL = 2e-3


def test_a_folder_gives_aligned_rows_equal_to_the_engine(
    photo_folder: Path, tiny_settings: Settings, tiny_engine: Engine, tmp_path: Path
) -> None:
    records = list(folder_records(photo_folder))
    result = run_local(records, tiny_settings, EmbedOptions(tmp_path, shard_size=7, batch_size=4))
    out = read_output(tmp_path)

    assert result.shards_written == out.manifest["shards"] == 5  # 31 images / 7
    assert out.shard_rows == [7, 7, 7, 7, 3]
    keys = [row["key"] for row in out.metadata]
    assert keys == sorted(keys) and len(keys) == 31
    assert "b/zz-corrupt" in keys and not any(key.startswith("notes") for key in keys)
    assert out.manifest["items"] == 31 and out.manifest["errors"] == 1

    ok = [i for i, row in enumerate(out.metadata) if row["status"] == "ok"]
    bad = [i for i, row in enumerate(out.metadata) if row["status"] == "error"]
    assert [out.metadata[i]["key"] for i in bad] == ["b/zz-corrupt"]
    assert "truncated or corrupt" in (out.metadata[bad[0]]["error"] or "")
    assert out.images is not None and out.texts is not None
    assert not out.images[bad].any()

    paths = [photo_folder / out.metadata[i]["source"] for i in ok]
    expected = tiny_engine.encode_images(paths)
    np.testing.assert_allclose(out.images[ok], expected, atol=F16_ATOL)

    captioned = [i for i, row in enumerate(out.metadata) if row["caption"] is not None]
    assert 0 < len(captioned) < 31
    captions = [out.metadata[i]["caption"] for i in captioned]
    np.testing.assert_allclose(
        out.texts[captioned], tiny_engine.encode_texts(captions), atol=F16_ATOL
    )
    uncaptioned = sorted(set(range(31)) - set(captioned))
    assert not out.texts[uncaptioned].any()

    for i in ok:
        row = out.metadata[i]
        assert (row["width"], row["height"]) == (128, 128)
        assert len(row["sha256"]) == 64


def test_tar_shards_from_a_brace_pattern(
    tar_shards: list[Path], tiny_settings: Settings, tiny_engine: Engine, tmp_path: Path
) -> None:
    pattern = str(tar_shards[0].parent / "data-{000..002}.tar")
    assert expand_braces(pattern) == [str(path) for path in tar_shards]
    records = list(tar_records(expand_braces(pattern)))
    assert len(records) == 24
    run_local(records, tiny_settings, EmbedOptions(tmp_path, shard_size=10))
    out = read_output(tmp_path)

    assert [row["key"] for row in out.metadata] == [
        f"data-{n // 8:03d}.tar/{n:06d}" for n in range(24)
    ]
    assert [row["number"] for row in out.metadata] == list(range(24))  # the .json carried
    assert [row["status"] for row in out.metadata].count("error") == 1
    assert out.metadata[13]["status"] == "error"
    ok = [i for i in range(24) if i != 13]
    images = [read_bytes(records[i].image) for i in ok]  # type: ignore[arg-type]
    assert out.images is not None
    np.testing.assert_allclose(out.images[ok], tiny_engine.encode_images(images), atol=F16_ATOL)


def test_a_url_table_records_every_failure_with_its_reason(
    image_host: ImageHost, tiny_settings: Settings, tiny_engine: Engine, tmp_path: Path
) -> None:
    base = image_host.url
    urls = [
        f"{base}/ok/0.png",
        f"{base}/missing/1.png",
        f"{base}/slow/2.png",
        f"{base}/corrupt/3.png",
        f"{base}/flaky/4.png",
        f"{base}/ok/5.png",
        "ftp://example.invalid/6.png",
        None,
    ]
    table = pa.table(
        {
            "url": urls,
            "caption": [f"caption {i}" for i in range(len(urls))],
            "id": list(range(100, 100 + len(urls))),
            "license": ["cc-by"] * len(urls),
        }
    )
    path = tmp_path / "urls.parquet"
    pq.write_table(table, path)
    records = list(table_records(path, extra_columns=["id", "license"]))
    download = DownloadSettings(concurrency=4, timeout=0.5, attempts=2, backoff=0.05)
    out_dir = tmp_path / "out"
    run_local(records, tiny_settings, EmbedOptions(out_dir, download=download))
    out = read_output(out_dir)

    errors = [row["error"] for row in out.metadata]
    assert errors[0] is None and errors[5] is None
    assert errors[1] == "download failed: HTTP 404"
    assert errors[2] is not None and "timed out" in errors[2] and "2 attempts" in errors[2]
    assert errors[3] is not None and "truncated or corrupt" in errors[3]
    assert errors[4] is None  # a 503 first, then served: retried
    assert image_host.hits["/flaky/4.png"] == 2
    assert image_host.hits["/missing/1.png"] == 1  # a 404 is not retried
    assert errors[6] is not None and "not an http(s) URL" in errors[6]
    assert errors[7] == "no image"
    assert [row["id"] for row in out.metadata] == list(range(100, 108))
    assert {row["license"] for row in out.metadata} == {"cc-by"}
    assert [row["source"] for row in out.metadata][:6] == urls[:6]
    expected = tiny_engine.encode_images([image_host.images["0.png"], image_host.images["5.png"]])
    assert out.images is not None
    np.testing.assert_allclose(out.images[[0, 5]], expected, atol=F16_ATOL)
    assert out.texts is not None  # every row has a caption, fetched or not
    np.testing.assert_allclose(
        out.texts, tiny_engine.encode_texts([f"caption {i}" for i in range(8)]), atol=F16_ATOL
    )


def test_a_csv_table_and_texts_only(
    tiny_settings: Settings, tiny_engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "captions.csv"
    huge = "a green ring " * 20_000  # 260,000 characters: over the engine's text limit
    path.write_text(f'url,caption\n,"a red circle"\n,"a blue square, small"\n,"{huge}"\n')
    records = list(table_records(path))
    run_local(records, tiny_settings, EmbedOptions(tmp_path / "out", images=False))
    out = read_output(tmp_path / "out")
    assert out.images is None and out.texts is not None
    assert [row["status"] for row in out.metadata] == ["ok", "ok", "ok"]
    cut = huge[: tiny_settings.max_text_chars]  # the same first 77 tokens
    expected = tiny_engine.encode_texts(["a red circle", "a blue square, small", cut])
    np.testing.assert_allclose(out.texts, expected, atol=F16_ATOL)


def test_a_rerun_redoes_only_the_missing_shards(
    photo_folder: Path, tiny_settings: Settings, tmp_path: Path
) -> None:
    records = list(folder_records(photo_folder))
    options = EmbedOptions(tmp_path, shard_size=8)
    first = run_local(records, tiny_settings, options)
    before = read_output(tmp_path)
    (tmp_path / "metadata" / "metadata_2.parquet").unlink()
    (tmp_path / "img_emb" / ".tmp-img_emb_3.npy").write_bytes(b"left by a killed run")

    second = run_local(records, tiny_settings, options)
    after = read_output(tmp_path)
    assert (first.shards_written, first.shards_skipped) == (4, 0)
    assert (second.shards_written, second.shards_skipped) == (1, 3)
    assert after.metadata == before.metadata
    assert before.images is not None and after.images is not None
    np.testing.assert_array_equal(after.images, before.images)
    assert not list((tmp_path / "img_emb").glob(".tmp-*"))

    third = run_local(records, tiny_settings, options)
    assert (third.shards_written, third.shards_skipped) == (0, 4)


def test_a_different_job_into_the_same_output_is_refused(
    photo_folder: Path, tiny_settings: Settings, tmp_path: Path
) -> None:
    records = list(folder_records(photo_folder))
    run_local(records, tiny_settings, EmbedOptions(tmp_path, shard_size=8))
    with pytest.raises(InvalidInputError, match=r"different job.*shard_size"):
        run_local(records, tiny_settings, EmbedOptions(tmp_path, shard_size=9))
    with pytest.raises(InvalidInputError, match="inputs_sha256"):
        run_local(records[:-1], tiny_settings, EmbedOptions(tmp_path, shard_size=8))
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["shard_size"] == 8


def test_exif_orientation_gives_upright_width_and_height(
    tiny_settings: Settings, tmp_path: Path
) -> None:
    from embedtools import jpeg_bytes
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    wide = Image.new("RGB", (90, 40), (200, 30, 30))
    (folder / "turned.jpg").write_bytes(jpeg_bytes(wide, orientation=6))
    (folder / "plain.jpg").write_bytes(jpeg_bytes(wide))
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(CORRUPT)
    run_local(list(folder_records(folder)), tiny_settings, EmbedOptions(tmp_path / "out"))
    rows = {row["key"]: row for row in read_output(tmp_path / "out").metadata}
    assert (rows["turned"]["width"], rows["turned"]["height"]) == (40, 90)
    assert (rows["plain"]["width"], rows["plain"]["height"]) == (90, 40)
    assert rows["empty"]["status"] == rows["truncated"]["status"] == "error"
    assert rows["empty"]["sha256"] is not None  # the hash of zero bytes
