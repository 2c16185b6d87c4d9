"""``POST /v1/rank``: score candidates against a query, text or image in either role."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from clipserve.server.auth import RequireKey
from clipserve.server.formats import rank_response
from clipserve.server.inputs import parse_rank
from clipserve.server.schemas import (
    ERROR_RESPONSES,
    RANK_EXAMPLES,
    RANK_RESPONSE_EXAMPLE,
    RankRequest,
    RankResponse,
    json_example,
)
from clipserve.server.state import EngineDep, StateDep

router = APIRouter(prefix="/v1", tags=["rank"], dependencies=[RequireKey])


@router.post(
    "/rank",
    summary="Rank candidates against a query",
    responses={**json_example(RANK_RESPONSE_EXAMPLE), **ERROR_RESPONSES},
)
async def rank(
    body: Annotated[RankRequest, Body(openapi_examples=RANK_EXAMPLES)],
    engine: EngineDep,
    state: StateDep,
) -> RankResponse:
    """Score every candidate against the query, best first.

    ``probability`` is the softmax of ``logit_scale · cosine`` over the candidates (as CLIP
    computes its logits); ``cosine`` is the raw similarity.
    """
    job = await parse_rank(body, state)
    result = await engine.arank(job.query, job.candidates, model=job.model)
    return rank_response(result, job.model)
