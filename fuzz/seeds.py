"""Seed corpora of the atheris targets, generated (no binary files live in the repository).

``python fuzz/seeds.py <target> <directory>`` writes the seeds of one target (``image``,
``tokenizer``, ``compat``, ``datauri`` or ``filters``) into ``directory``;
``scripts/fuzz.py`` does it for every target before each run. Seeds are small valid
inputs plus the hostile cases the property tests also pin (decompression bombs, truncated
files, deep JSON): libFuzzer mutates from there.

The compat target reads its input as one byte choosing a route in :data:`ROUTES`, then
the request body; seed bodies spell the served model as ``@MODEL@``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipserve.testing.hostile import (
    DECLARING,
    FORMATS,
    deep_json,
    small_image,
    tall_png,
    truncations,
)

#: Routes of the compat target: path and body kind (``json``, ``form`` or ``image``).
ROUTES: tuple[tuple[str, str], ...] = (
    ("/v1/encode", "json"),
    ("/v1/encode", "form"),
    ("/v1/encode", "image"),
    ("/v1/rank", "json"),
    ("/v1/classify", "json"),
    ("/v1/indexes/fuzz/search", "json"),
    ("/v1/indexes/fuzz/items", "json"),
    ("/encode_text", "json"),
    ("/encode_image", "form"),
    ("/rank", "form"),
    ("/post", "json"),
    ("/text-embeddings", "json"),
    ("/image-embeddings", "form"),
    ("/predict", "form"),
    ("/v1/embeddings", "json"),
    ("/knn-service", "json"),
    ("/metadata", "json"),
)
#: The multipart boundary of form bodies (the target sends it in the Content-Type).
BOUNDARY = "fuzzboundary7f3a"
_MODEL = "@MODEL@"
# A JSON escape of a lone surrogate in every field a route might read: valid JSON, no Unicode.
_LONE_SURROGATE = (
    b'{"items": ["\\ud800"], "texts": ["\\ud800"], "inputs": ["\\ud800"], "ids": ["\\ud800"],'
    b' "input": "\\ud800", "model": "\\ud800", "data": [{"text": "\\ud800"}]}'
)


def multipart(parts: Sequence[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body of ``(name, filename or None, data)`` parts."""
    out = bytearray()
    for name, filename, data in parts:
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\n{disposition}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def image_seeds() -> list[bytes]:
    """Small images of every format, files declaring huge sizes, truncated files."""
    seeds = [small_image(fmt) for fmt in FORMATS]
    seeds += [DECLARING[fmt](30_000, 30_000) for fmt in FORMATS]
    seeds += [DECLARING[fmt](3_000, 2_000) for fmt in FORMATS]
    seeds += [cut for fmt in FORMATS for cut in truncations(small_image(fmt), cuts=3)]
    seeds.append(tall_png(4_000))
    return seeds


def tokenizer_seeds() -> list[bytes]:
    """Texts (as the target's data provider reads them): words, specials, scripts, spaces."""
    texts = [
        "a photo of a cat",
        "<|startoftext|>a<|endoftext|>",
        "Ünïcödé 猫 🙂 ǅ ΣΑΣ",
        " \t\n  spaced   out ",
        "don't we'll i'm",
        "x" * 3000,
        "",
    ]
    return [text.encode("utf-8") for text in texts]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def compat_seeds() -> list[bytes]:
    """For each route of :data:`ROUTES`: a valid request and a few hostile ones."""
    png = small_image("PNG")
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    bodies: dict[tuple[str, str], list[bytes]] = {
        ("/v1/encode", "json"): [
            _json({"inputs": ["a cat", uri, {"text": "x"}, {"image": uri}], "model": _MODEL}),
            _json({"inputs": [{"url": "https://example.com/a.png"}], "encoding": "base64"}),
        ],
        ("/v1/encode", "form"): [
            multipart([("text", None, b"a cat"), ("file", "a.png", png), ("normalize", None, b"0")])
        ],
        ("/v1/encode", "image"): [png, small_image("JPEG")],
        ("/v1/rank", "json"): [_json({"query": uri, "candidates": ["a red circle", "a square"]})],
        ("/v1/classify", "json"): [
            _json({"images": [uri], "labels": ["circle", "square"], "templates": ["a {}"]})
        ],
        ("/v1/indexes/fuzz/search", "json"): [
            _json({"input": "a red circle", "k": 2, "filter": {"n": {"gte": 1}}}),
            _json({"id": "red", "filter": {"color": {"in": ["red", "blue"]}, "n": 1}}),
        ],
        ("/v1/indexes/fuzz/items", "json"): [
            _json({"items": [{"id": "new", "input": "a cat", "metadata": {"n": 3, "x": [1]}}]}),
            b'{"items": [{"id": "nan", "input": "a cat", "metadata": {"n": NaN}}]}',
        ],
        ("/encode_text", "json"): [_json({"items": ["a cat", "a dog"]})],
        ("/encode_image", "form"): [multipart([("items", "a.png", png)])],
        ("/rank", "form"): [
            multipart([("queries", "a.png", png), ("candidates", None, _json(["a", "b"]))])
        ],
        ("/post", "json"): [
            _json({"data": [{"text": "a cat", "tags": {"k": 1}}, {"blob": uri}], "header": {}}),
            _json(
                {
                    "data": [{"uri": uri, "matches": [{"text": "a"}, {"text": "b"}]}],
                    "execEndpoint": "/rank",
                }
            ),
            b'{"data": [{"text": "a", "tags": {"x": NaN}}], "parameters": {"p": Infinity}}',
            b'{"data": [{"text": "a", "matches": [{"text": "b", "scores": [1]}]}],'
            b' "execEndpoint": "/rank"}',
        ],
        ("/text-embeddings", "json"): [_json({"texts": ["hawk", "lion"]})],
        ("/image-embeddings", "form"): [multipart([("image", "a.png", png)])],
        ("/predict", "form"): [
            multipart(
                [
                    ("entries", None, _json({"clip": {"visual": {"modelName": _MODEL}}})),
                    ("image", "blob", png),
                ]
            ),
            multipart(
                [
                    ("entries", None, _json({"clip": {"textual": {"modelName": _MODEL}}})),
                    ("text", None, b"a cat"),
                ]
            ),
            multipart([("entries", None, deep_json(2_000)), ("text", None, b"a cat")]),
        ],
        ("/v1/embeddings", "json"): [
            _json({"model": _MODEL, "input": ["a cat", uri], "encoding_format": "base64"})
        ],
        ("/knn-service", "json"): [
            _json({"text": "a red circle", "modality": "text", "num_images": 2}),
            _json({"image": base64.b64encode(png).decode(), "modality": "image", "num_images": 1}),
        ],
        ("/metadata", "json"): [_json({"ids": ["red", "nope"], "indice_name": "fuzz"})],
    }
    seeds = []
    for index, route in enumerate(ROUTES):
        hostile = {
            "json": [deep_json(2_000), b"\xff\xfe", b"", _LONE_SURROGATE],
            "form": [deep_json(2_000), b"\xff\xfe", b""],
            "image": [b""],
        }[route[1]]
        seeds += [bytes([index]) + body for body in [*bodies[route], *hostile]]
    return seeds


def datauri_seeds() -> list[bytes]:
    """Base64 and data URIs of small images, spelled strictly and leniently."""
    seeds = []
    for fmt in ("PNG", "JPEG", "GIF"):
        text = base64.b64encode(small_image(fmt)).decode()
        seeds += [
            f"data:image/{fmt.lower()};base64,{text}".encode(),
            text.encode(),
            text.rstrip("=").translate(str.maketrans("+/", "-_")).encode(),
            "\n".join(text[i : i + 76] for i in range(0, len(text), 76)).encode(),
        ]
    seeds.append(b"data:image/png;base64," + base64.b64encode(DECLARING["PNG"](30_000, 30_000)))
    return seeds


def filters_seeds() -> list[bytes]:
    """Filters of every documented shape."""
    filters: list[Any] = [
        {"color": "red"},
        {"n": {"gte": 1, "lt": 3}},
        {"color": {"in": ["red", "blue"]}, "n": {"ne": None}},
        {"exif.iso": {"gt": 100}, "flag": True, "missing": None},
        {"a-b": {"eq": 1.5}, "color": {"ne": "red"}},
    ]
    return [_json(value) for value in filters] + [deep_json(500, kind="object")]


#: The seed builder of each target.
SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "image": image_seeds,
    "tokenizer": tokenizer_seeds,
    "compat": compat_seeds,
    "datauri": datauri_seeds,
    "filters": filters_seeds,
}


def write_seeds(target: str, directory: Path) -> int:
    """Write ``target``'s seeds into ``directory`` (created if missing), named by content
    hash as libFuzzer names corpus files; returns how many were written."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds: Iterable[bytes] = SEEDS[target]()
    count = 0
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        count += 1
    return count


def main(argv: Sequence[str]) -> int:
    """``seeds.py <target> <directory>``."""
    if len(argv) != 2 or argv[0] not in SEEDS:
        print(f"usage: seeds.py {{{','.join(SEEDS)}}} DIRECTORY", file=sys.stderr)
        return 2
    count = write_seeds(argv[0], Path(argv[1]))
    print(f"{count} seeds for {argv[0]} in {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
