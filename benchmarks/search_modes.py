"""Dense, keyword (BM25, SQLite FTS5) and hybrid search through the HTTP API, side by side.

A real `tessera serve` on loopback (minilm-l6, the served default variant); each corpus is
upserted as text into its own collection; every judged query is searched in every configuration,
interleaved query by query (so noise hits all alike). nDCG@10 / MRR@10 / Recall@10 on Cranfield
(all judged queries) and the MS MARCO subset, per query half too (seed 0): the defaults were chosen
before measuring (plain RRF, k = 60, 100 candidates per list: the paper's values), so the halves show
whether a difference holds rather than being fitted. Latency: p50/p99 of the request, query
embedding included, per mode.

Usage: .venv/bin/python benchmarks/search_modes.py
Writes benchmarks/results/search_modes.json and .md.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.embed_http import start_tessera, wait_ready  # noqa: E402
from training.data.beir import load_beir  # noqa: E402
from training.eval.metrics import ir_metrics, ranked_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {
    "cranfield": ROOT / "data" / "beir" / "cranfield",
    "msmarco": ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset",
}
PORT = 8114
# name -> search body fields; "hybrid" is the default a user gets with {"mode": "hybrid"}.
CONFIGS: dict[str, dict] = {
    "dense": {"mode": "dense"},
    "keyword (BM25)": {"mode": "keyword"},
    "hybrid (default: RRF, w 0.5)": {"mode": "hybrid"},
    "hybrid RRF, dense_weight 0.7": {"mode": "hybrid", "hybrid": {"dense_weight": 0.7}},
    "hybrid convex, dense_weight 0.5": {"mode": "hybrid", "hybrid": {"fusion": "convex"}},
    "hybrid convex, dense_weight 0.7": {"mode": "hybrid", "hybrid": {"fusion": "convex", "dense_weight": 0.7}},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_dataset(client: httpx.Client, name: str, folder: Path) -> dict:
    dataset = load_beir(folder)
    docs = [{"id": d, "text": dataset.doc_text(d)} for d in dataset.corpus if dataset.doc_text(d).strip()]
    client.post("/indexes", json={"name": name, "model": "minilm-l6"}).raise_for_status()
    start = time.perf_counter()
    for i in range(0, len(docs), 256):
        client.put(f"/indexes/{name}/documents", json={"documents": docs[i : i + 256]}).raise_for_status()
    ingest_s = time.perf_counter() - start
    queries = {q: t for q, t in dataset.queries.items() if dataset.qrels.get(q)}
    rankings: dict[str, dict[str, list[str]]] = {c: {} for c in CONFIGS}
    seconds: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for qid, text in sorted(queries.items()):
        for config, extra in CONFIGS.items():
            t0 = time.perf_counter()
            response = client.post(f"/indexes/{name}/search", json={"query": text, "top_k": 10, **extra})
            seconds[config].append(time.perf_counter() - t0)
            response.raise_for_status()
            rankings[config][qid] = [h["id"] for h in response.json()["hits"]]
    first, second = dataset.split_queries(0)
    out: dict = {"documents": len(docs), "judged_queries": len(queries), "ingest_docs_per_s": len(docs) / ingest_s}
    for config in CONFIGS:
        run = ranked_run(rankings[config])
        out[config] = {
            **{k: round(v, 4) for k, v in ir_metrics(run, dataset.qrels).items()},
            "ndcg@10 half A": round(ir_metrics(run, first.qrels)["ndcg@10"], 4),
            "ndcg@10 half B": round(ir_metrics(run, second.qrels)["ndcg@10"], 4),
            "p50_ms": round(1000 * statistics.median(seconds[config]), 2),
            "p99_ms": round(1000 * percentile(seconds[config], 0.99), 2),
        }
    return out


def write_markdown(report: dict) -> None:
    lines = [
        f"# Dense, keyword and hybrid search ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "Machine: 2 cores. `.venv/bin/python benchmarks/search_modes.py`: `tessera serve` with minilm-l6 on",
        "loopback, each corpus upserted as text, every judged query searched in every configuration",
        "(interleaved), top 10. Half A / B: the judged queries split in two (seed 0); the defaults were",
        "fixed before measuring (plain RRF, k = 60, 100 candidates per list), so the halves show whether a",
        "difference holds. Latency: the whole request, query embedding included.",
        "",
    ]
    for name in DATASETS:
        data = report[name]
        lines += [
            f"## {name}: {data['documents']} documents, {data['judged_queries']} judged queries "
            f"(ingest {data['ingest_docs_per_s']:.0f} docs/s)",
            "",
            "| configuration | nDCG@10 | half A | half B | MRR@10 | Recall@10 | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for config in CONFIGS:
            r = data[config]
            lines.append(
                f"| {config} | {r['ndcg@10']} | {r['ndcg@10 half A']} | {r['ndcg@10 half B']} | {r['mrr@10']} "
                f"| {r['recall@10']} | {r['p50_ms']} | {r['p99_ms']} |"
            )
        lines.append("")
    cran, marco = report["cranfield"], report["msmarco"]
    hybrid = "hybrid (default: RRF, w 0.5)"
    best_cran = max(cran["dense"]["ndcg@10"], cran["keyword (BM25)"]["ndcg@10"])
    checks = [
        (
            "Cranfield: hybrid ≥ max(dense, keyword)",
            cran[hybrid]["ndcg@10"] >= best_cran,
            f"{cran[hybrid]['ndcg@10']} vs {best_cran}",
        ),
        (
            "MS MARCO: hybrid ≥ dense − 0.01",
            marco[hybrid]["ndcg@10"] >= marco["dense"]["ndcg@10"] - 0.01,
            f"{marco[hybrid]['ndcg@10']} vs {marco['dense']['ndcg@10']}",
        ),
    ]
    for name, data in (("Cranfield", cran), ("MS MARCO", marco)):
        ratio = data[hybrid]["p50_ms"] / data["dense"]["p50_ms"]
        checks.append((f"{name}: hybrid p50 ≤ 2× dense", ratio <= 2, f"{ratio:.2f}×"))
    lines += ["## Targets (issue 16)", "", "| target | met | figures |", "|---|---|---|"]
    lines += [f"| {what} | {met} | {figures} |" for what, met, figures in checks]
    (RESULTS / "search_modes.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_tessera(ROOT / "models", "minilm-l6", Path(data_dir), PORT)
        try:
            base = f"http://127.0.0.1:{PORT}"
            wait_ready(f"{base}/ready")
            with httpx.Client(base_url=base, timeout=120) as client:
                report = {name: run_dataset(client, name, folder) for name, folder in DATASETS.items()}
        finally:
            server.terminate()
            server.wait(timeout=30)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_modes.json").write_text(json.dumps(report, indent=2))
    write_markdown(report)
    print((RESULTS / "search_modes.md").read_text())


if __name__ == "__main__":
    main()
