"""photofield-ai's routes, called the way photofield's Go client (``internal/ai/client.go``)
calls them."""

from __future__ import annotations

import base64
import json
import secrets

import httpx
import numpy as np
from compattools import assert_json_error, multipart, native

# float16 has an 11-bit significand: a rounding error of at most 2**-11 of the value.
F16_RTOL = 2.0**-11


def _decode(item: dict[str, object]) -> tuple[np.ndarray, float]:
    vector = np.frombuffer(base64.b64decode(str(item["embedding_f16_b64"])), "<f2")
    bits = item["embedding_inv_norm_f16_uint16"]
    assert isinstance(bits, int) and 0 <= bits < 1 << 16
    inverse_norm = float(np.array(bits, np.uint16).view(np.float16))
    return vector, inverse_norm


def _assert_matches(vector: np.ndarray, inverse_norm: float, expected: np.ndarray) -> None:
    assert vector.dtype == np.float16 and vector.shape == expected.shape
    tolerance = np.abs(expected) * F16_RTOL + 1e-7  # + the smallest float16 steps near 0
    assert np.all(np.abs(vector.astype(np.float32) - expected) <= tolerance)
    true_inverse = 1.0 / float(np.linalg.norm(expected))
    assert abs(inverse_norm - true_inverse) <= true_inverse * F16_RTOL
    # The inverse norm belongs to the vector sent, which is unnormalised (as photofield-ai's).
    assert abs(float(np.linalg.norm(expected)) - 1.0) > 1e-3


def _go_multipart(images: list[bytes]) -> tuple[bytes, str]:
    # Go's multipart.Writer: a 60-hex-digit boundary; CreateFormFile("image", "image") sends
    # Content-Type application/octet-stream.
    boundary = secrets.token_hex(30)
    parts = [("image", "image", "application/octet-stream", image) for image in images]
    return multipart(boundary, parts), f"multipart/form-data; boundary={boundary}"


def test_text_embeddings(client: httpx.Client) -> None:
    texts = ["hawk", "a red circle"]
    body = json.dumps({"texts": texts}, separators=(",", ":"))  # Go's json.Marshal
    response = client.post(
        "/text-embeddings", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    document = response.json()
    assert list(document) == ["texts"]
    expected = native(client, texts, normalize=False)
    for item, text, row in zip(document["texts"], texts, expected, strict=True):
        assert set(item) == {"text", "embedding_f16_b64", "embedding_inv_norm_f16_uint16"}
        assert item["text"] == text
        _assert_matches(*_decode(item), row)


def test_image_embeddings_as_photofield_sends_them(
    client: httpx.Client, shape_pngs: list[bytes]
) -> None:
    content, content_type = _go_multipart([shape_pngs[0]])
    response = client.post(
        "/image-embeddings", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()["images"]
    assert set(item) == {
        "field",
        "filename",
        "embedding_f16_b64",
        "embedding_inv_norm_f16_uint16",
    }
    assert (item["field"], item["filename"]) == ("image", "image")
    _assert_matches(*_decode(item), native(client, shape_pngs[:1], normalize=False)[0])


def test_several_images_keep_fields_and_order(
    client: httpx.Client, shape_pngs: list[bytes]
) -> None:
    # The README's example: parts image0, image1, ... with file names and image types.
    parts = [
        (f"image{i}", f"test{i}.png", "image/png", image) for i, image in enumerate(shape_pngs[:3])
    ]
    boundary = "------------------------23f534be8db8eca0"
    response = client.post(
        "/image-embeddings",
        content=multipart(boundary, parts),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    items = response.json()["images"]
    assert [(item["field"], item["filename"]) for item in items] == [
        (f"image{i}", f"test{i}.png") for i in range(3)
    ]
    expected = native(client, shape_pngs[:3], normalize=False)
    for item, row in zip(items, expected, strict=True):
        _assert_matches(*_decode(item), row)
    # What the inverse norm is for: cosine from float16 vectors without a square root.
    (a, inv_a), (b, inv_b) = _decode(items[0]), _decode(items[1])
    cosine = float(a.astype(np.float32) @ b.astype(np.float32)) * inv_a * inv_b
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert abs(cosine - float(unit[0] @ unit[1])) < 5e-3


def test_feature_probe_head(client: httpx.Client) -> None:
    assert client.head("/text-embeddings").status_code == 200
    assert client.head("/image-embeddings").status_code == 200
    assert client.head("/faces").status_code in (404, 405)  # not served: faces stay off


def test_errors_in_fastapi_shape(client: httpx.Client) -> None:
    empty, content_type = _go_multipart([])
    response = client.post(
        "/image-embeddings", content=empty, headers={"content-type": content_type}
    )
    assert assert_json_error(response, 400) == {"detail": "No images provided"}
    content, content_type = _go_multipart([b"not an image"])
    response = client.post(
        "/image-embeddings", content=content, headers={"content-type": content_type}
    )
    assert "images[0]" in assert_json_error(response, 400)["detail"]
    response = client.post("/text-embeddings", json={"text": "hawk"})
    assert "texts" in assert_json_error(response, 422)["detail"]
