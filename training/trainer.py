"""Contrastive fine-tuning of a sentence-transformers text encoder, from a `TrainConfig`.

One run = one folder `<runs_dir>/<name>/` (training/run.py): `config.yaml` (resolved),
`steps.jsonl` (loss, learning rate and rate per step), `metrics.json` (eval before/after),
`model/` (sentence-transformers format) and, when the config asks, an exported model folder in
`models/`. The loop is indifferent to the loss: the loss comes from the registry and declares its
batch layout, and `BATCH_BUILDERS` builds that layout; the tower is an embed function.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from training.config import TrainConfig
from training.data.beir import RetrievalDataset
from training.data.examples import load_retrieval, load_sts
from training.data.sts import StsPair
from training.eval.first_stage import judged_queries
from training.gradcache import gradcache_backward
from training.losses.layouts import BatchLayout
from training.losses.registry import build_embedding_loss, layout_of
from training.models.text import EmbedFn, make_embed
from training.run import RunFolder, seed_everything
from training.sources import load_sentence_transformer

log = logging.getLogger(__name__)

__all__ = ["BatchSampler", "RunResult", "evaluate", "make_embed", "train"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    export_dir: Path | None = None
    steps: list[dict[str, float]] = field(default_factory=list)


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


def _sts_batches(pairs: list[StsPair], batch_size: int, rng: random.Random) -> Iterator[list[StsPair]]:
    order = pairs[:]
    rng.shuffle(order)
    for start in range(0, len(order) - 1, batch_size):
        yield order[start : start + batch_size]


@dataclass
class TrainingData:
    """What a run trains and evaluates on; loaded before any model, so bad data stops it first."""

    train_set: RetrievalDataset | None = None
    eval_set: RetrievalDataset | None = None
    negatives: dict[str, list[str]] = field(default_factory=dict)
    sts_pairs: list[StsPair] = field(default_factory=list)

    @classmethod
    def load(cls, config: TrainConfig) -> TrainingData:
        if config.data.format == "sts":
            return cls(sts_pairs=load_sts(config.data.path))
        dataset, negatives = load_retrieval(config.data.format, config.data.path, config.data.qrels_split)
        if config.data.format == "beir" and config.data.query_split is not None:
            split = config.data.query_split
            train_set, eval_set = dataset.split_queries(split.seed, split.train_fraction)
            return cls(train_set, eval_set, negatives)
        return cls(dataset, None, negatives)


@dataclass
class Batch:
    """One step's texts (one list per embedded group) and what the loss takes besides embeddings."""

    groups: list[list[str]]
    labels: torch.Tensor | None = None  # grades or gold scores, after the embeddings
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # keyword inputs (e.g. reference)

    def loss_fn(self, loss: nn.Module) -> Callable[..., torch.Tensor]:
        """The loss as a function of the groups' embeddings (what GradCache and the loop call)."""
        labels = () if self.labels is None else (self.labels,)
        return lambda *embeddings: loss(*embeddings, *labels, **self.extras)


@dataclass
class BatchContext:
    config: TrainConfig
    data: TrainingData
    rng: random.Random
    reference_embed: EmbedFn | None = None  # a frozen copy of the base model (soft-target losses)


def _pairs(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    assert context.data.train_set is not None
    groups = _pair_groups(
        batch, context.data.train_set, context.data.negatives, context.config.hard_negatives, context.rng
    )
    return Batch(groups)


def _pairs_with_reference(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    plain = _pairs(context, batch)
    assert context.reference_embed is not None
    with torch.no_grad():
        reference = context.reference_embed(plain.groups[1][: len(batch)])  # (b, dim) the positives
    return Batch(plain.groups, extras={"reference": reference})


def _graded_lists(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    assert context.data.train_set is not None
    groups, grades = _list_groups(
        batch, context.data.train_set, context.data.negatives, context.config.loss.list_size, context.rng
    )
    return Batch(groups, labels=grades)


def _scored_pairs(_: BatchContext, batch: list[StsPair]) -> Batch:
    groups = [[p.sentence1 for p in batch], [p.sentence2 for p in batch]]
    return Batch(groups, labels=torch.tensor([p.score for p in batch]))


# How each batch layout is built from a sampled batch; a loss picks one by its `layout`.
BATCH_BUILDERS: dict[BatchLayout, Callable[[BatchContext, list[Any]], Batch]] = {
    BatchLayout.PAIRS: _pairs,
    BatchLayout.PAIRS_WITH_REFERENCE: _pairs_with_reference,
    BatchLayout.GRADED_LISTS: _graded_lists,
    BatchLayout.SCORED_PAIRS: _scored_pairs,
}


def evaluate(model, eval_set: RetrievalDataset | None, sts_path: Path | None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from training.eval.retrieval import evaluate_retrieval, evaluate_sts

    scores: dict[str, float] = {}
    if eval_set is not None:
        scores.update(evaluate_retrieval(model, eval_set))
    if sts_path is not None and sts_path.is_file():
        scores["sts_spearman"] = evaluate_sts(model, sts_path)
    return scores


def _add_mined_negatives(model, data: TrainingData, config: TrainConfig) -> None:  # type: ignore[no-untyped-def]
    from training.mine import mine_negatives
    from training.models.cross_encoder import mining_rescorer

    assert data.train_set is not None
    mined = mine_negatives(model, data.train_set, config.mining, config.seed, mining_rescorer(config.mining))
    for query_id, docs in mined.items():
        known = data.negatives.get(query_id, [])
        data.negatives[query_id] = known + [d for d in docs if d not in known]


Scheduler = torch.optim.lr_scheduler.LambdaLR


def _linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> Scheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / max(1, warmup)
            if step < warmup
            else max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        ),
    )


@dataclass
class Loop:
    """The optimisation loop's pieces: model parameters, loss, schedule, batches."""

    embed: EmbedFn
    loss: nn.Module
    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    build_batch: Callable[[list[Any]], Batch]
    batches: Iterator[list[Any]]
    total_steps: int
    mini_batch_size: int
    sampler: BatchSampler | None

    def step(self, raw: list[Any]) -> tuple[float, int]:
        """One optimiser step; returns (loss, texts embedded)."""
        batch = self.build_batch(raw)
        loss_fn = batch.loss_fn(self.loss)
        if self.mini_batch_size:
            loss = gradcache_backward(self.embed, batch.groups, loss_fn, self.mini_batch_size)
        else:
            loss = loss_fn(*[self.embed(g) for g in batch.groups])
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), sum(len(g) for g in batch.groups)


def _run_loop(loop: Loop, run: RunFolder, name: str, show_progress: bool) -> tuple[list[dict[str, float]], float]:
    steps: list[dict[str, float]] = []
    started = time.perf_counter()
    with run.step_log() as step_log:
        progress = tqdm(total=loop.total_steps, disable=not show_progress, desc=f"train {name}")
        for step, raw in zip(range(loop.total_steps), loop.batches, strict=False):
            t0 = time.perf_counter()
            loss, texts = loop.step(raw)
            record = {
                "step": step + 1,
                "loss": round(loss, 6),
                "lr": loop.scheduler.get_last_lr()[0],
                "texts_per_s": round(texts / (time.perf_counter() - t0), 1),
                "elapsed_s": round(time.perf_counter() - started, 2),
            }
            steps.append(record)
            step_log.write(record)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", rate=f"{record['texts_per_s']:.0f}/s")
        progress.close()
    return steps, time.perf_counter() - started


def _build_loop(model, loss_module: nn.Module, config: TrainConfig, data: TrainingData, rng: random.Random) -> Loop:  # type: ignore[no-untyped-def]
    sampler = BatchSampler(data.train_set, config.batch_size, config.seed) if data.train_set is not None else None
    per_epoch = sampler.steps_per_epoch() if sampler else max(1, math.ceil(len(data.sts_pairs) / config.batch_size))
    total_steps = min(config.max_steps or per_epoch * config.epochs, per_epoch * config.epochs)
    parameters = list(model.parameters()) + list(loss_module.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _linear_warmup_decay(optimizer, total_steps, int(total_steps * config.warmup_ratio))
    layout = layout_of(loss_module)
    context = BatchContext(config, data, rng)
    if layout == BatchLayout.PAIRS_WITH_REFERENCE:
        # Soft targets come from a frozen copy (the paper's frozen tower): weights from the model being
        # trained feed back (documents drift together, weights rise, scores flatten).
        frozen = copy.deepcopy(model).eval()
        frozen.requires_grad_(False)
        context.reference_embed = make_embed(frozen)
    builder = BATCH_BUILDERS[layout]

    def batches() -> Iterator[Any]:
        while True:
            yield from (sampler.epoch() if sampler else _sts_batches(data.sts_pairs, config.batch_size, rng))

    return Loop(
        embed=make_embed(model),
        loss=loss_module,
        parameters=parameters,
        optimizer=optimizer,
        scheduler=scheduler,
        build_batch=lambda raw: builder(context, raw),
        batches=batches(),
        total_steps=total_steps,
        mini_batch_size=config.mini_batch_size,
        sampler=sampler,
    )


def _export(config: TrainConfig, run: RunFolder, after: dict[str, float]) -> Path | None:
    if config.export is None:
        return None
    from training.data.parity import load_parity_sentences
    from training.export.text import export_text_model

    export_dir = config.export.models_dir / config.export.name
    scores = {f"{config.data.path.name}/{k}": round(v, 5) for k, v in after.items() if k != "queries"}
    export_text_model(
        str(run.path / "model"),
        export_dir,
        config.export.name,
        load_parity_sentences(config.export.parity_data, 1000),
        eval_scores=scores,
    )
    return export_dir


def train(config: TrainConfig, show_progress: bool = True) -> RunResult:
    rng = seed_everything(config.seed)
    data = TrainingData.load(config)
    run = RunFolder(config.runs_dir, config.name)
    run.write_config(config)

    model = load_sentence_transformer(config.base_model)
    model.max_seq_length = config.max_seq_length
    loss_module = build_embedding_loss(config.loss)
    started = time.perf_counter()
    before = evaluate(model, data.eval_set, config.eval_sts) if config.eval_before else {}
    log.info("before: %s", before)
    if data.train_set is not None and config.mining.enabled:
        _add_mined_negatives(model, data, config)

    loop = _build_loop(model, loss_module, config, data, rng)
    model.train()
    steps, train_seconds = _run_loop(loop, run, config.name, show_progress)

    model.eval()
    model.save(str(run.path / "model"))
    after = evaluate(model, data.eval_set, config.eval_sts)
    log.info("after: %s", after)
    sampler = loop.sampler
    metrics = {
        "name": config.name,
        "loss": config.loss.name,
        "seed": config.seed,
        "steps": loop.total_steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "train_queries": len(sampler.query_ids) if sampler else 0,
        "train_examples": len(sampler.pairs) if sampler else len(data.sts_pairs),
        "eval_queries": len(judged_queries(data.eval_set)) if data.eval_set else 0,
        "before": before,
        "after": after,
    }
    run.write_metrics(metrics)
    return RunResult(run.path, metrics, _export(config, run, after), steps)
