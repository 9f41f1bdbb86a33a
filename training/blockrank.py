"""Train BlockRank (encoder variant, `app.inference.blockrank`) on a BEIR train split.

Each step is one prompt: a training query, one positive (drawn by grade) and `list_size - 1` hard
negatives from the first-stage retriever, shuffled; the loss is the auxiliary multi-positive InfoNCE
on BlockRank's attention-derived relevance at layer l* (τ = 0.05). Only layers up to l* get
gradients: the forward pass stops there. (The causal-LM variant adds a next-token loss on the
answer with weight λ on the auxiliary term; an encoder has no answer to decode.)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from app.inference.blockrank import BlockRankEncoder, blockrank_loss, dropout_off
from training.data.beir import RetrievalDataset


def rerank_with_blockrank(
    model: BlockRankEncoder,
    tokenizer,
    dataset: RetrievalDataset,
    first_stage: dict[str, list[str]],  # type: ignore[no-untyped-def]
) -> dict[str, dict[str, float]]:
    model.eval()
    run = {}
    with torch.no_grad():
        for query_id, candidates in first_stage.items():
            inputs = model.encode_prompt(
                tokenizer, dataset.queries[query_id], [dataset.doc_text(d) for d in candidates]
            )
            scores = model.forward_blocks(inputs).numpy()
            run[query_id] = {d: float(s) for d, s in zip(candidates, scores, strict=True)}
    return run


def train_blockrank(
    model: BlockRankEncoder,
    tokenizer,  # type: ignore[no-untyped-def]
    train_set: RetrievalDataset,
    candidates: dict[str, list[str]],  # first-stage ranking per training query (hard negatives)
    steps: int,
    list_size: int = 16,
    learning_rate: float = 3e-5,
    temperature: float = 0.05,
    seed: int = 0,
    log_path: Path | None = None,
) -> list[dict[str, float]]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dropout_off(model)  # one prompt per step: dropout noise would dominate the small batch
    model.train()
    parameters = [p for i, layer in enumerate(model.bert.encoder.layer) if i <= model.layer for p in layer.parameters()]
    parameters += list(model.bert.embeddings.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    queries = [q for q in train_set.queries if train_set.qrels.get(q) and candidates.get(q)]
    history = []
    started = time.perf_counter()
    handle = log_path.open("w") if log_path else None
    try:
        for step in range(steps):
            if step % len(queries) == 0:
                rng.shuffle(queries)  # a new pass over the training queries
            query_id = queries[step % len(queries)]
            qrels = train_set.qrels[query_id]
            positive = rng.choices(list(qrels), weights=list(qrels.values()))[0]
            negatives = [d for d in candidates[query_id] if d not in qrels][: 3 * list_size]
            chosen = [positive, *rng.sample(negatives, min(len(negatives), list_size - 1))]
            rng.shuffle(chosen)
            inputs = model.encode_prompt(
                tokenizer, train_set.queries[query_id], [train_set.doc_text(d) for d in chosen]
            )
            scores = model.forward_blocks(inputs)
            loss = blockrank_loss(scores, [chosen.index(positive)], temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {
                "step": step + 1,
                "loss": round(float(loss), 5),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
            history.append(record)
            if handle:
                handle.write(json.dumps(record) + "\n")
    finally:
        if handle:
            handle.close()
    model.eval()
    return history


def first_stage_candidates(
    doc_ids: list[str], doc_vectors: np.ndarray, query_ids: list[str], query_vectors: np.ndarray, k: int
) -> dict[str, list[str]]:
    top = np.argsort(-(query_vectors @ doc_vectors.T), axis=1)[:, :k]
    return {q: [doc_ids[j] for j in top[i]] for i, q in enumerate(query_ids)}
