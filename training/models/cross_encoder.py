"""The cross-encoder tower: a transformers sequence classifier with one logit, its loader, and pair
scoring (training, mining's rescoring, evaluation). Serving runs the exported ONNX graph
(`app.inference.cross_encoder`)."""

from __future__ import annotations

import numpy as np
import torch

from training.config import MiningConfig
from training.data.beir import RetrievalDataset
from training.mine import PairScorer
from training.sources import resolve_source


def load_classifier(source: str, max_length: int):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_source(source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, attn_implementation="eager")
    tokenizer.model_max_length = max_length
    return model, tokenizer


def score_pairs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(n,) relevance logits, eval mode, no grad."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            features = tokenizer(
                [q for q, _ in chunk],
                [d for _, d in chunk],
                padding=True,
                truncation="only_second",
                return_tensors="pt",
            )
            out.append(model(**features).logits[:, 0].float().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def pair_scorer(source: str, max_length: int = 256) -> PairScorer:
    """A cross-encoder checkpoint as a PairScorer (e.g. for mining's `rescorer`)."""
    model, tokenizer = load_classifier(source, max_length)
    tokenizer.model_max_length = min(max_length, int(model.config.max_position_embeddings))
    return lambda pairs: score_pairs(model, tokenizer, pairs)


def mining_rescorer(config: MiningConfig) -> PairScorer | None:
    """The cross-encoder a mining config asks to rescore its window with (`rescore_model`), if any."""
    return pair_scorer(config.rescore_model) if config.rescore_model else None


def rerank_run(
    model,  # type: ignore[no-untyped-def]
    tokenizer,  # type: ignore[no-untyped-def]
    dataset: RetrievalDataset,
    first_stage: dict[str, list[str]],
) -> dict[str, dict[str, float]]:
    """Rescore each query's first-stage candidates with the cross-encoder."""
    run = {}
    for query_id, candidates in first_stage.items():
        scores = score_pairs(model, tokenizer, [(dataset.queries[query_id], dataset.doc_text(d)) for d in candidates])
        run[query_id] = {d: float(s) for d, s in zip(candidates, scores, strict=True)}
    return run
