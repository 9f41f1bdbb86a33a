"""FAISS OpenMP threads for a search of one query: one thread vs all of them.

The service searches one query per request; `VectorIndex.search` runs such a search on one OpenMP
thread (app/search/vector_index.py, FAISS_THREADS). This measures why, on raw FAISS indexes of
unit vectors (384-d, Gaussian): the median ms of one query searched alone, and queries/s with two
Python threads each searching one query at a time (two concurrent requests), at 1 OpenMP thread
vs all cores, rounds interleaved.

Usage: .venv/bin/python benchmarks/faiss_threads.py [--queries 300] [--rounds 2]
Writes benchmarks/results/faiss_threads.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 384
ALL = faiss.omp_get_max_threads()


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def build(vectors: np.ndarray) -> dict[str, faiss.Index]:
    indexes: dict[str, faiss.Index] = {}
    for n in (2_000, 20_000, 50_000):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(vectors[:n])
        indexes[f"Flat, {n:,}"] = flat
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, DIM, 1264, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[:50_000])
    ivf.add(vectors)
    ivf.nprobe = 16
    indexes[f"IVF1264,SQ8 nprobe 16, {len(vectors):,}"] = ivf
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors[:20_000])
    hnsw.hnsw.efSearch = 128
    indexes["HNSW32 ef 128, 20,000"] = hnsw
    return indexes


def alone_ms(index: faiss.Index, queries: np.ndarray, threads: int) -> float:
    faiss.omp_set_num_threads(threads)
    seconds = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None, :], 10)
        seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


def concurrent_qps(index: faiss.Index, queries: np.ndarray, threads: int) -> float:
    """Two Python threads, each searching its half of `queries` one at a time."""

    def run(part: np.ndarray) -> None:
        faiss.omp_set_num_threads(threads)  # per calling thread
        for query in part:
            index.search(query[None, :], 10)

    workers = [threading.Thread(target=run, args=(half,)) for half in np.array_split(queries, 2)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(queries) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(100_000, DIM)))
    queries = unit(vectors[: args.queries] + 0.05 * rng.normal(size=(args.queries, DIM)))
    indexes = build(vectors)
    cells: dict[str, dict[str, list[float]]] = {name: {} for name in indexes}
    for _ in range(args.rounds):
        for name, index in indexes.items():
            for threads in (ALL, 1):
                row = cells[name]
                row.setdefault(f"alone_ms_{threads}", []).append(alone_ms(index, queries, threads))
                row.setdefault(f"two_clients_qps_{threads}", []).append(concurrent_qps(index, queries, threads))
    faiss.omp_set_num_threads(ALL)
    best = {  # best of the rounds: the least disturbed by the shared machine
        name: {key: (min(v) if key.startswith("alone") else max(v)) for key, v in row.items()}
        for name, row in cells.items()
    }
    report = {"cores": os.cpu_count(), "all_threads": ALL, "queries": args.queries, "rounds": cells, "best": best}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "faiss_threads.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# FAISS threads for one query ({datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"`benchmarks/faiss_threads.py --queries {args.queries} --rounds {args.rounds}`: {os.cpu_count()} cores, "
        f"raw FAISS, 384-d unit Gaussian vectors, top 10; best of {args.rounds} interleaved rounds. *Alone*: "
        "median ms of one query searched by itself; *two clients*: queries/s of two threads each searching "
        "one query at a time.",
        "",
        f"| index, vectors | alone ms, {ALL} threads | alone ms, 1 thread | two clients q/s, {ALL} threads "
        "| two clients q/s, 1 thread |",
        "|---|---|---|---|---|",
    ]
    for name, row in best.items():
        lines.append(
            f"| {name} | {row[f'alone_ms_{ALL}']:.3f} | {row['alone_ms_1']:.3f} | "
            f"{row[f'two_clients_qps_{ALL}']:.0f} | {row['two_clients_qps_1']:.0f} |"
        )
    (RESULTS / "faiss_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
