"""One search query through a served text model: where a rescore model's query embedding can get faster.

Search with stored second-stage vectors (issue 15) costs one extra query embedding by the rescore
model (all-mpnet-base-v2) beside the first stage's (all-MiniLM-L6-v2). This measures, in process,
the median ms of one Cranfield query alone (batch 1, its own length, no padding) for:

1. every variant in each model's manifest, on 1 and 2 threads (the served session's settings);
2. OpenVINO options not served today, on the mpnet graphs: the input reshaped to a static length
   (the query right-padded to it; the mask keeps the vector the same) and the weight-only int8 graph
   with dynamic int8 activations (`DYNAMIC_QUANTIZATION_GROUP_SIZE`), each with its min cosine to
   the ONNX Runtime fp32 vectors of the same queries (the serving bar is 0.999).

Usage: .venv/bin/python benchmarks/query_latency.py [--queries 80]   (needs `make model rerank-model`)
Writes benchmarks/results/query_latency.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.manifest import Manifest  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402
from app.inference.tokenizer import TextTokenizer  # noqa: E402
from benchmarks.rerank_served import cranfield_queries  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("minilm-l6", "mpnet-rerank")
WARM_UP = 5


def median_ms(run: Callable[[int], np.ndarray], count: int) -> tuple[float, np.ndarray]:
    """Median ms of run(i) over queries i (after a warm-up), and the (count, dim) vectors."""
    for i in range(WARM_UP):
        run(i)
    seconds, vectors = [], []
    for i in range(count):
        started = time.perf_counter()
        vectors.append(run(i))
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds) * 1000, 2), np.stack(vectors)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))), 5)


def served_variants(texts: list[str]) -> list[dict]:
    rows = []
    for name in MODELS:
        folder = ROOT / "models" / name
        manifest = Manifest.load(folder)
        for variant in (v for v in manifest.parity if v.tower == "text"):
            for threads in (1, 2):
                model = TextModel(folder, manifest, variant, threads=threads, streams=1)
                ids = [t.ids for t in model.tokenize(texts)]
                ms, _ = median_ms(lambda i, m=model, ids=ids: m.forward([ids[i]])[0, 0], len(ids))
                rows.append({"model": name, "variant": variant.key, "threads": threads, "median_ms": ms})
                print(rows[-1], flush=True)
    return rows


def openvino_options(texts: list[str]) -> list[dict]:
    import openvino as ov

    folder = ROOT / "models" / "mpnet-rerank"
    manifest = Manifest.load(folder)
    reference = TextModel(folder, manifest, None, threads=2)
    ids = [t.ids for t in reference.tokenize(texts)]
    exact = np.stack([reference.forward([seq])[0, 0] for seq in ids])
    core = ov.Core()
    base = {"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2", "PERFORMANCE_HINT": "LATENCY"}
    options = [
        ("bf16, dynamic length (as served)", "model.onnx", {"INFERENCE_PRECISION_HINT": "bf16"}, None),
        ("bf16, static length 32", "model.onnx", {"INFERENCE_PRECISION_HINT": "bf16"}, 32),
        ("bf16, static length 64", "model.onnx", {"INFERENCE_PRECISION_HINT": "bf16"}, 64),
        ("int8 weights, bf16 (as served)", "model.int8.onnx", {"INFERENCE_PRECISION_HINT": "bf16"}, None),
        *(
            (
                f"int8 weights, f32, dynamic int8 activations (groups of {g})",
                "model.int8.onnx",
                {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": g},
                None,
            )
            for g in ("32", "64", "128")
        ),
        (
            "int8 weights, f32, dynamic int8 activations (groups of 64), static length 32",
            "model.int8.onnx",
            {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"},
            32,
        ),
    ]
    rows = []
    for label, onnx_file, config, static in options:
        graph = core.read_model(str(folder / onnx_file))
        if static:
            graph.reshape({port.get_any_name(): [1, static] for port in graph.inputs})
        compiled = core.compile_model(graph, "CPU", {**base, **config})
        request = compiled.create_infer_request()
        names = [port.get_any_name() for port in compiled.inputs]
        kept = [i for i, seq in enumerate(ids) if not static or len(seq) <= static]

        def run(i: int, request=request, names=names, static=static, kept=kept) -> np.ndarray:  # type: ignore[no-untyped-def]
            feeds = reference.tokenizer.pad([ids[kept[i]]], names, 1)
            if static:  # right-pad to the static length; the attention mask is 0 there
                feeds = {k: np.pad(v, ((0, 0), (0, static - v.shape[1]))) for k, v in feeds.items()}
                feeds["input_ids"][0, len(ids[kept[i]]) :] = reference.tokenizer.pad_id
            request.infer(feeds)
            return np.array(request.get_tensor("sentence_embedding").data)[0]

        ms, vectors = median_ms(run, len(kept))
        rows.append(
            {"option": label, "queries": len(kept), "median_ms": ms, "min_cosine": min_cosine(vectors, exact[kept])}
        )
        print(rows[-1], flush=True)
    return rows


def write(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# One search query through a text model (in process, 2 cores)",
        "",
        f"Produced by `benchmarks/query_latency.py`: median ms of one Cranfield query alone (batch 1, "
        f"{report['queries']} queries, mean {report['mean_tokens']} tokens), {report['date']}.",
        "",
        "## Served variants",
        "",
        "| model | variant | threads | median ms |",
        "|---|---|---|---|",
        *(f"| {r['model']} | {r['variant']} | {r['threads']} | {r['median_ms']} |" for r in report["served"]),
        "",
        "## OpenVINO options on mpnet-rerank (2 threads; min cosine to ONNX Runtime fp32, serving bar 0.999)",
        "",
        "| option | queries | median ms | min cosine |",
        "|---|---|---|---|",
        *(
            f"| {r['option']} | {r['queries']} | {r['median_ms']} | {r['min_cosine']} |"
            for r in report["openvino_options"]
        ),
        "",
    ]
    (RESULTS / "query_latency.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=80)
    args = parser.parse_args()
    texts = cranfield_queries()[: args.queries]
    folder = ROOT / "models" / "minilm-l6"
    tower = Manifest.load(folder).text_tower
    tokens = [len(t.ids) for t in TextTokenizer(folder / tower.tokenizer_file, tower.max_tokens).encode(texts)]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "queries": len(texts),
        "mean_tokens": round(statistics.mean(tokens), 1),
        "served": served_variants(texts),
        "openvino_options": openvino_options(texts),
    }
    write(report)


if __name__ == "__main__":
    main()
