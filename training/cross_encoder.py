"""Cross-encoder reranker: all-MiniLM-L6-v2's transformer + a 1-logit classification head, trained
on graded (query, document) pairs with BCE or a listwise softmax, exported to ONNX (kind
`cross-encoder`) for the service's `/v1/rerank`.

No pretrained cross-encoder ships in any package here, so the head starts random; training data is
the train half of a BEIR dataset: judged positives (grade -> target) and negatives mined by the base
bi-encoder (see `training.mine`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training.config import CrossEncoderConfig
from training.data.beir import RetrievalDataset, load_beir
from training.sources import load_sentence_transformer, resolve_source

log = logging.getLogger(__name__)


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


def _groups(
    train_set: RetrievalDataset, negatives: dict[str, list[str]], group_size: int, rng: random.Random
) -> list[tuple[str, list[str], list[float]]]:
    """(query, [positive, negatives...], targets) per judged positive. Half the negatives are mined
    (close to the query for the bi-encoder), half drawn from the whole corpus: with mined negatives
    only, the judged positives are on average *less* similar to the query than the negatives, and
    the model learns "similar to the query = not relevant" (it then ranks the first stage's top
    candidates below random)."""
    groups = []
    top_grade = max(g for docs in train_set.qrels.values() for g in docs.values())
    corpus = list(train_set.corpus)
    for query_id, docs in train_set.qrels.items():
        pool = [d for d in negatives.get(query_id, []) if d not in docs]
        pool_set = set(pool)
        for doc_id, grade in docs.items():
            wanted = group_size - 1
            picks = rng.sample(pool, min(len(pool), (wanted + 1) // 2))
            while len(picks) < wanted:
                candidate = rng.choice(corpus)
                if candidate not in docs and candidate not in picks and candidate not in pool_set:
                    picks.append(candidate)
            groups.append((query_id, [doc_id, *picks], [grade / top_grade] + [0.0] * len(picks)))
    rng.shuffle(groups)
    return groups


def train_cross_encoder(config: CrossEncoderConfig, show_progress: bool = True) -> dict:
    """Train, evaluate reranking of the bi-encoder's top-k on the held-out queries, save, export."""
    from training.eval.metrics import ir_metrics, ranked_run, top_k_ids
    from training.eval.retrieval import encode
    from training.mine import mine_negatives

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    dataset = load_beir(config.data.path)
    train_set, eval_set = dataset.split_queries(config.data.query_split.seed, config.data.query_split.train_fraction)
    bi_encoder = load_sentence_transformer(config.first_stage_model)
    negatives = mine_negatives(bi_encoder, train_set, config.mining, config.seed)

    # First stage for evaluation: the bi-encoder's top-k on the held-out queries.
    doc_ids = list(dataset.corpus)
    doc_vectors = encode(bi_encoder, [dataset.doc_text(d) for d in doc_ids])
    eval_queries = [q for q in eval_set.queries if eval_set.qrels.get(q)]
    query_vectors = encode(bi_encoder, [eval_set.queries[q] for q in eval_queries])
    first_stage = top_k_ids(eval_queries, query_vectors, doc_ids, doc_vectors, config.rerank_candidates)
    first_run = ranked_run(first_stage)

    model, tokenizer = load_classifier(config.base_model, config.max_seq_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    groups = _groups(train_set, negatives, config.group_size, rng)
    steps = min(config.max_steps or len(groups), len(groups) * config.epochs // config.batch_groups)
    run_dir = config.runs_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    started = time.perf_counter()
    with (run_dir / "steps.jsonl").open("w") as step_log:
        for step in tqdm(range(steps), disable=not show_progress, desc=f"train {config.name}"):
            batch = [groups[(step * config.batch_groups + i) % len(groups)] for i in range(config.batch_groups)]
            queries = [train_set.queries[q] for q, docs, _ in batch for _ in docs]
            texts = [train_set.doc_text(d) for _, docs, _ in batch for d in docs]
            features = tokenizer(queries, texts, padding=True, truncation="only_second", return_tensors="pt")
            logits = model(**features).logits[:, 0]  # (groups * size,)
            targets = torch.tensor([t for _, _, ts in batch for t in ts])
            if config.loss == "bce":
                loss = F.binary_cross_entropy_with_logits(logits, targets)
            else:  # listwise: softmax over each group, positive (graded) first
                size = len(batch[0][1])
                if any(len(docs) != size for _, docs, _ in batch):
                    loss = F.binary_cross_entropy_with_logits(logits, targets)
                else:
                    grouped = logits.view(len(batch), size)  # (groups, size)
                    target = targets.view(len(batch), size)
                    target = target / target.sum(1, keepdim=True)  # the graded positive carries the mass
                    loss = -(target * F.log_softmax(grouped, 1)).sum(1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_log.write(json.dumps({"step": step + 1, "loss": round(loss.item(), 6)}) + "\n")
            step_log.flush()
    train_seconds = time.perf_counter() - started
    reranked = rerank_run(model, tokenizer, eval_set, first_stage)
    metrics = {
        "name": config.name,
        "loss": config.loss,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "first_stage": ir_metrics(first_run, eval_set.qrels),
        "reranked": ir_metrics(reranked, eval_set.qrels),
    }
    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "run.json").write_text(json.dumps(reranked))  # per-query scores of the held-out candidates
    if config.export is not None:
        from training.export.cross_encoder import export_cross_encoder

        pairs = [
            (eval_set.queries[q], eval_set.doc_text(d)) for q, docs in list(first_stage.items())[:20] for d in docs
        ]
        export_cross_encoder(
            run_dir / "model",
            config.export.models_dir / config.export.name,
            config.export.name,
            pairs,
            eval_scores={f"{dataset.name}/rerank-ndcg@10": round(metrics["reranked"]["ndcg@10"], 5)},
        )
    return metrics


def load_run_model(run_dir: Path):  # type: ignore[no-untyped-def]
    return load_classifier(str(run_dir / "model"), 512)
