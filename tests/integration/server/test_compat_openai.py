"""OpenAI's ``/v1/embeddings``, called by the official ``openai`` SDK and by hand."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from compattools import ATOL, assert_json_error, native, served_model
from servertools import LiveServer, data_uri


@pytest.fixture()
def sdk(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def _rows(response: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    # Asked for explicitly, base64 comes back undecoded: little-endian float32 bytes.
    return np.array(
        [
            np.frombuffer(base64.b64decode(item.embedding), "<f4")
            if isinstance(item.embedding, str)
            else item.embedding
            for item in response.data
        ],
        np.float32,
    )


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_sdk_embeddings_match_native(
    sdk: openai.OpenAI, client: httpx.Client, encoding_format: str | None
) -> None:
    # None: the SDK's default, which asks for base64 and decodes float32 itself.
    texts = ["a red circle", "a blue square", "a diagram"]
    model = served_model(client)
    if encoding_format is None:
        response = sdk.embeddings.create(model=model, input=texts)
    else:
        response = sdk.embeddings.create(
            model=model,
            input=texts,
            encoding_format=encoding_format,  # type: ignore[arg-type]
        )
    assert response.object == "list"
    assert response.model == model
    assert [item.index for item in response.data] == [0, 1, 2]
    assert all(item.object == "embedding" for item in response.data)
    np.testing.assert_allclose(_rows(response), native(client, texts, normalize=True), atol=ATOL)
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(texts) * 2


def test_sdk_single_string_and_images(
    sdk: openai.OpenAI, client: httpx.Client, shape_pngs: list[bytes]
) -> None:
    model = served_model(client)
    single = sdk.embeddings.create(model=model, input="a red circle")
    np.testing.assert_allclose(
        _rows(single), native(client, ["a red circle"], normalize=True), atol=ATOL
    )
    mixed = sdk.embeddings.create(model=model, input=["a red circle", data_uri(shape_pngs[0])])
    expected = native(client, ["a red circle", shape_pngs[0]], normalize=True)
    np.testing.assert_allclose(_rows(mixed), expected, atol=ATOL)
    dim = expected.shape[1]
    same = sdk.embeddings.create(model=model, input="x", dimensions=dim)
    assert len(same.data[0].embedding) == dim


def test_raw_response_shape_base64(client: httpx.Client) -> None:
    model = served_model(client)
    response = client.post(
        "/v1/embeddings",
        json={"model": model, "input": ["a red circle"], "encoding_format": "base64"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    (item,) = body["data"]
    assert set(item) == {"object", "index", "embedding"}
    vector = np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
    np.testing.assert_allclose(vector, native(client, ["a red circle"], normalize=True)[0], atol=0)


def test_sdk_errors_in_openai_shape(sdk: openai.OpenAI, client: httpx.Client) -> None:
    model = served_model(client)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "message": missing.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.BadRequestError) as dims:
        sdk.embeddings.create(model=model, input="x", dimensions=7)
    assert dims.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as tokens:
        sdk.embeddings.create(model=model, input=[[1, 2, 3]])
    assert tokens.value.body["param"] == "input"  # type: ignore[index]
    assert "token" in tokens.value.body["message"]  # type: ignore[index]


def test_bad_bodies_are_openai_400s(client: httpx.Client) -> None:
    model = served_model(client)
    missing = assert_json_error(client.post("/v1/embeddings", json={"model": model}), 400)
    assert set(missing["error"]) == {"message", "type", "param", "code"}
    assert missing["error"]["param"] == "input"
    bad_image = {"model": model, "input": ["data:image/png;base64,AAAA"]}
    body = assert_json_error(client.post("/v1/embeddings", json=bad_image), 400)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("input[0]")
    url = {"model": model, "input": "http://127.0.0.1:9/cat.png"}
    body = assert_json_error(client.post("/v1/embeddings", json=url), 400)
    assert "URL fetching is disabled" in body["error"]["message"]
