"""Cross-encoder reranker: all-MiniLM-L6-v2's transformer + a 1-logit classification head, trained
on graded (query, document) pairs with BCE or a listwise softmax, exported to ONNX (kind
`cross-encoder`) for the service's `/v1/rerank`.

No pretrained cross-encoder ships in any package here, so the head starts random; training data is
the train half of a BEIR dataset: judged positives (grade -> target) and negatives mined by the base
bi-encoder (see `training.mine`).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from training.config import CrossEncoderConfig
from training.data.beir import RetrievalDataset, load_beir
from training.eval.first_stage import CorpusIndex, judged_queries
from training.eval.metrics import ir_metrics, ranked_run
from training.losses.listwise_distillation import ListwiseDistillationLoss
from training.losses.registry import build_cross_encoder_loss
from training.mine import mine_negatives
from training.models.cross_encoder import load_classifier, mining_rescorer, rerank_run
from training.rerank_lists import QueryMixture, draw_list
from training.run import RunFolder, seed_everything, step_history
from training.sources import load_sentence_transformer

log = logging.getLogger(__name__)


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
    rng = seed_everything(config.seed)
    dataset = load_beir(config.data.path)
    train_set, eval_set = dataset.split_queries(config.data.query_split.seed, config.data.query_split.train_fraction)
    bi_encoder = load_sentence_transformer(config.first_stage_model)
    corpus = CorpusIndex.build(bi_encoder, dataset)  # encoded once: for mining and the first stage
    negatives = mine_negatives(
        bi_encoder, train_set, config.mining, config.seed, mining_rescorer(config.mining), corpus=corpus
    )

    # First stage for evaluation: the bi-encoder's top-k on the held-out queries.
    eval_queries = judged_queries(eval_set)
    first_stage = corpus.top_k(eval_queries, [eval_set.queries[q] for q in eval_queries], config.rerank_candidates)

    model, tokenizer = load_classifier(config.base_model, config.max_seq_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    loss_fn = build_cross_encoder_loss(config.loss)
    groups = _groups(train_set, negatives, config.group_size, rng)
    steps = min(config.max_steps or len(groups), len(groups) * config.epochs // config.batch_groups)
    run = RunFolder(config.runs_dir, config.name)
    run.write_config(config)
    model.train()
    started = time.perf_counter()
    with run.step_log() as step_log:
        for step in tqdm(range(steps), disable=not show_progress, desc=f"train {config.name}"):
            batch = [groups[(step * config.batch_groups + i) % len(groups)] for i in range(config.batch_groups)]
            queries = [train_set.queries[q] for q, docs, _ in batch for _ in docs]
            texts = [train_set.doc_text(d) for _, docs, _ in batch for d in docs]
            features = tokenizer(queries, texts, padding=True, truncation="only_second", return_tensors="pt")
            logits = model(**features).logits[:, 0].view(len(batch), -1)  # (groups, size): every group is full
            targets = torch.tensor([ts for _, _, ts in batch])  # (groups, size), the graded positive first
            loss = loss_fn(logits, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_log.write({"step": step + 1, "loss": round(loss.item(), 6)})
    train_seconds = time.perf_counter() - started
    reranked = rerank_run(model, tokenizer, eval_set, first_stage)
    metrics = {
        "name": config.name,
        "loss": config.loss,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "first_stage": ir_metrics(ranked_run(first_stage), eval_set.qrels),
        "reranked": ir_metrics(reranked, eval_set.qrels),
    }
    model.save_pretrained(run.path / "model")
    tokenizer.save_pretrained(run.path / "model")
    run.write_metrics(metrics)
    run.write_json("run.json", reranked)  # per-query scores of the held-out candidates
    if config.export is not None:
        from training.export.cross_encoder import export_cross_encoder

        pairs = [
            (eval_set.queries[q], eval_set.doc_text(d)) for q, docs in list(first_stage.items())[:20] for d in docs
        ]
        export_cross_encoder(
            run.path / "model",
            config.export.models_dir / config.export.name,
            config.export.name,
            pairs,
            eval_scores={f"{dataset.name}/rerank-ndcg@10": round(metrics["reranked"]["ndcg@10"], 5)},
        )
    return metrics


def train_on_lists(
    model,  # type: ignore[no-untyped-def]
    tokenizer,  # type: ignore[no-untyped-def]
    mixture: QueryMixture,
    doc_text: dict[str, str],
    steps: int,
    list_size: int = 8,
    lists_per_step: int = 4,
    learning_rate: float = 3e-5,
    distill_weight: float = 1.0,
    distill_temperature: float = 0.02,
    seed: int = 0,
    log_path: Path | None = None,
) -> list[dict[str, float]]:
    """Train the cross-encoder on lists drawn from `mixture` (as BlockRank trains): a judged list's
    loss is the softmax cross-entropy of its logits with the drawn positive as the answer; a list
    whose query carries teacher scores adds `distill_weight` x the listwise KL to the teachers'
    distribution (an unjudged query has that term only). Returns the per-step log."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    distill = ListwiseDistillationLoss(distill_temperature)
    with step_history(log_path) as history:
        for step in range(steps):
            lists = []
            for _ in range(lists_per_step):
                _, query = mixture.next()
                chosen, target = draw_list(query, list_size, rng)
                lists.append((query, chosen, target))
            features = tokenizer(
                [query.text for query, chosen, _ in lists for _ in chosen],
                [doc_text[d] for _, chosen, _ in lists for d in chosen],
                padding=True,
                truncation="only_second",
                return_tensors="pt",
            )
            logits = model(**features).logits[:, 0]  # (pairs,): every list's documents in turn
            losses = []
            for (query, chosen, target), scores in zip(lists, logits.split([len(c) for _, c, _ in lists]), strict=True):
                loss = scores.new_zeros(())  # scores: (N,) this list's logits
                if target is not None:
                    loss = loss + torch.nn.functional.cross_entropy(scores[None], torch.tensor([target]))
                if query.teacher is not None and distill_weight > 0:
                    teacher = torch.tensor([query.teacher[d] for d in chosen], dtype=scores.dtype)  # (N,)
                    loss = loss + distill_weight * distill(scores, teacher)
                losses.append(loss)
            loss = torch.stack(losses).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.add(step=step + 1, loss=round(loss.item(), 5))
    model.eval()
    return history.records
