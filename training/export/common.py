"""What every exporter shares: the staging folder, the candidate variants, parity and speed helpers."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from app.backends import BackendUnavailable, available
from app.core.manifest import Backend, Precision

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every backend x precision the service can run from the fp32 ONNX file, with what it needs.
CANDIDATE_VARIANTS: list[tuple[Backend, Precision, list[str]]] = [
    (Backend.ONNXRUNTIME, Precision.FP32, []),
    (Backend.OPENVINO, Precision.FP32, []),
    (Backend.OPENVINO, Precision.BF16, ["BF16"]),
]
# Variants that run a weight-only int8 copy of the graph (training/export/quantize.py): int8 weights,
# activations in bf16 where the CPU has it (else fp32). Text exporters add them.
INT8_VARIANTS: list[tuple[Backend, Precision, list[str]]] = [(Backend.OPENVINO, Precision.INT8, [])]


def open_candidates(
    open_model: Callable[[Backend, Precision], T],
    variants: Sequence[tuple[Backend, Precision, list[str]]] = CANDIDATE_VARIANTS,
) -> Iterator[tuple[Backend, Precision, list[str], T]]:
    """Each of `variants` this machine can run, opened by `open_model(backend, precision)`; the
    others are skipped (logged), not failed: an export on a CPU without bf16 still succeeds."""
    for backend, precision, requires in variants:
        if not available(backend, precision):
            log.info("skipping %s-%s: not available on this machine", backend, precision)
            continue
        try:
            model = open_model(backend, precision)
        except BackendUnavailable as exc:
            log.info("skipping %s-%s: %s", backend, precision, exc)
            continue
        yield backend, precision, requires, model


class _Encodes(Protocol):
    def encode(self, inputs: Any, batch_size: int = 32) -> np.ndarray: ...


def measure_speeds(models: Sequence[_Encodes], inputs: Any, rounds: int = 3) -> list[float]:
    """Inputs/s per model: rounds interleaved across models, best round kept, so a burst of
    load from elsewhere on the machine cannot make one variant look slower than another."""
    best = [0.0] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            start = time.perf_counter()
            model.encode(inputs, batch_size=32)
            best[i] = max(best[i], len(inputs) / (time.perf_counter() - start))
    return [round(x, 1) for x in best]


def measure_query_latency(models: Sequence[_Encodes], queries: Sequence[Any]) -> list[float]:
    """Median ms of one input on its own per model (a search query's path), calls interleaved
    across models for the same reason as `measure_speeds`."""
    times: list[list[float]] = [[] for _ in models]
    for query in queries:
        for i, model in enumerate(models):
            start = time.perf_counter()
            model.encode([query], batch_size=1)
            times[i].append((time.perf_counter() - start) * 1000)
    return [round(float(np.median(t)), 2) for t in times]


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b`: (n, d) x (n, d) -> (n,)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(1)


@contextlib.contextmanager
def staged_folder(out_dir: Path, name: str) -> Iterator[Path]:
    """A private staging folder beside `out_dir` that replaces it only if the block succeeds, so a
    served model folder is never half-written; on failure the staging folder is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the served folder must be readable by the service user
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def version(module: str) -> str:
    try:
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
