"""The floor under one served search at 1M vectors: what the index and the store cost alone.

Issue 16 asks for 2x Chroma's query throughput at 1M. `vs_chroma_1m.md` measures server CPU per
query over HTTP (wrk); this measures, in process and on one thread (as the server runs a single
query), the two parts of a search that are not HTTP or Python:

- FAISS: one query against 1M x 384 vectors (vs_chroma's Dirichlet mixtures of real MiniLM
  embeddings), recall@10 against exact top-10 on 400 held-out queries, median ms, for IVF with the
  list count `auto` uses at 1M (4 sqrt(n) = 4,000, flat coarse quantizer), with an HNSW coarse
  quantizer, and with fewer lists;
- SQLite: reading 40 stored vectors (a binary index's rescoring shortlist, 10 x depth 4) and 10 ids
  (the hits' ids) by key from a 1M-row store of the collections' schema, warm in the OS cache, with
  and without a memory-mapped read path (`PRAGMA mmap_size`).

Usage: .venv/bin/python benchmarks/index_floor.py  (~6 min, 3 GB of disk in a temporary folder).
Writes benchmarks/results/index_floor.{json,md} (the md's Reading section is written by hand after a run).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.store import SCHEMA  # noqa: E402
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
N, QUERIES, TRAIN = 1_000_000, 400, 160_000
# (factory, nprobes, coarse quantizer efSearch or None for a flat quantizer)
INDEXES = [
    ("IVF4000,SQ8", (8, 16, 32), None),
    ("IVF4000_HNSW32,SQ8", (8, 16, 32), 64),
    ("IVF2000,SQ8", (4, 8, 16), None),
    ("IVF1000,SQ8", (4, 8, 16), None),
]


def faiss_rows(data: np.ndarray, queries: np.ndarray) -> list[dict]:
    truth = np.vstack(
        [
            faiss.knn(queries[i : i + 100], data, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
            for i in range(0, len(queries), 100)
        ]
    )
    train = data[np.random.default_rng(0).choice(len(data), TRAIN, replace=False)]
    rows = []
    for factory, nprobes, quantizer_ef in INDEXES:
        index = faiss.index_factory(data.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        index.train(train)
        index.add(data)
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)  # as the server runs a single query
        for nprobe in nprobes:
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            if quantizer_ef is not None:
                coarse = faiss.SearchParametersHNSW()
                coarse.efSearch = max(quantizer_ef, 2 * nprobe)
                params.quantizer_params = coarse
            found, seconds = [], []
            for i in range(len(queries)):
                started = time.perf_counter()
                found.append(index.search(queries[i : i + 1], 10, params=params)[1][0])
                seconds.append(time.perf_counter() - started)
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
            rows.append(
                {
                    "index": factory,
                    "nprobe": nprobe,
                    "recall@10": round(recall, 4),
                    "median_ms": round(1000 * float(np.median(seconds)), 3),
                    "build_s": round(build_s, 1),
                }
            )
            print(rows[-1], flush=True)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def store_rows(folder: Path, rounds: int = 4000) -> list[dict]:
    path = folder / "documents.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32).tobytes()
    with db:
        db.executemany(
            "INSERT INTO documents (id, metadata, vector) VALUES (?, ?, ?)",
            ((f"doc-{i}", json.dumps({"cat": f"c{i % 10}", "num": i % 1000}), vector) for i in range(N)),
        )
    db.close()
    rows = []
    for mmap_bytes in (0, 1 << 34, 0, 1 << 34):  # twice each, alternating
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA mmap_size={mmap_bytes}")
        rng = random.Random(1)
        row: dict = {"mmap": bool(mmap_bytes)}
        for count, column in ((40, "vector"), (10, "id")):
            sql = f"SELECT key, {column} FROM documents WHERE key IN ({','.join('?' * count)})"
            keys = [rng.sample(range(1, N + 1), count) for _ in range(rounds)]
            for wanted in keys[:500]:  # warm SQLite's own cache as a running server has
                db.execute(sql, wanted).fetchall()
            started = time.perf_counter()
            for wanted in keys[500:]:
                db.execute(sql, wanted).fetchall()
            row[f"{count} {column}s, us"] = round(1e6 * (time.perf_counter() - started) / (rounds - 500), 1)
        db.close()
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    real = real_vectors()
    data = synthetic_vectors(real[:5000], N, 0)
    queries = synthetic_vectors(real[:5000], QUERIES, 1)
    report = {"n": N, "dim": int(data.shape[1]), "measured": time.strftime("%Y-%m-%d %H:%M")}
    report["faiss"] = faiss_rows(data, queries)
    del data
    folder = Path(tempfile.mkdtemp(prefix="index-floor-"))
    try:
        report["store"] = store_rows(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    chroma = json.loads((RESULTS / "vs_chroma_1m.json").read_text())
    report["vs_chroma_1m"] = {
        server: {k: chroma[server][k][0]["server_cpu_ms_per_query"] for k in ("wrk 1", "wrk 8")}
        for server in ("Tessera", "Chroma")
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "index_floor.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)


def write_markdown(report: dict) -> None:
    chroma = report["vs_chroma_1m"]["Chroma"]
    tessera = report["vs_chroma_1m"]["Tessera"]
    lines = [
        "# The floor under one search at 1M vectors (in process, one thread)",
        "",
        f"`benchmarks/index_floor.py` ({report['measured']}): {report['n']:,} x {report['dim']} vectors "
        "(vs_chroma's Dirichlet mixtures of real MiniLM embeddings), 400 held-out queries, one query at a time on one "
        "thread as the server runs it.",
        "",
        "## FAISS alone",
        "",
        "| index | nprobe | recall@10 | median ms | build s |",
        "|---|---|---|---|---|",
        *[
            f"| {r['index']} | {r['nprobe']} | {r['recall@10']:.4f} | {r['median_ms']:.3f} | {r['build_s']} |"
            for r in report["faiss"]
        ],
        "",
        "## The store alone (1M rows, warm in the OS cache)",
        "",
        "| read path | 40 vectors, us | 10 ids, us |",
        "|---|---|---|",
        *[
            f"| {'mmap' if r['mmap'] else 'pread (as served)'} | {r['40 vectors, us']} | {r['10 ids, us']} |"
            for r in report["store"]
        ],
        "",
        "## Against the HTTP comparison",
        "",
        f"`vs_chroma_1m.json` (first wrk round): Chroma spends {chroma['wrk 1']} / {chroma['wrk 8']} ms of server CPU "
        f"per query (1 / 8 connections), Tessera {tessera['wrk 1']} / {tessera['wrk 8']}. Twice Chroma's throughput "
        f"needs about {chroma['wrk 1'] / 2:.2f} ms per query for everything: HTTP, request parsing, the index and "
        "the store.",
    ]
    (RESULTS / "index_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
