"""How an IVF index finds its lists: every centroid compared (`IVF<n>,...`) or a graph walk over
them (`IVF<n>_HNSW32,...`), by list count.

For each list count, k-means centroids are trained on 25 vectors per list (as the service trains) of
Dirichlet mixtures of real MiniLM embeddings (as benchmarks/search.py), and one query at a time
(one OpenMP thread, as the service searches) is timed for: the exhaustive step (IndexFlatIP over
the centroids) and the graph walk at breadths 64 and 128 (the service's COARSE_EF_SEARCH), with how
often the walk finds the nearest list and how many of the nearest 8 it finds. Then the whole IVF-SQ8 index
over those vectors, both ways, built as the service builds it (`VectorIndex`: adds file each
vector under its nearest list by comparing every centroid), at nprobe 4 and 8: ms per query and
recall@10 against exact search. Last, at full scale (`--full`, 1M vectors, 4,000 lists): one
IVF-SQ8 index searched with its exhaustive step and with a graph over the very same centroids, so
only the walk differs. Timings are the best of 3 rounds.

Usage: .venv/bin/python benchmarks/coarse_quantizer.py [--lists 1264,2048,4000] [--queries 300]
Writes benchmarks/results/coarse_quantizer.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.collection import TRAINING_PER_LIST  # noqa: E402
from app.search.vector_index import COARSE_CODEC, COARSE_EF_SEARCH, VectorIndex  # noqa: E402
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
POINTS_PER_LIST, PROBED, ROUNDS = TRAINING_PER_LIST, 8, 3  # trained on as many points per list as served
WALKS = (64, COARSE_EF_SEARCH)


ALL_THREADS = faiss.omp_get_max_threads()


def per_query_ms(search, queries: np.ndarray) -> float:
    """Mean ms of `search` over `queries` one at a time, on one OpenMP thread (as served)."""
    faiss.omp_set_num_threads(1)
    try:
        start = time.perf_counter()
        for query in queries:
            search(query[None, :])
        return 1000 * (time.perf_counter() - start) / len(queries)
    finally:
        faiss.omp_set_num_threads(ALL_THREADS)


def measure(lists: int, base: np.ndarray, queries: np.ndarray) -> dict:
    dim = base.shape[1]
    vectors = synthetic_vectors(base, POINTS_PER_LIST * lists, seed=lists)
    kmeans = faiss.Kmeans(dim, lists, niter=10, spherical=True, seed=1, verbose=False)
    kmeans.train(vectors)
    flat = faiss.IndexFlatIP(dim)
    flat.add(kmeans.centroids)
    graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(kmeans.centroids)
    _, nearest = flat.search(queries, PROBED)
    row: dict = {"lists": lists, "vectors": len(vectors)}
    timings: dict[str, list[float]] = {"exhaustive_ms": [], **{f"graph_ef{ef}_ms": [] for ef in WALKS}}
    for _ in range(ROUNDS):
        timings["exhaustive_ms"].append(per_query_ms(lambda q: flat.search(q, PROBED), queries))
        for ef in WALKS:
            graph.hnsw.efSearch = ef
            timings[f"graph_ef{ef}_ms"].append(per_query_ms(lambda q: graph.search(q, PROBED), queries))
    row.update({key: round(min(values), 4) for key, values in timings.items()})
    for ef in WALKS:
        graph.hnsw.efSearch = ef
        _, walked = graph.search(queries, PROBED)
        found = np.mean([len(set(a) & set(b)) / PROBED for a, b in zip(nearest, walked, strict=True)])
        row[f"graph_ef{ef}_lists_found"] = round(float(found), 4)
        row[f"graph_ef{ef}_nearest_found"] = round(float(np.mean(walked[:, 0] == nearest[:, 0])), 4)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    for name, factory in (("exhaustive", f"IVF{lists},SQ8"), ("graph", f"IVF{lists}_HNSW32,SQ8")):
        given = every_centroid(dim, lists) if name == "exhaustive" else None
        built = VectorIndex(dim, "ip", factory, index=given)  # as the service builds and fills it
        built.train(vectors)
        built.add(np.arange(len(vectors)), vectors)
        index = built.index
        for nprobe in (4, 8):
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if name == "graph":
                params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(COARSE_EF_SEARCH, nprobe))
            search = index.search
            ms = min(per_query_ms(lambda q, p=params, s=search: s(q, 10, params=p), queries) for _ in range(ROUNDS))
            _, found_ids = search(queries, 10, params=params)
            row[f"{name}_nprobe{nprobe}"] = {"ms": round(ms, 4), "recall@10": round(recall_at_10(truth, found_ids), 4)}
    print(row, flush=True)
    return row


def recall_at_10(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)]))


def every_centroid(dim: int, lists: int) -> faiss.Index:
    """An IVF-SQ8 index whose coarse step compares every centroid (in float16, COARSE_CODEC): what
    the walk is measured against. From COARSE_SCAN_MIN_LISTS lists the service scans instead."""
    return faiss.index_factory(dim, f"IVF{lists}({COARSE_CODEC}),SQ8", faiss.METRIC_INNER_PRODUCT)


def full_scale(n: int, lists: int, base: np.ndarray, queries: np.ndarray) -> dict:
    """One IVF-SQ8 index of n vectors (trained on POINTS_PER_LIST per list), searched with its exhaustive step,
    then with a graph over the very same centroids (the lists' contents unchanged): what the walk
    alone costs or saves, at full list lengths."""
    dim = base.shape[1]
    vectors = synthetic_vectors(base, n, seed=7)
    index = VectorIndex(dim, "ip", f"IVF{lists},SQ8", index=every_centroid(dim, lists))
    index.train(vectors[: POINTS_PER_LIST * lists])
    for start in range(0, n, 100_000):
        index.add(np.arange(start, min(n, start + 100_000)), vectors[start : start + 100_000])
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    del exact, vectors
    ivf = faiss.extract_index_ivf(index.index)
    exhaustive = ivf.quantizer
    graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(exhaustive.reconstruct_n(0, lists))
    result: dict = {"n": n, "lists": lists}
    for nprobe in (2, 4, 8):
        for name, ef in (("exhaustive", None), *((f"graph_ef{ef}", ef) for ef in (*WALKS, 256))):
            ivf.quantizer = exhaustive if ef is None else graph
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if ef is not None:
                params.quantizer_params = faiss.SearchParametersHNSW(efSearch=ef)
            ms = min(
                per_query_ms(lambda q, p=params: index.index.search(q, 10, params=p), queries) for _ in range(ROUNDS)
            )
            found = index.index.search(queries, 10, params=params)[1]
            result[f"{name}_nprobe{nprobe}"] = {"ms": round(ms, 4), "recall@10": round(recall_at_10(truth, found), 4)}
    ivf.quantizer = exhaustive
    print(result, flush=True)
    return result


def write(report: dict) -> None:
    (RESULTS / "coarse_quantizer.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# How IVF finds its lists: every centroid vs a graph walk ({report['date']})",
        "",
        f"`{report['command']}`: 384-d k-means centroids over Dirichlet mixtures of real MiniLM "
        f"embeddings (25 per list, as the service trains, and the index holds those), {report['queries']} queries of the same kind, one "
        "query at a time on one OpenMP thread; best of 3 interleaved rounds. *Lists found*: of the "
        "exhaustive step's nearest 8 lists, how many the walk finds. The IVF-SQ8 rows search the "
        "whole index over those vectors; recall@10 is against exact search.",
        "",
        "| lists | exhaustive ms | walk ef 64: ms, nearest found, 8 nearest found | walk ef 128: ms, nearest, 8 nearest "
        "| IVF-SQ8 nprobe 4: ms, recall, exhaustive / graph (ef 128) | nprobe 8: ms, recall, exhaustive / graph |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        cells = [
            f"{r[f'exhaustive_nprobe{p}']['ms']}, {r[f'exhaustive_nprobe{p}']['recall@10']} / "
            f"{r[f'graph_nprobe{p}']['ms']}, {r[f'graph_nprobe{p}']['recall@10']}"
            for p in (4, 8)
        ]
        walks = [
            f"{r[f'graph_ef{ef}_ms']}, {r[f'graph_ef{ef}_nearest_found']}, {r[f'graph_ef{ef}_lists_found']}"
            for ef in WALKS
        ]
        lines.append(f"| {r['lists']:,} | {r['exhaustive_ms']} | {walks[0]} | {walks[1]} | {cells[0]} | {cells[1]} |")
    full = report["full_scale"]
    names = ["exhaustive", *(f"graph_ef{ef}" for ef in (*WALKS, 256))]
    lines += [
        "",
        f"At full scale: one IVF{full['lists']},SQ8 index of {full['n']:,} vectors of the same kind, "
        "searched with its exhaustive step and with a graph (HNSW32) over the very same centroids, so "
        "the lists and their contents are identical and only the walk differs. ms per query, recall@10 "
        "against exact search:",
        "",
        "| nprobe | " + " | ".join(name.replace("_ef", " ef ") for name in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for nprobe in (2, 4, 8):
        cells = [f"{full[f'{n}_nprobe{nprobe}']['ms']}, {full[f'{n}_nprobe{nprobe}']['recall@10']}" for n in names]
        lines.append(f"| {nprobe} | " + " | ".join(cells) + " |")
    (RESULTS / "coarse_quantizer.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lists", default="1264,2048,4000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--full", type=int, default=1_000_000, help="vectors of the full-scale index")
    args = parser.parse_args()
    base = real_vectors()[:5000]
    queries = synthetic_vectors(base, args.queries, seed=99)
    rows = [measure(int(lists), base, queries) for lists in args.lists.split(",")]
    report = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": "benchmarks/coarse_quantizer.py " + " ".join(sys.argv[1:]),
        "queries": args.queries,
        "rows": rows,
        "full_scale": full_scale(args.full, 4 * int(args.full**0.5), base, queries),
    }
    write(report)


if __name__ == "__main__":
    main()
