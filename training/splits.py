"""One config over several query splits: does its gain hold, or was it one lucky split?

`python -m training eval-splits --config X.yaml` trains and evaluates the config once per query
split seed (`data.query_split.seed` = 0 .. K-1 by default), each run in `runs/<name>-split<seed>/`,
and reports every metric's change (after - before, on that split's held-out queries) as mean, std
and minimum over the splits. Hyper-parameters are to be chosen on the *selection* splits (0 and 1
by default) only; the *report* splits (the others) are summarised apart, so a reported gain was
never tuned on. Everything is checked before the first run: the data loads, K >= 2, and every split
leaves training and held-out queries.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from training.config import ConfigError, TrainConfig
from training.data.beir import load_beir
from training.run import finished_metrics

DEFAULT_SELECTION = (0, 1)


@dataclass(frozen=True)
class SplitPlan:
    seeds: list[int]
    selection: list[int]  # seeds tuned on; the others are the report splits

    @property
    def report(self) -> list[int]:
        return [s for s in self.seeds if s not in self.selection]


SplitSubset = Literal["all", "selection", "report"]


def plan_splits(
    config: TrainConfig, count: int, selection: tuple[int, ...] = DEFAULT_SELECTION, only: SplitSubset = "all"
) -> SplitPlan:
    """The split seeds to run, checked against the data (one-line ConfigError naming the key).
    `only`: run the selection splits alone (while tuning) or the report splits alone (once the
    settings are fixed); a later `all` run reuses every finished split."""
    where = f"{config.name}: data.query_split"
    if count < 2:
        raise ConfigError(f"{where}: eval-splits needs at least 2 splits (got {count})")
    full = SplitPlan(list(range(count)), [s for s in selection if s < count])
    seeds = {"all": full.seeds, "selection": full.selection, "report": full.report}[only]
    if not seeds:
        raise ConfigError(f"{where}: {count} splits leave no {only} split (selection splits: {full.selection})")
    if config.data.format not in ("beir", "corpus") or config.data.query_split is None:
        raise ConfigError(f"{where}: eval-splits needs data.format beir (or corpus) with a query_split")
    dataset = load_beir(config.data.path, config.data.qrels_split)  # the judged queries that evaluate
    for seed in seeds:
        train, held_out = dataset.split_queries(seed, config.data.query_split.train_fraction)
        if not train.qrels or not held_out.qrels:
            empty = "training" if not train.qrels else "held-out"
            raise ConfigError(
                f"{where}.train_fraction: {config.data.query_split.train_fraction} leaves no {empty} query "
                f"in split {seed} ({len(dataset.qrels)} judged queries)"
            )
    return SplitPlan(seeds, [s for s in full.selection if s in seeds])


def summarize(deltas: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """metric -> {mean, std, min, splits: {seed: delta}} over the given splits' deltas."""
    metrics = sorted({m for values in deltas.values() for m in values})
    summary: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        values = {seed: d[metric] for seed, d in deltas.items() if metric in d}
        series = list(values.values())
        summary[metric] = {
            "mean": statistics.fmean(series),
            "std": statistics.stdev(series) if len(series) > 1 else 0.0,
            "min": min(series),
            "splits": values,
        }
    return summary


def metric_deltas(metrics: dict[str, Any]) -> dict[str, float]:
    """after - before for every numeric metric in both (the query count is not a metric)."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    return {
        k: float(after[k]) - float(before[k])
        for k in after
        if k != "queries" and isinstance(after[k], int | float) and isinstance(before.get(k), int | float)
    }


def assemble(name: str, plan: SplitPlan, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The summary of finished runs (seed -> metrics.json): all splits, selection and report apart."""
    deltas = {seed: metric_deltas(metrics) for seed, metrics in runs.items()}
    return {
        "name": name,
        "seeds": plan.seeds,
        "selection_splits": plan.selection,
        "report_splits": plan.report,
        "all": summarize(deltas),
        "selection": summarize({s: deltas[s] for s in plan.selection}) if plan.selection else {},
        "report": summarize({s: deltas[s] for s in plan.report}) if plan.report else {},
        "before": {seed: m.get("before", {}) for seed, m in runs.items()},
        "after": {seed: m.get("after", {}) for seed, m in runs.items()},
        # the step whose weights each run kept, for configs with checkpoint selection (0 = the base model)
        "chosen_steps": {seed: m["validation"]["chosen_step"] for seed, m in runs.items() if "validation" in m},
        # what synthetic_lists added per run and how fast the generator wrote it (training/synthetic.py)
        "synthetic_lists": {seed: m["synthetic_lists"] for seed, m in runs.items() if m.get("synthetic_lists")},
    }


def run_splits(
    config: TrainConfig,
    plan: SplitPlan,
    train: Callable[[TrainConfig], Any],
    evaluate: Callable[[str, TrainConfig], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train `config` on every split of `plan` (with `train`, returning an object with .metrics and
    .run_dir); writes `<runs_dir>/<name>-splits.json` and returns it. A split whose run in
    `runs_dir` finished with the same config is not trained again, so a stopped run goes on where
    it stopped, and more splits can be added to a finished one.

    A `corpus` config trains on pseudo-queries only, so its training is the same on every split:
    with `evaluate` (model source, split config -> retrieval scores) it is trained once, on the
    first split, and the base and trained models are then scored on each other split's held-out
    half (STS, split-independent, is the trained run's)."""
    if not config.eval_before:
        config = config.model_copy(update={"eval_before": True})  # a delta needs the base model's scores
    runs: dict[int, dict[str, Any]] = {}
    trained_once: Any = None
    for seed in plan.seeds:
        run_config = split_config(config, seed)
        if trained_once is not None and evaluate is not None:
            runs[seed] = _rescored(trained_once, run_config, evaluate)
            continue
        folder = Path(config.runs_dir) / run_config.name
        done = finished_metrics(folder, run_config)  # a stopped run goes on at its first unfinished split
        trained = _Finished(folder, done) if done is not None else train(run_config)
        runs[seed] = trained.metrics
        if config.data.format == "corpus":
            trained_once = trained
    result = assemble(config.name, plan, runs)
    out = Path(config.runs_dir) / f"{config.name}-splits.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


@dataclass(frozen=True)
class _Finished:
    """A split's run finished earlier (what `train` returns, as far as this module reads it)."""

    run_dir: Path
    metrics: dict[str, Any]


def split_config(config: TrainConfig, seed: int) -> TrainConfig:
    """`config` on query split `seed`: its own run name, no export."""
    split = config.data.query_split.model_copy(update={"seed": seed})  # type: ignore[union-attr]
    data = config.data.model_copy(update={"query_split": split})
    return config.model_copy(update={"name": f"{config.name}-split{seed}", "data": data, "export": None})


def _rescored(trained: Any, config: TrainConfig, evaluate: Callable[[str, TrainConfig], dict[str, float]]) -> dict:
    """The metrics of `trained` (a run on another split of a corpus config) on `config`'s split."""
    before, after = evaluate(config.base_model, config), evaluate(str(trained.run_dir / "model"), config)
    for scores, measured in ((before, trained.metrics["before"]), (after, trained.metrics["after"])):
        if "sts_spearman" in measured:  # the same sentences on every split
            scores["sts_spearman"] = measured["sts_spearman"]
    trained_on = trained.metrics["name"]
    return {**trained.metrics, "name": config.name, "trained_on": trained_on, "before": before, "after": after}


REPORTED = ("ndcg@10", "mrr@10", "recall@100", "sts_spearman")


def markdown(result: dict[str, Any], metrics: tuple[str, ...] = REPORTED) -> str:
    """The change of each metric: mean ± std and min, over all splits, the selection and the report."""
    lines = [
        f"{result['name']}: change after - before on each split's held-out queries",
        "",
        "| metric | all splits: mean ± std (min) | selection "
        + str(result["selection_splits"])
        + " | report "
        + str(result["report_splits"])
        + " |",
        "|---|---|---|---|",
    ]
    for metric in metrics:
        cells = []
        for part in ("all", "selection", "report"):
            entry = result[part].get(metric)
            cells.append(f"{entry['mean']:+.4f} ± {entry['std']:.4f} ({entry['min']:+.4f})" if entry else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
