"""Building a 1M-vector collection from precomputed vectors (.npy) with `tessera index build`.

1,000,000 x 384 Dirichlet mixtures of real MiniLM embeddings (benchmarks/search.py's generator)
saved as .npy with an .ids file; the real CLI in a subprocess under /usr/bin/time (peak RSS);
`auto` chooses the index by measured cost. Reported: wall time, ingest rate, peak RSS against the
final index's memory and the vectors' size, the build's recall estimate (held-out documents) and the
truth on 1,000 fresh queries (exact top-10 by brute force over the memory-mapped file), every
`auto` candidate.

With `--budget-mb M` the build runs under TESSERA_INDEX_MEMORY_BUDGET_MB=M (what a small machine
would set), so `auto` tries only the candidates that fit; fresh queries are then also timed one at a
time as search runs them (with the store at hand: a binary index rescores from it).

Usage: .venv/bin/python benchmarks/build_1m.py [--n 1000000] [--budget-mb 128]
Writes benchmarks/results/build_1m.json and .md, or build_1m_budget<M>.* with --budget-mb (the data
under data/bench/, removed after).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.store import DocumentStore  # noqa: E402
from app.search.vector_index import SearchParams, VectorIndex, exact_top_k  # noqa: E402
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "data" / "bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--budget-mb", type=int, default=None, help="the index memory budget (default: the service's)")
    args = parser.parse_args()
    stem = "build_1m" if args.budget_mb is None else f"build_1m_budget{args.budget_mb}"
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    base = real_vectors()[:5000]
    vectors_path = WORK / "vectors.npy"
    np.save(vectors_path, synthetic_vectors(base, args.n, 0))
    (WORK / "vectors.ids").write_text("".join(f"doc{i}\n" for i in range(args.n)))
    env_cmd = [
        "/usr/bin/time", "-v", str(ROOT / ".venv" / "bin" / "tessera"), "index", "build",
        "--input", str(vectors_path), "--index", "big", "--batch-size", "20000",
    ]  # fmt: skip
    env = {"TESSERA_DATA_DIR": str(WORK / "data"), "TESSERA_MODELS_DIR": str(ROOT / "models"), "PATH": "/usr/bin:/bin"}
    if args.budget_mb is not None:
        env["TESSERA_INDEX_MEMORY_BUDGET_MB"] = str(args.budget_mb)
    start = time.perf_counter()
    done = subprocess.run(env_cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    result = json.loads(done.stdout)
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    folder = WORK / "data" / "indexes" / "big"
    loaded = VectorIndex.load(folder / "index.faiss", 384, "cosine")
    assert loaded is not None
    index = loaded[0]
    fresh = synthetic_vectors(base, 1000, 1)
    stored = np.load(vectors_path, mmap_mode="r")
    chunks = (
        (np.arange(s, min(s + 50_000, args.n)) + 1, np.asarray(stored[s : s + 50_000]))
        for s in range(0, args.n, 50_000)
    )
    truth = exact_top_k(chunks, fresh, "cosine")  # keys: the store numbers rows from 1 in input order
    store = DocumentStore(folder / "documents.sqlite", 384, read_only=True)
    seconds, found = [], []
    for query in fresh:  # one at a time, as search runs them; a binary index rescores from the store
        start = time.perf_counter()
        found.append(index.search(query[None, :], 10, params=SearchParams(), fetch=store.live_vectors)[1][0])
        seconds.append(time.perf_counter() - start)
    store.close()
    true_recall = float(np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, found, strict=True)]))
    build = result["build"]
    report = {
        "n": args.n,
        "wall_s": round(wall, 1),
        "docs_per_s": round(args.n / wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "vectors_mb": round(args.n * 384 * 4 / 2**20, 1),
        "index_memory_mb": round(index.memory_bytes() / 2**20, 1),
        "store_disk_mb": round((folder / "documents.sqlite").stat().st_size / 2**20, 1),
        "spec": build["spec"],
        "search_defaults": build["search_defaults"],
        "recall_estimate": build["recall_at_10"],
        "recall_lower_bound": build.get("recall_lower_bound"),
        "true_recall_fresh_queries": round(true_recall, 4),
        "fresh_query_p50_ms": round(1000 * float(np.median(seconds)), 3),
        "build_p50_ms": build.get("p50_ms"),
        "index_memory_budget_mb": args.budget_mb,
        "build_seconds_in_report": build["build_seconds"],
        "candidates": build.get("candidates"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Building {args.n:,} precomputed vectors ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "`.venv/bin/python benchmarks/build_1m.py`: `tessera index build --input vectors.npy` (ids in",
        "vectors.ids; 384-d Dirichlet mixtures of real MiniLM embeddings), local engine, commits of 20,000,",
        "`auto` index, on this 2-core machine"
        + ("." if args.budget_mb is None else f", TESSERA_INDEX_MEMORY_BUDGET_MB={args.budget_mb}."),
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time (read, check, store, index choice, build, tune, snapshot) | {report['wall_s']} s |",
        f"| documents/s end to end | {report['docs_per_s']} |",
        f"| peak RSS | {report['peak_rss_mb']} MiB |",
        f"| final index in memory | {report['index_memory_mb']} MiB ({report['spec']}) |",
        f"| the vectors themselves (float32) | {report['vectors_mb']} MiB |",
        f"| peak RSS / final index | {report['peak_rss_mb'] / report['index_memory_mb']:.2f}× |",
        f"| SQLite store on disk | {report['store_disk_mb']} MiB |",
        f"| recall@10: build estimate (lower bound) | {report['recall_estimate']} ({report['recall_lower_bound']}) |",
        f"| recall@10: 1,000 fresh queries at the tuned {report['search_defaults']} | "
        f"{report['true_recall_fresh_queries']} |",
        f"| single fresh query, index search (+ store read and rescoring for binary codes), p50 | "
        f"{report['fresh_query_p50_ms']} ms |",
        f"| the same as the build timed it (`last_build.p50_ms`: its held-out queries, index search only) | "
        f"{report['build_p50_ms']} ms |",
        "",
        "`auto` candidates (built on a 100k sample):",
        "",
        "| spec | est. memory MiB | recall@10 | lower bound | setting | p50 ms | build s | skipped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["candidates"] or []:
        lines.append(
            f"| {c['spec']} | {c['memory_bytes'] / 2**20:.0f} | {c['recall_at_10']} | {c['recall_lower_bound']} | "
            f"{c['search_defaults']} | {c['p50_ms']} | {c['build_seconds']} | {c['skipped'] or ''} |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
