"""``/v1/rank``, ``/v1/classify`` and ``/v1/models`` against the engine's own answers."""

from __future__ import annotations

import httpx
import numpy as np
from servertools import b64, data_uri, png

from clipserve.engine import Engine
from clipserve.testing.synthetic import COLORS, SHAPES, caption_for, make_item

ATOL = 1e-5


def _shape(color: str, shape: str, seed: int) -> bytes:
    return png(make_item(np.random.default_rng(seed), color, shape).image)


def test_rank_image_query_against_captions(client: httpx.Client, tiny_engine: Engine) -> None:
    image = _shape("red", "circle", 1)
    captions = [caption_for(color, "circle") for color in list(COLORS)[:4]]
    response = client.post("/v1/rank", json={"query": data_uri(image), "candidates": captions})
    assert response.status_code == 200, response.text
    document = response.json()
    expected = tiny_engine.rank(image, captions)
    assert [row["index"] for row in document["results"]] == expected.order().tolist()
    best = document["results"][0]
    assert captions[best["index"]] == caption_for("red", "circle")
    for row in document["results"]:
        assert abs(row["cosine"] - float(expected.cosines[row["index"]])) < ATOL
        assert abs(row["probability"] - float(expected.probabilities[row["index"]])) < ATOL
    assert abs(sum(row["probability"] for row in document["results"]) - 1.0) < 1e-4


def test_rank_text_query_against_images(client: httpx.Client, tiny_engine: Engine) -> None:
    images = [_shape(color, "square", 2 + i) for i, color in enumerate(list(COLORS)[:3])]
    query = caption_for(list(COLORS)[1], "square")
    candidates = [{"image": b64(images[0])}, data_uri(images[1]), {"image": data_uri(images[2])}]
    response = client.post("/v1/rank", json={"query": {"text": query}, "candidates": candidates})
    document = response.json()
    expected = tiny_engine.rank(query, images)
    assert [row["index"] for row in document["results"]] == expected.order().tolist()
    assert document["results"][0]["index"] == 1
    assert document["model"] == tiny_engine.model().name


def test_classify_images_with_templates(client: httpx.Client, tiny_engine: Engine) -> None:
    images = [_shape("blue", "triangle", 5), _shape("green", "square", 6)]
    labels = [f"{color} {shape}" for color in list(COLORS)[:4] for shape in SHAPES[:3]]
    templates = ["a photo of a {}", "a picture of a {}"]
    body = {
        "images": [data_uri(image) for image in images],
        "labels": labels,
        "templates": templates,
    }
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = tiny_engine.classify(images, labels, templates=templates)
    assert [result["index"] for result in results] == [0, 1]
    for got, want in zip(results, expected, strict=True):
        assert got["label"] == want.label
        probabilities = [score["probability"] for score in got["scores"]]
        assert probabilities == sorted(probabilities, reverse=True)
        by_label = {score["label"]: score for score in got["scores"]}
        for k, label in enumerate(labels):
            assert abs(by_label[label]["cosine"] - float(want.cosines[k])) < ATOL


def test_classify_default_template(client: httpx.Client, tiny_engine: Engine) -> None:
    image = _shape("red", "circle", 7)
    labels = ["red circle", "blue square"]
    response = client.post("/v1/classify", json={"images": [b64(image)], "labels": labels})
    got = response.json()["results"][0]
    want = tiny_engine.classify([image], labels)[0]
    assert got["label"] == want.label


def test_models_lists_the_default_first(client: httpx.Client, tiny_engine: Engine) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    (model,) = response.json()["data"]
    clip = tiny_engine.model()
    assert model["name"] == clip.name
    assert model["dim"] == clip.embed_dim
    assert model["image_size"] == clip.preprocess.image_size
    assert model["precision"] == "fp32"
    assert abs(model["logit_scale"] - clip.logit_scale) < 1e-4
    assert model["default"] is True
