"""Inference backends behind one interface (`InferenceSession`)."""

from __future__ import annotations

from pathlib import Path

from app.backends.base import BackendUnavailable, InferenceSession
from app.backends.onnxruntime_backend import OnnxRuntimeSession
from app.backends.openvino_backend import OpenVinoSession
from app.core.manifest import Backend, Precision

SESSION_TYPES: dict[Backend, type[InferenceSession]] = {
    Backend.ONNXRUNTIME: OnnxRuntimeSession,
    Backend.OPENVINO: OpenVinoSession,
}


def open_session(
    onnx_path: Path, backend: Backend, precision: Precision, threads: int = 0, streams: int = 1
) -> InferenceSession:
    return SESSION_TYPES[backend](onnx_path, precision, threads, streams)


def available(backend: Backend, precision: Precision) -> bool:
    return precision in SESSION_TYPES[backend].supported_precisions()


__all__ = ["BackendUnavailable", "InferenceSession", "available", "open_session"]
