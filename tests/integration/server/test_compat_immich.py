"""immich's machine-learning routes, called the way immich's server
(``server/src/repositories/machine-learning.repository.ts``) calls them: Node's ``fetch`` with a
``FormData`` body (undici's multipart encoding)."""

from __future__ import annotations

import io
import json
import secrets

import httpx
import numpy as np
from compattools import ATOL, assert_json_error, compact_json, multipart, native, served_model
from PIL import Image


def _undici_form(
    entries: object, *, image: bytes | None = None, text: str | None = None
) -> tuple[bytes, str]:
    # undici: boundary "----formdata-undici-0" + 11 random digits; a Blob appended without a
    # name gets filename "blob" and, having no type, application/octet-stream.
    boundary = f"----formdata-undici-0{secrets.randbelow(10**11):011d}"
    parts: list[tuple[str, str | None, str | None, bytes]] = [
        ("entries", None, None, compact_json(entries).encode())
    ]
    if image is not None:
        parts.append(("image", "blob", "application/octet-stream", image))
    if text is not None:
        parts.append(("text", None, None, text.encode()))
    return multipart(boundary, parts), f"multipart/form-data; boundary={boundary}"


def _predict(
    client: httpx.Client, entries: object, *, image: bytes | None = None, text: str | None = None
) -> httpx.Response:
    content, content_type = _undici_form(entries, image=image, text=text)
    return client.post("/predict", content=content, headers={"content-type": content_type})


def test_ping(client: httpx.Client) -> None:
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.text == "pong"


def test_visual_embedding(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    model = served_model(client)
    response = _predict(client, {"clip": {"visual": {"modelName": model}}}, image=shape_pngs[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"clip", "imageHeight", "imageWidth"}
    assert isinstance(body["clip"], str)  # immich stores the JSON string as is
    vector = np.array(json.loads(body["clip"]), np.float32)
    np.testing.assert_allclose(vector, native(client, shape_pngs[:1], normalize=True)[0], atol=ATOL)
    with Image.open(io.BytesIO(shape_pngs[0])) as image:
        assert (body["imageWidth"], body["imageHeight"]) == image.size


def test_textual_embedding(client: httpx.Client) -> None:
    model = served_model(client)
    entries = {"clip": {"textual": {"modelName": model, "options": {"language": "en"}}}}
    response = _predict(client, entries, text="a red circle")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"clip"}
    vector = np.array(json.loads(body["clip"]), np.float32)
    np.testing.assert_allclose(
        vector, native(client, ["a red circle"], normalize=True)[0], atol=ATOL
    )
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


def test_image_size_follows_exif_orientation(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: width and height swap once decoded
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buffer, format="JPEG", exif=exif)
    model = served_model(client)
    response = _predict(client, {"clip": {"visual": {"modelName": model}}}, image=buffer.getvalue())
    assert response.status_code == 200, response.text
    assert (response.json()["imageWidth"], response.json()["imageHeight"]) == (20, 40)


def test_errors_in_fastapi_shape(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    model = served_model(client)
    neither = _predict(client, {"clip": {"textual": {"modelName": model}}})
    assert assert_json_error(neither, 400) == {"detail": "Either image or text must be provided"}
    unknown = _predict(
        client, {"clip": {"visual": {"modelName": "nope__openai"}}}, image=shape_pngs[0]
    )
    assert "nope" in assert_json_error(unknown, 404)["detail"]
    faces = {"facial-recognition": {"detection": {"modelName": "buffalo_l"}}}
    assert "clip" in assert_json_error(_predict(client, faces, image=shape_pngs[0]), 422)["detail"]
    garbled = _predict(client, "not an object", text="x")
    assert "entries" in assert_json_error(garbled, 422)["detail"]
    mismatch = _predict(client, {"clip": {"visual": {"modelName": model}}}, text="a cat")
    assert "textual" in assert_json_error(mismatch, 400)["detail"]
    not_image = _predict(client, {"clip": {"visual": {"modelName": model}}}, image=b"nope")
    assert assert_json_error(not_image, 400)["detail"].startswith("image")
