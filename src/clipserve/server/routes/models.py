"""``GET /v1/models``: the served models, default first."""

from __future__ import annotations

from fastapi import APIRouter

from clipserve.server.auth import RequireKey
from clipserve.server.schemas import (
    ERROR_RESPONSES,
    MODELS_RESPONSE_EXAMPLE,
    ModelInfo,
    ModelsResponse,
    json_example,
)
from clipserve.server.state import EngineDep

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[RequireKey])


@router.get(
    "/models",
    summary="List the served models",
    responses={**json_example(MODELS_RESPONSE_EXAMPLE), **ERROR_RESPONSES},
)
async def list_models(engine: EngineDep) -> ModelsResponse:
    """Name, embedding dimension, image size, precision and logit scale of each model."""
    infos = []
    for index, name in enumerate(engine.model_names):
        clip = engine.model(name)
        infos.append(
            ModelInfo(
                name=clip.name,
                dim=clip.embed_dim,
                image_size=clip.preprocess.image_size,
                context_length=clip.tokenizer.context_length,
                precision=clip.precision,
                logit_scale=clip.logit_scale,
                default=index == 0,
            )
        )
    return ModelsResponse(data=infos)
