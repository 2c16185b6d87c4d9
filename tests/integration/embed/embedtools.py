"""Helpers of the batch-embedding tests: image bytes, a loopback image host, reading output."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


@dataclass
class Output:
    """Every shard of an output, concatenated in shard order."""

    metadata: list[dict[str, Any]]
    images: np.ndarray | None
    texts: np.ndarray | None
    manifest: dict[str, Any]
    shard_rows: list[int]


def read_output(root: Path) -> Output:
    """Concatenate the shards, checking that the files of each shard have the same rows."""
    manifest = json.loads((root / "manifest.json").read_text())
    tables, images, texts, rows = [], [], [], []
    for index in range(manifest["shards"]):
        table = pq.read_table(root / "metadata" / f"metadata_{index}.parquet")
        tables.append(table)
        rows.append(table.num_rows)
        for kind, found in (("img", images), ("text", texts)):
            path = root / f"{kind}_emb" / f"{kind}_emb_{index}.npy"
            if path.exists():
                vectors = np.load(path)
                assert vectors.dtype == np.float16
                assert len(vectors) == table.num_rows, f"{path}: rows differ from metadata"
                found.append(vectors.astype(np.float32))
    metadata = pa.concat_tables(tables, promote_options="default").to_pylist()
    return Output(
        metadata=metadata,
        images=np.concatenate(images) if images else None,
        texts=np.concatenate(texts) if texts else None,
        manifest=manifest,
        shard_rows=rows,
    )


CORRUPT = b"\xff\xd8\xff\xe0 this JPEG stops here"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.convert("RGB").save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@dataclass
class ImageHost:
    """A loopback HTTP server with good, missing, slow, corrupt and flaky images."""

    url: str
    images: dict[str, bytes]
    hits: dict[str, int]


class ImageHandler(BaseHTTPRequestHandler):
    host: ImageHost
    slow_seconds = 3.0

    def do_GET(self) -> None:
        path = self.path
        self.host.hits[path] = self.host.hits.get(path, 0) + 1
        if path.startswith("/slow/"):
            time.sleep(self.slow_seconds)
        if path.startswith("/flaky/") and self.host.hits[path] == 1:
            self._send(503, b"try again")
            return
        name = path.rsplit("/", 1)[-1]
        if path.startswith("/corrupt/"):
            self._send(200, CORRUPT)
        elif name in self.host.images and not path.startswith("/missing/"):
            self._send(200, self.host.images[name])
        else:
            self._send(404, b"no such image")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet
        pass
