"""Translate between ``clipserve.v1`` messages and what the HTTP server's parsers and formatters
take and give — so both transports check inputs and shape results the same way.

Inputs become the objects :func:`clipserve.server.inputs.resolve` reads: a text an explicit
``InputObject(text=...)`` (never sniffed as a URL or data URI), image bytes ``ImageBytes``, a
URL ``InputObject(url=...)`` (fetched under the server's URL rules). Results come from the
HTTP formatters (:mod:`clipserve.server.formats`) and are copied field by field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipserve.errors import InvalidInputError
from clipserve.server.inputs import ImageBytes, Item
from clipserve.server.schemas import ClassifyResponse, InputObject, ModelsResponse, RankResponse
from clipserve.v1 import clip_pb2

#: A resolvable input: what the JSON API would have parsed from the same thing.
RawInput = InputObject | ImageBytes

_LITTLE_F32 = np.dtype("<f4")


def raw_input(item: clip_pb2.Input, where: str) -> RawInput:
    """One ``Input`` as the JSON parser's equivalent; ``where`` names it in errors."""
    kind = item.WhichOneof("kind")
    if kind == "text":
        return InputObject(text=item.text)
    if kind == "image":
        return ImageBytes(item.image)
    if kind == "url":
        return InputObject(url=item.url)
    raise InvalidInputError(f"{where}: an input needs one of 'text', 'image' or 'url'")


def raw_inputs(items: Sequence[clip_pb2.Input], where: str) -> list[RawInput]:
    """Every input of a repeated field, named ``where[i]`` in errors."""
    return [raw_input(item, f"{where}[{index}]") for index, item in enumerate(items)]


def modality(item: Item) -> clip_pb2.Modality.ValueType:
    """``MODALITY_TEXT`` for a resolved text, ``MODALITY_IMAGE`` for image bytes."""
    return clip_pb2.MODALITY_TEXT if isinstance(item, str) else clip_pb2.MODALITY_IMAGE


def packed(vectors: np.ndarray) -> list[bytes]:
    """Each row as little-endian float32 bytes (``numpy.frombuffer(b, "<f4")`` reads it)."""
    rows = np.ascontiguousarray(vectors, dtype=_LITTLE_F32)
    return [row.tobytes() for row in rows]


def encode_response(
    vectors: np.ndarray, items: Sequence[Item], model: str
) -> clip_pb2.EncodeResponse:
    """The ``Encode`` answer: one packed embedding per input, in input order."""
    embeddings = [
        clip_pb2.Embedding(index=index, modality=modality(item), vector=vector)
        for index, (item, vector) in enumerate(zip(items, packed(vectors), strict=True))
    ]
    return clip_pb2.EncodeResponse(model=model, dim=int(vectors.shape[1]), embeddings=embeddings)


def rank_response(body: RankResponse) -> clip_pb2.RankResponse:
    """The ``Rank`` answer from the HTTP route's body (candidates best first)."""
    return clip_pb2.RankResponse(
        model=body.model,
        results=[
            clip_pb2.RankScore(index=s.index, probability=s.probability, cosine=s.cosine)
            for s in body.results
        ],
    )


def classify_response(body: ClassifyResponse) -> clip_pb2.ClassifyResponse:
    """The ``Classify`` answer from the HTTP route's body (labels most probable first)."""
    return clip_pb2.ClassifyResponse(
        model=body.model,
        results=[
            clip_pb2.Classification(
                index=result.index,
                label=result.label,
                scores=[
                    clip_pb2.LabelScore(label=s.label, probability=s.probability, cosine=s.cosine)
                    for s in result.scores
                ],
            )
            for result in body.results
        ],
    )


def models_response(body: ModelsResponse) -> clip_pb2.ListModelsResponse:
    """The ``ListModels`` answer from the HTTP route's body (default first)."""
    return clip_pb2.ListModelsResponse(
        models=[
            clip_pb2.ModelInfo(
                name=info.name,
                dim=info.dim,
                image_size=info.image_size,
                context_length=info.context_length,
                precision=info.precision,
                logit_scale=info.logit_scale,
                default=info.default,
            )
            for info in body.data
        ]
    )
