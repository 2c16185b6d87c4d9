"""The index RPCs: the same indexes, checks and results as HTTP /v1/indexes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from servertools import live_server, png

from clipserve.testing.synthetic import caption_for, make_dataset
from clipserve.v1 import clip_pb2, clip_pb2_grpc


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    code: grpc.StatusCode = failed.value.code()
    return code


def test_index_rpcs_agree_with_http(make_settings: Any, tmp_path: Path) -> None:
    shapes = make_dataset(32, seed=51)
    settings = make_settings(data_dir=tmp_path, grpc_port=0)
    with live_server(settings) as server, server.grpc_channel() as channel, server.client() as http:
        clip = clip_pb2_grpc.ClipStub(channel)
        info = clip.CreateIndex(clip_pb2.CreateIndexRequest(name="shapes"))
        assert (info.name, info.count, info.layout) == ("shapes", 0, "flat")
        items = [
            clip_pb2.IndexItem(
                id=f"img-{i}",
                input=clip_pb2.Input(image=png(item.image)),
                metadata_json=json.dumps({"color": item.color, "shape": item.shape, "n": i}),
            )
            for i, item in enumerate(shapes)
        ]
        items.append(
            clip_pb2.IndexItem(
                id="vec",
                vector=np.eye(info.dim, dtype="<f4")[0].tobytes(),
                metadata_json='{"n": 99}',
            )
        )
        added = clip.AddItems(clip_pb2.AddItemsRequest(index="shapes", items=items))
        assert (added.added, added.count) == (33, 33)

        query = caption_for("blue", "square")
        by_grpc = clip.Search(
            clip_pb2.SearchRequest(
                index="shapes", input=clip_pb2.Input(text=query), k=5, modality="image"
            )
        )
        body = {"input": {"text": query}, "k": 5, "modality": "image"}
        by_http = http.post("/v1/indexes/shapes/search", json=body).json()["results"]
        assert [hit.id for hit in by_grpc.results] == [hit["id"] for hit in by_http]
        np.testing.assert_allclose(
            [hit.score for hit in by_grpc.results], [hit["score"] for hit in by_http], atol=1e-5
        )
        top = json.loads(by_grpc.results[0].metadata_json)
        assert (top["color"], top["shape"]) == ("blue", "square")

        by_vector = clip.Search(
            clip_pb2.SearchRequest(
                index="shapes", vector=np.eye(info.dim, dtype="<f4")[0].tobytes(), k=1
            )
        )
        assert by_vector.results[0].id == "vec"
        filtered = clip.Search(
            clip_pb2.SearchRequest(
                index="shapes",
                input=clip_pb2.Input(image=png(shapes[0].image)),
                k=50,
                filter_json='{"n": {"lt": 5}}',
            )
        )
        assert sorted(json.loads(hit.metadata_json)["n"] for hit in filtered.results) == [
            0,
            1,
            2,
            3,
            4,
        ]
        assert clip.DeleteItem(clip_pb2.DeleteItemRequest(index="shapes", id="vec")).deleted
        assert not clip.DeleteItem(clip_pb2.DeleteItemRequest(index="shapes", id="vec")).deleted
        listed = clip.ListIndexes(clip_pb2.ListIndexesRequest())
        assert [(i.name, i.count) for i in listed.indexes] == [("shapes", 32)]
        assert http.get("/v1/indexes/shapes").json()["count"] == 32


def test_index_rpc_errors_map_to_codes(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path, grpc_port=0)
    with live_server(settings) as server, server.grpc_channel() as channel:
        clip = clip_pb2_grpc.ClipStub(channel)
        clip.CreateIndex(clip_pb2.CreateIndexRequest(name="a"))
        text = clip_pb2.Input(text="x")
        cases = [
            (lambda: clip.CreateIndex(clip_pb2.CreateIndexRequest(name="a")), "ALREADY_EXISTS"),
            (
                lambda: clip.CreateIndex(clip_pb2.CreateIndexRequest(name="../a")),
                "INVALID_ARGUMENT",
            ),
            (
                lambda: clip.Search(clip_pb2.SearchRequest(index="none", input=text)),
                "NOT_FOUND",
            ),
            (lambda: clip.Search(clip_pb2.SearchRequest(index="a")), "INVALID_ARGUMENT"),
            (
                lambda: clip.Search(clip_pb2.SearchRequest(index="a", input=text, k=5000)),
                "INVALID_ARGUMENT",
            ),
            (
                lambda: clip.Search(clip_pb2.SearchRequest(index="a", input=text, filter_json="{")),
                "INVALID_ARGUMENT",
            ),
            (
                lambda: clip.Search(clip_pb2.SearchRequest(index="a", vector=b"\x00\x00")),
                "INVALID_ARGUMENT",
            ),
            (
                lambda: clip.AddItems(
                    clip_pb2.AddItemsRequest(index="a", items=[clip_pb2.IndexItem(id="x")])
                ),
                "INVALID_ARGUMENT",
            ),
            (
                lambda: clip.AddItems(
                    clip_pb2.AddItemsRequest(
                        index="a",
                        items=[clip_pb2.IndexItem(id="x", input=clip_pb2.Input(image=b"junk"))],
                    )
                ),
                "INVALID_ARGUMENT",
            ),
            (
                lambda: clip.AddItems(
                    clip_pb2.AddItemsRequest(
                        index="a",
                        items=[clip_pb2.IndexItem(id="x", input=text, metadata_json="[1]")],
                    )
                ),
                "INVALID_ARGUMENT",
            ),
        ]
        for call, expected in cases:
            assert _code(call).name == expected
        info = clip.ListIndexes(clip_pb2.ListIndexesRequest()).indexes[0]
        assert info.count == 0  # nothing of the refused requests was written
