"""Is the build's recall estimate true for real queries? The estimate a build reports (documents held
out of the index as queries) next to recall@10 of real search queries (Cranfield's 225 and the MS
MARCO subset's questions), on the real collection of `recall_estimate.py` (MiniLM vectors of 17.7k
passages, abstracts and sentences) built as HNSW32 and IVF-SQ8. Queries are short questions, and
documents are not: if they sit elsewhere in the space, a build tuned on documents may fall short on
them.

Usage: .venv/bin/python benchmarks/recall_real_queries.py
Writes benchmarks/results/recall_real_queries.json and .md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.search.collection import DEFAULT_RECALL_TARGET  # noqa: E402
from benchmarks.recall_estimate import measure, real_vectors  # noqa: E402
from benchmarks.rerank_served import cached_vectors, served  # noqa: E402
from training.data.beir import load_beir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def real_queries() -> np.ndarray:
    texts: list[str] = []
    for folder in (ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset", ROOT / "data" / "beir" / "cranfield"):
        texts += list(load_beir(folder).queries.values())
    ids = [str(i) for i in range(len(texts))]
    vectors = cached_vectors(served("minilm-l6"), "recall-queries", ids, texts)
    return np.stack([vectors[i] for i in ids]).astype(np.float32)


def main() -> None:
    stored, queries = real_vectors(), real_queries()
    results = []
    for spec in ("HNSW32", f"IVF{int(4 * np.sqrt(len(stored)))},SQ8"):
        results.append(measure("real", stored, queries, spec))
        print(json.dumps(results[-1]), flush=True)
    lines = [
        f"# Build-time recall estimate vs real queries ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`.venv/bin/python benchmarks/recall_real_queries.py`. {len(stored):,} stored vectors (MiniLM), "
        f"{len(queries)} real queries (MS MARCO subset + Cranfield).",
        f"Estimate: the build's, on 200 documents held out of the index (target {DEFAULT_RECALL_TARGET} on its",
        "one-sided 95% lower bound). Truth: recall@10 of the real queries against exact search.",
        "",
        "| index | pick | estimate (lower bound) | real queries' recall there |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['spec']} | {r['held_out_pick']} | {r['held_out_estimate']} ({r['held_out_lower_bound']}) "
            f"| {r['truth_at_held_out_pick']} |"
        )
    lines += ["", "Every setting: real queries' recall vs stored vectors as queries.", ""]
    for r in results:
        lines.append(
            f"- {r['spec']}: " + ", ".join(f"{x['param']}: {x['truth']} vs {x['stored_as_queries']}" for x in r["rows"])
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recall_real_queries.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "recall_real_queries.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
