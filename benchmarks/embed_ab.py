"""Tessera against Tessera: the working tree vs a base git revision, over HTTP, interleaved in one run.

For changes that must not cost speed (a refactor, a new middleware): both servers serve the same
model folder files, one is paused (SIGSTOP) while the other is under load, and the wrk scenarios of
`embed_http.py` alternate between them for `--rounds` rounds; the report gives each side's best
round and the ratio working tree / base. The base runs from a `git worktree` of `--base` with this
venv's Python. A base that reads only version-1 manifests gets a v1 copy of the model folder.

Usage: .venv/bin/python benchmarks/embed_ab.py --base 793c0c8 [--duration 10] [--rounds 3]
Writes benchmarks/results/embed_ab.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from embed_http import SCENARIOS, WRK_LUA, load_texts, pause_others, run_wrk, wait_ready, write_bodies  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PORTS = {"base": 8111, "tree": 8112}


def v1_manifest(v2: dict) -> dict:
    """The version-1 layout of a text model's v2 manifest (for a base revision that predates v2)."""
    text = v2["text"]
    return {
        "schema_version": 1,
        "name": v2["name"],
        "kind": v2["kind"],
        "dim": v2["dim"],
        "pooling": text["pooling"],
        "normalize": text["normalize"],
        "max_tokens": text["max_tokens"],
        "similarity": v2.get("similarity", "cosine"),
        "preprocessing": {k: text[k] for k in ("tokenizer_file", "query_prefix", "document_prefix") if k in text},
        "onnx": text["onnx"],
        "files": v2["files"],
        "source": v2["source"],
        "parity": [
            {
                **{k: v for k, v in p.items() if k not in ("n_samples", "samples_per_s", "tower")},
                "n_sentences": p["n_samples"],
                "sentences_per_s": p.get("samples_per_s"),
            }
            for p in v2["parity"]
        ],
        "eval_scores": v2.get("eval_scores", {}),
        "created_at": v2["created_at"],
    }


def base_models_dir(base_tree: Path, workdir: Path) -> Path:
    """The model folder for the base: as is, or with a v1 manifest if the base reads only v1."""
    source = ROOT / "models" / "minilm-l6"
    manifest = json.loads((source / "manifest.json").read_text())
    reads_v2 = "schema_version: Literal[2]" in (base_tree / "app" / "core" / "manifest.py").read_text()
    models = workdir / "base-models"
    target = models / "minilm-l6"
    shutil.copytree(source, target)
    if not reads_v2 and manifest.get("schema_version") == 2:
        (target / "manifest.json").write_text(json.dumps(v1_manifest(manifest), indent=2))
    return models


def start(name: str, cwd: Path, models: Path, workdir: Path, extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        **(extra or {}),
        "TESSERA_PORT": str(PORTS[name]),
        "TESSERA_MODELS_DIR": str(models),
        "TESSERA_MODELS": "minilm-l6",
        "TESSERA_DATA_DIR": str(workdir / f"data-{name}"),
        "TESSERA_LOG_LEVEL": "warning",
        "PYTHONPATH": str(cwd),
    }
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", "from app.cli import main; main()", "serve"],
        env=env,
        cwd=cwd,
        stdout=(workdir / f"{name}.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def best_rounds(sides: dict[str, list[dict]], ratios: dict[str, str]) -> dict:
    """Each side's best round (by requests/s), every round, and `ratio_<label>`: tree / base of
    the best rounds' `ratios[label]` statistic."""
    best = {name: max(runs, key=lambda r: r["requests_per_s"]) for name, runs in sides.items()}
    return {
        **best,
        "all_rounds": sides,
        **{f"ratio_{label}": best["tree"][key] / best["base"][key] for label, key in ratios.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree-env", action="append", default=[], help="K=V for the working tree's server")
    parser.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--out", default="embed_ab", help="results file stem in benchmarks/results")
    args = parser.parse_args()
    tree_env = dict(pair.split("=", 1) for pair in args.tree_env)
    scenarios = [s for s in SCENARIOS if not args.scenarios or s["name"] in args.scenarios.split(",")]
    base_rev = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="tessera-ab-"))
    base_tree = workdir / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), base_rev], cwd=ROOT, check=True)
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["base"] = start("base", base_tree, base_models_dir(base_tree, workdir), workdir)
        procs["tree"] = start("tree", ROOT, ROOT / "models", workdir, tree_env)
        for name in procs:
            wait_ready(f"http://127.0.0.1:{PORTS[name]}/ready")
        texts = load_texts()
        lua = workdir / "bodies.lua"
        lua.write_text(WRK_LUA)
        rounds: dict[str, dict[str, list[dict]]] = {s["name"]: {"base": [], "tree": []} for s in scenarios}
        for round_index in range(args.rounds):
            for scenario in scenarios:
                bodies = workdir / f"{scenario['name']}.jsonl"
                write_bodies(bodies, texts[scenario["texts"]], scenario["per_request"], "minilm-l6")
                duration = args.duration * scenario.get("duration_factor", 1)
                order = ["base", "tree"] if round_index % 2 == 0 else ["tree", "base"]
                for name in order:
                    pause_others(procs, name)
                    url = f"http://127.0.0.1:{PORTS[name]}/v1/embeddings"
                    run_wrk(url, bodies, lua, scenario["connections"], 2)  # warm-up
                    stats = run_wrk(url, bodies, lua, scenario["connections"], duration)
                    stats["texts_per_s"] = stats["requests_per_s"] * scenario["per_request"]
                    rounds[scenario["name"]][name].append(stats)
                    print(scenario["name"], name, f"{stats['requests_per_s']:.1f} req/s p99 {stats['p99_ms']:.0f} ms")
        report = {
            "base": base_rev,
            "tree": f"{tree_rev} + working tree" + (f" ({', '.join(args.tree_env)})" if args.tree_env else ""),
            "duration_s": args.duration,
            "rounds": args.rounds,
            "date": time.strftime("%Y-%m-%d"),
            "scenarios": {},
        }
        for scenario, sides in rounds.items():
            report["scenarios"][scenario] = best_rounds(sides, {"requests_per_s": "requests_per_s", "p99": "p99_ms"})
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2))
        (RESULTS / f"{args.out}.md").write_text(render(report))
        print(render(report))
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, 18)  # SIGCONT, so it can exit
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a server that does not stop must not outlive the run
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def render(report: dict) -> str:
    lines = [
        f"# Tessera {report['tree']} vs {report['base']} over HTTP ({report['date']})",
        "",
        f"Same model folder, wrk, loopback, idle server paused; {report['rounds']} interleaved rounds of "
        f"{report['duration_s']} s (passages x3), best round per side. Ratio = working tree / base.",
        "",
        "| scenario | base req/s | tree req/s | ratio | base p99 ms | tree p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["scenarios"].items():
        b, t = entry["base"], entry["tree"]
        lines.append(
            f"| {name} | {b['requests_per_s']:.1f} | {t['requests_per_s']:.1f} | {entry['ratio_requests_per_s']:.3f} "
            f"| {b['p99_ms']:.0f} | {t['p99_ms']:.0f} | {entry['ratio_p99']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
