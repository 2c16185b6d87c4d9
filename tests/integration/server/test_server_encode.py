"""``POST /v1/encode`` over a real socket: every input form, every output form, input order."""

from __future__ import annotations

import base64
import gzip
import io
import json

import httpx
import numpy as np
import pytest
from servertools import b64, data_uri

from clipserve.engine import Engine

ATOL = 1e-5


def _vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    document = response.json()
    rows = [row["embedding"] for row in document["data"]]
    encoding = document["encoding"]
    if encoding == "float":
        return np.array(rows, np.float32)
    dtype = "<f4" if encoding == "base64" else "<f2"
    return np.stack([np.frombuffer(base64.b64decode(row), dtype) for row in rows]).astype(
        np.float32
    )


def test_json_strings_mix_texts_data_uris_in_input_order(
    client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes]
) -> None:
    texts = ["a photo of a red circle", "a photo of a blue square", "x"]
    inputs = [texts[0], data_uri(shape_pngs[0]), texts[1], data_uri(shape_pngs[1]), texts[2]]
    response = client.post("/v1/encode", json={"inputs": inputs})
    document = response.json()
    assert [row["index"] for row in document["data"]] == [0, 1, 2, 3, 4]
    assert [row["modality"] for row in document["data"]] == [
        "text",
        "image",
        "text",
        "image",
        "text",
    ]
    assert document["usage"] == {"texts": 3, "images": 2}
    assert document["dim"] == tiny_engine.model().embed_dim
    assert document["model"] == tiny_engine.model().name
    got = _vectors(response)
    np.testing.assert_allclose(got[[0, 2, 4]], tiny_engine.encode_texts(texts), atol=ATOL)
    np.testing.assert_allclose(got[[1, 3]], tiny_engine.encode_images(shape_pngs[:2]), atol=ATOL)


def test_json_objects_base64_and_explicit_text(
    client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes]
) -> None:
    # A text that looks like a URL stays a text when spelled as an object.
    url_text = "https://example.com/cat.png"
    wrapped = base64.encodebytes(shape_pngs[3]).decode()  # MIME line breaks are accepted
    inputs = [
        {"image": b64(shape_pngs[2])},
        {"text": url_text},
        {"image": data_uri(shape_pngs[4])},
        {"image": wrapped},
    ]
    got = _vectors(client.post("/v1/encode", json={"inputs": inputs}))
    expected_images = tiny_engine.encode_images([shape_pngs[2], shape_pngs[4], shape_pngs[3]])
    np.testing.assert_allclose(got[[0, 2, 3]], expected_images, atol=ATOL)
    np.testing.assert_allclose(got[1], tiny_engine.encode_texts([url_text])[0], atol=ATOL)


def test_a_sentence_starting_with_a_url_is_a_text(
    client: httpx.Client, tiny_engine: Engine
) -> None:
    text = "https://example.com is where the cat lives"
    got = _vectors(client.post("/v1/encode", json={"inputs": [text]}))
    np.testing.assert_allclose(got[0], tiny_engine.encode_texts([text])[0], atol=ATOL)


@pytest.mark.parametrize("encoding", ["float", "base64", "base64_f16"])
def test_output_encodings(
    client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes], encoding: str
) -> None:
    body = {"inputs": ["a green triangle", data_uri(shape_pngs[5])], "encoding": encoding}
    response = client.post("/v1/encode", json=body)
    assert response.json()["encoding"] == encoding
    got = _vectors(response)
    expected = np.stack(
        [
            tiny_engine.encode_texts(["a green triangle"])[0],
            tiny_engine.encode_images(shape_pngs[5:6])[0],
        ]
    )
    # float16 keeps about 3 significant digits.
    np.testing.assert_allclose(got, expected, atol=2e-3 if encoding == "base64_f16" else ATOL)


def test_npy_response(client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes]) -> None:
    body = {"inputs": [data_uri(shape_pngs[0]), "a red circle", data_uri(shape_pngs[1])]}
    response = client.post("/v1/encode", json=body, headers={"Accept": "application/x-npy"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.dtype == np.float32
    assert array.shape == (3, tiny_engine.model().embed_dim)
    np.testing.assert_allclose(array[1], tiny_engine.encode_texts(["a red circle"])[0], atol=ATOL)
    np.testing.assert_allclose(array[[0, 2]], tiny_engine.encode_images(shape_pngs[:2]), atol=ATOL)


def test_normalize_false_returns_raw_embeddings(client: httpx.Client, tiny_engine: Engine) -> None:
    got = _vectors(client.post("/v1/encode", json={"inputs": ["a cat"], "normalize": False}))
    raw = tiny_engine.encode_texts(["a cat"], normalize=False)
    np.testing.assert_allclose(got, raw, atol=ATOL)
    assert abs(float(np.linalg.norm(got[0])) - 1.0) > 1e-3


def test_multipart_files_and_text_fields_keep_form_order(
    client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes]
) -> None:
    files: list[tuple[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]]] = [
        ("file", ("a.png", shape_pngs[0], "image/png")),
        ("text", (None, "a photo of a red circle")),
        ("file", ("b.png", shape_pngs[1], "image/png")),
        ("text", (None, "a photo of a blue square")),
        ("encoding", (None, "base64")),
    ]
    response = client.post("/v1/encode", files=files)
    assert [row["modality"] for row in response.json()["data"]] == [
        "image",
        "text",
        "image",
        "text",
    ]
    got = _vectors(response)
    np.testing.assert_allclose(got[[0, 2]], tiny_engine.encode_images(shape_pngs[:2]), atol=ATOL)
    texts = ["a photo of a red circle", "a photo of a blue square"]
    np.testing.assert_allclose(got[[1, 3]], tiny_engine.encode_texts(texts), atol=ATOL)


def test_url_encoded_form_with_texts(client: httpx.Client, tiny_engine: Engine) -> None:
    response = client.post("/v1/encode", data={"text": ["one", "two"], "normalize": "false"})
    got = _vectors(response)
    np.testing.assert_allclose(
        got, tiny_engine.encode_texts(["one", "two"], normalize=False), atol=ATOL
    )


@pytest.mark.parametrize("media", ["image/png", "application/octet-stream"])
def test_raw_image_body_with_query_options(
    client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes], media: str
) -> None:
    response = client.post(
        "/v1/encode",
        content=shape_pngs[6],
        params={"encoding": "base64", "normalize": "true"},
        headers={"Content-Type": media},
    )
    assert response.json()["data"][0]["modality"] == "image"
    got = _vectors(response)
    np.testing.assert_allclose(got, tiny_engine.encode_images(shape_pngs[6:7]), atol=ATOL)


def test_many_inputs_span_several_batches_in_order(
    client: httpx.Client, tiny_engine: Engine, shape_pngs: list[bytes]
) -> None:
    texts = [f"caption {i} " + "word " * (i % 9) for i in range(50)]
    images = [shape_pngs[i % len(shape_pngs)] for i in range(40)]
    inputs: list[str] = []
    for i in range(50):
        inputs.append(texts[i])
        if i < 40:
            inputs.append(data_uri(images[i]))
    got = _vectors(client.post("/v1/encode", json={"inputs": inputs}))
    modalities = ["text" if not item.startswith("data:") else "image" for item in inputs]
    text_rows = [i for i, kind in enumerate(modalities) if kind == "text"]
    image_rows = [i for i, kind in enumerate(modalities) if kind == "image"]
    np.testing.assert_allclose(got[text_rows], tiny_engine.encode_texts(texts), atol=ATOL)
    np.testing.assert_allclose(got[image_rows], tiny_engine.encode_images(images), atol=ATOL)


def test_gzip_both_ways(client: httpx.Client, tiny_engine: Engine) -> None:
    body = json.dumps({"inputs": ["a photo of a cat", "a photo of a dog"]}).encode()
    response = client.post(
        "/v1/encode",
        content=gzip.compress(body),
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept-Encoding": "gzip",
        },
    )
    assert response.headers["content-encoding"] == "gzip"  # httpx decoded it for us
    got = _vectors(response)
    expected = tiny_engine.encode_texts(["a photo of a cat", "a photo of a dog"])
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_no_gzip_unless_asked(client: httpx.Client) -> None:
    response = client.post(
        "/v1/encode",
        json={"inputs": ["a photo of a cat"]},
        headers={"Accept-Encoding": "identity"},
    )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
