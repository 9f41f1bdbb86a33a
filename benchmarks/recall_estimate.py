"""How true is the recall a build reports? Estimates next to the truth.

Two collections of MiniLM vectors: (real) 17.7k real texts (MS MARCO passages, Cranfield abstracts,
STS-B sentences), with another 1,000 real texts held back as queries; (synthetic) 100k Dirichlet
mixtures of three real embeddings plus noise (as benchmarks/search.py), with 1,000 fresh mixtures as
queries. Each is written into a real `Collection` and built with `optimize` (HNSW32 and IVF-SQ8),
which tunes efSearch / nprobe on documents held out of the index (the service's method). For every
setting tried: recall@10 of queries the collection never saw (the truth), the held-out estimate, and
the old estimate (stored vectors as their own queries); then the setting each method picks for the
target and the truth there.

Usage: .venv/bin/python benchmarks/recall_estimate.py
Writes benchmarks/results/recall_estimate.json and .md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.collection import DEFAULT_RECALL_TARGET, Collection, CollectionConfig  # noqa: E402
from app.search.store import Document  # noqa: E402
from app.search.vector_index import (  # noqa: E402
    EF_SEARCH_STEPS,
    NPROBE_STEPS,
    SearchParams,
    VectorIndex,
    recall_at_10,
)
from benchmarks.rerank_served import cached_vectors, served  # noqa: E402
from benchmarks.search import synthetic_vectors  # noqa: E402
from training.data.beir import load_beir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OLD_TARGET = 0.97  # what the service tuned stored-vector recall to before


def real_vectors() -> np.ndarray:
    texts: list[str] = []
    for folder in (ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset", ROOT / "data" / "beir" / "cranfield"):
        dataset = load_beir(folder)
        texts += [dataset.doc_text(d) for d in dataset.corpus]
    sentences: set[str] = set()
    for name in ("sts-train.csv", "sts-dev.csv"):
        for row in (ROOT.parent / "shared" / "data" / "stsbenchmark" / name).read_text().splitlines():
            parts = row.split("\t")
            if len(parts) >= 7:
                sentences.update(parts[5:7])
    texts += sorted(sentences)
    ids = [str(i) for i in range(len(texts))]
    vectors = cached_vectors(served("minilm-l6"), "recall-real", ids, texts)
    return np.stack([vectors[i] for i in ids]).astype(np.float32)


def measure(name: str, stored: np.ndarray, fresh: np.ndarray, spec: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        config = CollectionConfig(name, "minilm-l6", stored.shape[1], index=spec)
        config.save(Path(folder))
        collection = Collection(Path(folder), config, 1 << 34)
        for start in range(0, len(stored), 5_000):
            chunk = range(start, min(start + 5_000, len(stored)))
            collection.upsert([Document(f"v{i}", None, {}, stored[i]) for i in chunk])
        started = time.perf_counter()
        report = collection.optimize()
        build_s = time.perf_counter() - started
        exact = VectorIndex(stored.shape[1], "cosine", "Flat")
        exact.add(np.arange(1, len(stored) + 1, dtype=np.int64), stored)  # the store's keys start at 1
        index = collection.index
        sample = stored[np.random.default_rng(0).choice(len(stored), 200, replace=False)]
        steps = EF_SEARCH_STEPS[:6] if index.is_graph else NPROBE_STEPS[:7]
        rows = []
        for step in steps:
            params = SearchParams(ef_search=step) if index.is_graph else SearchParams(nprobe=step)
            rows.append(
                {
                    "param": step,
                    "truth": round(recall_at_10(index, exact, fresh, params), 4),
                    "stored_as_queries": round(recall_at_10(index, exact, sample, params), 4),
                }
            )
        old_pick = next((r for r in rows if r["stored_as_queries"] >= OLD_TARGET), rows[-1])
        chosen = report.search_defaults.get("ef_search") or report.search_defaults.get("nprobe")
        truth_at_chosen = recall_at_10(index, exact, fresh, index.defaults)
        collection.close()
    return {
        "collection": name,
        "n": len(stored),
        "spec": spec,
        "build_s": round(build_s, 1),
        "rows": rows,
        "held_out_estimate": report.recall_at_10,
        "held_out_lower_bound": report.recall_lower_bound,
        "held_out_pick": chosen,
        "truth_at_held_out_pick": round(truth_at_chosen, 4),
        "old_pick": old_pick["param"],
        "old_estimate": old_pick["stored_as_queries"],
        "truth_at_old_pick": old_pick["truth"],
    }


def write_markdown(results: list[dict]) -> None:
    lines = [
        f"# Build-time recall estimates vs the truth ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "`.venv/bin/python benchmarks/recall_estimate.py`. Truth: recall@10 against exact search of 1,000",
        "queries the collection never saw. Held-out (the service now): 200 documents left out of the index",
        f"while it is tuned, target {DEFAULT_RECALL_TARGET} on the estimate's one-sided 95% lower bound.",
        f"Old: stored vectors as their own queries, tuned to {OLD_TARGET}.",
        "",
        "| collection | index | old pick | old estimate | truth there | held-out pick | held-out estimate"
        " (lower bound) | truth there |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['collection']} ({r['n']:,}) | {r['spec']} | {r['old_pick']} | {r['old_estimate']} | "
            f"{r['truth_at_old_pick']} | {r['held_out_pick']} | {r['held_out_estimate']} ({r['held_out_lower_bound']}) "
            f"| {r['truth_at_held_out_pick']} |"
        )
    lines += ["", "Every setting (efSearch for HNSW, nprobe for IVF): truth vs stored-as-queries estimate.", ""]
    for r in results:
        lines.append(
            f"- {r['collection']} {r['spec']}: "
            + ", ".join(f"{x['param']}: {x['truth']} vs {x['stored_as_queries']}" for x in r["rows"])
        )
    (RESULTS / "recall_estimate.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    real = real_vectors()
    order = np.random.default_rng(1).permutation(len(real))
    cut = len(real) - 1000
    synthetic = synthetic_vectors(real[:5000], 100_000, 0)
    fresh_synthetic = synthetic_vectors(real[:5000], 1000, 1)
    results = []
    for name, stored, fresh in (
        ("real", real[order[:cut]], real[order[cut:]]),
        ("synthetic", synthetic, fresh_synthetic),
    ):
        for spec in ("HNSW32", f"IVF{int(4 * np.sqrt(len(stored)))},SQ8"):
            results.append(measure(name, stored, fresh, spec))
            print(json.dumps(results[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recall_estimate.json").write_text(json.dumps(results, indent=2))
    write_markdown(results)
    print((RESULTS / "recall_estimate.md").read_text())


if __name__ == "__main__":
    main()
