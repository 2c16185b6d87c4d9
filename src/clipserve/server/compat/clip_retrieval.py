"""clip-retrieval's back: ``GET /indices-list``, ``POST /knn-service`` and ``POST /metadata``.

``clip-retrieval back`` (``clip_retrieval/clip_back.py``, a Flask-RESTful app) serves its
indexes to clip-retrieval's web front (``front/src/clip-service.js``) and to
``clip_retrieval.clip_client.ClipClient``. Here those routes search clipserve's indexes
(``/v1/indexes``, ``clipserve index build``):

* ``/indices-list``: the index names, sorted.
* ``/knn-service``: the query is ``text`` (when not empty), else ``image`` (base64), else
  ``image_url`` (fetched under the server's URL rules), else ``embedding_input``;
  ``modality`` picks the items searched (``image`` or ``text``: clip-retrieval's separate
  image and text indexes). ``num_result_ids`` candidates (default ``num_images``) are
  searched and, with ``deduplicate``, exact duplicates dropped; the answer lists every
  survivor, best first, as ``{..., "id", "similarity"}``, with the metadata columns only on
  the first ``num_images`` — the front fetches the rest through ``/metadata`` as it scrolls.
* ``/metadata``: ``[{"id", "metadata"}]`` for the ``ids`` given (``null`` for an unknown id).

Ids are clipserve's item ids (strings), not clip-retrieval's row numbers: the front and the
client only pass them back. A result's ``source`` metadata becomes ``url`` (an http(s) URL,
the column the front displays) or ``image_path`` (anything else). ``use_safety_model``,
``use_violence_detector`` and the aesthetic options are accepted and ignored, as a clip back
started without those models ignores them; ``use_mclip`` on a text query is refused (400):
clipserve has no multilingual text encoder. Errors: Flask-RESTful's ``{"message": ...}``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from clipserve.engine import Engine
from clipserve.index import Hit, Index, IndexNotFoundError
from clipserve.server.auth import RequireKey
from clipserve.server.inputs import check_count, validate
from clipserve.server.routes.indexes import embed_query, open_index, unit_vector
from clipserve.server.schemas import EXAMPLE_PNG_B64, InputItem, InputObject, JsonCount
from clipserve.server.state import EngineDep, ServerState, StateDep

from .common import read_json
from .errors import CompatError, CompatInputError, error_docs, error_route

#: The most candidates one search returns (``Index.search``'s limit).
MAX_RESULT_IDS = 10_000


class MessageErrorBody(BaseModel):
    """Flask-RESTful's error body."""

    message: str


def render_error(error: CompatError) -> JSONResponse:
    """Flask-RESTful's error body, ``{"message": ...}``, as clip-retrieval's back answers."""
    return JSONResponse({"message": error.message}, error.status)


router = APIRouter(
    tags=["compat: clip-retrieval"],
    dependencies=[RequireKey],
    route_class=error_route(render_error),
)


#: A number written as a string, or an empty one: clip-retrieval reads "" as "not given" and
#: float() of anything else. A pattern, not a validator, so that the schema says it too.
NumberText = Annotated[
    str, StringConstraints(pattern=r"^\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)?\s*$")
]


class KnnRequest(BaseModel):
    """Body of ``/knn-service``, as clip-retrieval's front and ``ClipClient`` send it."""

    # Unknown fields are ignored (e.g. ClipClient's "verbose"); known ones hold what the
    # schema says: no true for a count, no "1" for true.
    model_config = ConfigDict(extra="ignore", strict=True)

    text: str | None = None
    image: str | None = Field(None, description="Base64 image bytes (or a data URI).")
    image_url: str | None = Field(None, description="An http(s) URL of an image.")
    embedding_input: list[float] | None = Field(None, description="A query embedding.")
    modality: Literal["image", "text"] = Field(description="Which items to search.")
    num_images: JsonCount = Field(description="Results that carry their metadata.")
    num_result_ids: JsonCount | None = Field(
        None, description="Candidates searched (default: num_images)."
    )
    indice_name: str | None = Field(None, description="The index (default: the first).")
    deduplicate: bool = False
    use_mclip: bool = False
    use_safety_model: bool = Field(False, description="Accepted and ignored.")
    use_violence_detector: bool = Field(False, description="Accepted and ignored.")
    aesthetic_score: StrictFloat | NumberText | None = Field(
        None, description="Accepted and ignored."
    )
    aesthetic_weight: StrictFloat | NumberText | None = Field(
        None, description="Accepted and ignored."
    )

    def query(self) -> tuple[str, InputItem | list[float]] | None:
        """``(field, query)`` by clip-retrieval's precedence: text, image, image URL, embedding."""
        if self.text:
            return "text", InputObject(text=self.text)
        if self.image:
            return "image", InputObject(image=self.image)
        if self.image_url:
            return "image_url", InputObject(url=self.image_url)
        if self.embedding_input is not None:
            return "embedding_input", self.embedding_input
        return None


class MetadataRequest(BaseModel):
    """Body of ``/metadata``: result ids (as ``/knn-service`` gave them) and the index."""

    model_config = ConfigDict(extra="ignore")

    ids: list[StrictStr | StrictInt]  # never true/false: they are no ids
    indice_name: str | None = None


_SHAPES = "https://example.com/shapes"
_KNN_EXAMPLES: dict[str, Any] = {
    "text": {
        "summary": "Text → images (what clip-retrieval's front sends)",
        "value": {
            "text": "a red circle",
            "image": None,
            "image_url": None,
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
        },
    },
    "image": {
        "summary": "Image → captions",
        "value": {
            "image": EXAMPLE_PNG_B64,
            "modality": "text",
            "num_images": 10,
            "indice_name": "shapes",
        },
    },
}
_KNN_RESULT = [
    {
        "url": f"{_SHAPES}/red-circle-7.png",
        "caption": "a red circle",
        "key": "red-circle-7",
        "width": 64,
        "height": 64,
        "sha256": "9f86d081884c7d65...",
        "id": "red-circle-7",
        "similarity": 0.3124,
    },
    {"id": "red-circle-9", "similarity": 0.3017},
]
_ERROR_EXAMPLES = error_docs(
    render_error,
    MessageErrorBody,
    examples={
        400: "give one of text, image, image_url or embedding_input",
        404: "no index named 'laion5B'",
        413: "ids: 5000 items; the limit is 1024",
    },
)


def _json_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    # The body is read whatever its content type: the front posts JSON as text/plain and
    # ClipClient without a content type (Flask's get_json(force=True) reads both).
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema(), "examples": examples}
            },
        }
    }


@router.get(
    "/indices-list",
    summary="clip-retrieval: list the indexes",
    responses={
        200: {"content": {"application/json": {"example": ["shapes", "photos"]}}},
        **error_docs(render_error, MessageErrorBody, (401,)),
    },
)
async def indices_list(state: StateDep) -> JSONResponse:
    """The names of the indexes, sorted (the front selects the first by default)."""
    names = await asyncio.to_thread(state.index_catalog().names)
    return JSONResponse(names)


@router.post(
    "/knn-service",
    summary="clip-retrieval: search an index",
    openapi_extra=_json_body(KnnRequest, _KNN_EXAMPLES),
    responses={200: {"content": {"application/json": {"example": _KNN_RESULT}}}, **_ERROR_EXAMPLES},
)
async def knn_service(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Nearest items to a text, image, image URL or embedding, best first."""
    body = validate(KnnRequest, await read_json(request), "body")
    query = body.query()
    if query is None:
        raise CompatInputError("give one of text, image, image_url or embedding_input")
    if body.use_mclip and body.text:
        raise CompatInputError(
            "use_mclip: clipserve has no multilingual text encoder; send use_mclip false",
            param="use_mclip",
        )
    k = body.num_result_ids or body.num_images
    if k > MAX_RESULT_IDS:
        raise CompatInputError(
            f"num_result_ids (default num_images): at most {MAX_RESULT_IDS} candidates per "
            f"search, got {k}",
            param="num_result_ids",
        )
    index = await _index(state, body.indice_name)
    vector = await _query_vector(*query, index, engine, state)
    hits = (await asyncio.to_thread(index.search, vector, k, modality=body.modality))[0]
    if body.deduplicate:
        hits = _without_duplicates(hits)
    results = [
        {
            **(result_metadata(hit.metadata) if rank < body.num_images else {}),
            "id": hit.id,
            "similarity": hit.score,
        }
        for rank, hit in enumerate(hits)
    ]
    return JSONResponse(results)


@router.post(
    "/metadata",
    summary="clip-retrieval: metadata of results",
    openapi_extra=_json_body(
        MetadataRequest,
        {"ids": {"value": {"ids": ["red-circle-9", "blue-square-2"], "indice_name": "shapes"}}},
    ),
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": [
                        {"id": "red-circle-9", "metadata": {"url": f"{_SHAPES}/red-circle-9.png"}}
                    ]
                }
            }
        },
        **_ERROR_EXAMPLES,
    },
)
async def metadata(request: Request, state: StateDep) -> JSONResponse:
    """Each id's metadata columns, in the order asked (``null`` for an id not in the index)."""
    body = validate(MetadataRequest, await read_json(request), "body")
    if not body.ids:
        return JSONResponse([])
    check_count(len(body.ids), "ids", state)
    index = await _index(state, body.indice_name)
    items = await asyncio.to_thread(lambda: [index.get(str(item_id)) for item_id in body.ids])
    return JSONResponse(
        [
            {"id": item_id, "metadata": None if item is None else result_metadata(item.metadata)}
            for item_id, item in zip(body.ids, items, strict=True)
        ]
    )


def result_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """An item's metadata as clip-retrieval's columns: ``source`` becomes ``url`` (http(s))
    or ``image_path`` (a path, or anything else) unless the item has that column already."""
    columns = {key: value for key, value in metadata.items() if key != "source"}
    source = metadata.get("source")
    if isinstance(source, str) and source:
        column = "url" if source[:8].lower().startswith(("http://", "https://")) else "image_path"
        columns.setdefault(column, source)
    return columns


# ----------------------------------------------------------------------------- helpers
async def _index(state: ServerState, name: str | None) -> Index:
    if name is None:  # clip-retrieval searches its first index when indice_name is null
        names = await asyncio.to_thread(state.index_catalog().names)
        if not names:
            raise IndexNotFoundError("there is no index to search: create one first")
        name = names[0]
    return await open_index(state, name)


async def _query_vector(
    field: str, query: InputItem | list[float], index: Index, engine: Engine, state: ServerState
) -> np.ndarray:
    if isinstance(query, list):
        return unit_vector(query, index, field)
    return await embed_query(query, field, index, engine, state)


def _without_duplicates(hits: list[Hit]) -> list[Hit]:
    # clip-retrieval drops near-duplicate embeddings (cosine ≥ 0.94) among the candidates;
    # clipserve's search returns no vectors, so it drops exact duplicates: images with the
    # same sha256 (the same bytes), captions with the same text (the same embedding).
    seen: set[tuple[str, Any]] = set()
    kept = []
    for hit in hits:
        field = "sha256" if hit.modality == "image" else "caption"
        value = hit.metadata.get(field)
        if isinstance(value, str) and value:
            if (field, value) in seen:
                continue
            seen.add((field, value))
        kept.append(hit)
    return kept
