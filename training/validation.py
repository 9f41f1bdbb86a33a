"""Checkpoint selection on validation queries held out of the training queries.

A small labelled set can make fine-tuning lower retrieval quality (MS MARCO's 21 training queries
lower held-out nDCG@10 by ~0.02: benchmarks/training.md). With `validation:` in a config, a
fraction of the training queries never trains; the model is scored on them before the first step
and every `every` steps, and the run ends with the best-scoring weights, the base model's
included. A checkpoint may replace the base model only if its mean per-query gain over it exceeds
`min_standard_errors` standard errors, so a gain within the noise of a few queries does not count;
or, with `significance` set, if a one-sided paired t-test of the per-query gains rejects "no gain"
at `significance` divided by the number of checkpoints compared (Bonferroni). The second bar accounts
for the selection itself: the best of K noisy checkpoints beats the base model by chance far more
often than one checkpoint does, and with 6 validation queries one standard error is a low bar.
A run that does not beat the base model clearly on its validation queries ships the base model,
and says so (`metrics.json` "validation": chosen_step 0, kept_base true). It guards, it does not
guarantee: on MS MARCO split 1 a +0.014 nDCG@10 gain on 6 validation queries (standard error
0.011) went with -0.034 on the held-out queries (benchmarks/training.md).

Ties keep the earlier step, so the base model wins a tie. The selector's state (history, best
step, best weights) travels in the run's checkpoint, so a resumed run selects over all its steps.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from training.config import ConfigError, TrainConfig, ValidationConfig
from training.data.beir import RetrievalDataset
from training.eval.first_stage import CorpusIndex, corpus_of


def split_validation(
    train_set: RetrievalDataset, config: TrainConfig, settings: ValidationConfig
) -> tuple[RetrievalDataset, RetrievalDataset]:
    """(training queries, validation queries), disjoint, same corpus; a ConfigError naming the key
    when either part would be empty."""
    keep, held = train_set.split_queries(settings.seed, 1 - settings.fraction)
    if not keep.qrels or not held.qrels:
        empty = "training" if not keep.qrels else "validation"
        raise ConfigError(
            f"{config.name}: validation.fraction: {settings.fraction} leaves no {empty} query "
            f"({len(train_set.qrels)} judged training queries)"
        )
    return keep, held


@dataclass
class CheckpointSelector:
    """Scores the model on `dataset` at chosen steps and keeps the best eligible weights (in CPU
    memory). The base model (step 0) is always eligible; a later checkpoint is eligible when its
    mean per-query gain over the base exceeds `min_standard_errors` standard errors of the gains,
    so a handful of validation queries cannot talk the run out of the base model on noise."""

    dataset: RetrievalDataset
    metric: str
    every: int
    min_standard_errors: float = 1.0
    significance: float | None = None  # set: the bar is a t-test at this level over `comparisons`
    comparisons: int = 1  # checkpoints after the base model the run will score (`plan`)
    history: list[dict[str, Any]] = field(default_factory=list)
    base_scores: dict[str, float] | None = None  # query id -> the base model's metric
    best_step: int | None = None
    best_score: float = float("-inf")
    best_state: dict[str, torch.Tensor] | None = None
    best_corpus: CorpusIndex | None = None  # the corpus as the best weights encode it (the final evaluation's)
    _last_corpus: CorpusIndex | None = field(default=None, repr=False)

    def plan(self, total_steps: int) -> None:
        """Record how many checkpoints after the base model a run of `total_steps` steps scores."""
        self.comparisons = max(1, sum(1 for step in range(1, total_steps + 1) if self.due(step, total_steps)))

    def critical_value(self, queries: int) -> float:
        """Standard errors a checkpoint's mean gain must exceed to replace the base model, with
        `queries` validation queries (infinite when a t-test has too few to run)."""
        if self.significance is None:
            return self.min_standard_errors
        if queries < 2:
            return math.inf
        from scipy.stats import t  # a training dependency (sentence-transformers needs it)

        return float(t.ppf(1 - self.significance / self.comparisons, queries - 1))

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to score after `step` steps (0 = the base model); the last step always is."""
        return step == 0 or step % self.every == 0 or step == total_steps

    def score_queries(self, model, corpus: CorpusIndex | None = None) -> dict[str, float]:  # type: ignore[no-untyped-def]
        """query id -> the model's validation metric (full-corpus retrieval) for each validation
        query; `corpus`: the corpus already encoded by the model as it is now."""
        from training.eval.retrieval import retrieval_per_query

        self._last_corpus = corpus_of(model, self.dataset, corpus)
        per_query = retrieval_per_query(model, self.dataset, corpus=self._last_corpus)
        return {q: scores[self.metric] for q, scores in per_query.items()}

    def observe(self, model, step: int, corpus: CorpusIndex | None = None) -> float:  # type: ignore[no-untyped-def]
        """Score the model after `step` steps (`corpus`: the corpus it encoded in these weights, if
        known); keep its weights if it is the best eligible so far."""
        self._last_corpus = None
        scores = self.score_queries(model, corpus)
        mean = statistics.fmean(scores.values())
        if self.base_scores is None:  # the first observation is the base model
            self.base_scores = scores
        gain, error = self._gain(scores)
        eligible = step == 0 or self._beats_base(gain, error, len(scores))
        self.history.append(
            {"step": step, self.metric: round(mean, 6), "gain": round(gain, 6), "stderr": round(error, 6)}
        )
        if eligible and mean > self.best_score:  # strictly better: a tie keeps the earlier weights
            self.best_score, self.best_step = mean, step
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.best_corpus = self._last_corpus
        return mean

    def _beats_base(self, gain: float, error: float, queries: int) -> bool:
        critical = self.critical_value(queries)
        return gain > 0 and critical < math.inf and gain > critical * error

    def _gain(self, scores: dict[str, float]) -> tuple[float, float]:
        """(mean, standard error) of the per-query gains over the base model."""
        base = self.base_scores or scores
        gains = [scores[q] - base[q] for q in scores]
        error = statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else 0.0
        return statistics.fmean(gains), error

    def restore_best(self, model) -> None:  # type: ignore[no-untyped-def]
        """Load the best weights seen into `model` (nothing to do if none was scored)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "base_scores": self.base_scores,
            "best_step": self.best_step,
            "best_score": self.best_score,
            "best_state": self.best_state,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.base_scores = state["base_scores"]
        self.best_step = state["best_step"]
        self.best_score = float(state["best_score"])
        self.best_state = state["best_state"]

    def summary(self) -> dict[str, Any]:
        """What metrics.json records: the scores seen and the step whose weights the run kept."""
        return {
            "queries": len(self.dataset.qrels),
            "metric": self.metric,
            "every": self.every,
            "min_standard_errors": self.min_standard_errors,
            "significance": self.significance,
            "comparisons": self.comparisons,
            "critical_value": _finite_or_none(self.critical_value(len(self.base_scores or {}))),  # as applied
            "history": self.history,
            "chosen_step": self.best_step,
            "kept_base": self.best_step == 0,
        }


def _finite_or_none(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
