"""``clipserve embed`` on the command line: input detection, the summary line, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from embedtools import ImageHost, read_output

from clipserve.cli import main


def _run(args: list[str], cache: Path) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(main, ["embed", *args], env={"CLIPSERVE_CACHE_DIR": str(cache)})
    return result.exit_code, result.stdout, result.stderr


def test_a_folder_then_a_rerun_that_skips_everything(
    photo_folder: Path, tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    args = [str(photo_folder), "-o", str(tmp_path), "-m", str(tiny_clip_dir), "--shard-size", "10"]
    code, out, err = _run([*args, "--no-progress"], clipserve_cache)
    assert code == 0, err
    summary = json.loads(out)
    assert summary == {
        "items": 31,
        "errors": 1,
        "shards": 4,
        "shards_written": 4,
        "shards_skipped": 0,
        "model": str(tiny_clip_dir),
        "dim": summary["dim"],
    }
    code, out, err = _run(args, clipserve_cache)  # progress bar on (stderr)
    assert code == 0, err
    assert json.loads(out)["shards_skipped"] == 4
    assert "31/31" in err


def test_tar_shards_by_brace_pattern(
    tar_shards: list[Path], tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    pattern = str(tar_shards[0].parent / "data-{000..002}.tar")
    code, out, err = _run(
        [pattern, "-o", str(tmp_path), "-m", str(tiny_clip_dir), "--no-texts", "--no-progress"],
        clipserve_cache,
    )
    assert code == 0, err
    assert json.loads(out)["items"] == 24
    output = read_output(tmp_path)
    assert output.texts is None and output.images is not None


def test_a_table_with_carried_columns(
    image_host: ImageHost, tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    table = pa.table(
        {
            "link": [f"{image_host.url}/ok/{i}.png" for i in range(3)],
            "text": ["one", "two", "three"],
            "sample_id": ["a", "b", "c"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    args = [str(tmp_path / "t.parquet"), "-o", str(tmp_path / "out"), "-m", str(tiny_clip_dir)]
    args += ["--url-column", "link", "--caption-column", "text", "--carry", "sample_id"]
    code, _, err = _run([*args, "--no-progress"], clipserve_cache)
    assert code == 0, err
    rows = read_output(tmp_path / "out").metadata
    assert [(row["caption"], row["sample_id"], row["status"]) for row in rows] == [
        ("one", "a", "ok"),
        ("two", "b", "ok"),
        ("three", "c", "ok"),
    ]


def test_bad_invocations_get_one_clear_line(
    photo_folder: Path,
    tar_shards: list[Path],
    tiny_clip_dir: Path,
    clipserve_cache: Path,
    tmp_path: Path,
) -> None:
    model = ["-m", str(tiny_clip_dir), "--no-progress"]
    code, _, err = _run(
        [str(photo_folder), str(tar_shards[0]), "-o", str(tmp_path), *model], clipserve_cache
    )
    assert code == 2 and "INPUTS must be one folder" in err
    code, _, err = _run(
        [str(tmp_path / "none-{0..3}.tar"), "-o", str(tmp_path), *model], clipserve_cache
    )
    assert code == 2 and "no such tar shard" in err
    pq.write_table(pa.table({"address": ["x"]}), tmp_path / "t.parquet")
    code, _, err = _run(
        [str(tmp_path / "t.parquet"), "-o", str(tmp_path / "o"), *model], clipserve_cache
    )
    assert code == 2 and "no column 'url'" in err and "address" in err
    code, _, err = _run(
        [str(photo_folder), "-o", str(tmp_path / "p"), "--no-images", "--no-texts", *model],
        clipserve_cache,
    )
    assert code == 2 and "nothing to embed" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(
        [str(tmp_path / "empty"), "-o", str(tmp_path / "q"), *model], clipserve_cache
    )
    assert code == 2 and "no images or rows" in err
