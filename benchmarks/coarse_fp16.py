"""IVF centroids in float32 or float16: the coarse step's cost and the lists it picks.

An IVF search first compares the query with every centroid. At 1M vectors (`auto`'s 4 √n = 4,000
lists of 384-d, 6 MB in float32) that read was the larger part of a search. The service keeps the
centroids in float16 (`COARSE_CODEC`) under COARSE_SCAN_MIN_LISTS lists, and did at 1M before its
fast scan (coarse_scan.py); this measures what float16 buys and what it could cost, at 1M.

One IVF-SQ8 index is built as the service builds it (`VectorIndex`: k-means on 25 vectors per list
in float32, bulk adds filed under the nearest centroid in float32) over Dirichlet mixtures of real
MiniLM embeddings (as benchmarks/search.py). The same index is then searched with its float16
coarse quantizer and with a float32 one holding the very same centroids (`search_preassigned`
after each quantizer's own step), so the lists' contents are identical and only the coarse step
differs. Per nprobe: ms per query (one at a time, one OpenMP thread, as served; best of 3
interleaved rounds), recall@10 against exact search, and how often both steps probe the same lists.

Usage: .venv/bin/python benchmarks/coarse_fp16.py [--n 1000000] [--queries 400]
Writes benchmarks/results/coarse_fp16.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.collection import TRAINING_PER_LIST  # noqa: E402
from app.search.vector_index import COARSE_CODEC, VectorIndex  # noqa: E402
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NPROBES, ROUNDS, DIM = (1, 2, 4, 8, 16), 3, 384
ALL_THREADS = faiss.omp_get_max_threads()


def build(n: int, base: np.ndarray, coarse: str | None = None) -> tuple[VectorIndex, np.ndarray, float]:
    """The served IVF-SQ8 index over n vectors (its coarse step FAISS's `coarse` where given), the
    vectors, and its build seconds."""
    vectors = synthetic_vectors(base, n, 0)
    nlist = int(4 * math.sqrt(n))
    given = (
        None if coarse is None else faiss.index_factory(DIM, f"IVF{nlist}({coarse}),SQ8", faiss.METRIC_INNER_PRODUCT)
    )
    index = VectorIndex(DIM, "cosine", f"IVF{nlist},SQ8", index=given)
    start = time.perf_counter()
    sample = vectors[np.random.default_rng(1).choice(n, min(n, nlist * TRAINING_PER_LIST), replace=False)]
    index.train(sample)
    keys = np.arange(n, dtype=np.int64)
    index.fill(lambda: ((keys[i : i + 50_000], vectors[i : i + 50_000]) for i in range(0, n, 50_000)))
    return index, vectors, time.perf_counter() - start


def searchers(index: VectorIndex) -> dict[str, tuple[faiss.Index, faiss.IndexIVF]]:
    """The served quantizer (float16) and a float32 copy of the same centroids."""
    ivf = faiss.extract_index_ivf(index.index)
    fp16 = faiss.downcast_index(ivf.quantizer)
    assert isinstance(fp16, faiss.IndexScalarQuantizer), type(fp16)
    fp32 = faiss.IndexFlat(DIM, ivf.metric_type)
    fp32.add(fp16.reconstruct_n(0, ivf.nlist))
    return {"float16": (fp16, ivf), "float32": (fp32, ivf)}


def search(
    quantizer: faiss.Index, ivf: faiss.IndexIVF, query: np.ndarray, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """One query as IndexIVF.search runs it: the coarse step, then the probed lists' scan."""
    distances, lists = quantizer.search(query, nprobe)
    ivf.nprobe = nprobe  # search_preassigned takes no parameters object
    _, keys = ivf.search_preassigned(query, 10, lists, distances)
    return lists, keys


def measure(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    ways = searchers(index)
    rows = []
    faiss.omp_set_num_threads(1)
    try:
        for nprobe in NPROBES:
            row: dict = {"nprobe": nprobe}
            timings: dict[str, list[float]] = {name: [] for name in ways}
            found: dict[str, tuple[list, list]] = {}
            for _ in range(ROUNDS):
                for name, (quantizer, ivf) in ways.items():
                    lists, keys = [], []
                    start = time.perf_counter()
                    for query in queries:
                        listed, hit = search(quantizer, ivf, query[None, :], nprobe)
                        lists.append(listed[0])
                        keys.append(hit[0])
                    timings[name].append(1000 * (time.perf_counter() - start) / len(queries))
                    found[name] = (lists, keys)
            for name in ways:
                keys = found[name][1]
                row[name] = {
                    "ms": round(min(timings[name]), 4),
                    "recall@10": round(
                        float(np.mean([len(set(k) & set(t)) / 10 for k, t in zip(keys, truth, strict=True)])), 4
                    ),
                }
            same = [set(a) == set(b) for a, b in zip(found["float16"][0], found["float32"][0], strict=True)]
            row["same_lists"] = round(float(np.mean(same)), 4)
            rows.append(row)
            print(row, flush=True)
    finally:
        faiss.omp_set_num_threads(ALL_THREADS)
    return rows


def index_and_queries(
    n: int, queries: int, coarse: str | None = None
) -> tuple[VectorIndex, np.ndarray, np.ndarray, float]:
    """`build`'s index over n vectors, `queries` held-out queries of the same kind, their exact
    top-10 keys (queries, 10), and the build seconds."""
    base = real_vectors()[:5000]
    index, vectors, build_s = build(n, base, coarse)
    held_out = synthetic_vectors(base, queries, 7)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    _, truth = exact.search(held_out, 10)
    return index, held_out, truth, build_s


def summary(index: VectorIndex, n: int, queries: int, build_s: float, rows: list[dict]) -> dict:
    """The result file's contents."""
    return {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "n": n,
        "spec": index.spec,
        "build_s": round(build_s, 1),
        "queries": queries,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    index, queries, truth, build_s = index_and_queries(args.n, args.queries, COARSE_CODEC)  # at 1M the service scans
    rows = measure(index, queries, truth)
    report = summary(index, args.n, args.queries, build_s, rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coarse_fp16.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# IVF centroids in float16 vs float32 ({report['date']})",
        "",
        f"`benchmarks/coarse_fp16.py --n {args.n} --queries {args.queries}`: one {index.spec} index over "
        f"{args.n:,} Dirichlet mixtures of real MiniLM embeddings, built as served ({build_s:.0f} s), searched "
        "with its float16 coarse quantizer and with a float32 copy of the same centroids: same lists' contents, "
        "only the coarse step differs. One query at a time on one OpenMP thread, best of "
        f"{ROUNDS} interleaved rounds; recall@10 against exact search; *same lists*: queries for which both "
        "steps probe the same set of lists.",
        "",
        "| nprobe | float32: ms, recall@10 | float16: ms, recall@10 | float16 / float32 time | same lists |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        a, b = row["float32"], row["float16"]
        lines.append(
            f"| {row['nprobe']} | {a['ms']}, {a['recall@10']} | {b['ms']}, {b['recall@10']} | "
            f"{b['ms'] / a['ms']:.2f} | {row['same_lists']} |"
        )
    (RESULTS / "coarse_fp16.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
