"""Turn engine results into response bodies: JSON floats, base64 float32/float16, or ``.npy``."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
from collections.abc import Sequence

import numpy as np
from fastapi.responses import Response

from clipserve.engine import ClassifyResult, RankResult
from clipserve.server.schemas import (
    Classification,
    ClassifyResponse,
    Encoding,
    LabelScore,
    RankResponse,
    RankScore,
)

NPY_MEDIA_TYPE = "application/x-npy"
_THREAD_THRESHOLD_VALUES = 64 * 1024
_DTYPES: dict[str, str] = {"base64": "<f4", "base64_f16": "<f2"}


def wants_npy(accept: str | None) -> bool:
    """Whether the ``Accept`` header asks for an ``.npy`` body."""
    return accept is not None and NPY_MEDIA_TYPE in accept.lower()


def encode_response(
    vectors: np.ndarray,
    modalities: Sequence[str],
    *,
    model: str,
    encoding: Encoding,
    accept: str | None,
) -> Response:
    """The ``/v1/encode`` answer: JSON in the requested encoding, or ``.npy`` if accepted.

    The JSON is built here rather than through a response model: for thousands of
    512-float rows, pydantic validation would cost more than the model run.
    """
    if wants_npy(accept):
        return npy_response(vectors)
    body = {
        "model": model,
        "dim": int(vectors.shape[1]),
        "encoding": encoding,
        "data": [
            {"index": index, "modality": modality, "embedding": embedding}
            for index, (modality, embedding) in enumerate(
                zip(modalities, encode_vectors(vectors, encoding), strict=True)
            )
        ],
        "usage": {
            "texts": sum(1 for modality in modalities if modality == "text"),
            "images": sum(1 for modality in modalities if modality == "image"),
        },
    }
    content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return Response(content, media_type="application/json")


async def aencode_response(
    vectors: np.ndarray,
    modalities: Sequence[str],
    *,
    model: str,
    encoding: Encoding,
    accept: str | None,
) -> Response:
    """:func:`encode_response`, in a worker thread when the answer is large.

    Serialising thousands of rows takes long enough to stall every other request.
    """
    build = functools.partial(
        encode_response, vectors, modalities, model=model, encoding=encoding, accept=accept
    )
    if vectors.size > _THREAD_THRESHOLD_VALUES:
        return await asyncio.to_thread(build)
    return build()


def encode_vectors(vectors: np.ndarray, encoding: Encoding) -> list[list[float]] | list[str]:
    """Each row as a float list, or base64 of its little-endian float32/float16 bytes."""
    if encoding == "float":
        rows: list[list[float]] = vectors.astype(np.float32).tolist()
        return rows
    dtype = _DTYPES[encoding]
    return [base64.b64encode(row.astype(dtype).tobytes()).decode("ascii") for row in vectors]


def npy_response(vectors: np.ndarray) -> Response:
    """``vectors`` as a float32 ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY_MEDIA_TYPE)


def rank_response(result: RankResult, model: str) -> RankResponse:
    """Candidates best first, each with its request index."""
    return RankResponse(
        model=model,
        results=[
            RankScore(
                index=int(index),
                probability=float(result.probabilities[index]),
                cosine=float(result.cosines[index]),
            )
            for index in result.order()
        ],
    )


def classify_response(results: Sequence[ClassifyResult], model: str) -> ClassifyResponse:
    """Per image (in request order) its labels, most probable first."""
    return ClassifyResponse(
        model=model,
        results=[_classification(index, result) for index, result in enumerate(results)],
    )


def _classification(index: int, result: ClassifyResult) -> Classification:
    order = np.argsort(-result.probabilities, kind="stable")
    scores = [
        LabelScore(
            label=result.labels[k],
            probability=float(result.probabilities[k]),
            cosine=float(result.cosines[k]),
        )
        for k in order
    ]
    return Classification(index=index, label=result.label, scores=scores)
