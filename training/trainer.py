"""Contrastive fine-tuning of a sentence-transformers text encoder, from a `TrainConfig`.

One run = one folder `<runs_dir>/<name>/`: `config.yaml` (resolved), `steps.jsonl` (loss, learning
rate and rate per step), `metrics.json` (eval before/after), `model/` (sentence-transformers
format) and, when the config asks, an exported model folder in `models/`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from training.config import TrainConfig
from training.data.beir import RetrievalDataset
from training.data.examples import load_retrieval, load_sts
from training.data.sts import StsPair
from training.gradcache import gradcache_backward
from training.losses import (
    CoSENTLoss,
    CWCLLoss,
    DecoupledContrastiveLoss,
    InfoNCELoss,
    ListwiseSoftmaxLoss,
    MannWhitneyLoss,
    MatryoshkaLoss,
)
from training.sources import load_sentence_transformer

log = logging.getLogger(__name__)
PAIR_LOSSES = {"infonce", "dcl", "mw", "cwcl"}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    export_dir: Path | None = None
    steps: list[dict[str, float]] = field(default_factory=list)


def build_loss(config: TrainConfig) -> nn.Module:
    spec = config.loss
    inner: nn.Module
    if spec.name == "infonce":
        inner = InfoNCELoss(spec.temperature, spec.learnable_temperature, spec.symmetric)
    elif spec.name == "dcl":
        inner = DecoupledContrastiveLoss(spec.temperature, spec.learnable_temperature)
    elif spec.name == "mw":
        inner = MannWhitneyLoss(spec.temperature, spec.learnable_temperature)
    elif spec.name == "cwcl":
        inner = CWCLLoss(spec.temperature, spec.learnable_temperature, spec.weight_temperature)
    elif spec.name == "listwise":
        inner = ListwiseSoftmaxLoss(spec.temperature, spec.target_temperature, spec.learnable_temperature)
    else:
        inner = CoSENTLoss()
    return MatryoshkaLoss(inner, spec.matryoshka_dims) if spec.matryoshka_dims else inner


def make_embed(model) -> Callable[[list[str]], torch.Tensor]:  # type: ignore[no-untyped-def]
    def embed(texts: list[str]) -> torch.Tensor:
        features = model.tokenize(texts)
        return model(features)["sentence_embedding"]  # (n, dim)

    return embed


class BatchSampler:
    """Every (query, positive) pair once per epoch (multiple positives per query), shuffled, in
    batches where no query and no document appears twice: a repeated query's other positive, or a
    shared document, would be an in-batch false negative. Conflicting pairs wait for a later batch."""

    def __init__(self, dataset: RetrievalDataset, batch_size: int, seed: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.query_ids = sorted(q for q in dataset.queries if dataset.qrels.get(q))
        self.pairs = [(q, d) for q in self.query_ids for d in sorted(dataset.qrels[q])]

    def epoch(self) -> Iterator[list[tuple[str, str]]]:
        waiting = self.pairs[:]
        self.rng.shuffle(waiting)
        while len(waiting) > 1:
            batch: list[tuple[str, str]] = []
            queries: set[str] = set()
            docs: set[str] = set()
            later: list[tuple[str, str]] = []
            for query_id, doc in waiting:
                if len(batch) < self.batch_size and query_id not in queries and doc not in docs:
                    batch.append((query_id, doc))
                    queries.add(query_id)
                    docs.add(doc)
                else:
                    later.append((query_id, doc))
            if len(batch) < 2:
                return
            yield batch
            waiting = later

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.pairs) / self.batch_size))


def _pair_groups(
    batch: list[tuple[str, str]],
    dataset: RetrievalDataset,
    negatives: dict[str, list[str]],
    count: int,
    rng: random.Random,
) -> list[list[str]]:
    queries = [dataset.queries[q] for q, _ in batch]
    documents = [dataset.doc_text(d) for _, d in batch]
    if count:
        pool = [d for _, d in batch]
        for query_id, _ in batch:  # query-major: query i's negatives are rows b + i*count ...
            mined = negatives.get(query_id) or []
            picks = rng.sample(mined, min(count, len(mined)))
            while len(picks) < count:  # too few mined: another query's positive (still a negative)
                candidate = rng.choice(pool)
                if candidate not in dataset.qrels[query_id]:
                    picks.append(candidate)
            documents += [dataset.doc_text(d) for d in picks]
    return [queries, documents]


def _list_groups(
    batch: list[tuple[str, str]],
    dataset: RetrievalDataset,
    negatives: dict[str, list[str]],
    size: int,
    rng: random.Random,
) -> tuple[list[list[str]], torch.Tensor]:
    """Per query a list of `size` documents (up to half its positives, then mined negatives); the
    grades cover every query against every document of the batch, (b, b * size): other queries'
    lists are in-batch negatives unless judged for this query; padding and repeats are -1."""
    queries: list[str] = []
    columns: list[str | None] = []  # doc id per document row; None = padding
    for query_id, _ in batch:
        positives = dataset.qrels[query_id]
        chosen: list[str | None] = list(rng.sample(list(positives), min(len(positives), size // 2)))
        mined = [d for d in negatives.get(query_id, []) if d not in positives]
        chosen += rng.sample(mined, min(len(mined), size - len(chosen)))
        chosen += [None] * (size - len(chosen))
        queries.append(dataset.queries[query_id])
        columns += chosen
    grades = torch.full((len(batch), len(columns)), -1, dtype=torch.long)  # (b, n)
    for row, (query_id, _) in enumerate(batch):
        seen: set[str] = set()
        for col, doc_id in enumerate(columns):
            if doc_id is not None and doc_id not in seen:
                seen.add(doc_id)
                grades[row, col] = dataset.qrels[query_id].get(doc_id, 0)
    first = columns[0]
    documents = [dataset.doc_text(d if d is not None else first) for d in columns]  # type: ignore[arg-type]
    return [queries, documents], grades


def _sts_batches(pairs: list[StsPair], batch_size: int, rng: random.Random) -> Iterator[list[StsPair]]:
    order = pairs[:]
    rng.shuffle(order)
    for start in range(0, len(order) - 1, batch_size):
        yield order[start : start + batch_size]


def _with_scores(loss: nn.Module, labels: torch.Tensor, *embeddings: torch.Tensor) -> torch.Tensor:
    """Bind a batch's labels (STS scores, graded relevance) to a loss over embeddings."""
    return loss(*embeddings, labels)


def evaluate(model, eval_set: RetrievalDataset | None, sts_path: Path | None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from training.eval.retrieval import evaluate_retrieval, evaluate_sts

    scores: dict[str, float] = {}
    if eval_set is not None:
        scores.update(evaluate_retrieval(model, eval_set))
    if sts_path is not None and sts_path.is_file():
        scores["sts_spearman"] = evaluate_sts(model, sts_path)
    return scores


def train(config: TrainConfig, show_progress: bool = True) -> RunResult:
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    # Data first: a bad dataset stops the run before any model is loaded.
    train_set: RetrievalDataset | None = None
    eval_set: RetrievalDataset | None = None
    negatives: dict[str, list[str]] = {}
    sts_pairs: list[StsPair] = []
    if config.data.format == "sts":
        sts_pairs = load_sts(config.data.path)
    else:
        dataset, negatives = load_retrieval(config.data.format, config.data.path, config.data.qrels_split)
        if config.data.format == "beir" and config.data.query_split is not None:
            split = config.data.query_split
            train_set, eval_set = dataset.split_queries(split.seed, split.train_fraction)
        else:
            train_set = dataset

    run_dir = config.runs_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    model = load_sentence_transformer(config.base_model)
    model.max_seq_length = config.max_seq_length
    loss_module = build_loss(config)
    started = time.perf_counter()
    before = evaluate(model, eval_set, config.eval_sts) if config.eval_before else {}
    log.info("before: %s", before)

    if train_set is not None and config.mining.enabled:
        from training.mine import mine_negatives

        mined = mine_negatives(model, train_set, config.mining, config.seed)
        for query_id, docs in mined.items():
            negatives[query_id] = negatives.get(query_id, []) + [
                d for d in docs if d not in negatives.get(query_id, [])
            ]

    sampler = BatchSampler(train_set, config.batch_size, config.seed) if train_set is not None else None
    per_epoch = sampler.steps_per_epoch() if sampler else max(1, math.ceil(len(sts_pairs) / config.batch_size))
    total_steps = min(config.max_steps or per_epoch * config.epochs, per_epoch * config.epochs)
    parameters = list(model.parameters()) + list(loss_module.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = int(total_steps * config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / max(1, warmup)
            if step < warmup
            else max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        ),
    )
    embed = make_embed(model)
    # CWCL's intra-modal similarities come from a frozen model (the paper's frozen tower): weights from
    # the model being trained feed back (documents drift together, weights rise, scores flatten).
    reference_embed = None
    if config.loss.name == "cwcl":
        frozen = copy.deepcopy(model).eval()
        frozen.requires_grad_(False)
        reference_embed = make_embed(frozen)
    model.train()

    def batches() -> Iterator[Any]:
        while True:
            yield from (sampler.epoch() if sampler else _sts_batches(sts_pairs, config.batch_size, rng))

    steps: list[dict[str, float]] = []
    train_start = time.perf_counter()
    with (run_dir / "steps.jsonl").open("w") as step_log:
        progress = tqdm(total=total_steps, disable=not show_progress, desc=f"train {config.name}")
        for step, batch in zip(range(total_steps), batches(), strict=False):
            t0 = time.perf_counter()
            if config.loss.name == "cosent":
                groups = [[p.sentence1 for p in batch], [p.sentence2 for p in batch]]
                gold = torch.tensor([p.score for p in batch])
                loss_fn: Callable[..., torch.Tensor] = functools.partial(_with_scores, loss_module, gold)
            elif config.loss.name == "listwise":
                assert train_set is not None
                groups, grades = _list_groups(batch, train_set, negatives, config.loss.list_size, rng)
                loss_fn = functools.partial(_with_scores, loss_module, grades)
            else:
                assert train_set is not None
                groups = _pair_groups(batch, train_set, negatives, config.hard_negatives, rng)
                loss_fn = loss_module
                if reference_embed is not None:  # CWCL: soft targets from the frozen base model
                    with torch.no_grad():
                        reference = reference_embed(groups[1][: len(batch)])  # (b, dim) positives
                    loss_fn = functools.partial(loss_module, reference=reference)
            if config.mini_batch_size:
                loss = gradcache_backward(embed, groups, loss_fn, config.mini_batch_size)
            else:
                loss = loss_fn(*[embed(g) for g in groups])
                loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            texts = sum(len(g) for g in groups)
            record = {
                "step": step + 1,
                "loss": round(loss.item(), 6),
                "lr": scheduler.get_last_lr()[0],
                "texts_per_s": round(texts / (time.perf_counter() - t0), 1),
                "elapsed_s": round(time.perf_counter() - train_start, 2),
            }
            steps.append(record)
            step_log.write(json.dumps(record) + "\n")
            step_log.flush()
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", rate=f"{record['texts_per_s']:.0f}/s")
        progress.close()
    train_seconds = time.perf_counter() - train_start

    model.eval()
    model.save(str(run_dir / "model"))
    after = evaluate(model, eval_set, config.eval_sts)
    log.info("after: %s", after)
    metrics = {
        "name": config.name,
        "loss": config.loss.name,
        "seed": config.seed,
        "steps": total_steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "train_queries": len(sampler.query_ids) if sampler else 0,
        "train_examples": len(sampler.pairs) if sampler else len(sts_pairs),
        "eval_queries": len([q for q in eval_set.queries if eval_set.qrels.get(q)]) if eval_set else 0,
        "before": before,
        "after": after,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    export_dir = None
    if config.export is not None:
        from training.cli import load_parity_sentences
        from training.export.text import export_text_model

        export_dir = config.export.models_dir / config.export.name
        scores = {f"{config.data.path.name}/{k}": round(v, 5) for k, v in after.items() if k != "queries"}
        export_text_model(
            str(run_dir / "model"),
            export_dir,
            config.export.name,
            load_parity_sentences(config.export.parity_data, 1000),
            eval_scores=scores,
        )
    return RunResult(run_dir, metrics, export_dir, steps)
