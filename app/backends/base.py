"""The one interface every inference backend implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from app.core.manifest import Backend, Precision


class BackendUnavailable(RuntimeError):
    """The backend's library is missing, or this CPU cannot run the requested precision."""


def per_stream_threads(threads: int, streams: int) -> int:
    total = threads or os.cpu_count() or 1
    return max(1, total // max(1, streams))


class InferenceSession(ABC):
    """Runs one ONNX graph: named int64 inputs in, one float32 output array out."""

    backend: Backend
    precision: Precision

    @abstractmethod
    def __init__(self, onnx_path: Path, precision: Precision, threads: int, streams: int = 1) -> None:
        """`threads`: total inference threads (0 = one per core); `streams`: concurrent `run` calls
        the session is tuned for, each on `threads / streams` threads."""

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run one forward pass and return the named outputs as float32 arrays."""

    @staticmethod
    @abstractmethod
    def supported_precisions() -> set[Precision]:
        """Precisions this backend can run on this machine (empty if the library is missing)."""
