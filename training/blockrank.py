"""Train BlockRank (`app.inference.blockrank`, either backbone) on a BEIR train split.

Each step is one prompt: a training query, one positive (drawn by grade) and `list_size - 1` hard
negatives from the first-stage retriever, shuffled; the loss is the auxiliary multi-positive InfoNCE
on BlockRank's attention-derived relevance at layer l* (τ = 0.05). Without the answer loss only
layers up to l* get gradients: the forward pass stops there. The causal LM can add the official
recipe's next-token loss on the answer (the positive's ID) with weight λ on the auxiliary term
(loss = answer + λ · InfoNCE); every layer then runs. An encoder has no answer to decode.

`run_blockrank` is the whole run behind `python -m training train-blockrank`: first-stage
candidates from the bi-encoder, zero-shot evaluation, training, evaluation, export.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from app.inference.blockrank import BlockRankModel, blockrank_loss, dropout_off
from training.config import BlockRankConfig
from training.data.beir import RetrievalDataset


def rerank_with_blockrank(
    model: BlockRankModel,
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
    model: BlockRankModel,
    tokenizer,  # type: ignore[no-untyped-def]
    train_set: RetrievalDataset,
    candidates: dict[str, list[str]],  # first-stage ranking per training query (hard negatives)
    steps: int,
    list_size: int = 16,
    learning_rate: float = 3e-5,
    temperature: float = 0.05,
    seed: int = 0,
    log_path: Path | None = None,
    answer_loss: bool = False,
    aux_weight: float = 0.1,
) -> list[dict[str, float]]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    dropout_off(model)  # one prompt per step: dropout noise would dominate the small batch
    model.train()
    parameters = list(model.parameters()) if answer_loss else model.trainable_parameters()
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
            # The positive comes from the first stage's candidates when it found any: prompts then look
            # like the ones to rerank, and a judged document the retriever missed (often unlike the
            # query) against hard negatives (like it) would teach "unlike the query = relevant".
            found = {d: g for d, g in qrels.items() if d in candidates[query_id]} or qrels
            positive = rng.choices(list(found), weights=list(found.values()))[0]
            negatives = [d for d in candidates[query_id] if d not in qrels][: 3 * list_size]
            chosen = [positive, *rng.sample(negatives, min(len(negatives), list_size - 1))]
            rng.shuffle(chosen)
            inputs = model.encode_prompt(
                tokenizer, train_set.queries[query_id], [train_set.doc_text(d) for d in chosen]
            )
            target = chosen.index(positive)
            if answer_loss:
                scores, answer = model.forward_blocks(inputs, answer=model.answer_ids(tokenizer, target + 1))
                loss = answer + aux_weight * blockrank_loss(scores, [target], temperature)
            else:
                loss = blockrank_loss(model.forward_blocks(inputs), [target], temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {
                "step": step + 1,
                "loss": round(loss.item(), 5),
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


def run_blockrank(config: BlockRankConfig, show_progress: bool = True) -> dict:
    """Candidates, zero-shot eval, training, eval, run folder and (if asked) export; returns metrics."""
    from app.inference.blockrank import load_blockrank
    from training.data.beir import load_beir
    from training.eval.metrics import ir_metrics
    from training.eval.retrieval import encode
    from training.sources import load_sentence_transformer, resolve_source

    torch.manual_seed(config.seed)
    dataset = load_beir(config.data.path)
    split = config.data.query_split
    assert split is not None  # the config validates it
    train_set, eval_set = dataset.split_queries(split.seed, split.train_fraction)
    source = resolve_source(config.base_model)  # fails early, before the bi-encoder runs
    bi_encoder = load_sentence_transformer(config.first_stage_model)
    doc_ids = list(dataset.corpus)
    doc_vectors = encode(bi_encoder, [dataset.doc_text(d) for d in doc_ids])

    def candidates(split_set: RetrievalDataset, k: int) -> dict[str, list[str]]:
        ids = [q for q in split_set.queries if split_set.qrels.get(q)]
        vectors = encode(bi_encoder, [split_set.queries[q] for q in ids])
        return first_stage_candidates(doc_ids, doc_vectors, ids, vectors, k)

    eval_candidates = candidates(eval_set, config.candidates)
    train_candidates = candidates(train_set, max(config.candidates, 3 * config.list_size))
    k = config.candidates
    first_run = {q: {d: float(k - r) for r, d in enumerate(docs)} for q, docs in eval_candidates.items()}
    model, tokenizer = load_blockrank(source, config.layer, config.doc_tokens, kind=config.backbone)
    metrics: dict = {
        "name": config.name,
        "backbone": config.backbone,
        "layer": model.layer,
        "first_stage": ir_metrics(first_run, eval_set.qrels),
    }
    if config.eval_before:
        zero_shot = rerank_with_blockrank(model, tokenizer, eval_set, eval_candidates)
        metrics["zero_shot"] = ir_metrics(zero_shot, eval_set.qrels)
    run_dir = config.runs_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_blockrank(
        model,
        tokenizer,
        train_set,
        train_candidates,
        steps=config.steps,
        list_size=config.list_size,
        learning_rate=config.learning_rate,
        temperature=config.temperature,
        seed=config.seed,
        log_path=run_dir / "steps.jsonl",
        answer_loss=config.answer_loss,
        aux_weight=config.aux_weight,
    )
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    metrics["steps"] = config.steps
    metrics["trained"] = ir_metrics(rerank_with_blockrank(model, tokenizer, eval_set, eval_candidates), eval_set.qrels)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if config.export is not None:
        from training.export.blockrank import export_blockrank

        query_id, docs = next(iter(eval_candidates.items()))
        export_blockrank(
            model,
            tokenizer,
            config.export.models_dir / config.export.name,
            config.export.name,
            config.base_model,
            (eval_set.queries[query_id], [eval_set.doc_text(d) for d in docs[:8]]),
            eval_scores={f"{dataset.name}/rerank-ndcg@10": round(metrics["trained"]["ndcg@10"], 5)},
        )
    return metrics
