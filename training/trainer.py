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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    remove_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from training.config import TEACHER_CACHE, ConfigError, TrainConfig, load_config
from training.data.beir import RetrievalDataset, load_beir
from training.data.examples import load_retrieval, load_sts
from training.data.pseudo import MIN_QUERY_WORDS, as_kinds, corpus_documents, corpus_file, pseudo_query_dataset
from training.data.sts import StsPair
from training.distributed import (
    Workers,
    autocast,
    check_precision,
    gather_segments,
    setup_workers,
    shard_rows,
    shutdown,
    sum_gradients,
)
from training.eval.first_stage import BaseCorpus, CorpusIndex, judged_queries
from training.gradcache import gradcache_backward
from training.interpolation import interpolate_weights
from training.losses.distillation import TeacherDistillationLoss
from training.losses.layouts import BatchLayout
from training.losses.registry import build_embedding_loss, layout_of
from training.models.text import EmbedFn, make_embed, similarity_scorer
from training.query_generation import RESPONSE_PREFIX, generated_queries, generation_cache
from training.run import RunFolder, finished_metrics, seed_everything
from training.sources import ModelSourceError, load_sentence_transformer, resolve_source
from training.splits import split_config
from training.synthetic import CausalLMGenerator, GenerationCache, TextGenerator, synthesise_lists
from training.teacher import TeacherEncoder, TeacherVectors, teacher_vectors
from training.validation import CheckpointSelector, split_validation

log = logging.getLogger(__name__)

__all__ = ["BatchSampler", "RunResult", "StsSampler", "evaluate", "make_embed", "train"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    export_dir: Path | None = None
    steps: list[dict[str, float]] = field(default_factory=list)


class ResumableSampler:
    """A sampler whose stream of batches can be stopped and restarted at the same batch: an epoch is
    a function of the RNG state at its start, so the state is (that RNG state, batches taken)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._epoch_start = self.rng.getstate()
        self._taken = 0
        self._skip = 0

    def epoch(self) -> Iterator[list[Any]]:
        raise NotImplementedError

    def stream(self) -> Iterator[list[Any]]:
        """Epoch after epoch, forever (the loop stops at its step count)."""
        while True:
            self._epoch_start = self.rng.getstate()
            self._taken = 0
            for batch in self.epoch():
                self._taken += 1
                if self._taken > self._skip:
                    yield batch
            self._skip = 0

    def state(self) -> dict[str, Any]:
        return {"epoch_start": self._epoch_start, "taken": self._taken}

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["epoch_start"])
        self._skip = state["taken"]


class BatchSampler(ResumableSampler):
    """Every (query, positive) pair once per epoch (multiple positives per query), shuffled, in
    batches where no query and no document appears twice: a repeated query's other positive, or a
    shared document, would be an in-batch false negative. Conflicting pairs wait for a later batch.
    Under data parallelism `batch_size` is the global batch, which the ranks share
    (training/distributed.py): every pair is still seen once per epoch, by one rank."""

    def __init__(self, dataset: RetrievalDataset, batch_size: int, seed: int, min_batch: int = 2) -> None:
        super().__init__(seed)
        self.dataset = dataset
        self.batch_size = batch_size
        self.min_batch = max(2, min_batch)  # every rank needs at least one example
        self.query_ids = sorted(q for q in dataset.queries if dataset.qrels.get(q))
        self.pairs = [(q, d) for q in self.query_ids for d in sorted(dataset.qrels[q])]

    def epoch(self) -> Iterator[list[tuple[str, str]]]:
        waiting = self.pairs[:]
        self.rng.shuffle(waiting)
        batches: list[list[tuple[str, str]]] = []
        while waiting:
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
            if len(batch) < self.min_batch:  # a tail too small to batch (one query's last positives):
                self._place(batches, waiting)  # each goes into an earlier batch it does not conflict with
                break
            batches.append(batch)
            waiting = later
        yield from batches

    @staticmethod
    def _place(batches: list[list[tuple[str, str]]], tail: list[tuple[str, str]]) -> None:
        """Add each tail pair to the first batch holding neither its query nor its document (one
        batch grows past batch_size by a pair or two); a pair no batch can take is left out."""
        for query_id, doc in tail:
            for batch in batches:
                if all(q != query_id and d != doc for q, d in batch):
                    batch.append((query_id, doc))
                    break

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.pairs) / self.batch_size))


class StsSampler(ResumableSampler):
    """STS sentence pairs, shuffled each epoch, in batches of `batch_size` (at least `min_batch`)."""

    def __init__(self, pairs: list[StsPair], batch_size: int, seed: int, min_batch: int = 2) -> None:
        super().__init__(seed)
        self.pairs = pairs
        self.batch_size = batch_size
        self.min_batch = max(2, min_batch)

    def epoch(self) -> Iterator[list[StsPair]]:
        order = self.pairs[:]
        self.rng.shuffle(order)
        for start in range(0, len(order), self.batch_size):
            if len(batch := order[start : start + self.batch_size]) >= self.min_batch:
                yield batch

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.pairs) / self.batch_size))


def _pair_ids(
    batch: list[tuple[str, str]],
    dataset: RetrievalDataset,
    negatives: dict[str, list[str]],
    count: int,
    rng: random.Random,
) -> tuple[list[str], list[str]]:
    """(query ids, document ids): the positives, then `count` negatives per query, query-major."""
    query_ids = [q for q, _ in batch]
    doc_ids = [d for _, d in batch]
    if count:
        pool = [d for _, d in batch]
        for query_id, _ in batch:  # query-major: query i's negatives are rows b + i*count ...
            mined = negatives.get(query_id) or []
            picks = rng.sample(mined, min(count, len(mined)))
            while len(picks) < count:  # too few mined: another query's positive (still a negative)
                candidate = rng.choice(pool)
                if candidate not in dataset.qrels[query_id]:
                    picks.append(candidate)
            doc_ids += picks
    return query_ids, doc_ids


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


@dataclass
class TrainingData:
    """What a run trains and evaluates on; loaded before any model, so bad data stops it first."""

    train_set: RetrievalDataset | None = None
    eval_set: RetrievalDataset | None = None
    negatives: dict[str, list[str]] = field(default_factory=dict)
    sts_pairs: list[StsPair] = field(default_factory=list)
    validation_set: RetrievalDataset | None = None  # training queries held out for checkpoint selection
    synthesis: dict[str, Any] | None = None  # what synthetic_lists added (metrics.json)
    query_generation: dict[str, Any] | None = None  # what data.query_generation wrote (metrics.json)

    @classmethod
    def load(cls, config: TrainConfig) -> TrainingData:
        data = cls._load(config)
        if config.validation is not None and data.train_set is not None:
            data.train_set, data.validation_set = split_validation(data.train_set, config, config.validation)
        return data

    @classmethod
    def _load(cls, config: TrainConfig) -> TrainingData:
        if config.data.format == "sts":
            return cls(sts_pairs=load_sts(config.data.path))
        if config.data.format == "corpus":
            return cls._unlabelled(config)
        dataset, negatives = load_retrieval(config.data.format, config.data.path, config.data.qrels_split)
        if config.data.format == "beir" and config.data.query_split is not None:
            split = config.data.query_split
            train_set, eval_set = dataset.split_queries(split.seed, split.train_fraction)
            return cls(train_set, eval_set, negatives)
        return cls(dataset, None, negatives)

    @classmethod
    def _unlabelled(cls, config: TrainConfig) -> TrainingData:
        """Pseudo-queries to train on; the folder's real judged queries (held-out half) to evaluate."""
        data = config.data
        corpus, written, generation = corpus_file(data.path), None, None
        if "generated" in as_kinds(data.pseudo_queries):
            written, generation = _generated_queries(config, corpus)
        train_set = pseudo_query_dataset(corpus, data.pseudo_queries, data.pseudo_query_limit, written)
        return cls(train_set, _real_held_out(config), {}, query_generation=generation)


def _real_held_out(config: TrainConfig) -> RetrievalDataset | None:
    """An unlabelled config's evaluation set: its folder's real judged queries, held-out half (the
    one a labelled run scores on); None when the folder has no qrels."""
    data = config.data
    if not (data.path.is_dir() and (data.path / "qrels" / f"{data.qrels_split}.tsv").is_file()):
        return None
    eval_set = load_beir(data.path, data.qrels_split)
    if data.query_split is not None:
        eval_set = eval_set.split_queries(data.query_split.seed, data.query_split.train_fraction)[1]
    return eval_set


def evaluation_set(config: TrainConfig) -> RetrievalDataset | None:
    """What `config`'s runs are scored on. An unlabelled config's pseudo-queries are not built for
    it, so scoring never runs a query writer."""
    return _real_held_out(config) if config.data.format == "corpus" else TrainingData.load(config).eval_set


@dataclass
class Batch:
    """One step's inputs (one list per embedded group) and what the loss takes besides embeddings.
    `segments[g]` lays group g out for sharding across ranks: consecutive segments of k rows per
    example (queries [1]; documents [1, hard negatives]; lists [list size])."""

    groups: list[list[str]]
    segments: list[list[int]]
    labels: torch.Tensor | None = None  # grades or gold scores, after the embeddings
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # keyword inputs (e.g. reference)

    @property
    def examples(self) -> int:
        return len(self.groups[0])

    def loss_fn(self, loss: nn.Module) -> Callable[..., torch.Tensor]:
        """The loss as a function of the groups' embeddings (what GradCache and the loop call)."""

        def call(*embeddings: torch.Tensor) -> torch.Tensor:
            device = embeddings[0].device
            labels = () if self.labels is None else (self.labels.to(device),)
            extras = {k: v.to(device) for k, v in self.extras.items()}
            return loss(*embeddings, *labels, **extras)

        return call


@dataclass
class BatchContext:
    config: TrainConfig
    data: TrainingData
    rng: random.Random
    workers: Workers = field(default_factory=Workers)
    reference_embed: EmbedFn | None = None  # a frozen copy of the base model (soft-target losses)
    teacher: TeacherVectors | None = None  # a stronger bi-encoder's cached vectors (distillation)


def _pair_batch(context: BatchContext, batch: list[tuple[str, str]]) -> tuple[Batch, list[str], list[str]]:
    """The PAIRS batch and the ids behind its rows (query ids, document ids)."""
    data, count = context.data.train_set, context.config.hard_negatives
    assert data is not None
    query_ids, doc_ids = _pair_ids(batch, data, context.data.negatives, count, context.rng)
    groups = [[data.queries[q] for q in query_ids], [data.doc_text(d) for d in doc_ids]]
    plain = Batch(groups, [[1], [1, count] if count else [1]])
    if context.config.mask_judged:
        plain.extras["judged"] = judged_elsewhere(data, query_ids, doc_ids)
    if context.config.grade_weighted:  # (b,) each row's positive's grade
        plain.extras["row_weights"] = torch.tensor([float(data.qrels[q][d]) for q, d in batch])
    return plain, query_ids, doc_ids


def judged_elsewhere(dataset: RetrievalDataset, query_ids: list[str], doc_ids: list[str]) -> torch.Tensor:
    """(b, n) bool: document j is judged relevant to query i but is not its positive (column i), so
    it must not count as query i's negative. On Cranfield a quarter of the rows hold one."""
    judged = torch.tensor([[d in dataset.qrels[q] for d in doc_ids] for q in query_ids], dtype=torch.bool)
    rows = torch.arange(len(query_ids))
    judged[rows, rows] = False
    return judged


def _pairs(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    return _pair_batch(context, batch)[0]


def _pairs_with_reference(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    plain = _pairs(context, batch)
    assert context.reference_embed is not None
    positives = plain.groups[1][: len(batch)]
    with torch.no_grad():  # each rank embeds its share of the positives; all ranks see all (b, dim)
        local = context.reference_embed(shard_rows(positives, [1], len(batch), context.workers))
        reference = gather_segments(local, [1], len(batch), context.workers)
    return Batch(plain.groups, plain.segments, extras={"reference": reference})


def _pairs_with_teacher(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    assert context.teacher is not None
    plain, query_ids, doc_ids = _pair_batch(context, batch)
    plain.extras["teacher_scores"] = context.teacher.scores(query_ids, doc_ids)  # (b, n)
    return plain


def _graded_lists(context: BatchContext, batch: list[tuple[str, str]]) -> Batch:
    assert context.data.train_set is not None
    size = context.config.loss.list_size
    groups, grades = _list_groups(batch, context.data.train_set, context.data.negatives, size, context.rng)
    return Batch(groups, [[1], [size]], labels=grades)


def _scored_pairs(_: BatchContext, batch: list[StsPair]) -> Batch:
    groups = [[p.sentence1 for p in batch], [p.sentence2 for p in batch]]
    return Batch(groups, [[1], [1]], labels=torch.tensor([p.score for p in batch]))


# How each batch layout is built from a sampled batch; a loss picks one by its `layout`.
BATCH_BUILDERS: dict[BatchLayout, Callable[[BatchContext, list[Any]], Batch]] = {
    BatchLayout.PAIRS: _pairs,
    BatchLayout.PAIRS_WITH_REFERENCE: _pairs_with_reference,
    BatchLayout.PAIRS_WITH_TEACHER: _pairs_with_teacher,
    BatchLayout.GRADED_LISTS: _graded_lists,
    BatchLayout.SCORED_PAIRS: _scored_pairs,
}


def evaluate(  # type: ignore[no-untyped-def]
    model, eval_set: RetrievalDataset | None, sts_path: Path | None, corpus: CorpusIndex | None = None
) -> dict[str, float]:
    """Retrieval metrics on `eval_set` (`corpus`: its corpus as the model encodes it now, if known)
    and STS Spearman."""
    from training.eval.retrieval import evaluate_retrieval, evaluate_sts

    scores: dict[str, float] = {}
    if eval_set is not None:
        scores.update(evaluate_retrieval(model, eval_set, corpus=corpus))
    if sts_path is not None and sts_path.is_file():
        scores["sts_spearman"] = evaluate_sts(model, sts_path)
    return scores


def evaluate_source(source: str, config: TrainConfig) -> dict[str, float]:
    """Retrieval scores of the model at `source` on `config`'s evaluation set (the held-out half of
    its query split), at the config's sequence length; no STS."""
    return _evaluate_source(source, config, evaluation_set(config), None)


def evaluate_interpolated(fine_tuned: str, start: str, alpha: float, config: TrainConfig) -> dict[str, float]:
    """Retrieval scores and STS of WiSE-FT's start + alpha * (fine_tuned - start) on `config`'s
    evaluation set: what a run with `wise_ft: {alpha}` keeps, from its fine-tuned weights."""
    model = load_sentence_transformer(fine_tuned)
    interpolate_weights(model, load_sentence_transformer(start), alpha)
    model.max_seq_length = config.max_seq_length
    model.eval()
    return evaluate(model, evaluation_set(config), config.eval_sts)


def _evaluate_source(
    source: str, config: TrainConfig, eval_set: RetrievalDataset | None, sts: Path | None
) -> dict[str, float]:
    model = load_sentence_transformer(source)
    model.max_seq_length = config.max_seq_length
    return evaluate(model, eval_set, sts)


def _warm_start_model(config: TrainConfig, workers: Workers, show_progress: bool) -> str | None:
    """The model folder of `warm_start.config`'s run in `runs_dir`, trained here first unless a
    finished run of that same config is there; None without a warm start."""
    if config.warm_start is None:
        return None
    path = config.warm_start.config
    where = f"{config.name}: warm_start.config {path}"
    try:
        stage = load_config(path, {"runs_dir": str(config.runs_dir), "export": None})
    except ConfigError as exc:
        raise ConfigError(f"{config.name}: warm_start.config: {exc}") from exc
    if stage.data.format != "corpus":
        raise ConfigError(
            f"{where}: data.format {stage.data.format}; a warm-start stage must be unlabelled (corpus), "
            "or it could train on this run's held-out queries"
        )
    if stage.base_model != config.base_model:
        raise ConfigError(f"{where}: starts from {stage.base_model}, this run from {config.base_model}; use one")
    if stage.warm_start is not None or stage.name == config.name:
        raise ConfigError(f"{where}: a stage needs its own name and no warm start of its own")
    folder = _finished_stage(config.runs_dir, stage)
    if folder is None:
        if workers.enabled:
            raise ConfigError(f"{where}: not trained; train it first, in one process, into {config.runs_dir}")
        log.info("warm start: training %s first", stage.name)
        folder = train(stage, show_progress=show_progress).run_dir
    return str(folder / "model")


def _finished_stage(runs_dir: Path, stage: TrainConfig) -> Path | None:
    """The folder of a finished run of the unlabelled `stage` in `runs_dir`: its own, or the run
    eval-splits made of it on the stage's own query split (`<name>-split<seed>`: the same config
    but for its name), so a stage measured over splits is not trained again to warm-start from."""
    candidates = [stage]
    if stage.data.query_split is not None:
        candidates.append(split_config(stage, stage.data.query_split.seed))
    for candidate in candidates:
        if finished_metrics(runs_dir / candidate.name, candidate) is not None:
            return runs_dir / candidate.name
    return None


def _synthetic_lists(config: TrainConfig, data: TrainingData, workers: Workers) -> RetrievalDataset | None:
    """The training set plus `synthetic_lists` graded documents (training/synthetic.py), generated
    or read from the cache; None without `synthetic_lists`. An unusable generator stops the run here
    with one line naming the key."""
    settings = config.synthetic_lists
    if settings is None or data.train_set is None:
        return None
    if workers.enabled:
        raise ConfigError(f"{config.name}: synthetic_lists: run in one process (ranks would each generate)")
    generate = _lazy_generator(config, "synthetic_lists.generator", settings.generator, settings.max_new_tokens)
    cache = GenerationCache(settings.cache_dir, f"{settings.generator}|{settings.max_new_tokens}")
    with_lists, stats = synthesise_lists(data.train_set, generate, cache, settings.budget, config.seed)
    data.synthesis = stats.record()
    log.info("synthetic lists: %s", data.synthesis)
    return with_lists


def _lazy_generator(
    config: TrainConfig, key: str, source: str, max_new_tokens: int, response_prefix: str = ""
) -> TextGenerator:
    """A causal-LM writer loaded on the first prompt missing from its cache; a source that cannot
    be resolved (at once) or loaded (then) is one ConfigError line naming `key`."""
    try:
        folder = resolve_source(source)
    except ModelSourceError as exc:
        raise ConfigError(f"{config.name}: {key}: {exc}") from exc
    generator: CausalLMGenerator | None = None

    def generate(prompts: list[str]) -> list[str]:
        nonlocal generator
        if generator is None:
            try:
                generator = CausalLMGenerator(folder, max_new_tokens, response_prefix)
            except (OSError, ValueError) as exc:
                first_line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                raise ConfigError(f"{config.name}: {key}: {source}: {first_line.strip()}") from exc
        return generator(prompts)

    return generate


def _generated_queries(config: TrainConfig, corpus: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The questions `data.query_generation` has written for `corpus`'s documents (generated now, or
    read from the cache), and what metrics.json records about them."""
    settings = config.data.query_generation
    assert settings is not None
    key, source = "data.query_generation.generator", settings.generator
    generate = _lazy_generator(config, key, source, settings.max_new_tokens, RESPONSE_PREFIX)
    cache = generation_cache(settings.cache_dir, f"{settings.generator}|{settings.max_new_tokens}")
    documents = corpus_documents(corpus)
    queries, stats = generated_queries(documents, generate, cache, settings.budget, config.seed, MIN_QUERY_WORDS)
    log.info("generated pseudo-queries: %s", stats.record())
    return queries, stats.record()


T = TypeVar("T")


def _for_key(config: TrainConfig, key: str, action: Callable[[str], T], source: str) -> T:
    """`action(source)` for the teacher source config key `key` names; a source that cannot be
    resolved or loaded is one ConfigError line naming that key."""
    try:
        return action(source)
    except ModelSourceError as exc:
        raise ConfigError(f"{config.name}: {key}: {exc}") from exc


def _load_teacher(config: TrainConfig, source: str, key: str):  # type: ignore[no-untyped-def]
    """A teacher bi-encoder; a source that cannot be loaded is one line naming the config key."""
    return _for_key(config, key, load_sentence_transformer, source)


def _teacher_encoders(config: TrainConfig, mining: bool = True, distillation: bool = True) -> dict[str, TeacherEncoder]:
    """One encoder per teacher source the config names (mining's filter and distillation's, each
    unless its flag is False); a source named by both is loaded and encoded once. Each source is
    resolved before anything slow, so a missing or unknown one stops the run at once with one line
    naming its key; the model itself is loaded on the first text missing from the cache only (a
    rerun over cached texts, such as the next query split, never loads all-mpnet-base-v2's 420 MB)."""
    wanted: dict[str, str] = {}
    if mining and config.mining.enabled and config.mining.teacher_model:
        wanted.setdefault(config.mining.teacher_model, "mining.teacher_model")
    if distillation and config.distillation is not None:
        wanted.setdefault(config.distillation.teacher, "distillation.teacher")
    cache_dir = config.distillation.cache_dir if config.distillation is not None else TEACHER_CACHE
    encoders = {}
    for source, key in wanted.items():
        _for_key(config, key, resolve_source, source)
        encoders[source] = TeacherEncoder(
            lambda source=source, key=key: _load_teacher(config, source, key), source, cache_dir
        )
    return encoders


def mining_teacher(config: TrainConfig):  # type: ignore[no-untyped-def]
    """The scorer that filters the config's mined negatives (`mining.teacher_model`), for mining on
    its own (`training mine`); None without one. Its source is checked now (ConfigError naming the
    key), the model loaded on the first text not in the teacher cache."""
    return _mining_teacher(config, _teacher_encoders(config, distillation=False))


def _mining_teacher(config: TrainConfig, encoders: dict[str, TeacherEncoder]):  # type: ignore[no-untyped-def]
    """The scorer that filters mined negatives (`mining.teacher_model`); None without one."""
    if not (config.mining.enabled and config.mining.teacher_model):
        return None
    return similarity_scorer(encoders[config.mining.teacher_model].encode)


def _distillation_vectors(
    config: TrainConfig, data: TrainingData, workers: Workers, encoders: dict[str, TeacherEncoder]
) -> TeacherVectors | None:
    """The distillation teacher's vectors of the training texts (None without distillation). Rank 0
    encodes and caches first; the others read the cache (and load the teacher only on a miss)."""
    settings = config.distillation
    if settings is None or data.train_set is None:
        return None
    encoder = encoders.get(settings.teacher) or TeacherEncoder(
        lambda: _load_teacher(config, settings.teacher, "distillation.teacher"), settings.teacher, settings.cache_dir
    )
    with workers.main_first():
        return teacher_vectors(encoder, data.train_set, data.negatives)


def _add_mined_negatives(  # type: ignore[no-untyped-def]
    model, data: TrainingData, config: TrainConfig, teacher=None, corpus: CorpusIndex | None = None
) -> None:
    from training.mine import mine_negatives
    from training.models.cross_encoder import mining_rescorer

    assert data.train_set is not None
    rescorer = mining_rescorer(config.mining)
    mined = mine_negatives(model, data.train_set, config.mining, config.seed, rescorer, corpus=corpus, teacher=teacher)
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
    """The optimisation loop's pieces: model parameters, loss, schedule, batches, and the ranks."""

    embed: EmbedFn
    loss: nn.Module
    model_parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    build_batch: Callable[[list[Any]], Batch]
    sampler: ResumableSampler
    total_steps: int
    mini_batch_size: int
    workers: Workers = field(default_factory=Workers)
    scaler: torch.amp.GradScaler | None = None  # fp16 only

    @property
    def parameters(self) -> list[nn.Parameter]:
        return self.model_parameters + list(self.loss.parameters())

    def step(self, raw: list[Any]) -> tuple[float, int]:
        """One optimiser step on the global batch `raw` (every rank holds the same one and embeds its
        share); returns (loss, texts embedded by this rank)."""
        batch = self.build_batch(raw)
        loss_fn = batch.loss_fn(self.loss)
        workers, examples = self.workers, batch.examples
        local = [shard_rows(g, seg, examples, workers) for g, seg in zip(batch.groups, batch.segments, strict=True)]

        def gather(index: int, embeddings: torch.Tensor) -> torch.Tensor:
            return gather_segments(embeddings, batch.segments[index], examples, workers)

        def local_rows(index: int, rows: torch.Tensor) -> torch.Tensor:
            return shard_rows(rows, batch.segments[index], examples, workers)

        scale = self.scaler.scale if self.scaler is not None else (lambda loss: loss)
        if self.mini_batch_size:
            loss = gradcache_backward(self.embed, local, loss_fn, self.mini_batch_size, gather, local_rows, scale)
        else:
            loss = loss_fn(*[gather(i, self.embed(g)) for i, g in enumerate(local)])
            scale(loss).backward()
        sum_gradients(self.model_parameters, workers)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), sum(len(g) for g in local)


@dataclass
class Progress:
    """Where a run is: the next step, the steps logged so far, the training seconds spent."""

    next_step: int = 0
    steps: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0


def _run_loop(
    loop: Loop,
    run: RunFolder | None,
    config: TrainConfig,
    progress_state: Progress,
    checkpoint: Callable[[Progress], None],
    show_progress: bool,
    after_step: Callable[[Progress], None] | None = None,
) -> Progress:
    """Steps from `progress_state.next_step` to the end; rank 0 logs each step (run is None on the
    others), `after_step` (if any) follows every step, and every `config.checkpoint_every` steps
    calls `checkpoint`."""
    state = progress_state
    started = time.perf_counter() - state.train_seconds
    with run.step_log(state.steps) if run is not None else nullcontext() as step_log:
        progress = tqdm(
            total=loop.total_steps, initial=state.next_step, disable=not show_progress, desc=f"train {config.name}"
        )
        for step, raw in zip(range(state.next_step, loop.total_steps), loop.sampler.stream(), strict=False):
            t0 = time.perf_counter()
            loss, texts = loop.step(raw)
            record = {
                "step": step + 1,
                "loss": round(loss, 6),
                "lr": loop.scheduler.get_last_lr()[0],
                "texts_per_s": round(texts * loop.workers.world_size / (time.perf_counter() - t0), 1),
                "elapsed_s": round(time.perf_counter() - started, 2),
            }
            state.steps.append(record)
            state.next_step = step + 1
            state.train_seconds = time.perf_counter() - started
            if step_log is not None:
                step_log.write(record)
            if after_step is not None:
                hook_started = time.perf_counter()
                after_step(state)
                started += time.perf_counter() - hook_started  # validating is not training time
            if (
                config.checkpoint_every
                and state.next_step % config.checkpoint_every == 0
                and state.next_step < loop.total_steps
            ):
                checkpoint(state)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", rate=f"{record['texts_per_s']:.0f}/s")
        progress.close()
    return state


def _build_loop(  # type: ignore[no-untyped-def]
    model,
    loss_module: nn.Module,
    config: TrainConfig,
    data: TrainingData,
    rng: random.Random,
    workers: Workers,
    teacher: TeacherVectors | None = None,
) -> Loop:
    global_batch = config.batch_size * workers.world_size  # batch_size is per process
    sampler: ResumableSampler
    if data.train_set is not None:
        sampler = BatchSampler(data.train_set, global_batch, config.seed, workers.world_size)
    else:
        sampler = StsSampler(data.sts_pairs, global_batch, config.seed, workers.world_size)
    per_epoch = sampler.steps_per_epoch()  # type: ignore[attr-defined]
    total_steps = min(config.max_steps or per_epoch * config.epochs, per_epoch * config.epochs)
    model_parameters = list(model.parameters())
    parameters = model_parameters + list(loss_module.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _linear_warmup_decay(optimizer, total_steps, int(total_steps * config.warmup_ratio))
    layout = layout_of(loss_module)
    context = BatchContext(config, data, rng, workers, teacher=teacher)
    mixed = (lambda: autocast(workers.device, config.precision)) if config.precision != "fp32" else None
    if layout == BatchLayout.PAIRS_WITH_REFERENCE:
        # Soft targets come from a frozen copy (the paper's frozen tower): weights from the model being
        # trained feed back (documents drift together, weights rise, scores flatten).
        frozen = copy.deepcopy(model).eval()
        frozen.requires_grad_(False)
        context.reference_embed = make_embed(frozen, workers.device, mixed)
    builder = BATCH_BUILDERS[layout]
    return Loop(
        embed=make_embed(model, workers.device, mixed),
        loss=loss_module,
        model_parameters=model_parameters,
        optimizer=optimizer,
        scheduler=scheduler,
        build_batch=lambda raw: builder(context, raw),
        sampler=sampler,
        total_steps=total_steps,
        mini_batch_size=config.mini_batch_size,
        workers=workers,
        scaler=torch.amp.GradScaler(workers.device.type) if config.precision == "fp16" else None,
    )


def _selector(config: TrainConfig, data: TrainingData) -> CheckpointSelector | None:
    if config.validation is None or data.validation_set is None:
        return None
    settings = config.validation
    return CheckpointSelector(
        data.validation_set, settings.metric, settings.every, settings.min_standard_errors, settings.significance
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


def _checkpoint_state(loop: Loop, model, rng: random.Random, progress: Progress, run: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Everything `_restore` needs; every rank calls this at the same step (it gathers RNG states)."""
    return {
        "step": progress.next_step,
        "model": model.state_dict(),
        "loss": loop.loss.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else {},
        "sampler": loop.sampler.state(),
        "rng": {"ranks": loop.workers.gather_objects(rng_state()), "run": rng.getstate()},
        "run": {
            **run,
            "steps": progress.steps,
            "train_seconds": progress.train_seconds,
            "world_size": loop.workers.world_size,
            "total_steps": loop.total_steps,
        },
    }


def _check_resumable(state: dict[str, Any], config: TrainConfig, workers: Workers) -> None:
    where = config.runs_dir / config.name / CHECKPOINT_NAME
    if state["run"]["world_size"] != workers.world_size:
        raise CheckpointError(
            f"{where}: written by {state['run']['world_size']} processes, resumed with {workers.world_size}; "
            "resume with the same number of processes (the global batch depends on it)"
        )


def _restore(loop: Loop, model, rng: random.Random, state: dict[str, Any]) -> Progress:  # type: ignore[no-untyped-def]
    """Put a checkpoint back, last thing before the loop (model loading consumes RNG draws)."""
    model.load_state_dict(state["model"])
    loop.loss.load_state_dict(state["loss"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    if loop.scaler is not None and state["scaler"]:
        loop.scaler.load_state_dict(state["scaler"])
    loop.sampler.restore(state["sampler"])
    rng.setstate(state["rng"]["run"])
    set_rng_state(state["rng"]["ranks"][loop.workers.rank])
    run = state["run"]
    return Progress(state["step"], list(run["steps"]), float(run["train_seconds"]))


def _prepare_run(  # type: ignore[no-untyped-def]
    model,
    config: TrainConfig,
    data: TrainingData,
    workers: Workers,
    teacher=None,
    base: BaseCorpus | None = None,
) -> dict[str, Any]:
    """Rank 0 evaluates the base model and mines hard negatives with `model` (filtered by `teacher`,
    if any), both over `base`'s one encoding of the corpus; every rank gets the negatives. A
    warm-started `model` is the stage's: "before" is then `config.base_model`'s own scores."""
    before: dict[str, float] = {}
    if workers.is_main:
        base = base or BaseCorpus(model)
        if config.eval_before and config.warm_start is not None:
            before = _evaluate_source(config.base_model, config, data.eval_set, config.eval_sts)
        elif config.eval_before:
            known = base.index(data.eval_set) if data.eval_set is not None else None
            before = evaluate(model, data.eval_set, config.eval_sts, known)
        log.info("before: %s", before)
        if data.train_set is not None and config.mining.enabled:
            _add_mined_negatives(model, data, config, teacher, base.index(data.train_set))
    data.negatives = workers.broadcast(data.negatives)
    return {"before": before, "negatives": data.negatives}


def _loss_module(config: TrainConfig) -> torch.nn.Module:
    """The configured loss, wrapped to add the teacher's distribution when `distillation` is set."""
    loss_module = build_embedding_loss(config.loss)
    if config.distillation is None:
        return loss_module
    settings = config.distillation
    return TeacherDistillationLoss(loss_module, settings.weight, config.loss.temperature, settings.teacher_temperature)


def _start_selector(
    config: TrainConfig,
    data: TrainingData,
    model: Any,  # SentenceTransformer
    total_steps: int,
    progress: Progress,
    resumed: dict[str, Any] | None,
    base: BaseCorpus | None,
) -> CheckpointSelector | None:
    """The checkpoint selector (None without validation), with the base model scored at step 0 or
    a resumed run's scores restored."""
    selector = _selector(config, data)
    if selector is None:
        return None
    selector.plan(total_steps)
    if resumed is not None and resumed.get("validation") is not None:
        selector.load_state(resumed["validation"])
    elif progress.next_step == 0:
        selector.observe(model, 0, base.index(selector.dataset) if base is not None else None)
    return selector


def _run_metrics(
    config: TrainConfig, data: TrainingData, loop: Loop, workers: Workers, progress: Progress, seconds: float
) -> dict[str, Any]:
    """What metrics.json says about the run itself (the scores are added by the caller)."""
    sampler = loop.sampler
    return {
        "name": config.name,
        "loss": config.loss.name,
        "seed": config.seed,
        "steps": loop.total_steps,
        "processes": workers.world_size,
        "device": str(workers.device),
        "precision": config.precision,
        "train_seconds": round(progress.train_seconds, 1),
        "total_seconds": round(seconds, 1),
        "train_queries": len(sampler.query_ids) if isinstance(sampler, BatchSampler) else 0,
        "train_examples": len(sampler.pairs) if isinstance(sampler, BatchSampler | StsSampler) else 0,
        "eval_queries": len(judged_queries(data.eval_set)) if data.eval_set else 0,
        "synthetic_lists": data.synthesis,
        "query_generation": data.query_generation,
    }


def _final_weights(  # type: ignore[no-untyped-def]
    model, config: TrainConfig, selector: CheckpointSelector | None, start: str, total_steps: int
) -> CorpusIndex | None:
    """Set `model` to the weights the run keeps: validation's best checkpoint, then WiSE-FT's
    interpolation toward `start` (the model training began from). Returns the corpus encoding
    known for those weights (None when interpolation made it stale)."""
    known = None
    if selector is not None:
        selector.restore_best(model)
        known = selector.best_corpus
        log.info("validation kept the weights after step %s of %d", selector.best_step, total_steps)
    if config.wise_ft is not None:
        device = next(model.parameters()).device
        interpolate_weights(model, load_sentence_transformer(start).to(device), config.wise_ft.alpha)
        log.info("wise_ft: kept %.2f of the way from %s to the fine-tuned weights", config.wise_ft.alpha, start)
        known = None
    return known


def train(config: TrainConfig, show_progress: bool = True, resume: bool = False) -> RunResult:
    """One run (or this rank's part of one under torchrun); `resume` continues the run folder's
    checkpoint, which is read and checked before anything else."""
    workers = setup_workers(config.device)
    check_precision(config.precision, workers.device)
    resumed = load_checkpoint(config.runs_dir / config.name) if resume else None
    if resumed is not None:
        _check_resumable(resumed, config, workers)
    warm_start = _warm_start_model(config, workers, show_progress)  # before seeding: a stage reseeds
    rng = seed_everything(config.seed)
    if workers.rank:
        torch.manual_seed(config.seed + workers.rank)  # dropout masks differ from rank to rank
    if workers.enabled and config.data.query_generation is not None:
        raise ConfigError(f"{config.name}: data.query_generation: run in one process (ranks would each generate)")
    data = TrainingData.load(config)
    synthetic = _synthetic_lists(config, data, workers)  # before any model; joins after mining
    fresh_main = workers.is_main and resumed is None and data.train_set is not None
    # a bad source stops the run here; a resumed run has mined already and needs no mining teacher
    encoders = _teacher_encoders(config, mining=fresh_main) if workers.is_main else {}
    teacher = _mining_teacher(config, encoders) if fresh_main else None
    run = RunFolder(config.runs_dir, config.name) if workers.is_main else None
    if run is not None:
        run.write_config(config)

    model = load_sentence_transformer(warm_start or config.base_model)
    model.max_seq_length = config.max_seq_length
    model.to(workers.device)
    loss_module = _loss_module(config).to(workers.device)
    started = time.perf_counter()
    base = BaseCorpus(model) if workers.is_main and resumed is None else None  # valid until the first step
    if resumed is not None:
        prepared = {"before": resumed["run"]["before"], "negatives": resumed["run"]["negatives"]}
        data.negatives = prepared["negatives"]
    else:
        prepared = _prepare_run(model, config, data, workers, teacher, base)
    if synthetic is not None:  # mined on the real judgements alone: a weak synthetic positive would lower the
        data.train_set = synthetic  # false-negative threshold, and the corpus encoding stays shared

    vectors = _distillation_vectors(config, data, workers, encoders)
    loop = _build_loop(model, loss_module, config, data, rng, workers, vectors)
    progress = _restore(loop, model, rng, resumed) if resumed is not None else Progress()

    selector = None
    if run is not None:  # rank 0 validates
        selector = _start_selector(config, data, model, loop.total_steps, progress, resumed, base)

    def checkpoint(state: Progress) -> None:
        snapshot = _checkpoint_state(loop, model, rng, state, prepared)
        if run is not None:
            snapshot["validation"] = selector.state() if selector is not None else None
            save_checkpoint(run.path, snapshot)

    def validate(state: Progress) -> None:
        if selector is not None and selector.due(state.next_step, loop.total_steps):
            score = selector.observe(model, state.next_step)
            log.info("validation %s after step %d: %.4f", selector.metric, state.next_step, score)

    model.train()
    progress = _run_loop(loop, run, config, progress, checkpoint, show_progress, validate)
    shutdown(workers)  # the last collective: what follows is rank 0's alone, however long it takes
    if run is None:  # other ranks: rank 0 saves, evaluates and exports
        return RunResult(config.runs_dir / config.name, {}, None, progress.steps)

    model.eval()
    start = warm_start or config.base_model  # what training began from: WiSE-FT's other end
    known = _final_weights(model, config, selector, start, loop.total_steps)
    model.save(str(run.path / "model"))
    after = evaluate(model, data.eval_set, config.eval_sts, known)
    log.info("after: %s", after)
    metrics = _run_metrics(config, data, loop, workers, progress, time.perf_counter() - started)
    metrics |= {"before": prepared["before"], "after": after}
    if warm_start is not None:
        metrics["warm_start"] = {"config": str(config.warm_start.config), "model": warm_start}  # type: ignore[union-attr]
    if selector is not None:
        metrics["validation"] = selector.summary()
    if config.wise_ft is not None:
        metrics["wise_ft"] = {"alpha": config.wise_ft.alpha, "start": start}
    run.write_metrics(metrics)
    export_dir = _export(config, run, after)
    if not config.keep_checkpoint:
        remove_checkpoint(run.path)
    return RunResult(run.path, metrics, export_dir, progress.steps)
