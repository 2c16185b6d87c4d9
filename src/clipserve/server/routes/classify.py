"""``POST /v1/classify``: zero-shot classification of images among labels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from clipserve.engine import DEFAULT_TEMPLATES
from clipserve.server.auth import RequireKey
from clipserve.server.formats import classify_response
from clipserve.server.inputs import parse_classify
from clipserve.server.schemas import (
    CLASSIFY_EXAMPLES,
    CLASSIFY_RESPONSE_EXAMPLE,
    ERROR_RESPONSES,
    ClassifyRequest,
    ClassifyResponse,
    json_example,
)
from clipserve.server.state import EngineDep, StateDep

router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[RequireKey])


@router.post(
    "/classify",
    summary="Zero-shot classify images",
    responses={**json_example(CLASSIFY_RESPONSE_EXAMPLE), **ERROR_RESPONSES},
)
async def classify(
    body: Annotated[ClassifyRequest, Body(openapi_examples=CLASSIFY_EXAMPLES)],
    engine: EngineDep,
    state: StateDep,
) -> ClassifyResponse:
    """Classify each image among ``labels``, each label phrased through every template.

    Template embeddings of a label are averaged (as in the CLIP paper); scores per image are
    sorted, most probable first.
    """
    job = await parse_classify(body, state)
    results = await engine.aclassify(
        job.images, job.labels, templates=job.templates or DEFAULT_TEMPLATES, model=job.model
    )
    return classify_response(results, job.model)
