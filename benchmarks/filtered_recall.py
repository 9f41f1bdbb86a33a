"""Filtered search: how far must an approximate index search for a filter's top-10?

100k synthetic MiniLM-like vectors (Dirichlet mixtures of three real embeddings plus noise, as
benchmarks/search.py), indexed as `auto` picks at that size (IVF-SQ8) and as HNSW32, each tuned to
recall@10 >= 0.95 unfiltered on 200 held-out queries (the service's `tune`). Then 200 other queries
under filters uncorrelated with position matching 50%, 25%, 10% and 5% of the documents (all above the
exact-scoring limit, so the approximate index answers), with the search breadth (nprobe / efSearch)
widened by: nothing, sqrt(1 / f) (the rule before 2026-11-30), 1 / f and 2 / f, all capped at
16x; "served" marks what `VectorIndex._widened` does now (2 / f for IVF, nothing for HNSW). Recall@10 is against the exact top-10 among the matching documents;
latency is one query at a time on one thread.

Usage: .venv/bin/python benchmarks/filtered_recall.py
Writes benchmarks/results/filtered_recall.json and .md.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.vector_index import EXACT_FALLBACK_MAX, SearchParams, VectorIndex, exact_top_k, tune  # noqa: E402
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
N = 100_000
SELECTIVITIES = (0.50, 0.25, 0.10, 0.05)
RULES = {
    "none": lambda f: 1,
    "sqrt(1/f)": lambda f: min(16, math.ceil(math.sqrt(1 / f))),
    "1/f": lambda f: min(16, math.ceil(1 / f)),
    "2/f": lambda f: min(16, math.ceil(2 / f)),
}


def breadth(index: VectorIndex, params: SearchParams) -> int:
    """The efSearch (graph) or nprobe (IVF) a search with `params` runs at."""
    if index.is_graph:
        return params.ef_search or index.defaults.ef_search or 64
    return params.nprobe or index.defaults.nprobe or 16


def widened(index: VectorIndex, factor: int) -> SearchParams:
    wide = breadth(index, SearchParams()) * factor
    return SearchParams(ef_search=wide) if index.is_graph else SearchParams(nprobe=wide)


def measure(index: VectorIndex, queries: np.ndarray, allowed: np.ndarray, truth: np.ndarray, params: SearchParams):
    """(recall@10, p50 ms) of `queries` one at a time under the filter `allowed`."""
    found, seconds = [], []
    search_params = index._params(faiss.IDSelectorBatch(allowed), params)
    for query in queries:
        started = time.perf_counter()
        _, keys = index.index.search(index.prepare(query[None, :]), 10, params=search_params)
        seconds.append(time.perf_counter() - started)
        found.append(keys[0])
    recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))
    return round(recall, 4), round(1000 * float(np.median(seconds)), 3)


def main() -> None:
    faiss.omp_set_num_threads(1)
    real = real_vectors()
    vectors = synthetic_vectors(real[:5000], N, 0)
    queries = synthetic_vectors(real[:5000], 400, 1)
    tune_queries, filtered_queries = queries[:200], queries[200:]
    keys = np.arange(N, dtype=np.int64)
    truth = exact_top_k([(keys, vectors)], tune_queries, "cosine")
    order = np.random.default_rng(2).permutation(N)  # filters uncorrelated with position
    rows = []
    for spec in (f"IVF{int(4 * math.sqrt(N))},SQ8", "HNSW32"):
        index = VectorIndex(vectors.shape[1], "cosine", spec)
        index.train(vectors)
        index.add(keys, vectors)
        tuned = tune(index, truth, tune_queries, 0.95)
        for selectivity in SELECTIVITIES:
            allowed = np.sort(order[: int(selectivity * N)])
            assert len(allowed) > EXACT_FALLBACK_MAX
            mask = np.zeros(N, dtype=bool)
            mask[allowed] = True
            filtered_truth = exact_top_k([(keys[mask], vectors[mask])], filtered_queries, "cosine")
            served_factor = breadth(index, index._widened(SearchParams(), len(allowed))) // breadth(
                index, SearchParams()
            )
            for rule, factor_of in RULES.items():
                factor = factor_of(selectivity)
                params = widened(index, factor)
                recall, p50 = measure(index, filtered_queries, allowed, filtered_truth, params)
                rows.append(
                    {
                        "index": spec,
                        "tuned": {k: v for k, v in vars(tuned.params).items() if v is not None},
                        "selectivity": selectivity,
                        "rule": rule,
                        "factor": factor,
                        "recall_at_10": recall,
                        "p50_ms": p50,
                        "served": factor == served_factor,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "filtered_recall.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Filtered search: widening the search breadth",
        "",
        f"`benchmarks/filtered_recall.py`: {N:,} synthetic 384-d vectors, 200 filtered queries per row (one "
        "at a time, one thread), filters uncorrelated with position; each index tuned to recall@10 >= 0.95 "
        "unfiltered on 200 other held-out queries.",
        "",
        "| index (tuned) | filter matches | widening | factor | recall@10 | p50 ms | served |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        tuned = ", ".join(f"{k} {v}" for k, v in row["tuned"].items())
        lines.append(
            f"| {row['index']} ({tuned}) | {row['selectivity']:.0%} | {row['rule']} | {row['factor']}x "
            f"| {row['recall_at_10']:.4f} | {row['p50_ms']:.3f} | {'yes' if row['served'] else ''} |"
        )
    (RESULTS / "filtered_recall.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
