"""GET /v1/models: what is served, on which backend/precision, and how close it is to the reference."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import RegistryDep, resolve_text_encoder
from app.inference.in_context import InContextReranker
from app.inference.registry import Reranker, TextEncoder

router = APIRouter(tags=["models"])


def describe(encoder: TextEncoder | Reranker | InContextReranker) -> dict[str, Any]:
    m, v = encoder.manifest, encoder.variant
    if v is None:  # blockrank: PyTorch weights, no ONNX variant
        return {
            "id": m.name,
            "object": "model",
            "owned_by": "tessera",
            "kind": m.kind.value,
            "max_tokens": m.max_tokens,
            "backend": "torch",
            "precision": "fp32",
            "blockrank": m.blockrank.model_dump(mode="json") if m.blockrank else None,
            "eval_scores": m.eval_scores,
            "source": m.source.checkpoint,
        }
    return {
        "id": m.name,
        "object": "model",
        "owned_by": "tessera",
        "kind": m.kind.value,
        "dim": m.dim,
        "max_tokens": m.max_tokens,
        "pooling": m.pooling.value,
        "normalize": m.normalize,
        "similarity": m.similarity.value,
        "backend": v.backend.value,
        "precision": v.precision.value,
        "parity": {
            "min_cosine": v.min_cosine,
            "mean_cosine": v.mean_cosine,
            "n_sentences": v.n_sentences,
            "reference": v.reference,
        },
        "variants": [p.model_dump(mode="json") for p in m.parity],
        "eval_scores": m.eval_scores,
        "source": m.source.checkpoint,
    }


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [describe(m) for m in registry.served],
        "default": registry.settings.default_model,
    }


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, registry: RegistryDep) -> dict[str, Any]:
    return describe(resolve_text_encoder(registry, model_id))
