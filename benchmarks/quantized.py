"""Retrieval quality of quantised embeddings (what `encoding_format` int8 / binary gives a user).

minilm-l6 as served (its manifest's calibration ranges), exact search over Cranfield (all judged
queries) and the MS MARCO subset: float32 cosine; int8 (documents and query quantised, integer dot
product, as a vector database storing int8 would); binary (Hamming similarity of sign bits); binary
first stage (top 100) rescored by the float query against the int8 documents (the usual way binary
vectors are served). nDCG@10 and its ratio to float; bytes per vector.

Usage: .venv/bin/python benchmarks/quantized.py
Writes benchmarks/results/quantized.json and .md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.quantize import quantize  # noqa: E402
from benchmarks.rerank_served import DATASETS, cached_vectors, served  # noqa: E402
from training.data.beir import load_beir  # noqa: E402
from training.eval.metrics import ir_metrics, ranked_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def top10(scores: np.ndarray, doc_ids: list[str]) -> list[str]:
    return [doc_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]


def evaluate(name: str, folder: Path) -> dict:
    model = served("minilm-l6")
    ranges = model.manifest.quantization.ranges  # type: ignore[union-attr]
    dataset = load_beir(folder)
    doc_ids = list(dataset.corpus)
    docs = cached_vectors(model, name, doc_ids, [dataset.doc_text(d) for d in doc_ids])
    matrix = np.stack([docs[d] for d in doc_ids]).astype(np.float32)
    query_ids = sorted(q for q in dataset.queries if dataset.qrels.get(q))
    queries = model.encode([dataset.queries[q] for q in query_ids]).astype(np.float32)
    int8_docs = quantize(matrix, "int8", ranges).astype(np.int32)
    int8_queries = quantize(queries, "int8", ranges).astype(np.int32)
    bits_docs = np.unpackbits(quantize(matrix, "ubinary", None), axis=1).astype(np.int32) * 2 - 1
    bits_queries = np.unpackbits(quantize(queries, "ubinary", None), axis=1).astype(np.int32) * 2 - 1
    runs: dict[str, dict[str, list[str]]] = {k: {} for k in ("float32", "int8", "binary", "binary + int8 rescore")}
    for row, qid in enumerate(query_ids):
        runs["float32"][qid] = top10(matrix @ queries[row], doc_ids)
        runs["int8"][qid] = top10((int8_docs @ int8_queries[row]).astype(np.float64), doc_ids)
        hamming = (bits_docs @ bits_queries[row]).astype(np.float64)  # dim - 2 x Hamming distance
        runs["binary"][qid] = top10(hamming, doc_ids)
        shortlist = np.argsort(-hamming, kind="stable")[:100]
        rescored = int8_docs[shortlist].astype(np.float32) @ queries[row]  # float query x int8 documents
        runs["binary + int8 rescore"][qid] = [doc_ids[shortlist[i]] for i in np.argsort(-rescored, kind="stable")[:10]]
    out = {}
    base = None
    for key, ranking in runs.items():
        ndcg = ir_metrics(ranked_run(ranking), dataset.qrels)["ndcg@10"]
        base = base or ndcg
        out[key] = {"ndcg@10": round(ndcg, 4), "ratio": round(ndcg / base, 4)}
    dim = matrix.shape[1]
    out["bytes_per_vector"] = {"float32": 4 * dim, "int8": dim, "binary": dim // 8}
    out["queries"] = len(query_ids)
    return out


def main() -> None:
    report = {name: evaluate(name, folder) for name, folder in DATASETS.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantized.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Quantised embeddings: retrieval quality ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "`.venv/bin/python benchmarks/quantized.py`: minilm-l6 as served, int8 ranges from its manifest",
        "(calibrated at export on 1,000 STS-B dev sentences, not on these corpora), exact search.",
        "",
        "| corpus | format | bytes / vector | nDCG@10 | vs float32 |",
        "|---|---|---|---|---|",
    ]
    for name, data in report.items():
        sizes = data["bytes_per_vector"]
        for key in ("float32", "int8", "binary", "binary + int8 rescore"):
            size = {"binary": sizes["binary"], "binary + int8 rescore": f"{sizes['binary']} + {sizes['int8']}"}.get(
                key, sizes.get(key)
            )
            lines.append(
                f"| {name} ({data['queries']} queries) | {key} | {size} | {data[key]['ndcg@10']} | {data[key]['ratio']} |"
            )
    (RESULTS / "quantized.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
