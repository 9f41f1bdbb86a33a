"""Search over HTTP, Tessera against Tessera: the working tree vs a base git revision, one run, interleaved.

For changes to the request path that must make search cheaper and must not change its answers:
both servers serve copies of the same collection (one built here with `--n`, or an existing data
folder with `--data`), one is paused (SIGSTOP) while the other is under load, and the scenarios
alternate between them for `--rounds` rounds. Each row gives requests/s, p50/p99 and the server's
CPU time per request (its /proc utime + stime over the run, divided by the requests), the number
that decides throughput on a machine whose cores are shared with the load generator. Before any
timing, both servers answer the same 100 searches and the ids must be identical.

Queries and vectors are vs_chroma.py's (Dirichlet mixtures of real MiniLM vectors, held-out
queries near, not equal to, stored vectors), sent as JSON float arrays with `include: []` as
vs_chroma's wrk rows do.

Usage: .venv/bin/python benchmarks/search_ab.py --base REV --data DIR --index NAME [--rounds 2] [--nprobe 2]
       .venv/bin/python benchmarks/search_ab.py --base REV --n 100000
Writes benchmarks/results/search_ab.json and .md (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from embed_ab import PORTS, base_models_dir, best_rounds, start  # noqa: E402
from embed_http import WRK_LUA, pause_others, run_wrk, wait_ready  # noqa: E402
from recall_estimate import real_vectors  # noqa: E402
from search import synthetic_vectors  # noqa: E402
from vs_chroma import encode, metadata  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HEALTH_LUA = r"""
function done(summary, latency, requests)
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"non2xx\": %d, " ..
    "\"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def scenarios(nprobe: int) -> list[tuple[str, int, dict | None]]:
    """(row name, connections, extra search fields; None = GET /health)."""
    return [
        (f"search, nprobe {nprobe}", 1, {"nprobe": nprobe}),
        (f"search, nprobe {nprobe}", 8, {"nprobe": nprobe}),
        ("search, the build's tuned breadth", 8, {}),
        ("GET /health (the HTTP floor)", 8, None),
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def build(data: Path, n: int, index: str) -> None:
    """A collection of `n` vectors (ids and metadata as vs_chroma's) optimised with `auto`, by a
    server of the working tree that is stopped again."""
    env_port = PORTS["tree"]
    proc = start("tree", ROOT, ROOT / "models", data.parent)
    try:
        wait_ready(f"http://127.0.0.1:{env_port}/ready")
        client = httpx.Client(base_url=f"http://127.0.0.1:{env_port}", timeout=600)
        client.post("/indexes", json={"name": index, "model": "minilm-l6"}).raise_for_status()
        vectors = synthetic_vectors(real_vectors()[:5000], n, 0)
        for off in range(0, n, 1000):
            docs = [
                {"id": str(i), "metadata": metadata(i), "vector_base64": encode(vectors[i])}
                for i in range(off, min(off + 1000, n))
            ]
            client.put(f"/indexes/{index}/documents", json={"documents": docs}).raise_for_status()
        client.post(f"/indexes/{index}/optimize", json={}).raise_for_status()
        while not (info := client.get(f"/indexes/{index}").json())["last_build"] or info["optimizing"]:
            time.sleep(2)
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def same_answers(index: str, queries: np.ndarray) -> int:
    """Both servers' ids for the same searches; raises if any differ. Returns the count compared."""
    answers = {}
    for name, port in PORTS.items():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            answers[name] = [
                [h["id"] for h in client.post(f"/indexes/{index}/search", json=body(v, {"nprobe": 2})).json()["hits"]]
                for v in queries
            ]
    if answers["base"] != answers["tree"]:
        raise SystemExit("the two servers answered the same searches differently")
    return len(queries)


def body(vector: np.ndarray, extra: dict) -> dict:
    return {"vector": vector.tolist(), "top_k": 10, "include": [], **extra}


def measure(
    procs: dict[str, subprocess.Popen], name: str, url: str, bodies: Path | None, lua: Path, conns: int, secs: int
) -> dict:
    pause_others(procs, name)
    run_wrk(url, bodies or lua, lua, conns, 2)  # warm-up
    before = cpu_seconds(procs[name].pid)
    stats = run_wrk(url, bodies or lua, lua, conns, secs)
    requests = stats["requests_per_s"] * secs
    stats["cpu_ms_per_request"] = (cpu_seconds(procs[name].pid) - before) * 1000 / max(requests, 1)
    if stats["non2xx"] or stats["socket_errors"]:
        raise SystemExit(f"{name} {url}: {stats['non2xx']} non-2xx answers, {stats['socket_errors']} socket errors")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--data", type=Path, help="a data folder holding the collection (copied for each server)")
    parser.add_argument("--index", default="bench", help="the collection to search")
    parser.add_argument("--n", type=int, default=100_000, help="vectors to build a collection of, without --data")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="search_ab")
    parser.add_argument("--nprobe", type=int, default=2, help="the fixed breadth of the first two rows")
    args = parser.parse_args()
    rev = {
        side: subprocess.run(
            ["git", "rev-parse", "--short", r], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for side, r in (("base", args.base), ("tree", "HEAD"))
    }
    workdir = Path(tempfile.mkdtemp(prefix="tessera-search-ab-"))
    base_tree = workdir / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), rev["base"]], cwd=ROOT, check=True)
    procs: dict[str, subprocess.Popen] = {}
    try:
        if args.data:
            shutil.copytree(args.data, workdir / "data-tree")
        else:
            build(workdir / "data-tree", args.n, args.index)
        shutil.copytree(workdir / "data-tree", workdir / "data-base")
        procs["base"] = start("base", base_tree, base_models_dir(base_tree, workdir), workdir)
        procs["tree"] = start("tree", ROOT, ROOT / "models", workdir)
        for name in procs:
            wait_ready(f"http://127.0.0.1:{PORTS[name]}/ready")
        info = httpx.get(f"http://127.0.0.1:{PORTS['tree']}/indexes/{args.index}", timeout=60).json()
        queries = synthetic_vectors(real_vectors()[:5000], 1000, 1)
        compared = same_answers(args.index, queries[:100])
        lua = workdir / "bodies.lua"
        lua.write_text(WRK_LUA)
        health_lua = workdir / "health.lua"
        health_lua.write_text(HEALTH_LUA)
        rows: dict[str, dict[str, list[dict]]] = {}
        for round_index in range(args.rounds):
            for label, conns, extra in scenarios(args.nprobe):
                row = f"{label}, {conns} connection{'s' if conns > 1 else ''}"
                bodies = None
                if extra is not None:
                    bodies = workdir / f"bodies-{len(extra)}.jsonl"
                    bodies.write_text("\n".join(json.dumps(body(v, extra)) for v in queries[100:]) + "\n")
                for name in ["base", "tree"] if round_index % 2 == 0 else ["tree", "base"]:
                    path = "/health" if extra is None else f"/indexes/{args.index}/search"
                    url = f"http://127.0.0.1:{PORTS[name]}{path}"
                    stats = measure(procs, name, url, bodies, lua if bodies else health_lua, conns, args.duration)
                    rows.setdefault(row, {"base": [], "tree": []})[name].append(stats)
                    print(row, name, f"{stats['requests_per_s']:.0f}/s {stats['cpu_ms_per_request']:.3f} ms CPU")
        report = {
            "base": rev["base"],
            "tree": f"{rev['tree']} + working tree",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "collection": {k: info.get(k) for k in ("size", "index_type", "search_defaults")},
            "identical_answers": compared,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "rows": {},
        }
        for row, sides in rows.items():
            report["rows"][row] = best_rounds(sides, {"requests_per_s": "requests_per_s", "cpu": "cpu_ms_per_request"})
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(render(report))
        print(render(report))
    finally:
        for proc in procs.values():
            for sig in (18, 15):  # SIGCONT, so it can exit; then SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def render(report: dict) -> str:
    c = report["collection"]
    lines = [
        f"# Search over HTTP: Tessera {report['tree']} vs {report['base']} ({report['date']})",
        "",
        f"`benchmarks/search_ab.py`: one collection of {c['size']:,} x 384 vectors ({c['index_type']}, "
        f"tuned breadth {c['search_defaults']}), copied for each server; wrk on loopback, the idle server "
        f"paused; {report['rounds']} interleaved rounds of {report['duration_s']} s, best round per side. "
        f"Both servers gave identical ids for {report['identical_answers']} searches first. Ratios are "
        "working tree / base; server CPU per request is what bounds throughput here.",
        "",
        "| row | base req/s | tree req/s | ratio | base CPU ms/req | tree CPU ms/req | CPU ratio "
        "| base p50 / p99 ms | tree p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, e in report["rows"].items():
        b, t = e["base"], e["tree"]
        lines.append(
            f"| {row} | {b['requests_per_s']:.0f} | {t['requests_per_s']:.0f} | {e['ratio_requests_per_s']:.3f} "
            f"| {b['cpu_ms_per_request']:.3f} | {t['cpu_ms_per_request']:.3f} | {e['ratio_cpu']:.3f} "
            f"| {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {t['p50_ms']:.2f} / {t['p99_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
