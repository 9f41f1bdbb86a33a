"""The per-request cost of the pure-ASGI middleware, the working tree against a base git revision.

A search answered on the event loop costs ~0.6-0.7 ms of server CPU at 1M vectors, so a few
microseconds per middleware layer are a measurable share. This drives each middleware of
`app/api/middleware.py` (the tree's and the base revision's, loaded side by side) around an app
that reads the body and answers at once, as an inline search does, on one uvloop loop (as uvicorn serves) with a
receive and send that never wait: only the layer's own work is timed. Rounds alternate between the
two versions; the best round per side is kept.

Usage: .venv/bin/python benchmarks/middleware_cost.py --base REV [--requests 50000] [--rounds 5]
Writes benchmarks/results/middleware_cost.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import app.api.middleware as tree_middleware  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCOPE = {"type": "http", "method": "POST", "path": "/indexes/bench/search", "headers": []}
BODY = {"type": "http.request", "body": b'{"vector": [0.1], "k": 10}', "more_body": False}


def base_module(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:app/api/middleware.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "base_middleware.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_middleware", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def answer_at_once(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def connection():  # type: ignore[no-untyped-def]
    """A receive that hands over the body, then waits (as a connection does until the client goes)."""
    read = False

    async def receive() -> dict:
        nonlocal read
        if not read:
            read = True
            return BODY
        await asyncio.Event().wait()  # never set: the watcher is cancelled when the response is done
        raise AssertionError("unreachable")

    return receive


async def send(message: dict) -> None:
    return None


def per_request_us(layer, requests: int) -> float:  # type: ignore[no-untyped-def]
    async def run() -> float:
        for _ in range(200):  # warm up (series created, code paths hot)
            await layer(SCOPE, connection(), send)
        start = time.perf_counter()
        for _ in range(requests):
            await layer(SCOPE, connection(), send)
        return (time.perf_counter() - start) / requests * 1e6

    loop = uvloop.new_event_loop()  # as uvicorn serves
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = base_module(args.base)
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True)
    layers = {
        "none (the app alone)": (answer_at_once, answer_at_once),
        "CancelOnDisconnectMiddleware": (
            base.CancelOnDisconnectMiddleware(answer_at_once),
            tree_middleware.CancelOnDisconnectMiddleware(answer_at_once),
        ),
        "MetricsMiddleware": (
            base.MetricsMiddleware(answer_at_once),
            tree_middleware.MetricsMiddleware(answer_at_once),
        ),
    }
    rows = []
    for name, (base_layer, tree_layer) in layers.items():
        base_us, tree_us = [], []
        for round_no in range(args.rounds):
            order = [(base_layer, base_us), (tree_layer, tree_us)]
            for layer, out in order if round_no % 2 == 0 else order[::-1]:
                out.append(per_request_us(layer, args.requests))
        rows.append({"layer": name, "base_us": round(min(base_us), 2), "tree_us": round(min(tree_us), 2)})
        print(rows[-1], flush=True)
    app_alone = rows[0]
    report = {"base": rev.stdout.strip(), "requests": args.requests, "rounds": args.rounds, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "middleware_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Middleware cost per request: working tree vs {report['base']} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`.venv/bin/python benchmarks/middleware_cost.py --base {args.base}`: each layer around an app that "
        f"reads the body and answers at once, {args.requests:,} requests per round on one uvloop loop (as uvicorn serves), "
        f"{args.rounds} alternating rounds, best round per side. The layer's own cost is its time minus "
        "the app alone's.",
        "",
        "| layer | base µs/request | tree µs/request | base, layer only | tree, layer only | saved µs |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        base_own = row["base_us"] - app_alone["base_us"]
        tree_own = row["tree_us"] - app_alone["tree_us"]
        lines.append(
            f"| {row['layer']} | {row['base_us']} | {row['tree_us']} | {base_own:.2f} | {tree_own:.2f} | "
            f"{base_own - tree_own:.2f} |"
        )
    (RESULTS / "middleware_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
