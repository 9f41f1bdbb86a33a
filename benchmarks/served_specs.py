"""Index specs served side by side over HTTP, against what `auto`'s in-process trial measured.

`auto` (app/search/index_choice.py) times each candidate on a sample, one query at a time in
process, and takes the smallest of those within SPEED_TIE of the fastest. This checks that trial
against the specs as served: one server holds the same vectors (vs_chroma.py's generator) in one
collection per spec, each built with that spec and tuned by its build, plus one built with `auto`
(whose `last_build.candidates` hold the trial's figures). Each spec is then driven by wrk (8
connections, `include: []`) at its tuned breadth and at fixed nprobe values, 2 interleaved
rounds, best round; recall@10 on 200 held-out queries against exact top-10.

Usage: .venv/bin/python benchmarks/served_specs.py [--n 100000] [--specs IVF1264,SQ8 IVF1264,RaBitQ]
Writes benchmarks/results/served_specs.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recall_estimate import real_vectors  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402
from benchmarks.vs_chroma import BATCH, Tessera, exact_top10, recall, wrk_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BREADTHS = (None, 2, 4)  # None: the build's tuned breadth


def build(server: Tessera, name: str, spec: str | None, vectors) -> dict:  # type: ignore[no-untyped-def]
    server.create(name)
    for offset in range(0, len(vectors), BATCH):
        server.add(name, list(range(offset, offset + BATCH)), vectors[offset : offset + BATCH], b64=True)
    server.finish(name, spec)
    return server.build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--specs", nargs="+", default=["IVF1264,SQ8", "IVF1264,RaBitQ"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    real = real_vectors()
    vectors = synthetic_vectors(real[:5000], args.n, 0)
    queries = synthetic_vectors(real[:5000], 1000, 1)
    tune_queries, timed_queries = queries[:200], queries[200:]
    truth = exact_top10(vectors, tune_queries)
    work = Path(tempfile.mkdtemp(prefix="served-specs-"))
    server = Tessera(work / "data")
    server.data_dir.mkdir(parents=True)
    server.start()
    report: dict = {"n": args.n, "date": time.strftime("%Y-%m-%d %H:%M"), "specs": {}}
    try:
        auto = build(server, "auto", None, vectors)
        report["auto"] = {"spec": auto["spec"], "candidates": auto.get("candidates")}
        names = {spec: f"s{i}" for i, spec in enumerate(args.specs)}
        for spec, name in names.items():
            last = build(server, name, spec, vectors)
            report["specs"][spec] = {"search_defaults": last.get("search_defaults"), "rows": {}}
            server.build = last
            for breadth in BREADTHS:
                server.set_breadth(name, breadth)
                with server.new_client() as client:
                    found = [server.search(client, name, q) for q in tune_queries]
                report["specs"][spec]["rows"][str(breadth)] = {"recall@10": round(recall(found, truth), 4), "wrk": []}
        for _ in range(args.rounds):
            for spec, name in names.items():
                server.build = server.client.get(f"/indexes/{name}").json()["last_build"]  # type: ignore[union-attr]
                for breadth in BREADTHS:
                    server.set_breadth(name, breadth)
                    result = wrk_run(server, name, timed_queries, 8, seconds=8)
                    report["specs"][spec]["rows"][str(breadth)]["wrk"].append(result)
                    print(spec, breadth, result, flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "served_specs.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "served_specs.md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    lines = [
        f"# Index specs served over HTTP vs auto's trial ({report['date']})",
        "",
        f"`benchmarks/served_specs.py`: {report['n']:,} x 384 vectors (vs_chroma's generator), one server, one "
        "collection per spec; wrk, 8 connections, `include: []`, best of the interleaved rounds.",
        "",
        f"`auto` chose **{report['auto']['spec']}**. Its trial (in process, on the build's sample):",
        "",
        "| candidate | trial p50 ms | trial recall@10 | defaults | memory MiB | skipped |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["auto"]["candidates"] or []:
        lines.append(
            f"| {c['spec']} | {c.get('p50_ms')} | {c.get('recall_at_10')} | {c.get('search_defaults')} | "
            f"{c['memory_bytes'] / 2**20:.0f} | {c.get('skipped') or ''} |"
        )
    lines += [
        "",
        "Served:",
        "",
        "| spec | breadth | recall@10 | q/s | p50 / p99 ms | server CPU ms per query |",
        "|---|---|---|---|---|---|",
    ]
    for spec, entry in report["specs"].items():
        for breadth, row in entry["rows"].items():
            best = max(row["wrk"], key=lambda r: r["qps"])
            label = f"tuned {entry['search_defaults']}" if breadth == "None" else f"nprobe {breadth}"
            lines.append(
                f"| {spec} | {label} | {row['recall@10']} | {best['qps']} | {best['p50_ms']} / {best['p99_ms']} | "
                f"{best['server_cpu_ms_per_query']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
