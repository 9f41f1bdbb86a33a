"""OpenVINO on the CPU: reads the same ONNX file; bf16 where the CPU has it, else fp32."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import numpy as np

from app.backends.base import BackendUnavailable, InferenceSession, per_stream_threads
from app.core.manifest import Backend, Precision

_HINTS = {Precision.FP32: "f32", Precision.BF16: "bf16"}


@cache
def _core():  # type: ignore[no-untyped-def]
    import openvino as ov

    return ov.Core()


def configure_cpu(runtime_cache_capacity: int) -> None:
    """Bound the CPU plugin's cache of kernels compiled per input shape (models compiled after this).

    Its default holds thousands of shapes, and every new (batch, length) pair of dynamic batching adds
    one: resident memory grew ~110 MB per wave of mixed requests without levelling off. Bounded, old
    shapes are evicted and recompiled if they come back (a small cost, measured in
    benchmarks/results/soak.md)."""
    try:
        _core().set_property("CPU", {"CPU_RUNTIME_CACHE_CAPACITY": str(runtime_cache_capacity)})
    except Exception:  # no OpenVINO CPU plugin here: nothing to bound
        return


class OpenVinoSession(InferenceSession):
    backend = Backend.OPENVINO

    def __init__(self, onnx_path: Path, precision: Precision, threads: int, streams: int = 1) -> None:
        if precision not in self.supported_precisions():
            raise BackendUnavailable(f"openvino cannot run {precision} on this CPU")
        core = _core()
        # int8: a weight-only int8 file (weights decompressed inside each MatMul), its activations
        # in the CPU's best float precision: bf16 where it has it (as measured at export), else f32.
        hint = _HINTS.get(precision) or ("bf16" if Precision.BF16 in self.supported_precisions() else "f32")
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            # Explicit streams: each concurrent infer request runs on its own cores.
            "NUM_STREAMS": str(max(1, streams)),
            "INFERENCE_NUM_THREADS": str(per_stream_threads(threads, streams) * max(1, streams)),
        }
        self.precision = precision
        self._compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]
        self._local = threading.local()

    def _request(self):  # type: ignore[no-untyped-def]
        # An infer request is not thread-safe: one per calling thread.
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        request = self._request()
        request.infer({k: feeds[k] for k in self.input_names})
        return [np.array(request.get_tensor(name).data, dtype=np.float32, copy=True) for name in outputs]

    @staticmethod
    def supported_precisions() -> set[Precision]:
        try:
            capabilities = set(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # library missing or no CPU plugin
            return set()
        precisions = {Precision.FP32, Precision.INT8}
        if "BF16" in capabilities:
            precisions.add(Precision.BF16)
        return precisions
