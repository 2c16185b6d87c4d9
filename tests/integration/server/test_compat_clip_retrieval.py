"""clip-retrieval's back routes, called the way its web front (``front/src/clip-service.js``:
``fetch`` with a ``JSON.stringify`` body, so ``text/plain``) and ``ClipClient``
(``clip_retrieval/clip_client.py``: ``requests.post(url, data=json.dumps(...))``, no content
type) call them, against an index built through ``/v1/indexes``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from compattools import assert_json_error, compact_json, native
from servertools import LiveServer, b64, data_uri, live_server, png

from clipserve.server.settings import ServerSettings
from clipserve.testing.synthetic import caption_for, make_dataset

SHAPES = make_dataset(64, seed=41)
PNGS = [png(item.image) for item in SHAPES]
CAPTIONED = 24  # the first 24 shapes also get a caption item ("<id>#caption", modality text)
CAPTIONS = CAPTIONED + 1  # and dup-0, a copy of img-0
URL = "https://example.com/shapes/{}.png"
KEY = "clip-retrieval-s3cret"


def _items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i, (item, data) in enumerate(zip(SHAPES, PNGS, strict=True)):
        metadata = {
            "key": f"img-{i}",
            "source": URL.format(f"img-{i}"),
            "caption": item.caption,
            "sha256": hashlib.sha256(data).hexdigest(),
            "color": item.color,
            "shape": item.shape,
        }
        items.append({"id": f"img-{i}", "input": data_uri(data), "metadata": metadata})
        if i < CAPTIONED:
            caption = {"text": item.caption}
            items.append({"id": f"img-{i}#caption", "input": caption, "metadata": metadata})
    # The same bytes as img-0 under another id and URL: a duplicate for `deduplicate`.
    duplicate = {**items[0]["metadata"], "key": "dup-0", "source": URL.format("dup-0")}
    items.append({"id": "dup-0", "input": data_uri(PNGS[0]), "metadata": duplicate})
    # ... and its caption again: a repeated caption text.
    caption = {"text": SHAPES[0].caption}
    items.append({"id": "dup-0#caption", "input": caption, "metadata": duplicate})
    # A local file (clipserve embed of a folder): its source is a path, not a URL.
    local = {"key": "local-1", "source": "photos/local-1.png", "caption": SHAPES[1].caption}
    items.append({"id": "local-1", "input": data_uri(PNGS[1]), "metadata": local})
    return items


@pytest.fixture(scope="module")
def server(make_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(data_dir=tmp_path_factory.mktemp("clip-retrieval"))
    with live_server(settings) as running, running.client() as http:
        for name in ("shapes", "tiny"):
            assert http.post("/v1/indexes", json={"name": name}).status_code == 201
        added = http.post("/v1/indexes/shapes/items", json={"items": _items()})
        assert added.status_code == 200, added.text
        one = {"id": "only", "input": {"text": "a tiny index"}, "metadata": {"caption": "only"}}
        assert http.post("/v1/indexes/tiny/items", json={"items": [one]}).status_code == 200
        yield running


@pytest.fixture()
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# ----------------------------------------------------------------------------- requests
def front_knn(http: httpx.Client, **fields: Any) -> httpx.Response:
    """``ClipService.callClipService`` with the front's defaults (``clip-front.js``)."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "modality": "image",
        "num_images": 40,
        "indice_name": "shapes",
        "num_result_ids": 3000,
        "use_mclip": False,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "aesthetic_score": "",
        "aesthetic_weight": "0.5",
        **fields,
    }
    return front_post(http, "/knn-service", body)


def front_post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    # fetch() with a string body sends it as text/plain;charset=UTF-8.
    headers = {"content-type": "text/plain;charset=UTF-8"}
    return http.post(path, content=compact_json(body), headers=headers)


def client_knn(http: httpx.Client, **fields: Any) -> httpx.Response:
    """``ClipClient(url, "shapes", ...).query(...)`` with its defaults: every field, always."""
    num_images = fields.pop("num_images", 40)
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": "shapes",
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": num_images,
        "num_result_ids": num_images,
        "verbose": False,
        **fields,
    }
    return http.post("/knn-service", content=json.dumps(body))  # requests: no content type


def ok(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()
    assert isinstance(results, list)
    return results


def native_search(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = http.post("/v1/indexes/shapes/search", json=body)
    assert response.status_code == 200, response.text
    hits: list[dict[str, Any]] = response.json()["results"]
    return hits


# ----------------------------------------------------------------------------- tests
def test_indices_list(http: httpx.Client) -> None:
    response = http.get("/indices-list")
    assert response.status_code == 200
    assert response.json() == ["shapes", "tiny"]


def test_text_query_from_the_front(http: httpx.Client) -> None:
    text = caption_for("red", "circle")
    results = ok(front_knn(http, text=text, num_images=5, num_result_ids=20, deduplicate=False))
    top = results[0]
    assert (top["color"], top["shape"]) == ("red", "circle")
    # Every candidate comes back; only the first num_images carry their metadata.
    assert len(results) == 20
    assert all(set(result) == {"id", "similarity"} for result in results[5:])
    for result in results[:5]:
        assert "source" not in result and {"caption", "key", "id", "similarity"} <= set(result)
        if result["id"] == "local-1":
            assert result["image_path"] == "photos/local-1.png" and "url" not in result
        else:
            assert result["url"] == URL.format(result["key"]) and "sha256" in result
    # The same items and cosines as the native search, images only (modality "image").
    expected = native_search(http, {"input": text, "k": 20, "modality": "image"})
    assert [r["id"] for r in results] == [hit["id"] for hit in expected]
    assert np.allclose([r["similarity"] for r in results], [h["score"] for h in expected])
    assert all(not r["id"].endswith("#caption") for r in results)


def test_image_query_base64_finds_captions(http: httpx.Client) -> None:
    query = SHAPES[3]
    image = b64(PNGS[3])
    results = ok(client_knn(http, image=image, modality="text", num_images=5, deduplicate=False))
    assert len(results) == 5 and all(r["id"].endswith("#caption") for r in results)
    assert results[0]["caption"] == query.caption
    expected = native_search(http, {"input": data_uri(PNGS[3]), "k": 5, "modality": "text"})
    assert [r["id"] for r in results] == [hit["id"] for hit in expected]
    assert np.allclose([r["similarity"] for r in results], [h["score"] for h in expected])


def test_embedding_input_equals_the_text_query(http: httpx.Client) -> None:
    text = caption_for("blue", "square")
    by_text = ok(client_knn(http, text=text, num_images=10, deduplicate=False))
    (embedding,) = native(http, [text], normalize=True)
    by_vector = ok(
        client_knn(http, embedding_input=embedding.tolist(), num_images=10, deduplicate=False)
    )
    assert [r["id"] for r in by_vector] == [r["id"] for r in by_text]
    similarities = [r["similarity"] for r in by_vector]
    assert np.allclose(similarities, [r["similarity"] for r in by_text], atol=1e-5)
    # clipserve normalises the vector: the similarities stay cosines at any scale.
    scaled = ok(
        client_knn(http, embedding_input=(embedding * 3).tolist(), num_images=10, deduplicate=False)
    )
    assert np.allclose([r["similarity"] for r in scaled[:3]], similarities[:3], atol=1e-5)


def test_text_wins_over_image_and_empty_text_means_image(http: httpx.Client) -> None:
    text = caption_for("red", "circle")
    both = ok(front_knn(http, text=text, image=b64(PNGS[5]), num_images=3))
    only_text = ok(front_knn(http, text=text, num_images=3))
    assert [r["id"] for r in both] == [r["id"] for r in only_text]
    # The front sends text "" with an image search (clip-front.js imageSearch).
    image = ok(front_knn(http, text="", image=b64(PNGS[5]), num_images=3, deduplicate=False))
    assert image[0]["id"] == "img-5" and abs(image[0]["similarity"] - 1.0) < 1e-4


def test_num_images_and_num_result_ids(http: httpx.Client) -> None:
    text = caption_for("green", "triangle")
    three = ok(client_knn(http, text=text, num_images=3, deduplicate=False))
    assert len(three) == 3 and all("caption" in r for r in three)
    more = ok(front_knn(http, text=text, num_images=3, num_result_ids=10, deduplicate=False))
    assert len(more) == 10 and [r["id"] for r in more[:3]] == [r["id"] for r in three]
    assert [("caption" in r) for r in more] == [True] * 3 + [False] * 7
    everything = ok(front_knn(http, text=text, deduplicate=False))  # 3000 candidates asked
    assert len(everything) == 64 + 2  # every image item (the captions are not searched)


def test_deduplicate_drops_identical_images_and_captions(http: httpx.Client) -> None:
    query = {"image": b64(PNGS[0]), "num_images": 6, "num_result_ids": 6}
    kept = ok(front_knn(http, **query, deduplicate=False))
    assert {r["id"] for r in kept[:2]} == {"img-0", "dup-0"}  # the same bytes: cosine 1
    deduplicated = ok(front_knn(http, **query, deduplicate=True))
    assert [r["id"] for r in deduplicated] == [r["id"] for r in kept if r["id"] != kept[1]["id"]]

    captions = {"text": SHAPES[0].caption, "modality": "text", "num_images": CAPTIONS}
    all_captions = ok(front_knn(http, **captions, deduplicate=False))
    texts = [r["caption"] for r in all_captions]
    assert len(texts) == CAPTIONS and texts.count(SHAPES[0].caption) >= 2
    unique = ok(front_knn(http, **captions, deduplicate=True))
    assert sorted(r["caption"] for r in unique) == sorted(set(texts))


def test_metadata_for_the_rest_of_the_results(http: httpx.Client) -> None:
    results = ok(front_knn(http, text=caption_for("red", "ring"), num_images=2, num_result_ids=8))
    tail = [r["id"] for r in results[2:]]
    answer = front_post(http, "/metadata", {"ids": tail, "indice_name": "shapes"})
    assert answer.status_code == 200, answer.text
    metas = answer.json()
    assert [m["id"] for m in metas] == tail
    for meta in metas:
        assert set(meta) == {"id", "metadata"}
        stored = http.get(f"/v1/indexes/shapes/items/{meta['id']}").json()["metadata"]
        columns = {k: v for k, v in stored.items() if k != "source"}
        column = "url" if stored["source"].startswith("https://") else "image_path"
        assert meta["metadata"] == {**columns, column: stored["source"]}
    local = front_post(http, "/metadata", {"ids": ["local-1", "nope"], "indice_name": "shapes"})
    assert local.json() == [
        {
            "id": "local-1",
            "metadata": {
                "key": "local-1",
                "image_path": "photos/local-1.png",
                "caption": SHAPES[1].caption,
            },
        },
        {"id": "nope", "metadata": None},
    ]
    assert front_post(http, "/metadata", {"ids": [], "indice_name": "shapes"}).json() == []


def test_indice_name_selects_the_index(http: httpx.Client) -> None:
    tiny = ok(client_knn(http, text="anything", modality="text", indice_name="tiny"))
    assert [r["id"] for r in tiny] == ["only"] and tiny[0]["caption"] == "only"
    first = ok(client_knn(http, text="anything", modality="text", indice_name=None))
    assert [r["id"] for r in first] != ["only"]  # null: the first index, "shapes"


def test_errors_are_4xx_with_a_message(http: httpx.Client) -> None:
    text = caption_for("red", "circle")
    unknown = assert_json_error(front_knn(http, text=text, indice_name="laion5B"), 404)
    assert set(unknown) == {"message"} and "laion5B" in unknown["message"]
    nothing = assert_json_error(front_knn(http, text=""), 400)
    assert "text, image, image_url or embedding_input" in nothing["message"]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"text": text, "modality": "video"}, 422, "modality"),
        ({"text": text, "num_images": 0}, 422, "num_images"),
        ({"text": text, "aesthetic_score": "pretty"}, 422, "aesthetic_score"),
        ({"text": text, "use_mclip": True}, 400, "use_mclip"),
        ({"text": text, "num_result_ids": 20_000}, 400, "num_result_ids"),
        ({"embedding_input": [1.0, 2.0]}, 400, "embedding_input"),
        ({"image": "not base64 !"}, 400, "image"),
        ({"image_url": "http://127.0.0.1/x.png"}, 400, "image_url"),
    ]
    for fields, status, word in cases:
        body = assert_json_error(front_knn(http, **fields), status)
        assert set(body) == {"message"} and word in body["message"], (fields, body)
    missing = http.post("/knn-service", content=json.dumps({"text": text}))
    assert "modality" in assert_json_error(missing, 422)["message"]
    broken = http.post("/knn-service", content="{not json")
    assert set(assert_json_error(broken, 400)) == {"message"}
    no_index = front_post(http, "/metadata", {"ids": ["img-1"], "indice_name": "laion5B"})
    assert set(assert_json_error(no_index, 404)) == {"message"}


def test_switch_and_key(make_settings: Any, tmp_path: Path) -> None:
    assert ServerSettings(compat="clip-retrieval").compat == ["clip_retrieval"]
    off = make_settings(data_dir=tmp_path, compat="openai")
    with live_server(off) as running, running.client() as client:
        assert client.get("/indices-list").status_code == 404
        assert client.post("/knn-service", json={"text": "a"}).status_code == 404
        assert client.post("/metadata", json={"ids": []}).status_code == 404
    keyed = make_settings(data_dir=tmp_path, compat="clip_retrieval", api_keys=[KEY])
    with live_server(keyed) as running, running.client() as client:
        refused = assert_json_error(client.get("/indices-list"), 401)
        assert set(refused) == {"message"}
        allowed = client.get("/indices-list", headers={"authorization": f"Bearer {KEY}"})
        assert allowed.status_code == 200 and allowed.json() == []
        empty = client.post(
            "/knn-service",
            json={"text": "a", "modality": "image", "num_images": 1},
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert assert_json_error(empty, 404) == {
            "message": "there is no index to search: create one first"
        }
