"""``--engine ray``: the same job on a local Ray instance gives the local engine's output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from embedtools import ImageHost, read_output

from clipserve.embed import EmbedOptions, run_local, run_ray, table_records, tar_records
from clipserve.embed.options import DownloadSettings
from clipserve.settings import Settings

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same(first: Path, second: Path) -> None:
    a, b = read_output(first), read_output(second)
    assert a.metadata == b.metadata
    assert a.shard_rows == b.shard_rows
    for left, right in ((a.images, b.images), (a.texts, b.texts)):
        assert (left is None) == (right is None)
        if left is not None and right is not None:
            np.testing.assert_allclose(left, right, atol=2e-3)
    assert {k: v for k, v in a.manifest.items()} == {k: v for k, v in b.manifest.items()}


def test_tar_shards_on_ray_equal_the_local_engine(
    local_ray: None, tar_shards: list[Path], tiny_settings: Settings, tmp_path: Path
) -> None:
    records = list(tar_records([str(path) for path in tar_shards]))
    run_local(records, tiny_settings, EmbedOptions(tmp_path / "local", shard_size=10))
    result = run_ray(records, tiny_settings, EmbedOptions(tmp_path / "ray", shard_size=10))
    assert (result.shards_written, result.shards_skipped) == (3, 0)
    _same(tmp_path / "local", tmp_path / "ray")


def test_urls_on_ray_and_a_resumed_ray_run(
    local_ray: None, image_host: ImageHost, tiny_settings: Settings, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = image_host.url
    urls = [f"{base}/ok/{i}.png" for i in range(6)] + [f"{base}/missing/x.png"]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    records = list(table_records(tmp_path / "urls.parquet"))
    download = DownloadSettings(timeout=2.0, attempts=1)
    local = EmbedOptions(tmp_path / "local", shard_size=3, texts=False, download=download)
    on_ray = EmbedOptions(tmp_path / "ray", shard_size=3, texts=False, download=download)
    run_local(records, tiny_settings, local)
    run_ray(records, tiny_settings, on_ray)
    _same(tmp_path / "local", tmp_path / "ray")

    (tmp_path / "ray" / "metadata" / "metadata_1.parquet").unlink()
    again = run_ray(records, tiny_settings, on_ray)
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    _same(tmp_path / "local", tmp_path / "ray")
