"""How an IVF index finds its lists: every float16 centroid, or a 4-bit fast scan re-ranked exactly.

From COARSE_SCAN_MIN_LISTS lists the service's coarse step is a fast scan (`PQ<dim/2>x4fs`: two
dimensions per 4-bit code, compared through SIMD lookup tables) whose shortlist (16 x nprobe, at
least 64) is re-ranked against the float32 centroids (`RFlat`); below it, and in indexes saved
before, every float16 centroid is compared. This measures what the scan buys and what it could cost.

One IVF-SQ8 index is built as the service builds it (coarse_fp16.py's `build`: k-means in float32
on 25 vectors per list, bulk adds filed under the nearest centroid in float32) over Dirichlet
mixtures of real MiniLM embeddings. Its lists are then found three ways over the very same
centroids: the served scan, float16 copies, float32 copies; `search_preassigned` scans the lists
each picks, so only the coarse step differs. Per nprobe: ms per query (one at a time, one OpenMP
thread, as served; best of 3 interleaved rounds), recall@10 against exact search, and for how many
queries each step probes the lists float32 does.

Usage: .venv/bin/python benchmarks/coarse_scan.py [--n 1000000] [--queries 400]
Writes benchmarks/results/coarse_scan.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.vector_index import COARSE_CODEC, VectorIndex, _coarse_shortlist  # noqa: E402
from benchmarks.coarse_fp16 import ALL_THREADS, DIM, NPROBES, ROUNDS, index_and_queries, summary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WAYS = ("scan", "float16", "float32")


def coarse_steps(index: VectorIndex) -> dict[str, faiss.Index]:
    """The served scan and float16 / float32 copies of its centroids."""
    assert index.coarse_scan, "the index was built without the scan (fewer lists than COARSE_SCAN_MIN_LISTS?)"
    ivf = faiss.extract_index_ivf(index.index)
    centroids = index._exact_coarse().reconstruct_n(0, ivf.nlist)
    float16 = faiss.index_factory(DIM, COARSE_CODEC, ivf.metric_type)
    float16.add(centroids)
    float32 = faiss.IndexFlat(DIM, ivf.metric_type)
    float32.add(centroids)
    return {"scan": ivf.quantizer, "float16": float16, "float32": float32}


def search(way: str, quantizer: faiss.Index, ivf: faiss.IndexIVF, query: np.ndarray, nprobe: int) -> tuple:
    """One query as IndexIVF.search runs it: the coarse step (the scan with its served shortlist),
    then the probed lists' scan. Returns (lists (1, nprobe), keys (1, 10))."""
    params = faiss.IndexRefineSearchParameters(k_factor=_coarse_shortlist(nprobe)) if way == "scan" else None
    distances, lists = quantizer.search(query, nprobe, params=params)
    ivf.nprobe = nprobe  # search_preassigned takes no parameters object
    _, keys = ivf.search_preassigned(query, 10, lists, distances)
    return lists, keys


def recall(keys: list[np.ndarray], truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(k) & set(t)) / 10 for k, t in zip(keys, truth, strict=True)])), 4)


def measure(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    steps = coarse_steps(index)
    ivf = faiss.extract_index_ivf(index.index)
    rows = []
    faiss.omp_set_num_threads(1)
    try:
        for nprobe in NPROBES:
            timings: dict[str, list[float]] = {way: [] for way in WAYS}
            found: dict[str, tuple[list, list]] = {}
            for _ in range(ROUNDS):
                for way in WAYS:
                    lists, keys = [], []
                    start = time.perf_counter()
                    for query in queries:
                        listed, hit = search(way, steps[way], ivf, query[None, :], nprobe)
                        lists.append(listed[0])
                        keys.append(hit[0])
                    timings[way].append(1000 * (time.perf_counter() - start) / len(queries))
                    found[way] = (lists, keys)
            row: dict = {"nprobe": nprobe}
            for way in WAYS:
                same = [set(a) == set(b) for a, b in zip(found[way][0], found["float32"][0], strict=True)]
                row[way] = {
                    "ms": round(min(timings[way]), 4),
                    "recall@10": recall(found[way][1], truth),
                    "same_lists_as_float32": round(float(np.mean(same)), 4),
                }
            rows.append(row)
            print(row, flush=True)
    finally:
        faiss.omp_set_num_threads(ALL_THREADS)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    index, queries, truth, build_s = index_and_queries(args.n, args.queries)
    rows = measure(index, queries, truth)
    report = summary(index, args.n, args.queries, build_s, rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coarse_scan.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# IVF lists found by fast scan + exact re-rank vs every centroid ({report['date']})",
        "",
        f"`benchmarks/coarse_scan.py --n {args.n} --queries {args.queries}`: one {index.spec} index over "
        f"{args.n:,} Dirichlet mixtures of real MiniLM embeddings, built as served ({build_s:.0f} s); its lists "
        "found by the served fast scan (4-bit codes, shortlist re-ranked against float32 centroids), by float16 "
        "and by float32 copies of the same centroids; the lists' contents are the same, only the coarse step "
        f"differs. One query at a time on one OpenMP thread, best of {ROUNDS} interleaved rounds; recall@10 "
        "against exact search; *same lists*: queries for which the step probes the lists float32 does.",
        "",
        "| nprobe | scan: ms, recall@10, same lists | float16: ms, recall@10, same lists | float32: ms, recall@10 "
        "| scan / float16 time |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        scan, half, full = row["scan"], row["float16"], row["float32"]
        lines.append(
            f"| {row['nprobe']} | {scan['ms']}, {scan['recall@10']}, {scan['same_lists_as_float32']} "
            f"| {half['ms']}, {half['recall@10']}, {half['same_lists_as_float32']} "
            f"| {full['ms']}, {full['recall@10']} | {scan['ms'] / half['ms']:.2f} |"
        )
    (RESULTS / "coarse_scan.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
