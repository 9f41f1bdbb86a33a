"""Binary codes with float rescoring (IVF-RaBitQ) against the other index types, as collections serve them.

Two sets of 384-d MiniLM vectors: (1) 100k synthetic (Dirichlet mixtures of three real embeddings
plus noise, as benchmarks/search.py) with 1,000 fresh queries of the same kind; (2) the ~18.6k real
MiniLM embeddings (MS MARCO passages, Cranfield abstracts, STS-B sentences) with 1,000 of them held
out as queries. Each set is ingested once into a collection (SQLite store); the folder is copied
per index type, and each copy is optimised with that spec (tuned by the service to recall@10 >= 0.95
on held-out documents). Then, per type: the build's recall estimate, the recall of the fresh
queries against exact search, single-query latency of `Collection.dense_keys` (what search runs:
the index, and for binary codes the SQLite read of the shortlist and the exact rescoring), the
index's memory; query rounds interleave the types. Finally `auto` on the 100k set: what it picks
and every candidate's figures.

Usage: .venv/bin/python benchmarks/binary_index.py
Writes benchmarks/results/binary_index.json and .md.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.collection import Collection, CollectionConfig  # noqa: E402
from app.search.index_choice import ivf_lists  # noqa: E402
from app.search.store import Document  # noqa: E402
from app.search.vector_index import SearchParams, exact_top_k  # noqa: E402
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUERIES = 1_000
ROUNDS = 3
BUDGET = 8 << 30


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    base = real_vectors()
    synthetic = synthetic_vectors(base, 100_000 + QUERIES, seed=0)
    order = np.random.default_rng(1).permutation(len(base))
    return {
        "100k synthetic MiniLM mixtures": (synthetic[:100_000], synthetic[100_000:]),
        f"{len(base) - QUERIES} real MiniLM embeddings": (base[order[QUERIES:]], base[order[:QUERIES]]),
    }


def ingest(folder: Path, vectors: np.ndarray) -> None:
    config = CollectionConfig("bench", "m", vectors.shape[1], index="Flat")
    folder.mkdir(parents=True)
    config.save(folder)
    collection = Collection(folder, config, BUDGET, snapshot_every_ops=10**9)
    for start in range(0, len(vectors), 5_000):
        part = range(start, min(start + 5_000, len(vectors)))
        collection.upsert([Document(f"d{i}", None, {}, vectors[i]) for i in part])
    collection.close()


def single_query_ms(collection: Collection, queries: np.ndarray) -> list[float]:
    seconds = []
    for query in queries:
        start = time.perf_counter()
        collection.dense_keys(query, 10, None, SearchParams())
        seconds.append(time.perf_counter() - start)
    return [1000 * s for s in seconds]


def compare(name: str, vectors: np.ndarray, queries: np.ndarray, work: Path) -> dict:
    lists = ivf_lists(len(vectors))
    specs = [f"IVF{lists},Flat", f"IVF{lists},SQ8", f"IVF{lists},RaBitQ", "HNSW32"]
    source = work / "source"
    ingest(source, vectors)
    truth = exact_top_k([(np.arange(1, len(vectors) + 1, dtype=np.int64), vectors)], queries, "cosine")
    rows: dict[str, dict] = {}
    collections: dict[str, Collection] = {}
    for spec in specs:
        folder = work / spec.replace(",", "_")
        shutil.copytree(source, folder)
        collection = Collection(folder, CollectionConfig.load(folder), BUDGET, snapshot_every_ops=10**9)
        report = collection.optimize(spec)
        found = [[k for k, _ in collection.dense_keys(q, 10, None, SearchParams())] for q in queries]
        recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), found, strict=True)])
        rows[spec] = {
            "search_defaults": report.search_defaults,
            "build_seconds": report.build_seconds,
            "recall_estimate": report.recall_at_10,
            "recall_fresh_queries": round(float(recall), 4),
            "index_memory_mib": round(collection.index.memory_bytes() / 2**20, 1),
            "latency_ms": [],
        }
        collections[spec] = collection
        print(name, spec, rows[spec], flush=True)
    for _ in range(ROUNDS):  # interleaved: each type's queries in turn, the machine's noise shared
        for spec, collection in collections.items():
            rows[spec]["latency_ms"] += single_query_ms(collection, queries)
    for spec, row in rows.items():
        times = np.array(row.pop("latency_ms"))
        row["p50_ms"] = round(float(np.median(times)), 3)
        row["p99_ms"] = round(float(np.percentile(times, 99)), 3)
        collections[spec].close()
    return {"n": len(vectors), "queries": len(queries), "types": rows}


def auto_choice(vectors: np.ndarray, work: Path) -> dict:
    folder = work / "auto"
    ingest(folder, vectors)
    config = CollectionConfig.load(folder)
    collection = Collection(folder, config, BUDGET, snapshot_every_ops=10**9)
    report = collection.optimize("auto")
    collection.close()
    return {"picked": report.spec, "search_defaults": report.search_defaults, "candidates": report.candidates}


def write_markdown(report: dict) -> None:
    lines = [
        f"# Binary codes with float rescoring ({report['date']})",
        "",
        "`.venv/bin/python benchmarks/binary_index.py`: collections (SQLite store + FAISS index) built "
        "with each spec and tuned by the service to recall@10 >= 0.95 on held-out documents; fresh "
        "queries' recall@10 against exact search; latency of one `dense_keys` call (index search, and "
        f"for RaBitQ the store read of the shortlist and exact rescoring), {ROUNDS} interleaved rounds; "
        "one thread.",
        "",
    ]
    for name, result in report["sets"].items():
        lines += [
            f"## {name} ({result['queries']} queries)",
            "",
            "| index | tuned | build recall estimate | fresh-query recall@10 | p50 / p99 ms | index MiB | build s |",
            "|---|---|---|---|---|---|---|",
        ]
        for spec, row in result["types"].items():
            tuned = ", ".join(f"{k} {v}" for k, v in row["search_defaults"].items())
            lines.append(
                f"| {spec} | {tuned} | {row['recall_estimate']} | {row['recall_fresh_queries']} | "
                f"{row['p50_ms']} / {row['p99_ms']} | {row['index_memory_mib']} | {row['build_seconds']} |"
            )
        lines.append("")
    auto = report["auto"]
    lines += [
        f"## `auto` on the 100k set: picked {auto['picked']} ({auto['search_defaults']})",
        "",
        "| candidate | recall (bound) | tuned | p50 ms (sample) | memory MiB (whole collection) |",
        "|---|---|---|---|---|",
    ]
    for c in auto["candidates"]:
        lines.append(
            f"| {c['spec']} | {c['recall_at_10']} ({c['recall_lower_bound']}) | {c['search_defaults']} | "
            f"{c['p50_ms']} | {round(c['memory_bytes'] / 2**20, 1)} |"
        )
    (RESULTS / "binary_index.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "sets": {}}
    sets = datasets()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (vectors, queries)) in enumerate(sets.items()):
            report["sets"][name] = compare(name, vectors, queries, Path(tmp) / f"set{i}")
        vectors = next(iter(sets.values()))[0]
        report["auto"] = auto_choice(vectors, Path(tmp) / "auto")
    (RESULTS / "binary_index.json").write_text(json.dumps(report, indent=2))
    write_markdown(report)
    print((RESULTS / "binary_index.md").read_text())


if __name__ == "__main__":
    main()
