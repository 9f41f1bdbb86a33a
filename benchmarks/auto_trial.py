"""Does `auto`'s trial pick the cheapest index that reaches the recall target, whatever the sample?

`auto` (app/search/index_choice.py) tunes every candidate on held-out queries of a sample and
compares their single-query times at the tuned breadth. The breadth moves in steps of 2x, and with
few trial queries the recall estimate's confidence bound decides on which side of a step a
candidate lands: two candidates with the same recall curve can be tuned a step apart, and the
comparison then measures that step, not the candidates.

For several data seeds (vs_chroma.py's generator) this stores the vectors in a DocumentStore (the
binary candidate rescores from it, as served) and runs `choose` with each trial query count. The
reference it is checked against comes from separate queries (the generator's other seed, as
vs_chroma's searches): for each IVF candidate, built on all the vectors, the smallest nprobe whose
recall@10 on those queries reaches the target, and its median single-query time there. The pick is
right when its reference time is within SPEED_TIE of the fastest reference time.

Decision rule, written before the first run (2026-12-06): the default trial query count becomes
1,000 if its pick is right on every seed (0, 1, 2 at 100k) and on at least as many seeds as 200's;
then it is checked as served (served_specs.py, vs_chroma.py at 100k).

Usage: .venv/bin/python benchmarks/auto_trial.py [--n 100000] [--seeds 0 1 2] [--trial-queries 200 1000]
Writes benchmarks/results/auto_trial.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search import index_choice  # noqa: E402
from app.search.store import Document, DocumentStore  # noqa: E402
from app.search.vector_index import (  # noqa: E402
    NPROBE_STEPS,
    SearchParams,
    VectorIndex,
    exact_top_k,
    recall_per_query,
    single_query_ms,
)
from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.95
BUDGET = 4096 << 20  # the default index_memory_budget_mb
REFERENCE_QUERIES = 1000
TIMED = 300
WRITE_BATCH = 5_000


def stored(path: Path, vectors: np.ndarray) -> tuple[DocumentStore, np.ndarray]:
    store = DocumentStore(path, vectors.shape[1])
    for start in range(0, len(vectors), WRITE_BATCH):
        rows = range(start, min(start + WRITE_BATCH, len(vectors)))
        store.upsert([Document(str(i), None, {}, vectors[i]) for i in rows])
    with store.snapshot() as snap:
        return store, snap.keys()


def reference(spec: str, vectors: np.ndarray, keys: np.ndarray, queries: np.ndarray, store: DocumentStore) -> dict:
    """`spec` over all the vectors: the smallest nprobe reaching TARGET on `queries`, its time."""
    index = VectorIndex(vectors.shape[1], "cosine", spec)
    index.rescore_from = store.live_vectors
    index.train(vectors)
    index.add(keys, vectors)
    truth = exact_top_k([(keys, vectors)], queries, "cosine")
    for nprobe in NPROBE_STEPS:
        params = SearchParams(nprobe=nprobe, rescore_depth=4 if index.is_binary else None)
        recall = float(np.mean(recall_per_query(index, truth, queries, params)))
        if recall >= TARGET:
            break
    return {
        "nprobe": nprobe,
        "recall": round(recall, 4),
        "ms": round(single_query_ms(index, queries[:TIMED], params), 4),
    }


def run_seed(seed: int, n: int, trial_counts: list[int], work: Path) -> dict:
    real = real_vectors()
    vectors = synthetic_vectors(real[:5000], n, seed)
    queries = synthetic_vectors(real[:5000], REFERENCE_QUERIES, seed + 1000)
    store, keys = stored(work / f"seed{seed}.db", vectors)
    out: dict = {"trials": {}, "reference": {}}
    try:
        specs = [s for s in index_choice.candidate_specs(n, vectors.shape[1]) if s.startswith("IVF")]
        for spec in specs:
            out["reference"][spec] = reference(spec, vectors, keys, queries, store)
            print(seed, spec, out["reference"][spec], flush=True)
        fastest = min(r["ms"] for r in out["reference"].values())
        with store.snapshot() as snap:
            for count in trial_counts:
                sample_keys = keys[: index_choice.SAMPLE].copy()
                sample = vectors[: index_choice.SAMPLE].copy()
                start = time.perf_counter()
                spec, candidates = index_choice.choose(
                    sample,
                    n,
                    "cosine",
                    BUDGET,
                    TARGET,
                    sample_keys=sample_keys,
                    fetch=snap.live_vectors,
                    trial_queries=count,
                )
                picked = out["reference"].get(spec)
                out["trials"][str(count)] = {
                    "pick": spec,
                    "seconds": round(time.perf_counter() - start, 1),
                    "right": picked is not None and picked["ms"] <= index_choice.SPEED_TIE * fastest,
                    "candidates": [c.__dict__ for c in candidates],
                }
                print(seed, count, spec, out["trials"][str(count)]["right"], flush=True)
    finally:
        store.close()
    return out


def markdown(report: dict) -> str:
    lines = [
        f"# `auto`'s trial against a reference ({report['date']})",
        "",
        f"`benchmarks/auto_trial.py`: {report['n']:,} x 384 vectors per data seed (vs_chroma's generator), "
        f"recall target {TARGET}. Reference: each IVF candidate on all the vectors, the smallest nprobe "
        f"reaching the target on {REFERENCE_QUERIES} separate queries, median single-query ms there (in process). "
        "A pick is right when its reference time is within SPEED_TIE of the fastest.",
        "",
        "| seed | reference: spec nprobe / recall / ms | trial queries | pick | right | trial: spec nprobe / p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for seed, result in report["seeds"].items():
        ref = "; ".join(f"{s} {r['nprobe']} / {r['recall']} / {r['ms']}" for s, r in result["reference"].items())
        for count, trial in result["trials"].items():
            tried = "; ".join(
                f"{c['spec']} {c['search_defaults']} / {c['p50_ms']}"
                for c in trial["candidates"]
                if c["skipped"] is None
            )
            lines.append(f"| {seed} | {ref} | {count} | {trial['pick']} | {trial['right']} | {tried} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trial-queries", type=int, nargs="+", default=[200, index_choice.TRIAL_QUERIES])
    parser.add_argument("--out", default="auto_trial")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="auto-trial-"))
    report: dict = {"n": args.n, "date": time.strftime("%Y-%m-%d %H:%M"), "seeds": {}}
    try:
        for seed in args.seeds:
            report["seeds"][str(seed)] = run_seed(seed, args.n, args.trial_queries, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
