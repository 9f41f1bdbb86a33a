"""The run folder, one for every runner (bi-encoder, cross-encoder, BlockRank):
`<runs_dir>/<name>/` with `config.yaml` (resolved), `steps.jsonl` (one JSON line per step, flushed
as it goes), `metrics.json`, and whatever the runner saves beside them (model, run files). Also
the one place runs are seeded."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError


def seed_everything(seed: int) -> random.Random:
    """Seed Python, NumPy and torch (if present); returns a private RNG for the run's own draws."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - training always has torch
        pass
    else:
        torch.manual_seed(seed)
    return random.Random(seed)


def finished_metrics(folder: Path, config: BaseModel) -> dict[str, Any] | None:
    """The metrics of the finished run of exactly `config` in `folder` (its metrics.json and model
    written), else None. `runs_dir` is not compared: a runs folder moved or copied still counts.
    The recorded config is read back through the config's own model, so a key added since (with a
    default that changes nothing) does not make an unchanged run look different."""
    paths = [folder / "metrics.json", folder / "model", folder / "config.yaml"]
    if not all(p.exists() for p in paths):
        return None
    try:
        recorded = type(config).model_validate(yaml.safe_load(paths[2].read_bytes()) or {}).model_dump(mode="json")
    except (ValidationError, yaml.YAMLError):
        return None  # written by a version whose keys this one no longer reads: not the same run
    wanted = config.model_dump(mode="json")
    recorded.pop("runs_dir", None)
    wanted.pop("runs_dir", None)
    if recorded != wanted:
        return None
    try:
        metrics = json.loads(paths[0].read_bytes())
    except ValueError:  # cut short or garbled (a run killed as it wrote them): not a finished run
        return None
    return metrics if isinstance(metrics, dict) else None


class StepLog:
    def __init__(self, handle: TextIO) -> None:
        self._handle = handle

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()  # a killed run keeps every step it finished


class StepHistory:
    """A training loop's per-step records, each with the seconds since the loop started: kept in
    `records` (what the loop returns) and, with a log, written as they come."""

    def __init__(self, log: StepLog | None) -> None:
        self.records: list[dict[str, Any]] = []
        self._log = log
        self._started = time.perf_counter()

    def add(self, **fields: Any) -> None:
        record = {**fields, "elapsed_s": round(time.perf_counter() - self._started, 1)}
        self.records.append(record)
        if self._log is not None:
            self._log.write(record)


@contextmanager
def step_history(path: Path | None) -> Iterator[StepHistory]:
    """A StepHistory that also writes a fresh `path` (JSONL) when one is given."""
    if path is None:
        yield StepHistory(None)
        return
    with path.open("w") as handle:
        yield StepHistory(StepLog(handle))


class RunFolder:
    def __init__(self, runs_dir: Path, name: str) -> None:
        self.path = runs_dir / name
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def steps_path(self) -> Path:
        return self.path / "steps.jsonl"

    def write_config(self, config: BaseModel) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    @contextmanager
    def step_log(self, previous: Iterable[dict[str, Any]] = ()) -> Iterator[StepLog]:
        """A fresh steps.jsonl, starting with `previous` records (a resumed run's steps so far)."""
        with self.steps_path.open("w") as handle:
            log = StepLog(handle)
            for record in previous:
                log.write(record)
            yield log

    def write_json(self, name: str, data: Any) -> None:
        (self.path / name).write_text(json.dumps(data, indent=2))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """metrics.json, and plots.png drawn from it and steps.jsonl."""
        from training.plots import write_plots

        self.write_json("metrics.json", metrics)
        write_plots(self.path, metrics)
