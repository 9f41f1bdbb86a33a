"""One search query through the rescore model (all-mpnet-base-v2) with int8 matrix multiplies in
ONNX Runtime: can a query get cheap enough for search-with-rescore's ≤ 2x (issue 15) and still pass
the serving bar (min cosine 0.999 to fp32)?

A single short query reads every MatMul weight once, so int8 weights halve the bytes OpenVINO's
bf16 graph reads; `query_latency.py` measured OpenVINO's int8 options (10-14 ms, none near a plain
search's ~7 ms). This measures ONNX Runtime's, on the same Cranfield queries:

1. W8A8 dynamic (`quantize_dynamic`): int8 weights per output channel, activations quantised per
   tensor at run time (one scale for a whole (tokens, channels) input);
2. the same after SmoothQuant (Xiao et al., 2023): per input channel j, s_j = max|X_j|^α /
   max|W_j|^(1-α) from calibration texts; the MatMul's input is divided by s (an inserted Mul) and
   the weight's rows multiplied by it, so activation outliers move into the per-channel weights;
3. `MatMulNBits` 8-bit weights in blocks along the input (32 or 128), activations quantised per
   block at run time (`accuracy_level` 4).

Calibration uses Cranfield queries 81-225 and the first 150 titles; the 80 timed queries are 1-80.
Timings: median ms of one query (batch 1, its own length), 2 intra-op threads, after 5 warm-ups,
OpenVINO's served bf16 graph timed in the same run for comparison.

Usage: .venv/bin/python benchmarks/query_int8.py   (needs `make rerank-model`; run alone; the
MatMulNBits rows need `pip install onnx_ir`, which the product does not, and are left out without it)
Writes benchmarks/results/query_int8.json and .md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.query_latency import median_ms, min_cosine  # noqa: E402
from benchmarks.rerank_served import cranfield_queries  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FOLDER = ROOT / "models" / "mpnet-rerank"
CORPUS = ROOT / "data" / "beir" / "cranfield" / "corpus.jsonl"
TIMED, THREADS = 80, 2
ALPHAS = (0.5, 0.7, 0.85)
SERVING_BAR = 0.999


def token_ids(texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    return [tokenizer.encode(t).ids[:384] for t in texts]


def feeds(ids: list[int]) -> dict[str, np.ndarray]:
    row = np.array([ids], dtype=np.int64)
    return {"input_ids": row, "attention_mask": np.ones_like(row)}


def ort_runner(path: Path, optimise: bool = True) -> Callable[[list[int]], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda ids: session.run(["sentence_embedding"], feeds(ids))[0][0]


def openvino_bf16() -> Callable[[list[int]], np.ndarray]:
    import openvino as ov

    config = {"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(THREADS), "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(
        str(FOLDER / "model.onnx"), "CPU", {**config, "INFERENCE_PRECISION_HINT": "bf16"}
    )
    request = compiled.create_infer_request()

    def run(ids: list[int]) -> np.ndarray:
        request.infer(feeds(ids))
        return np.array(request.get_tensor("sentence_embedding").data)[0]

    return run


def weight_matmuls(model) -> list:  # type: ignore[no-untyped-def]
    weights = {init.name for init in model.graph.initializer}
    return [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def activation_maxima(calibration: list[list[int]]) -> dict[str, np.ndarray]:
    """Per weight-MatMul input tensor: max |x| per channel over the calibration texts."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(FOLDER / "model.onnx"))
    outputs = {o.name for o in model.graph.output}
    for name in sorted({node.input[0] for node in weight_matmuls(model)} - outputs):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        maxima: dict[str, np.ndarray] = {}
        for ids in calibration:
            for name, value in zip(names, session.run(None, feeds(ids)), strict=True):
                if value.ndim >= 2:
                    per_channel = np.abs(value).reshape(-1, value.shape[-1]).max(0)
                    maxima[name] = np.maximum(maxima.get(name, 0), per_channel)
    return maxima


def smoothed(maxima: dict[str, np.ndarray], alpha: float, target: Path) -> None:
    """model.onnx with every weight MatMul's input divided by s (a Mul) and its weight rows times s."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(FOLDER / "model.onnx"))
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:  # a weight MatMul
            weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)  # (K, N)
            x_max = np.clip(maxima[node.input[0]].astype(np.float32), 1e-5, None)  # (K,)
            w_max = np.clip(np.abs(weight).max(1), 1e-5, None)  # (K,)
            scale = x_max**alpha / w_max ** (1 - alpha)
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            inverse, divided = f"{node.name}.smooth_inverse", f"{node.name}.smoothed"
            model.graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), inverse))
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [divided], name=f"{node.name}.smooth"))
            node.input[0] = divided
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))


def dynamic_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(target), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
    )


def matmul_nbits(block: int, target: Path) -> bool:
    """8-bit block-wise weights (MatMulNBits); False when this onnxruntime lacks the quantiser's
    dependencies (onnx_ir)."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError:
        return False
    import onnx

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(FOLDER / "model.onnx")),
        bits=8,
        block_size=block,
        is_symmetric=True,
        accuracy_level=4,
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return True


def measure(label: str, run: Callable[[list[int]], np.ndarray], timed: list[list[int]], exact: np.ndarray) -> dict:
    ms, found = median_ms(lambda i: run(timed[i]), len(timed))  # after query_latency's warm-up
    cosines = (found * exact).sum(1) / np.linalg.norm(found, axis=1) / np.linalg.norm(exact, axis=1)
    row = {
        "option": label,
        "median_ms": ms,
        "min_cosine": min_cosine(found, exact),
        "mean_cosine": round(float(cosines.mean()), 5),
    }
    print(row, flush=True)
    return row


def main() -> None:
    queries = cranfield_queries()
    titles = [json.loads(line).get("title", "") for line in CORPUS.read_text().split("\n") if line.strip()][:150]
    timed = token_ids(queries[:TIMED])
    calibration = token_ids(queries[TIMED:] + [t for t in titles if t])
    reference = ort_runner(FOLDER / "model.onnx")
    exact = np.stack([reference(ids) for ids in timed])
    rows = [
        measure("onnxruntime fp32 (reference)", reference, timed, exact),
        measure("openvino bf16 (as served)", openvino_bf16(), timed, exact),
    ]
    maxima = activation_maxima(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dynamic_int8(FOLDER / "model.onnx", work / "dynamic.onnx")
        rows.append(measure("W8A8 dynamic, per-tensor activations", ort_runner(work / "dynamic.onnx"), timed, exact))
        for alpha in ALPHAS:
            smoothed(maxima, alpha, work / f"smooth-{alpha}.onnx")
            dynamic_int8(work / f"smooth-{alpha}.onnx", work / f"smooth-{alpha}-int8.onnx")
            label = f"W8A8 dynamic after SmoothQuant, alpha {alpha}"
            rows.append(measure(label, ort_runner(work / f"smooth-{alpha}-int8.onnx"), timed, exact))
        for block in (128, 32):
            if matmul_nbits(block, work / f"nbits-{block}.onnx"):
                label = f"MatMulNBits 8-bit weights, blocks of {block}, int8 activations per block"
                rows.append(measure(label, ort_runner(work / f"nbits-{block}.onnx"), timed, exact))
    write(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "queries": TIMED, "calibration_texts": len(calibration), "rows": rows}
    )


def write(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_int8.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# One rescore query through all-mpnet-base-v2 with int8 matrix multiplies (ONNX Runtime, 2 threads)",
        "",
        f"Produced by `benchmarks/query_int8.py`, {report['date']}: median ms of one Cranfield query alone "
        f"({report['queries']} queries), min and mean cosine to ONNX Runtime fp32 (serving bar {SERVING_BAR}); "
        f"SmoothQuant calibrated on {report['calibration_texts']} other Cranfield queries and titles.",
        "",
        "| option | median ms | min cosine | mean cosine | passes the bar |",
        "|---|---|---|---|---|",
        *(
            f"| {r['option']} | {r['median_ms']} | {r['min_cosine']} | {r['mean_cosine']} | "
            f"{'yes' if r['min_cosine'] >= SERVING_BAR else 'no'} |"
            for r in report["rows"]
        ),
        "",
    ]
    (RESULTS / "query_int8.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
