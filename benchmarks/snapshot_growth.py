"""Snapshots during a bulk load: a fixed interval of writes against one that grows with the index.

A collection's FAISS snapshot rewrites the whole index. At a fixed interval (`snapshot_every_ops`,
20,000 writes) a load of n vectors rewrites it n / 20,000 times, each time larger: the bytes written
grow with n². With `snapshot_growth` the writes between snapshots are also at least that fraction
of the index's vectors, so the rewrites grow geometrically. This loads the same vectors into a fresh
`auto` collection (served as Flat until optimised, as an HTTP ingest is) through
`Collection.upsert` in batches of 1,000, once per policy, alternating, and reports the load's wall
time, the snapshots and the bytes they wrote, and the cost on the other side: the ops a crash at
the end would replay, and the time to reopen the folder (snapshot load + replay) without a final
snapshot, as after kill -9.

Usage: .venv/bin/python benchmarks/snapshot_growth.py [--n 1000000] [--rounds 1]
Writes benchmarks/results/snapshot_growth.json and .md.
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

from app.search.collection import DEFAULT_SNAPSHOT_GROWTH, Collection, CollectionConfig  # noqa: E402
from app.search.store import Document  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH = 1_000
EVERY_OPS = 20_000  # the default TESSERA_SNAPSHOT_EVERY_OPS
BUDGET = 8 << 30


def load(folder: Path, vectors: np.ndarray, growth: float) -> dict:
    config = CollectionConfig("bulk", "m", vectors.shape[1])
    folder.mkdir(parents=True)
    config.save(folder)
    collection = Collection(folder, config, BUDGET, snapshot_every_ops=EVERY_OPS, snapshot_growth=growth)
    snapshots: list[float] = []  # seconds each
    written = 0
    snapshot = collection.snapshot

    def timed_snapshot() -> None:
        nonlocal written
        start = time.perf_counter()
        snapshot()
        snapshots.append(time.perf_counter() - start)
        written += sum(f.stat().st_size for f in folder.glob("index.*.faiss"))  # the one just written

    collection.snapshot = timed_snapshot  # type: ignore[method-assign]
    start = time.perf_counter()
    for offset in range(0, len(vectors), BATCH):
        rows = vectors[offset : offset + BATCH]
        collection.upsert([Document(str(offset + i), None, {}, row) for i, row in enumerate(rows)])
    load_s = time.perf_counter() - start
    collection.close()  # no final snapshot (the manager's shutdown takes that): as after kill -9
    start = time.perf_counter()
    reopened = Collection(folder, CollectionConfig.load(folder), BUDGET, snapshot_every_ops=EVERY_OPS)
    reopen_s = time.perf_counter() - start
    replayed, live = reopened._ops_since_snapshot, reopened.index.live
    reopened.close()
    assert live == len(vectors), live
    return {
        "growth": growth,
        "load_s": round(load_s, 1),
        "docs_per_s": round(len(vectors) / load_s, 1),
        "snapshots": len(snapshots),
        "snapshot_s": round(sum(snapshots), 1),
        "snapshot_gib_written": round(written / 2**30, 2),
        "replayed_ops_at_reopen": replayed,
        "reopen_s": round(reopen_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    policies = [0.0, DEFAULT_SNAPSHOT_GROWTH]
    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="snapshot-growth-"))
    try:
        for round_no in range(args.rounds):
            for growth in policies if round_no % 2 == 0 else policies[::-1]:
                folder = work / f"r{round_no}-g{growth}"
                result = load(folder, vectors, growth)
                shutil.rmtree(folder)
                print(result, flush=True)
                runs.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"n": args.n, "dim": args.dim, "every_ops": EVERY_OPS, "batch": BATCH, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "snapshot_growth.json").write_text(json.dumps(report, indent=2) + "\n")
    final_gib = args.n * args.dim * 4 / 2**30
    lines = [
        f"# Snapshots during a bulk load ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`.venv/bin/python benchmarks/snapshot_growth.py --n {args.n}`: {args.n:,} × {args.dim}-d vectors "
        f"upserted {BATCH:,} at a time into a fresh `auto` collection (Flat until optimised, "
        f"{final_gib:.2f} GiB of vectors at the end) through `Collection.upsert`, one load per policy, "
        f"alternating; snapshots at least every {EVERY_OPS:,} writes, and with growth g at least g × the "
        "index's vectors apart. Reopen: the folder opened again without a final snapshot (as after "
        "kill -9): the last snapshot loaded and the op log after it replayed.",
        "",
        "| growth | load s | docs/s | snapshots | snapshot s | GiB written by snapshots | ops replayed at reopen | reopen s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['growth']} | {run['load_s']} | {run['docs_per_s']} | {run['snapshots']} | {run['snapshot_s']} | "
            f"{run['snapshot_gib_written']} | {run['replayed_ops_at_reopen']:,} | {run['reopen_s']} |"
        )
    (RESULTS / "snapshot_growth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
