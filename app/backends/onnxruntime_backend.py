"""ONNX Runtime on the CPU: the portable backend and the parity reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.backends.base import BackendUnavailable, InferenceSession, per_stream_threads
from app.core.manifest import Backend, Precision


class OnnxRuntimeSession(InferenceSession):
    backend = Backend.ONNXRUNTIME

    def __init__(self, onnx_path: Path, precision: Precision, threads: int, streams: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable("onnxruntime is not installed") from exc
        if precision not in self.supported_precisions():
            raise BackendUnavailable(f"onnxruntime does not serve {precision} here")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Concurrent run() calls are safe; each gets its own share of the cores.
        options.intra_op_num_threads = per_stream_threads(threads, streams)
        options.inter_op_num_threads = 1
        self.precision = precision
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        results = self._session.run(outputs, {k: feeds[k] for k in self.input_names})
        return [np.asarray(r, dtype=np.float32) for r in results]

    @staticmethod
    def supported_precisions() -> set[Precision]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return set()
        # int8 needs its own quantised ONNX file; the session itself runs whatever file it is given.
        return {Precision.FP32, Precision.INT8}
