"""The one interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from app.core.manifest import Backend, Precision


class BackendUnavailable(RuntimeError):
    """The backend's library is missing, or this CPU cannot run the requested precision."""


class InferenceSession(ABC):
    """Runs one ONNX graph: named int64 inputs in, one float32 output array out."""

    backend: Backend
    precision: Precision

    @abstractmethod
    def __init__(self, onnx_path: Path, precision: Precision, threads: int) -> None: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run one forward pass and return the named outputs as float32 arrays."""

    @staticmethod
    @abstractmethod
    def supported_precisions() -> set[Precision]:
        """Precisions this backend can run on this machine (empty if the library is missing)."""
