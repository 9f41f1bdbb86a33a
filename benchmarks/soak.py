"""Soak: a real `tessera serve` under minutes of mixed load, its resident memory and latency over time.

Load (loopback only, bounded by --minutes): concurrent clients send embeddings requests of random
sizes (1-64 texts of 3-200 words: many distinct (batch, length) shapes), text and vector searches
(some filtered) and upserts of text documents, in the proportions of --mix. The server's RSS is
read from /proc every 5 s. Reported per configuration: RSS after warm-up (the first fifth) and at
the end, its growth, p50/p99 latency per operation, and errors (any status but 2xx and 429).

Configurations are server environments, run one after another on the same load, e.g.
    --config unbounded:TESSERA_OV_RUNTIME_CACHE_CAPACITY=5000,TESSERA_PAD_TO_MULTIPLE=1
    --config bounded:TESSERA_OV_RUNTIME_CACHE_CAPACITY=256,TESSERA_PAD_TO_MULTIPLE=8

Usage: .venv/bin/python benchmarks/soak.py --minutes 10 --config ... [--config ...]
Writes benchmarks/results/soak.json and .md (merged by configuration name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORDS = [
    "flow",
    "boundary",
    "layer",
    "shock",
    "wave",
    "heat",
    "transfer",
    "pressure",
    "wing",
    "airfoil",
    "lift",
    "drag",
    "turbulent",
    "laminar",
    "supersonic",
    "hypersonic",
    "nozzle",
    "cylinder",
    "plate",
    "velocity",
    "temperature",
    "stress",
    "buckling",
    "shell",
    "panel",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _text(rng: random.Random, low: int = 3, high: int = 200) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


async def _client(
    http: httpx.AsyncClient, rng: random.Random, deadline: float, mix: dict[str, float], log: dict
) -> None:
    ops, weights = list(mix), list(mix.values())
    counter = 0
    while time.monotonic() < deadline:
        op = rng.choices(ops, weights)[0]
        counter += 1
        if op == "embed":
            body = {"input": [_text(rng) for _ in range(rng.randint(1, 64))]}
            request = http.post("/v1/embeddings", json=body)
        elif op == "search":
            body = {"query": _text(rng, 2, 12), "top_k": 10}
            if rng.random() < 0.3:
                body["filter"] = {"n": {"$gte": rng.randint(0, 1000)}}
            request = http.post("/indexes/soak/search", json=body)
        else:
            docs = [
                {"id": f"u{rng.randint(0, 5000)}", "text": _text(rng, 10, 80), "metadata": {"n": rng.randint(0, 2000)}}
                for _ in range(10)
            ]
            request = http.put("/indexes/soak/documents", json={"documents": list({d["id"]: d for d in docs}.values())})
        start = time.perf_counter()
        try:
            response = await request
            status = response.status_code
        except httpx.HTTPError:
            status = -1
        log["latency"][op].append(time.perf_counter() - start)
        if not (200 <= status < 300 or status == 429):
            log["errors"][op] = log["errors"].get(op, 0) + 1


async def _load(base: str, minutes: float, clients: int, mix: dict[str, float], pid: int, seed: int) -> dict:
    deadline = time.monotonic() + minutes * 60
    log: dict = {"latency": {op: [] for op in mix}, "errors": {}, "rss": []}
    started = time.monotonic()

    async def sample() -> None:
        while time.monotonic() < deadline:
            log["rss"].append((round(time.monotonic() - started, 1), round(_rss_mb(pid), 1)))
            await asyncio.sleep(5)

    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        tasks = [_client(http, random.Random(seed + i), deadline, mix, log) for i in range(clients)]
        await asyncio.gather(sample(), *tasks)
    log["rss"].append((round(time.monotonic() - started, 1), round(_rss_mb(pid), 1)))
    return log


def run_config(name: str, env: dict[str, str], minutes: float, clients: int, mix: dict[str, float]) -> dict:
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="tessera-soak-"))
    server_env = {
        **os.environ,
        **env,
        "TESSERA_PORT": str(port),
        "TESSERA_HOST": "127.0.0.1",
        "TESSERA_DATA_DIR": str(work / "data"),
        "TESSERA_MODELS_DIR": str(ROOT / "models"),
        "TESSERA_MODELS": "minilm-l6",
        "TESSERA_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", "from app.cli import main; main()", "serve"],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "server.log").open("w"),
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        httpx.post(f"{base}/indexes", json={"name": "soak"}, timeout=30).raise_for_status()
        rng = np.random.default_rng(0)
        for start in range(0, 2000, 200):
            vectors = rng.normal(size=(200, 384)).astype(np.float32)
            docs = [
                {"id": f"s{start + i}", "vector": v.tolist(), "metadata": {"n": start + i}}
                for i, v in enumerate(vectors)
            ]
            httpx.put(f"{base}/indexes/soak/documents", json={"documents": docs}, timeout=60).raise_for_status()
        log = asyncio.run(_load(base, minutes, clients, mix, server.pid, seed=7))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    warm = [rss for t, rss in log["rss"] if t >= minutes * 60 / 5]
    after_warmup, end = warm[0], log["rss"][-1][1]
    return {
        "name": name,
        "env": env,
        "minutes": minutes,
        "clients": clients,
        "mix": mix,
        "rss_mb": log["rss"],
        "rss_after_warmup_mb": after_warmup,
        "rss_end_mb": end,
        "rss_peak_mb": max(rss for _, rss in log["rss"]),
        "growth_after_warmup": round(end / after_warmup - 1, 4),
        "requests": {op: len(v) for op, v in log["latency"].items()},
        "p50_ms": {op: round(statistics.median(v) * 1000, 1) for op, v in log["latency"].items() if v},
        "p99_ms": {op: round(float(np.percentile(v, 99)) * 1000, 1) for op, v in log["latency"].items() if v},
        "errors": log["errors"],
    }


def render(results: dict[str, dict]) -> str:
    lines = [
        "# Soak: memory and latency under mixed load",
        "",
        "`benchmarks/soak.py`: a real `tessera serve` (loopback), concurrent clients sending random-size embeddings",
        "requests (1-64 texts of 3-200 words), text searches (30% filtered) and text upserts; RSS from /proc every 5 s.",
        "Growth = RSS at the end / RSS after the first fifth (warm-up) - 1. Errors: any status but 2xx and 429.",
        "",
        "| config | minutes | requests (embed/search/upsert) | RSS after warm-up MB | end MB | peak MB | growth | p99 embed ms | p99 search ms | p99 upsert ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        req = r["requests"]
        lines.append(
            f"| {name} | {r['minutes']} | {req.get('embed', 0)}/{req.get('search', 0)}/{req.get('upsert', 0)} "
            f"| {r['rss_after_warmup_mb']:.0f} | {r['rss_end_mb']:.0f} | {r['rss_peak_mb']:.0f} "
            f"| {r['growth_after_warmup'] * 100:+.1f}% | {r['p99_ms'].get('embed', 0):.0f} | {r['p99_ms'].get('search', 0):.0f} "
            f"| {r['p99_ms'].get('upsert', 0):.0f} | {sum(r['errors'].values())} |"
        )
    lines += ["", "Configurations:", ""]
    lines += [
        f"- `{name}`: {', '.join(f'{k}={v}' for k, v in r['env'].items()) or 'defaults'}" for name, r in results.items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mix", default="embed=0.6,search=0.3,upsert=0.1")
    parser.add_argument("--config", action="append", default=[], help="name:K=V,K=V (repeatable)")
    args = parser.parse_args()
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    configs = args.config or ["defaults:"]
    path = RESULTS / "soak.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for entry in configs:
        name, _, pairs = entry.partition(":")
        env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        print(f"soak {name} for {args.minutes} min ...", file=sys.stderr)
        results[name] = run_config(name, env, args.minutes, args.clients, mix)
        print(json.dumps({k: v for k, v in results[name].items() if k != "rss_mb"}), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (RESULTS / "soak.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
