"""Property tests: whatever a client sends, clipserve answers with a result or a typed error.

For each input surface — image bytes (decoder and preprocessing), texts (tokenizer), base64
and data URIs, metadata filters, and the request bodies of every native and compat route —
hypothesis generates inputs, mostly near-valid (a real image cut short, a body with the
right keys and wrong values) and some arbitrary, and checks the one property that matters
for robustness: the answer is a result or a :class:`~clipserve.errors.ClipServeError` (a
4xx over HTTP), never another exception and never a 5xx. Hand-picked hostile inputs ride
along as ``@example`` s or parametrised cases: decompression bombs, truncated files of every
format, malformed base64 and data URIs, 10,000-level JSON on every route, invalid UTF-8,
100,000-character texts, empty and NUL-only inputs.

Runs are bounded and reproducible: ``derandomize=True``, no example database, and a fixed
number of examples per property (see :data:`FEW`, :data:`SOME`, :data:`MANY`; scaled up by
``CLIPSERVE_FUZZ_SCALE`` for a longer search).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from compattools import multipart
from fuzztools import INDEX, METADATA
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipserve.errors import (
    ClipServeError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
)
from clipserve.index import Index
from clipserve.index.filters import where_clause
from clipserve.models.preprocess import (
    PreprocessConfig,
    _center_crop,
    _normalize,
    preprocess,
    to_pixel_values,
)
from clipserve.models.tokenizer import CONTEXT_LENGTH, ClipTokenizer, load_tokenizer
from clipserve.testing.hostile import (
    DECLARING,
    FORMATS,
    deep_json,
    small_image,
    truncations,
)

#: Examples per property: cheap in-process checks get more, HTTP round trips fewer.
#: ``CLIPSERVE_FUZZ_SCALE=20`` multiplies them for a longer search outside CI.
_SCALE = max(1, int(os.environ.get("CLIPSERVE_FUZZ_SCALE", "1")))
MANY, SOME, FEW = 200 * _SCALE, 100 * _SCALE, 40 * _SCALE


def bounded(max_examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings for a CI run: reproducible, no example database, no deadline
    (the machine is shared), a fixed number of examples."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ----------------------------------------------------------------------------- strategies
SMALL = {fmt: small_image(fmt) for fmt in FORMATS}
#: Largest side each format's header can declare.
_MAX_SIDE = {"PNG": 2**31 - 1, "TIFF": 2**32 - 1, "BMP": 2**31 - 1, "GIF": 65535, "JPEG": 65535}
_MAX_SIDE["WEBP"] = 16383

#: Code points that break naive text handling: lone surrogates (JSON escapes them as
#: "\ud800"; Python decodes them into a str that is not Unicode), NUL, a BOM, a
#: right-to-left override, non-ASCII letters and an astral-plane emoji.
_ODD = st.sampled_from(
    ["\ud800", "\udc80", "\udfff", "\x00", "\ufeff", "\u202e", "é", "\U0001f642"]
)
_ANY_CHARACTER = st.characters(exclude_categories=()) | _ODD


def any_text(max_size: int) -> st.SearchStrategy[str]:
    """Texts: ordinary ones, and ones made mostly of :data:`_ODD` code points."""
    odd = st.text(_ODD | st.characters(codec="ascii"), min_size=1, max_size=max(max_size, 1))
    return st.text(max_size=max_size) | odd


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and ±Infinity included: Python's json writes and reads them
    | any_text(max_size=16)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """A small image of any format, intact or damaged, or bytes that are no image at all."""
    fmt = draw(st.sampled_from(FORMATS))
    data = SMALL[fmt]
    kind = draw(st.sampled_from(["intact", "truncated", "flipped", "declared", "random"]))
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flipped":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            damaged[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(damaged)
    if kind == "declared":
        side = st.integers(0, _MAX_SIDE[fmt])
        return DECLARING[fmt](draw(side), draw(side))
    if kind == "random":
        return draw(st.binary(max_size=512))
    return data


@st.composite
def image_strings(draw: st.DrawFn) -> str:
    """Base64 or a data URI of image bytes, spelled every way a client might: padding
    dropped, url-safe alphabet, MIME line breaks, wrong media types, stray characters."""
    text = base64.b64encode(draw(image_bytes())).decode()
    if draw(st.booleans()):
        text = text.rstrip("=")
    if draw(st.booleans()):
        text = text.translate(str.maketrans("+/", "-_"))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        stray = draw(st.sampled_from([" ", "\n", "\r\n", "\t", "=", "==", "%", "é", "\x00", "."]))
        text = text[:at] + stray + text[at:]
    prefix = draw(
        st.sampled_from(
            [
                "",
                "data:image/png;base64,",
                "DATA:IMAGE/JPEG;BASE64,",
                "data:image/png,",
                "data:text/plain;base64,",
                "data:image/png;charset=utf-8;base64,",
                "data:;base64,",
                "data:image/",
                "data:image/png;base64",
                " data:image/png;base64,",
            ]
        )
    )
    return prefix + text


def input_items(model: str) -> st.SearchStrategy[Any]:
    """What the native API takes as one input, and things it does not."""
    objects = st.fixed_dictionaries(
        {},
        optional={
            "text": any_text(max_size=30),
            "image": image_strings(),
            "url": st.sampled_from(["https://example.com/a.png", "file:///etc/passwd", "x"]),
        },
    )
    return st.one_of(any_text(max_size=30), image_strings(), objects, json_values)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A JSON body: mostly objects with (some of) the route's own fields, plus unknown
    fields now and then, plus arbitrary JSON."""
    known = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(any_text(max_size=6), json_values, max_size=2)
    with_extra = st.tuples(known, extra).map(lambda pair: {**pair[1], **pair[0]})
    return st.one_of(known, with_extra, json_values)


def _or_anything(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, json_values)


def json_bodies(route: str, model: str, dim: int) -> st.SearchStrategy[Any]:
    """Near-valid and arbitrary JSON bodies for ``route``."""
    models = _or_anything(st.sampled_from([model, "nope", "ViT-B-32::openai"]))
    item = input_items(model)
    texts = _or_anything(st.lists(any_text(max_size=30), max_size=4))
    vectors = st.lists(st.floats(), min_size=dim, max_size=dim) | st.lists(st.floats(), max_size=3)
    if route == "/v1/encode":
        return shaped(
            {
                "inputs": _or_anything(st.lists(item, max_size=4)),
                "model": models,
                "normalize": _or_anything(st.booleans()),
                "encoding": st.sampled_from(["float", "base64", "base64_f16", "npy"]),
            }
        )
    if route == "/v1/rank":
        candidates = _or_anything(st.lists(item, max_size=4))
        return shaped({"query": item, "candidates": candidates, "model": models})
    if route == "/v1/classify":
        templates = st.lists(
            st.sampled_from(["a photo of {}", "{}", "no slot", "{}{}"]), max_size=3
        )
        return shaped(
            {
                "images": _or_anything(st.lists(image_strings(), max_size=3)),
                "labels": texts,
                "templates": _or_anything(templates),
                "model": models,
            }
        )
    if route == f"/v1/indexes/{INDEX}/search":
        return shaped(
            {
                "input": item,
                "vector": _or_anything(vectors),
                "id": st.sampled_from(["item-0", "nope"]) | any_text(max_size=8),
                "k": _or_anything(st.integers(-2, 2000)),
                "filter": filters(),
                "modality": st.sampled_from(["image", "text", "vector", "audio"]),
            }
        )
    if route == f"/v1/indexes/{INDEX}/items":
        new_item = st.fixed_dictionaries(
            {},
            optional={
                "id": st.sampled_from(["item-0", "new"]) | any_text(max_size=8),
                "input": item,
                "vector": _or_anything(vectors),
                "metadata": json_values,
            },
        )
        return shaped({"items": _or_anything(st.lists(new_item, max_size=3))})
    if route in ("/encode_text", "/text-embeddings"):
        return shaped({"items" if route == "/encode_text" else "texts": texts})
    if route == "/post":
        return shaped(
            {
                "data": _or_anything(st.lists(jina_docs(), max_size=3))
                | st.fixed_dictionaries({"docs": st.lists(jina_docs(), max_size=2)}),
                "execEndpoint": st.sampled_from(["/", "/rank", "/encode/nope", "/rank/x"])
                | any_text(max_size=10),
                "header": st.dictionaries(
                    st.sampled_from(["request_id", "exec_endpoint", "timeout", "x"]), json_values
                ),
                "parameters": json_values,
            }
        )
    if route == "/v1/embeddings":
        one = any_text(max_size=30) | image_strings()
        return shaped(
            {
                "input": _or_anything(one | st.lists(one, max_size=3) | st.lists(st.integers())),
                "model": models,
                "encoding_format": st.sampled_from(["float", "base64", "x"]),
                "dimensions": _or_anything(st.sampled_from([dim, 0, -1, 10**30])),
            }
        )
    if route == "/knn-service":
        return shaped(
            {
                "text": any_text(max_size=20),
                "image": image_strings(),
                "image_url": st.sampled_from(["https://example.com/a.png", "ftp://x", ""]),
                "embedding_input": _or_anything(vectors),
                "modality": st.sampled_from(["image", "text", "video"]),
                "num_images": _or_anything(st.integers(-1, 20_000)),
                "num_result_ids": _or_anything(st.integers(-1, 20_000)),
                "indice_name": st.sampled_from([INDEX, "nope", None]),
                "deduplicate": st.booleans(),
                "use_mclip": st.booleans(),
                "aesthetic_score": _or_anything(st.sampled_from(["", "5", "x", " "])),
            }
        )
    if route == "/metadata":
        ids = st.lists(st.sampled_from(["item-0", "item-3"]) | any_text(max_size=8), max_size=5)
        return shaped(
            {"ids": _or_anything(ids), "indice_name": st.sampled_from([INDEX, "nope", None])}
        )
    raise AssertionError(f"no body strategy for {route}")


def jina_docs() -> st.SearchStrategy[Any]:
    """clip-as-service documents: text, blob or uri, tags, matches with scores."""
    match = st.fixed_dictionaries(
        {}, optional={"text": any_text(max_size=20), "scores": json_values, "tags": json_values}
    )
    return _or_anything(
        st.fixed_dictionaries(
            {},
            optional={
                "text": _or_anything(any_text(max_size=20)),
                "blob": image_strings(),
                "uri": image_strings() | st.sampled_from(["/etc/passwd", "https://x.test/a"]),
                "tags": json_values,
                "matches": _or_anything(st.lists(match, max_size=3)),
                "tensor": json_values,
            },
        )
    )


_FILTER_KEYS = ["color", "year", "flag", "exif.iso", "tags", "missing", "a-b", "exif..iso", "x."]
_OPERATORS = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "like"]


def filters() -> st.SearchStrategy[Any]:
    """Metadata filters: documented shapes with any values, and arbitrary JSON."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text(max_size=8)
    operands = scalars | st.lists(scalars, max_size=5) | json_values
    conditions = st.one_of(
        scalars,
        json_values,
        st.dictionaries(st.sampled_from(_OPERATORS) | any_text(max_size=3), operands, max_size=3),
    )
    keys = st.sampled_from(_FILTER_KEYS) | any_text(max_size=12)
    return st.one_of(st.dictionaries(keys, conditions, max_size=4), json_values)


def multipart_parts(route: str, model: str) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Form parts for ``route``: its own field names and others, files and fields."""
    names = {
        "/encode_image": ["items", "queries"],
        "/rank": ["queries", "candidates"],
        "/image-embeddings": ["image", "photo"],
        "/predict": ["entries", "image", "text"],
        "/v1/encode": ["file", "text", "texts", "model", "normalize", "encoding"],
    }[route]
    entries = st.fixed_dictionaries(
        {
            "clip": st.dictionaries(
                st.sampled_from(["visual", "textual", "x"]),
                st.fixed_dictionaries(
                    {"modelName": st.sampled_from([model, model.replace("::", "__"), "nope"])}
                ),
                max_size=2,
            )
        }
    )
    contents = st.one_of(
        image_bytes(),
        any_text(max_size=30).map(lambda text: text.encode("utf-8", "surrogatepass")),
        _or_anything(entries).map(lambda value: json.dumps(value).encode()),
        st.lists(any_text(max_size=10), max_size=3).map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=64),
    )
    part = st.tuples(
        st.sampled_from(names) | st.text(st.characters(codec="ascii"), max_size=8),
        st.none() | st.sampled_from(["a.png", "blob"]) | st.text(max_size=8),
        st.none() | st.sampled_from(["image/png", "application/octet-stream", "text/plain"]),
        contents,
    )
    return st.lists(part, max_size=4)


# ----------------------------------------------------------------------------- HTTP helpers
JSON_ROUTES = [
    "/v1/encode",
    "/v1/rank",
    "/v1/classify",
    f"/v1/indexes/{INDEX}/search",
    f"/v1/indexes/{INDEX}/items",
    "/encode_text",
    "/post",
    "/text-embeddings",
    "/v1/embeddings",
    "/knn-service",
    "/metadata",
]
MULTIPART_ROUTES = ["/v1/encode", "/encode_image", "/rank", "/image-embeddings", "/predict"]
#: The key of each route's error body (the compat routers answer in their system's shape).
ERROR_KEYS = {
    "/encode_text": "error",
    "/encode_image": "error",
    "/rank": "error",
    "/post": "header",
    "/text-embeddings": "detail",
    "/image-embeddings": "detail",
    "/predict": "detail",
    "/knn-service": "message",
    "/metadata": "message",
}
BOUNDARY = "fuzz0boundary0c4f1e"


@pytest.fixture(scope="module")
def served(http: httpx.Client) -> tuple[str, int]:
    """The served model's name and embedding dimension."""
    model = http.get("/v1/models").json()["data"][0]
    return model["name"], int(model["dim"])


def post_json(http: httpx.Client, route: str, body: bytes) -> httpx.Response:
    return http.post(route, content=body, headers={"content-type": "application/json"})


def post_form(http: httpx.Client, route: str, parts: list[tuple[Any, ...]]) -> httpx.Response:
    content = multipart(BOUNDARY, parts)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return http.post(route, content=content, headers=headers)


def assert_answered(response: httpx.Response, route: str) -> Any:
    """A 2xx, or a 4xx with the route's JSON error body — never a 5xx. Returns the body."""
    status = response.status_code
    assert status < 500, f"{route}: {status} {response.text[:800]}"
    body = response.json()
    if status >= 400:
        # The route's own error shape; or clipserve's, from the body middleware, which
        # answers before any route is chosen (body too large, bad encoding, not Unicode).
        assert isinstance(body, dict), (route, status, body)
        assert {ERROR_KEYS.get(route, "error"), "error"} & set(body), (route, status, body)
    return body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# ----------------------------------------------------------------------------- images
@bounded(MANY)
@given(data=image_bytes())
@example(data=b"")
@example(data=b"\x00")
@example(data=b"\x00" * 4096)
@example(data=DECLARING["PNG"](30_000, 30_000))
@example(data=DECLARING["PNG"](2**31 - 1, 1))
@example(data=DECLARING["BMP"](1, -(2**31)))
@example(data=SMALL["PNG"][:8])  # the signature alone
@example(data=SMALL["JPEG"][:2])  # SOI alone
@example(data=b"GIF89a")
@example(data=b"RIFF\x00\x00\x00\x00WEBPVP8 ")
def test_any_bytes_decode_to_pixels_or_a_typed_error(data: bytes) -> None:
    try:
        pixels = preprocess(data, PreprocessConfig())
    except ClipServeError as exc:
        assert isinstance(exc, InvalidImageError | ImageTooLargeError), repr(exc)
        return
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("side", [30_000, 16_383, 9_000])
def test_decompression_bombs_are_refused_from_the_header(fmt: str, side: int) -> None:
    # A few hundred bytes declaring a huge square: refused before any pixel is allocated.
    bomb = DECLARING[fmt](side, side)
    assert len(bomb) < 2048
    with pytest.raises(ImageTooLargeError):
        preprocess(bomb, PreprocessConfig())


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_stricter_pixel_limit_holds_for_every_format(fmt: str) -> None:
    with pytest.raises(ImageTooLargeError, match="pixels"):
        preprocess(DECLARING[fmt](200, 200), PreprocessConfig(max_pixels=10_000))


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_are_typed_errors(fmt: str) -> None:
    for cut in truncations(SMALL[fmt], cuts=12):
        with pytest.raises(InvalidImageError):
            preprocess(cut, PreprocessConfig())


@bounded(FEW)
@given(
    short=st.integers(1, 8),
    stretch=st.integers(9, 16),
    seed=st.integers(0, 2**16),
    tall=st.booleans(),
    sizes=st.sampled_from([(224, 224), (256, 224), (200, 224)]),
)
def test_elongated_images_match_the_reference_resize_exactly(
    short: int, stretch: int, seed: int, tall: bool, sizes: tuple[int, int]
) -> None:
    # Guards the bounded-memory path for elongated images (more than 8:1): it must stay
    # bit-identical to the reference's full resize followed by its center crop (the path
    # preprocessing takes for ordinary aspect ratios).
    long = short * stretch
    width, height = (short, long) if tall else (long, short)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    resize, crop = sizes
    cfg = PreprocessConfig(resize_size=resize, image_size=crop)
    stretched = int(resize * long / short)
    full = (resize, stretched) if tall else (stretched, resize)
    reference = np.asarray(image.resize(full, Image.Resampling.BICUBIC))
    expected = _normalize(_center_crop(reference, crop, kept_only=False), cfg)
    np.testing.assert_array_equal(to_pixel_values(image, cfg), expected)


_TALL_IMAGE_SCRIPT = textwrap.dedent(
    """
    import resource
    limit = 2 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from clipserve.models.preprocess import PreprocessConfig, preprocess
    from clipserve.testing.hostile import tall_png
    pixels = preprocess(tall_png(3_000_000), PreprocessConfig())
    print(pixels.shape, pixels.dtype)
    """
)


def test_bug_tall_image_preprocesses_in_bounded_memory() -> None:
    # Bug found by fuzzing: a valid 1x3,000,000 PNG (12 KB, within the pixel limit) was
    # widened to 224x3,000,000 (2.7 GB) before its center rows were kept. Run under a 2 GB
    # address-space limit, in a process of its own.
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _TALL_IMAGE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(3, 224, 224) float32"


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return load_tokenizer()


@bounded(MANY)
@given(texts=st.lists(st.text(_ANY_CHARACTER, max_size=200), min_size=1, max_size=4))
@example(texts=["a" * 100_000])
@example(texts=["cat " * 25_000])
@example(texts=["\U0001f642" * 100_000])
@example(texts=["猫" * 100_000])
@example(texts=[" \t\n" * 33_334])
@example(texts=["<|endoftext|>" * 8_000])
@example(texts=["\x00" * 1000])
@example(texts=["", "\x00", " "])
@example(texts=["ok", "\ud800"])
def test_any_text_tokenizes_within_the_context_or_is_a_typed_error(
    tokenizer: ClipTokenizer, texts: list[str]
) -> None:
    surrogate = next((i for i, t in enumerate(texts) if re.search("[\ud800-\udfff]", t)), None)
    try:
        rows = tokenizer.encode(texts)
    except InvalidInputError as exc:
        assert surrogate is not None and f"texts[{surrogate}]" in str(exc)
        return
    assert surrogate is None
    assert len(rows) == len(texts)
    for ids in rows:
        assert 2 <= len(ids) <= CONTEXT_LENGTH  # long texts are cut, keeping the end token
        assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer(texts).shape[0] == len(texts)


# ----------------------------------------------------------------------------- filters
_KEY_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@bounded(MANY)
@given(spec=filters())
@example(spec={"year": 2**70})
@example(spec={"year": {"gt": -(2**64)}})
@example(spec={"year": {"in": [1, 2**63]}})
@example(spec={"year": float("nan")})
@example(spec={"year": {"lt": float("inf")}})
@example(spec={"color": {"in": ["red"] * 1000}})
@example(spec={f"k{i}": {"gte": 1, "lt": 2, "ne": 3} for i in range(400)})
@example(spec={"color": "\x00"})
def test_any_filter_selects_items_or_is_a_typed_error(disk_index: Index, spec: Any) -> None:
    query = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    try:
        hits = disk_index.search(query, 4, filters=spec)
    except ClipServeError as exc:
        assert isinstance(exc, InvalidInputError), repr(exc)
        return
    assert len(hits) == 1
    assert {hit.id for hit in hits[0]} <= {f"item-{i}" for i in range(len(METADATA))}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_bug_deeply_nested_filter_values_are_typed_errors(disk_index: Index) -> None:
    # Bug found by fuzzing: the error message dumped the whole value as JSON, which raised
    # RecursionError for a value nested thousands of levels deep.
    query = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    for spec in ({"color": _nested(5000)}, {"color": {"in": [_nested(5000)]}}):
        with pytest.raises(InvalidInputError, match="filter 'color'"):
            disk_index.search(query, 4, filters=spec)


def test_bug_filter_key_with_a_trailing_newline_was_accepted() -> None:
    # Bug found by fuzzing: the key pattern was anchored with "$", which also matches
    # before a final newline, so "year\n" passed as a documented key.
    with pytest.raises(InvalidInputError, match="filter key"):
        where_clause({"year\n": 1})


@bounded(MANY)
@given(key=any_text(max_size=20) | st.sampled_from(_FILTER_KEYS))
@example(key="year\n")
@example(key="a" * 129)
@example(key="")
def test_filter_keys_are_exactly_the_documented_ones(key: str) -> None:
    documented = bool(_KEY_RULE.fullmatch(key)) and ".." not in key and not key.endswith(".")
    try:
        sql, parameters = where_clause({key: 1})
    except InvalidInputError as exc:
        assert not documented, f"{key!r} refused: {exc}"
        return
    assert documented, f"{key!r} accepted: {sql}"
    assert parameters == [1]


# ----------------------------------------------------------------------------- base64, data URIs
@bounded(SOME)
@given(spelling=image_strings(), as_object=st.booleans())
@example(spelling="data:image/png;base64,====", as_object=False)
@example(spelling="data:image/png;base64,a", as_object=False)
@example(spelling="data:image/png;base64,", as_object=False)
@example(spelling="data:image/png;base64,\x00\x00", as_object=True)
@example(
    spelling="data:text/plain;base64," + base64.b64encode(SMALL["PNG"]).decode(), as_object=False
)
@example(spelling="data:image/png," + base64.b64encode(SMALL["PNG"]).decode(), as_object=False)
@example(spelling="", as_object=True)
@example(spelling="\x00" * 64, as_object=True)
@example(spelling="data:image/png;base64," + "A" * 100_001, as_object=False)
def test_image_strings_encode_or_get_a_4xx(
    http: httpx.Client, spelling: str, as_object: bool
) -> None:
    item: Any = {"image": spelling} if as_object else spelling
    response = post_json(http, "/v1/encode", _dumps({"inputs": [item]}))
    body = assert_answered(response, "/v1/encode")
    if response.status_code == 200:
        assert len(body["data"]) == 1


@st.composite
def lenient_spellings(draw: st.DrawFn, data: bytes) -> str:
    """An unusual spelling of ``data`` that must still decode to the same bytes: padding
    dropped, url-safe alphabet, MIME line breaks, an upper-case data URI header."""
    text = base64.b64encode(data).decode()
    if draw(st.booleans()):
        text = text.rstrip("=")
    if draw(st.booleans()):
        text = text.translate(str.maketrans("+/", "-_"))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([" ", "\n", "\r\n", "\t"])) + text[at:]
    header = draw(st.sampled_from(["", "data:image/png;base64,", "DATA:Image/PNG;BASE64,"]))
    return header + text


@bounded(FEW)
@given(data=st.data(), fmt=st.sampled_from(["PNG", "JPEG", "WEBP"]))
def test_lenient_spellings_of_an_image_give_its_embedding(
    http: httpx.Client, data: st.DataObject, fmt: str
) -> None:
    image = SMALL[fmt]
    spelling = data.draw(lenient_spellings(image), label="spelling")
    clean = post_json(http, "/v1/encode", _dumps({"inputs": [{"image": b64(image)}]}))
    spelled = post_json(http, "/v1/encode", _dumps({"inputs": [{"image": spelling}]}))
    assert clean.status_code == 200 and spelled.status_code == 200, spelled.text
    np.testing.assert_allclose(
        spelled.json()["data"][0]["embedding"], clean.json()["data"][0]["embedding"], atol=1e-6
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@bounded(SOME)
@given(
    data=image_bytes(),
    media=st.sampled_from(["image/png", "image/x-anything", "application/octet-stream"]),
)
@example(data=b"", media="image/png")
@example(data=b"\x00" * 64, media="image/png")
@example(data=DECLARING["PNG"](30_000, 30_000), media="image/png")
@example(data=DECLARING["JPEG"](30_000, 30_000), media="image/jpeg")
def test_raw_image_bodies_encode_or_get_a_4xx(http: httpx.Client, data: bytes, media: str) -> None:
    response = http.post("/v1/encode", content=data, headers={"content-type": media})
    body = assert_answered(response, "/v1/encode")
    if response.status_code == 200:
        assert len(body["data"]) == 1 and body["data"][0]["modality"] == "image"


# ----------------------------------------------------------------------------- every route
@pytest.mark.parametrize("route", JSON_ROUTES)
@bounded(SOME)
@given(data=st.data())
def test_json_bodies_get_an_answer_or_a_4xx(
    http: httpx.Client, served: tuple[str, int], route: str, data: st.DataObject
) -> None:
    model, dim = served
    body = data.draw(json_bodies(route, model, dim), label="body")
    assert_answered(post_json(http, route, _dumps(body)), route)


@pytest.mark.parametrize("route", MULTIPART_ROUTES)
@bounded(SOME)
@given(data=st.data())
def test_multipart_bodies_get_an_answer_or_a_4xx(
    http: httpx.Client, served: tuple[str, int], route: str, data: st.DataObject
) -> None:
    parts = data.draw(multipart_parts(route, served[0]), label="parts")
    assert_answered(post_form(http, route, parts), route)


HOSTILE_BODIES = {
    "deep-list-10000": deep_json(10_000),
    "deep-object-10000": deep_json(10_000, kind="object"),
    "invalid-utf8": b'{"items": ["\xff\xfe\xfd"], "texts": ["\xc3\x28"], "input": "\xed\xa0\x80"}',
    "nul-only": b"\x00" * 256,
    "empty": b"",
    "integer-5000-digits": b'{"items": [' + b"9" * 5000 + b"]}",
    "nan": b'{"input": NaN, "items": [NaN], "data": [{"text": NaN}], "num_images": NaN}',
    "utf16": '{"items": ["a"]}'.encode("utf-16"),
    "lone-surrogate": (
        b'{"items": ["\\ud800"], "texts": ["\\udc80"], "inputs": ["\\ud800"], "input": "\\ud800",'
        b' "ids": ["\\ud800"], "data": [{"text": "\\ud800"}], "model": "\\udfff",'
        b' "filter": {"a": "\\ud800"}, "query": "\\ud800", "candidates": ["\\ud800"]}'
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize("route", sorted(set(JSON_ROUTES + MULTIPART_ROUTES)))
def test_hostile_json_bodies_get_a_4xx(http: httpx.Client, route: str, name: str) -> None:
    response = post_json(http, route, HOSTILE_BODIES[name])
    assert_answered(response, route)
    assert response.status_code >= 400 or name == "utf16"


def _hostile_forms(model: str) -> dict[str, tuple[str, list[tuple[Any, ...]]]]:
    deep = deep_json(10_000)
    textual = json.dumps({"clip": {"textual": {"modelName": model}}}).encode()
    return {
        "immich-deep-entries": ("/predict", [("entries", None, None, deep)]),
        "immich-deep-object-entries": (
            "/predict",
            [("entries", None, None, deep_json(10_000, kind="object"))],
        ),
        "immich-huge-int-entries": ("/predict", [("entries", None, None, b"9" * 5000)]),
        "immich-invalid-utf8-entries": ("/predict", [("entries", "e.json", None, b"\xff{")]),
        "immich-invalid-utf8-text": (
            "/predict",
            [("entries", None, None, textual), ("text", None, None, b"\xff\xfe caf\xe9")],
        ),
        "bentoml-deep-candidates": (
            "/rank",
            [("queries", "q.png", "image/png", SMALL["PNG"]), ("candidates", None, None, deep)],
        ),
        "bentoml-huge-int-candidates": (
            "/rank",
            [
                ("queries", "q.png", "image/png", SMALL["PNG"]),
                ("candidates", None, None, b"[" + b"9" * 5000 + b"]"),
            ],
        ),
        "encode-invalid-utf8-text-file": ("/v1/encode", [("text", "t.txt", None, b"\xff\xfe")]),
        "encode-invalid-utf8-text-field": ("/v1/encode", [("text", None, None, b"\xff\xfe")]),
        "encode-nul-file": ("/v1/encode", [("file", "a.png", "image/png", b"\x00" * 64)]),
        "encode-empty-file": ("/v1/encode", [("file", "a.png", "image/png", b"")]),
        "photofield-bomb": (
            "/image-embeddings",
            [("image", "a.png", "image/png", DECLARING["PNG"](30_000, 30_000))],
        ),
        "bentoml-truncated-jpeg": (
            "/encode_image",
            [("items", "a.jpg", "image/jpeg", SMALL["JPEG"][: len(SMALL["JPEG"]) // 2])],
        ),
    }


_FORM_CASES = sorted(_hostile_forms("m"))
#: Form text *fields* (not files) that are not UTF-8: Starlette's form parser decodes them
#: as Latin-1, as legacy browsers send them, so they are answered (a file part holding a
#: text must be UTF-8, and is refused otherwise).
_LATIN1_FIELDS = {"immich-invalid-utf8-text", "encode-invalid-utf8-text-field"}


@pytest.mark.parametrize("case", _FORM_CASES)
def test_hostile_form_fields_get_a_4xx(
    http: httpx.Client, served: tuple[str, int], case: str
) -> None:
    route, parts = _hostile_forms(served[0])[case]
    response = post_form(http, route, parts)
    assert_answered(response, route)
    assert response.status_code == 200 if case in _LATIN1_FIELDS else response.status_code >= 400


@pytest.mark.parametrize("route", MULTIPART_ROUTES)
@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 128, b"--" + BOUNDARY.encode(), b"garbage without boundaries"],
    ids=["empty", "nul", "boundary-only", "garbage"],
)
def test_broken_multipart_bodies_get_a_4xx(http: httpx.Client, route: str, content: bytes) -> None:
    for content_type in (f"multipart/form-data; boundary={BOUNDARY}", "multipart/form-data"):
        response = http.post(route, content=content, headers={"content-type": content_type})
        assert_answered(response, route)
        assert response.status_code >= 400


# ----------------------------------------------------------------------------- regressions
@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"text": "a", "tags": {"score": float("nan")}}, "nan is not a JSON number"),
        ({"text": "a", "tags": {"big": float("inf")}}, "inf is not a JSON number"),
        ({"text": "a", "tags": json.loads(deep_json(65))}, "nested more than 64 levels"),
    ],
    ids=["nan-tag", "infinite-tag", "tag-65-deep"],
)
def test_bug_clip_as_service_echoed_documents_json_cannot_carry(
    http: httpx.Client, doc: dict[str, Any], reason: str
) -> None:
    # Bug found by fuzzing: documents come back as sent, and an answer holding a NaN (which
    # Python clients send) could not be rendered: the connection was dropped.
    response = post_json(http, "/post", _dumps({"data": [doc], "execEndpoint": "/"}))
    body = assert_answered(response, "/post")
    assert response.status_code == 422 and reason in body["header"]["status"]["description"]
    nested = {"data": [{"text": "a"}], "parameters": {"p": json.loads(deep_json(64))}}
    assert post_json(http, "/post", _dumps(nested)).status_code == 422
    assert post_json(http, "/post", _dumps({"data": [{"text": "a", "tags": [[1]]}]})).is_success


def test_bug_clip_as_service_documents_nested_near_the_parser_limit_were_a_500(
    http: httpx.Client,
) -> None:
    # Bug found by fuzzing: tags nested ~960 levels deep still parsed, but the answer that
    # sends them back hit the recursion limit while rendering: a 500.
    for depth in range(880, 1000):
        body = b'{"data": [{"text": "a", "tags": ' + deep_json(depth) + b"}]}"
        response = post_json(http, "/post", body)
        assert_answered(response, "/post")
        assert response.status_code in (400, 422), (depth, response.status_code)


@pytest.mark.parametrize("scores", [[1, 2], "high", 3], ids=["list", "str", "int"])
def test_bug_clip_as_service_rank_with_malformed_scores_is_a_400(
    http: httpx.Client, scores: Any
) -> None:
    # Bug found by fuzzing: a match's non-object "scores" was merged into the answer: a 500.
    matches = [{"text": "b", "scores": scores}, {"text": "c"}]
    body = {"data": [{"text": "a", "matches": matches}], "execEndpoint": "/rank"}
    response = post_json(http, "/post", _dumps(body))
    message = assert_answered(response, "/post")["header"]["status"]["description"]
    assert response.status_code == 400 and "scores" in message


@pytest.mark.parametrize(
    ("name", "metadata"),
    [
        ("meta-nan", {"score": float("nan")}),
        ("meta-minus-infinity", {"score": float("-inf")}),
        ("meta-nested-infinity", {"nested": {"x": [float("inf")]}}),
    ],
)
def test_bug_item_metadata_that_json_cannot_carry_is_refused(
    http: httpx.Client, served: tuple[str, int], name: str, metadata: dict[str, Any]
) -> None:
    # Bug found by fuzzing: NaN and ±Infinity (which Python clients send) were stored as
    # such; SQLite's JSON functions then found the row malformed, so every filtered search
    # of the whole index failed ("filter cannot be applied: malformed JSON").
    assert http.post("/v1/indexes", json={"name": name}).status_code == 201
    good = {"id": "good", "vector": [1.0] + [0.0] * (served[1] - 1), "metadata": {"score": 1}}
    added = post_json(http, f"/v1/indexes/{name}/items", _dumps({"items": [good]}))
    assert added.status_code == 200, added.text
    bad = {"id": "bad", "vector": good["vector"], "metadata": metadata}
    refused = post_json(http, f"/v1/indexes/{name}/items", _dumps({"items": [bad]}))
    assert refused.status_code == 400, refused.text
    assert "metadata must be plain JSON" in refused.text
    search = {"vector": good["vector"], "k": 5, "filter": {"score": {"gte": 0}}}
    found = post_json(http, f"/v1/indexes/{name}/search", _dumps(search))
    assert found.status_code == 200 and [hit["id"] for hit in found.json()["results"]] == ["good"]


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("a" * 100_000, 200),  # CLIPSERVE_MAX_TEXT_CHARS: tokenized with truncation
        ("🙂" * 100_000, 200),
        ("\x00" * 1000, 200),
        ("", 200),
        ("a" * 100_001, 413),
    ],
    ids=["100k-ascii", "100k-emoji", "nul-only", "empty", "over-the-limit"],
)
def test_long_empty_and_nul_texts_over_http(http: httpx.Client, text: str, status: int) -> None:
    for route, body in (
        ("/v1/encode", {"inputs": [{"text": text}]}),
        ("/text-embeddings", {"texts": [text]}),
        ("/encode_text", {"items": [text]}),
    ):
        response = post_json(http, route, _dumps(body))
        assert_answered(response, route)
        assert response.status_code == status, (route, response.text[:300])
