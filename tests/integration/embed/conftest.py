"""Fixtures for the batch-embedding tests: generated corpora on disk and a loopback image host."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from embedtools import CORRUPT, ImageHandler, ImageHost, jpeg_bytes, png_bytes

from clipserve.settings import Settings
from clipserve.testing.synthetic import make_dataset


@pytest.fixture(scope="session")
def tiny_settings(tiny_clip_dir: Path, clipserve_cache: Path) -> Settings:
    return Settings(models=[str(tiny_clip_dir)], cache_dir=clipserve_cache)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 shape images in two directories, most with a caption beside them, one corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "b").mkdir()
    for index, item in enumerate(make_dataset(30, seed=5)):
        directory = root / ("b" if index % 3 == 0 else "")
        name = f"shape{index:02d}"
        if index % 2:
            (directory / f"{name}.png").write_bytes(png_bytes(item.image))
        else:
            (directory / f"{name}.jpg").write_bytes(jpeg_bytes(item.image))
        if index % 5 != 4:
            (directory / f"{name}.txt").write_text(item.caption + "\n")
    (root / "b" / "zz-corrupt.jpg").write_bytes(CORRUPT)
    (root / "notes.md").write_text("not an image: ignored")
    return root


@pytest.fixture(scope="session")
def tar_shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three webdataset shards of 8 samples: image, caption, json; one sample corrupt."""
    root = tmp_path_factory.mktemp("shards")
    items = make_dataset(24, seed=9)
    paths = []
    for shard in range(3):
        path = root / f"data-{shard:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for offset in range(8):
                number = shard * 8 + offset
                item = items[number]
                key = f"{number:06d}"
                image = CORRUPT if number == 13 else png_bytes(item.image)
                _add(archive, f"{key}.png", image)
                _add(archive, f"{key}.txt", item.caption.encode())
                _add(archive, f"{key}.json", json.dumps({"number": number}).encode())
        paths.append(path)
    return paths


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    images = {f"{i}.png": png_bytes(item.image) for i, item in enumerate(make_dataset(12, seed=21))}
    host = ImageHost("", images, {})
    handler = type("Handler", (ImageHandler,), {"host": host})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield host
    server.shutdown()
    server.server_close()
