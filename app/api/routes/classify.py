"""POST /v1/classify: zero-shot image classification by candidate labels (clip models)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.json_route import FastJSONRoute
from app.schemas.classify import ClassifyRequest, ClassifyResponse, ImageLabels, LabelScore
from app.services.classify import classify

router = APIRouter(tags=["classify"], route_class=FastJSONRoute)

ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    400: {"description": "the model is not a clip model"},
    404: {"description": "unknown model, or no clip model served"},
    413: {"description": "too many images or labels, an image too large, or a prompted label over max tokens"},
    422: {"description": "invalid request (no labels, an empty label, a prompt without {label}) or a bad image"},
    429: {"description": "queue full; retry after Retry-After seconds"},
}


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES)
async def create_classification(body: ClassifyRequest, services: ServicesDep) -> ClassifyResponse:
    result = await classify(
        services.registry, services.settings, services.fetcher, body.model, body.images, body.labels, body.prompt
    )
    data = []
    for row, (scores, probabilities) in enumerate(zip(result.scores, result.probabilities, strict=True)):
        order = np.argsort(-probabilities, kind="stable")
        data.append(
            ImageLabels(
                index=row,
                labels=[
                    LabelScore(
                        label=body.labels[i], index=int(i), score=float(scores[i]), probability=float(probabilities[i])
                    )
                    for i in order
                ],
            )
        )
    return ClassifyResponse(
        model=result.model.name, data=data, usage={"prompt_tokens": result.tokens, "images": len(body.images)}
    )
