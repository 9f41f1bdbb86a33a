"""How precisely do the held-out sets measure a reranker's gain? Paired bootstrap per query.

Issue 15 asks the served reranker for >= +0.015 nDCG@10 over the first stage on Cranfield and on the
MS MARCO subset, and stored rescoring through a query tower is held to the same bar. The tables in
results/rerank_served*.md give point estimates on the held-out half of query split 0: 113 Cranfield
queries, 22 MS MARCO ones. This puts an interval on each, from the very runs those tables score
(`rerank_served.rescore_held_out`: minilm-l6's top 50, cosine alone): per held-out query, nDCG@10 of
the reranked list minus the first stage's (and the tower's minus mpnet's own), resampled with
replacement 10,000 times (seed 0), 2.5th and 97.5th percentiles of the mean. `queries for +-0.0075`
is how many held-out queries a 95% interval half as wide as the 0.015 bar would need at the
per-query spread seen here (1.96 sd / 0.0075, squared).

mpnet's own query has nothing fitted on any query (cosine alone; the tower was distilled on the
train half's queries, the fusion weight fitted there), so it is also scored on every judged query of
each set, both halves: the tightest interval these sets allow for the served default.

Usage: .venv/bin/python benchmarks/rerank_uncertainty.py  (needs models/mpnet-rerank with its `query/`
tower: `make rerank-model rescore-query-tower`). Writes benchmarks/results/rerank_uncertainty.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytrec_eval

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.text_model import TextModel  # noqa: E402
from benchmarks.report import bootstrap_means  # noqa: E402
from benchmarks.rerank_served import (  # noqa: E402
    DATASETS,
    cached_vectors,
    rescore_held_out,
    served,
    served_query_tower,
    tower_routed,
)
from training.data.beir import load_beir  # noqa: E402
from training.eval.metrics import ranked_run, top_k_ids  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RERANKER, RESAMPLES, SEED, HALF_WIDTH = "mpnet-rerank", 10_000, 0, 0.0075


def per_query_ndcg(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    return {q: scores["ndcg_cut_10"] for q, scores in evaluator.evaluate(run).items()}


def interval(deltas: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Mean of the per-query `deltas`, its 95% bootstrap interval, and the queries a +-HALF_WIDTH one needs."""
    means = bootstrap_means(deltas, rng, RESAMPLES)
    low, high = np.percentile(means, [2.5, 97.5])
    needed = int(np.ceil((1.96 * deltas.std(ddof=1) / HALF_WIDTH) ** 2))
    return {"mean": float(deltas.mean()), "low": float(low), "high": float(high), "queries_needed": needed}


def measure(name: str, first_model: TextModel, second: TextModel, tower: Callable[[list[str]], np.ndarray]) -> dict:
    """On the held-out half of `name`: mpnet's own query and the `tower`'s (as stored rescore routes
    it) over the first stage, and the tower's minus mpnet's."""
    held_out, candidates, sides = rescore_held_out(
        name,
        load_beir(DATASETS[name]),
        first_model,
        second,
        {"own": lambda texts, _: second.encode(texts), "tower": lambda texts, _: tower(texts)},
    )
    qrels = {q: {d: int(g) for d, g in judged.items()} for q, judged in held_out.qrels.items()}
    first = per_query_ndcg(ranked_run(candidates), qrels)
    full, via_tower = per_query_ndcg(sides["own"].second, qrels), per_query_ndcg(sides["tower"].second, qrels)
    ids = sorted(full)
    gain = np.array([full[q] - first[q] for q in ids])
    tower_gain = np.array([via_tower[q] - first[q] for q in ids])
    rng = np.random.default_rng(SEED)
    return {
        "queries": len(ids),
        f"{RERANKER} over the first stage": interval(gain, rng),
        "its query tower over the first stage (stored rescore)": interval(tower_gain, rng),
        "tower minus mpnet's own query": interval(tower_gain - gain, rng),
    }


def every_query(
    name: str, first: TextModel, second: TextModel, tower: Callable[[list[str]], np.ndarray] | None = None
) -> dict:
    """On every judged query of `name` (both halves): the reranker `second`'s own query over the first
    stage `first`, and with `tower` (texts -> unit vectors in its space; it must have seen none of
    these queries) the tower's query over the first stage and minus the reranker's own."""
    dataset = load_beir(DATASETS[name])
    doc_ids = list(dataset.corpus)
    first_docs = cached_vectors(first, name, doc_ids, [dataset.doc_text(d) for d in doc_ids])
    ids = sorted(q for q in dataset.queries if dataset.qrels.get(q))
    texts = [dataset.queries[q] for q in ids]
    candidates = top_k_ids(ids, first.encode(texts), doc_ids, np.stack([first_docs[d] for d in doc_ids]), 50)
    pool = sorted({d for c in candidates.values() for d in c})
    second_docs = cached_vectors(second, name, pool, [dataset.doc_text(d) for d in pool])
    qrels = {q: {d: int(g) for d, g in dataset.qrels[q].items()} for q in ids}
    first_ndcg = per_query_ndcg(ranked_run(candidates), qrels)

    def gains(query_vectors: np.ndarray) -> np.ndarray:
        run = {q: {d: float(second_docs[d] @ query_vectors[i]) for d in candidates[q]} for i, q in enumerate(ids)}
        reranked = per_query_ndcg(run, qrels)
        return np.array([reranked[q] - first_ndcg[q] for q in ids])

    gain = gains(second.encode(texts))
    rng = np.random.default_rng(SEED)
    out = {"queries": len(ids), f"{RERANKER} over the first stage, every judged query": interval(gain, rng)}
    if tower is not None:
        tower_gain = gains(tower(texts))
        out["the query tower over the first stage, every judged query"] = interval(tower_gain, rng)
        out["tower minus mpnet's own query, every judged query"] = interval(tower_gain - gain, rng)
    return out


def every_query_table(scored_by_set: dict[str, dict]) -> list[str]:
    """Markdown rows of `every_query`'s results, one per set and difference."""
    lines = ["| set (queries) | difference | mean | 95% interval | queries for +-0.0075 |", "|---|---|---|---|---|"]
    for name, scored in scored_by_set.items():
        for row, v in ((k, v) for k, v in scored.items() if k != "queries"):
            lines.append(
                f"| {name} ({scored['queries']}) | {row} | {v['mean']:+.4f} | [{v['low']:+.4f}, {v['high']:+.4f}] | "
                f"{v['queries_needed']} |"
            )
    return lines


def main() -> None:
    started = time.monotonic()
    first, second = served("minilm-l6"), served(RERANKER)
    tower_spec = served_query_tower(RERANKER)
    if tower_spec is None:
        raise SystemExit(f"models/{RERANKER} has no query tower: run `make rescore-query-tower` first")
    routed = tower_routed(second, *tower_spec)
    report: dict = {name: measure(name, first, second, routed) for name in ("cranfield", "msmarco")}
    report["all_queries"] = {name: every_query(name, first, second) for name in ("cranfield", "msmarco")}
    report["minutes"] = round((time.monotonic() - started) / 60, 1)
    report["measured"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rerank_uncertainty.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# How precisely the held-out sets measure a reranker's nDCG@10 gain",
        "",
        f"`benchmarks/rerank_uncertainty.py` ({report['measured']}): held-out half of query split 0, minilm-l6's "
        f"top 50 reranked by {RERANKER}'s cosine alone (its own query, or its 4-layer query tower's as stored "
        f"rescoring routes it); per-query nDCG@10 differences, paired bootstrap ({RESAMPLES:,} resamples), 95% "
        f"intervals. The last column: held-out queries a +-{HALF_WIDTH} interval would need at this spread.",
    ]
    for name in ("cranfield", "msmarco"):
        rows = {k: v for k, v in report[name].items() if k != "queries"}
        lines += ["", f"## {name} ({report[name]['queries']} held-out queries)", ""]
        lines += ["| difference | mean | 95% interval | queries for +-0.0075 |", "|---|---|---|---|"]
        lines += [
            f"| {row} | {v['mean']:+.4f} | [{v['low']:+.4f}, {v['high']:+.4f}] | {v['queries_needed']} |"
            for row, v in rows.items()
        ]
    lines += ["", "## every judged query (mpnet's own query: nothing fitted on any)", ""]
    lines += every_query_table(report["all_queries"])
    (RESULTS / "rerank_uncertainty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
