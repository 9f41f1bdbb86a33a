"""Can search rescore with stored mpnet vectors without running mpnet on the query?

Issue 15's latency target (search with stored second-stage vectors <= 2x plain search) is missed
because the rescore query is embedded by all-mpnet-base-v2 (~5x MiniLM's compute). The cheapest
query encoder aligned to mpnet's space is a linear map of the first stage's own query vector:
`normalise(W @ minilm(q))`, W (384 -> 768) fitted by ridge regression to mpnet's vectors of the same
texts, so the rescore query costs one matrix-vector product.

Fit set: the STS-B train sentences (a seeded sample) plus the *train* half's queries of both
datasets (seed 0, as benchmarks/rerank.py); never a held-out query. Ridge lambda is fixed (0.1).
Evaluation: the held-out half, candidates = minilm-l6's top-50, nDCG@10 of the first stage, of
mpnet's query (cosine alone; fused `cosine + w x first stage`, w fitted on the train half from a
fixed grid), and of the mapped query (same two forms). Served ONNX variants throughout; document
vectors come from the cache of benchmarks/rerank_served.py.

Usage: .venv/bin/python benchmarks/query_map.py [--fit-sentences 6000]
Writes benchmarks/results/query_map.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.text_model import TextModel  # noqa: E402
from benchmarks.rerank_served import DATASETS, Rescored, fused, rescore_held_out, served  # noqa: E402
from training.data.beir import RetrievalDataset, load_beir  # noqa: E402
from training.data.sts import sts_sentences  # noqa: E402
from training.eval.metrics import ir_metrics, ranked_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STS_TRAIN = ROOT.parent / "shared" / "data" / "stsbenchmark" / "sts-train.csv"
RIDGE = 0.1


def fit_map(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(384, 768) ridge solution of first @ W ~ second (rows: unit vectors of the same texts)."""
    gram = first.T @ first + RIDGE * np.eye(first.shape[1], dtype=first.dtype)
    return np.linalg.solve(gram, first.T @ second)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)


def judged(split: RetrievalDataset) -> dict[str, str]:
    return {q: t for q, t in split.queries.items() if split.qrels.get(q)}


def ndcg_rows(held_out: RetrievalDataset, candidates: dict[str, list[str]], sides: dict[str, Rescored]) -> dict:
    """nDCG@10 of the first stage's candidates and of each query side: cosine alone, and fused with
    the first stage at the weight fitted on the train half."""
    rows = {"first stage (minilm-l6)": ir_metrics(ranked_run(candidates), held_out.qrels)["ndcg@10"]}
    for side, run in sides.items():
        rows[f"{side} query, cosine alone"] = ir_metrics(run.second, held_out.qrels)["ndcg@10"]
        rows[f"{side} query, fused (w = {run.weight})"] = ir_metrics(
            fused(run.first, run.second, run.weight), held_out.qrels
        )["ndcg@10"]
    return rows


def dataset_section(name: str, part: dict, side: str) -> list[str]:
    """One dataset's markdown: its `ndcg_rows` against the first stage, and `side`'s alignment."""
    base = part["ndcg@10"]["first stage (minilm-l6)"]
    return [
        f"## {name} ({part['queries']} held-out queries; {side}-query cosine to mpnet's {part['alignment']:.3f})",
        "",
        "| query side | nDCG@10 | vs first stage |",
        "|---|---|---|",
        *(f"| {row} | {value:.4f} | {value - base:+.4f} |" for row, value in part["ndcg@10"].items()),
    ]


def evaluate(name: str, dataset: RetrievalDataset, first: TextModel, second: TextModel, mapping: np.ndarray) -> dict:
    def mpnet(texts: list[str], _: np.ndarray) -> np.ndarray:
        return second.encode(texts)

    def mapped(_: list[str], q_first: np.ndarray) -> np.ndarray:
        return unit(q_first @ mapping)

    held_out, candidates, sides = rescore_held_out(name, dataset, first, second, {"mpnet": mpnet, "mapped": mapped})
    rows = ndcg_rows(held_out, candidates, sides)
    texts = [held_out.queries[q] for q in sorted(candidates)]
    alignment = float((mapped(texts, first.encode(texts)) * second.encode(texts)).sum(axis=1).mean())
    return {
        "queries": len(candidates),
        "fitted_weights": {side: run.weight for side, run in sides.items()},
        "alignment": alignment,
        "ndcg@10": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fit-sentences", type=int, default=6000)
    args = parser.parse_args()
    first, second = served("minilm-l6"), served("mpnet-rerank")
    datasets = {name: load_beir(folder) for name, folder in DATASETS.items()}
    sentences = sts_sentences(STS_TRAIN)
    np.random.default_rng(0).shuffle(sentences)
    fit_texts = sentences[: args.fit_sentences]
    for dataset in datasets.values():
        fit_texts += list(judged(dataset.split_queries(0)[0]).values())
    started = time.perf_counter()
    fit_first, fit_second = first.encode(fit_texts), second.encode(fit_texts)
    mapping = fit_map(fit_first, fit_second)
    fit_alignment = float((unit(fit_first @ mapping) * fit_second).sum(axis=1).mean())
    report = {
        "fit_texts": len(fit_texts),
        "fit_alignment": fit_alignment,
        "fit_seconds": round(time.perf_counter() - started, 1),
        **{name: evaluate(name, dataset, first, second, mapping) for name, dataset in datasets.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_map.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Rescoring with stored mpnet vectors and a mapped MiniLM query",
        "",
        f"`benchmarks/query_map.py --fit-sentences {args.fit_sentences}`: W (384 -> 768) fitted by ridge "
        f"(lambda {RIDGE}) on {len(fit_texts)} texts (STS-B train sentences + the train half's queries); "
        f"mean cosine of the mapped vector to mpnet's on the fit set {fit_alignment:.3f}. Held-out half "
        "(seed 0), top-50 of minilm-l6, nDCG@10; fusion weights fitted on the train half.",
        "",
    ]
    for name in datasets:
        lines += [*dataset_section(name, report[name], "mapped"), ""]
    (RESULTS / "query_map.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
