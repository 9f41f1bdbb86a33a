"""The served default reranker (kind bi-encoder, all-mpnet-base-v2 exported to ONNX) as a user gets it.

Quality: held-out half of the judged queries (seed 0, as benchmarks/rerank.py) of Cranfield and
the MS MARCO subset; candidates are the served first stage's top-50 (minilm-l6, ONNX); nDCG@10 and
MRR@10 of the first stage, the reranker's cosine alone, and fused (`cosine + w x first-stage
cosine`, w fitted on the *train* half's queries only, from a fixed grid). Everything runs through
the served ONNX variants (`choose_variant`, as the service picks them). Document vectors are cached
per (model files, dataset) in data/cache/.

Latency: `tessera serve` on loopback with minilm-l6 + the reranker: /v1/rerank at N = 10, 30, 100
Cranfield abstracts (sequential requests, p50/p99), and search on a 1,398-document collection:
plain, with `rerank` over the top 50 by re-embedding the candidates, and with `rerank` from stored
second-stage vectors (a collection created with `rescore`).

Usage: .venv/bin/python benchmarks/rerank_served.py [--reranker mpnet-rerank] [--requests 30]
Writes benchmarks/results/rerank_served.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.config import Settings  # noqa: E402
from app.core.manifest import Manifest  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402
from app.inference.variants import choose_variant  # noqa: E402
from benchmarks.embed_http import start_tessera, wait_ready  # noqa: E402
from benchmarks.report import splice_section  # noqa: E402
from training.data.beir import RetrievalDataset, load_beir  # noqa: E402
from training.eval.metrics import ir_metrics, ranked_run, top_k_ids  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "data" / "cache"
DATASETS = {
    "cranfield": ROOT / "data" / "beir" / "cranfield",
    "msmarco": ROOT.parent / "shared" / "data" / "msmarco-trecdl-subset",
}
FUSION_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
PORT = 8113
KINDS_BEGIN, KINDS_END = "<!-- kinds:begin -->", "<!-- kinds:end -->"
LATENCY_QUERY = "what is the effect of heat transfer on hypersonic boundary layers"


def served(name: str) -> TextModel:
    return served_folder(ROOT / "models" / name)


def served_query_tower(name: str) -> tuple[TextModel, int | None] | None:
    """The bi-encoder reranker `name`'s query tower as served, and the longest query it embeds, if
    its folder has one."""
    spec = Manifest.load(ROOT / "models" / name).bi_encoder
    if not (spec and spec.query_tower):
        return None
    return served_folder(ROOT / "models" / name / spec.query_tower), spec.query_tower_max_tokens


def tower_routed(second: TextModel, tower: TextModel, limit: int | None) -> Callable[[list[str]], np.ndarray]:
    """Texts -> query vectors as search's stored rescore routes them: by the query tower, and by the
    reranker `second` itself for a query over the tower's `limit` tokens."""

    def encode(texts: list[str]) -> np.ndarray:
        rows = tower.encode(texts)
        long = [i for i, t in enumerate(tower.tokenize(texts)) if limit is not None and len(t.ids) > limit]
        if long:
            rows[long] = second.encode([texts[i] for i in long])
        return rows

    return encode


def served_folder(folder: Path) -> TextModel:
    manifest = Manifest.load(folder)
    settings = Settings()
    return TextModel(folder, manifest, choose_variant(manifest, settings.backend, settings.precision))


def cached_vectors(model: TextModel, dataset: str, ids: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """id -> unit vector, read from / written to data/cache per (model files, dataset, ids)."""
    key = json.dumps([model.manifest.files, dataset, ids], sort_keys=True)
    path = CACHE / f"vectors-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    if path.is_file():
        vectors = np.load(path)
    else:
        vectors = model.encode(texts)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return dict(zip(ids, vectors, strict=True))


# A rescoring query side: (query texts, their first-stage unit vectors (n, d1)) -> (n, d2) unit
# vectors in the second-stage model's space (its own encoding, or something cheaper aligned to it).
QuerySide = Callable[[list[str], np.ndarray], np.ndarray]


@dataclass
class Rescored:
    """One query side over the held-out half: first-stage and second-stage cosines per query and
    candidate, and the fusion weight fitted on the train half."""

    first: dict[str, dict[str, float]]
    second: dict[str, dict[str, float]]
    weight: float


def fused(first: dict, second: dict, w: float) -> dict:
    """`second + w x first` per query and candidate."""
    return {q: {d: second[q][d] + w * first[q][d] for d in second[q]} for q in second}


def rescore_held_out(
    name: str, dataset: RetrievalDataset, first: TextModel, second: TextModel, sides: dict[str, QuerySide]
) -> tuple[RetrievalDataset, dict[str, list[str]], dict[str, Rescored]]:
    """(held-out half, its first-stage top-50 per query, each side's rescoring) for query split
    seed 0; each side's fusion weight is fitted on the train half's queries only."""
    train, held_out = dataset.split_queries(0)
    doc_ids = list(dataset.corpus)
    first_docs = cached_vectors(first, name, doc_ids, [dataset.doc_text(d) for d in doc_ids])
    doc_matrix = np.stack([first_docs[d] for d in doc_ids])
    halves = {}
    for label, split in (("train", train), ("held_out", held_out)):
        queries = {q: t for q, t in split.queries.items() if split.qrels.get(q)}
        ids = sorted(queries)
        texts = [queries[q] for q in ids]
        q_first = first.encode(texts)
        halves[label] = (ids, texts, q_first, top_k_ids(ids, q_first, doc_ids, doc_matrix, 50))
    pool = sorted({d for *_, cands in halves.values() for c in cands.values() for d in c})
    second_docs = cached_vectors(second, name, pool, [dataset.doc_text(d) for d in pool])

    def cosines(label: str, side: QuerySide) -> tuple[dict, dict]:
        ids, texts, q_first, cands = halves[label]
        q_second = side(texts, q_first)
        f = {q: {d: float(first_docs[d] @ q_first[i]) for d in cands[q]} for i, q in enumerate(ids)}
        s = {q: {d: float(second_docs[d] @ q_second[i]) for d in cands[q]} for i, q in enumerate(ids)}
        return f, s

    rescored = {}
    for side_name, side in sides.items():
        train_f, train_s = cosines("train", side)
        fitted = max(FUSION_GRID, key=lambda w: ir_metrics(fused(train_f, train_s, w), train.qrels)["ndcg@10"])
        rescored[side_name] = Rescored(*cosines("held_out", side), fitted)
    return held_out, halves["held_out"][3], rescored


def quality(name: str, folder: Path, reranker: str) -> dict:
    second = served(reranker)

    def own(texts: list[str], _: np.ndarray) -> np.ndarray:
        return second.encode(texts)

    query_sides: dict[str, QuerySide] = {"own": own}
    served_tower = served_query_tower(reranker)
    if served_tower is not None:
        tower, limit = served_tower
        routed = tower_routed(second, tower, limit)
        query_sides["tower"] = lambda texts, _: routed(texts)
    held_out, candidates, sides = rescore_held_out(name, load_beir(folder), served("minilm-l6"), second, query_sides)
    run = sides["own"]
    rows = {
        "first stage (minilm-l6)": ir_metrics(ranked_run(candidates), held_out.qrels),
        f"{reranker} cosine alone (served default)": ir_metrics(run.second, held_out.qrels),
        f"{reranker} fused, w = {run.weight} fitted on the train half": ir_metrics(
            fused(run.first, run.second, run.weight), held_out.qrels
        ),
    }
    if served_tower is not None:  # search's stored rescore: the tower's query against the reranker's documents
        over = f"; queries over {limit} tokens by {reranker} itself" if limit is not None else ""
        rows[f"{reranker} documents, its query tower's query, cosine alone (stored rescore{over})"] = ir_metrics(
            sides["tower"].second, held_out.qrels
        )
    return {"queries": len(candidates), "fitted_weight": run.weight, "rows": rows}


def percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def cranfield_texts() -> list[str]:
    dataset = load_beir(DATASETS["cranfield"])
    return [dataset.doc_text(d) for d in list(dataset.corpus)]


def kinds_latency(rerankers: list[Path], requests: int) -> dict:
    """/v1/rerank p50/p99 at N = 10, 30, 100 Cranfield abstracts for each reranker folder, all
    served by one `tessera serve`, requests interleaved across rerankers (same noise for each)."""
    texts = cranfield_texts()
    work = Path(tempfile.mkdtemp(prefix="rerank-kinds-"))
    models = work / "models"
    models.mkdir()
    (models / "minilm-l6").symlink_to(ROOT / "models" / "minilm-l6")
    for folder in rerankers:
        (models / folder.name).symlink_to(folder.resolve())
    names = [folder.name for folder in rerankers]
    server = start_tessera(models, ",".join(["minilm-l6", *names]), work / "data", PORT)
    base = f"http://127.0.0.1:{PORT}"
    seconds: dict[tuple[str, int], list[float]] = {(name, n): [] for name in names for n in (10, 30, 100)}
    try:
        wait_ready(f"{base}/ready")
        with httpx.Client(base_url=base, timeout=300) as client:
            kinds = {m["id"]: m.get("kind") for m in client.get("/v1/models").json()["data"]}
            for n in (10, 30, 100):
                for attempt in range(requests + 1):  # the first round warms up
                    for name in names:
                        body = {"model": name, "query": LATENCY_QUERY, "documents": texts[:n]}
                        started = time.perf_counter()
                        client.post("/v1/rerank", json=body).raise_for_status()
                        if attempt:
                            seconds[(name, n)].append(time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        name: {"kind": kinds.get(name), **{str(n): percentiles(seconds[(name, n)]) for n in (10, 30, 100)}}
        for name in names
    }


def timed_few(client: httpx.Client, path: str, body: dict, requests: int) -> dict:
    client.post(path, json=body).raise_for_status()  # warm-up
    seconds = []
    for _ in range(requests):
        started = time.perf_counter()
        client.post(path, json=body).raise_for_status()
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


def cranfield_queries() -> list[str]:
    dataset = load_beir(DATASETS["cranfield"])
    return [dataset.queries[q] for q in sorted(dataset.queries)]


STORED_ROW = "search, top 10 reranked from 50 with stored second-stage vectors"
# Server settings compared side by side with the defaults ("" = as served): row suffix -> environment.
COMPARISONS: dict[str, dict[str, dict[str, str]]] = {
    "query-variant": {" (no query variant: single queries on the batch variant)": {"TESSERA_QUERY_VARIANT": "off"}},
    "streams": {" (bi-encoder streams 2)": {"TESSERA_BI_ENCODER_STREAMS": "2"}},
    "query-tower": {
        " (no query tower: the reranker's own graph embeds the query)": {"TESSERA_RESCORE_QUERY_TOWER": "false"}
    },
}


def _fill(client: httpx.Client, reranker: str, docs: list[dict]) -> None:
    """Collections `plain` (minilm-l6) and `stored` (minilm-l6 + the reranker's stored vectors)."""
    for name, extra in (("plain", {}), ("stored", {"rescore": {"model": reranker}})):
        client.post("/indexes", json={"name": name, "model": "minilm-l6", **extra}).raise_for_status()
        for start in range(0, len(docs), 128):
            client.put(f"/indexes/{name}/documents", json={"documents": docs[start : start + 128]}).raise_for_status()


def latency(
    reranker: str,
    requests: int,
    search_requests: int,
    rerank_calls: bool = True,
    others: dict[str, dict[str, str]] | None = None,
) -> dict:
    """Rows of p50/p99 ms. Search rows use varied Cranfield queries (one per round, the same query
    for every row of a round). One server as served plus one per entry of `others` (row suffix ->
    environment), all up at once and their requests interleaved, so every setting sees the same
    machine; /v1/rerank and re-embedding rows come from the first server."""
    texts, queries = cranfield_texts(), cranfield_queries()
    work = Path(tempfile.mkdtemp(prefix="rerank-bench-"))
    settings = {"": {}, **(others or {})}
    ports = {suffix: PORT + k for k, suffix in enumerate(settings)}
    servers = {
        suffix: start_tessera(
            ROOT / "models",
            f"minilm-l6,{reranker}",
            work / f"data-{k}",
            ports[suffix],
            {"TESSERA_DEFAULT_RERANKER": reranker, **env},
        )
        for k, (suffix, env) in enumerate(settings.items())
    }
    bases = {n: f"http://127.0.0.1:{port}" for n, port in ports.items()}
    clients = {n: httpx.Client(base_url=base, timeout=120) for n, base in bases.items()}
    out: dict[str, dict] = {}
    try:
        docs = [{"id": str(i), "text": t} for i, t in enumerate(texts) if t.strip()]
        for n, client in clients.items():
            wait_ready(f"{bases[n]}/ready")
            _fill(client, reranker, docs)
        first = clients[""]
        for n in (10, 30, 100) if rerank_calls else ():
            body = {"query": LATENCY_QUERY, "documents": texts[:n]}
            out[f"/v1/rerank, {n} documents"] = timed_few(first, "/v1/rerank", body, requests)
        search = {"query": LATENCY_QUERY, "top_k": 10}
        out["search, top 10 reranked from 50 by re-embedding the candidates"] = timed_few(
            first,
            "/indexes/plain/search",
            {**search, "rerank": {"model": reranker, "candidates": 50}},
            min(requests, 5),
        )
        rows: dict[str, tuple[httpx.Client, str, dict]] = {}
        for suffix, client in clients.items():
            rows["search, top 10" + suffix] = (client, "plain", {"top_k": 10})
            rows[STORED_ROW + suffix] = (client, "stored", {"top_k": 10, "rerank": {"candidates": 50}})
        seconds: dict[str, list[float]] = {label: [] for label in rows}
        for attempt in range(search_requests + 1):  # the first round warms up
            query = queries[attempt % len(queries)]
            for label, (client, name, body) in rows.items():
                started = time.perf_counter()
                client.post(f"/indexes/{name}/search", json={**body, "query": query}).raise_for_status()
                if attempt:
                    seconds[label].append(time.perf_counter() - started)
        out.update({label: percentiles(values) for label, values in seconds.items()})
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.terminate()
            server.wait(timeout=30)
    return out


def write_kinds_latency(report: dict, requests: int) -> None:
    (RESULTS / "rerank_kinds.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        KINDS_BEGIN,
        "## /v1/rerank latency per reranker kind",
        "",
        f"`benchmarks/rerank_served.py --kinds ...`: one `tessera serve` on loopback (2 cores) serving every "
        f"reranker, {requests} sequential requests per cell after one warm-up round, interleaved across "
        f'rerankers; the query "{LATENCY_QUERY}" and the first N Cranfield abstracts.',
        "",
        "| reranker | kind | N = 10 p50 / p99 ms | N = 30 p50 / p99 ms | N = 100 p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, row in report.items():
        cells = [f"{row[n]['p50_ms']:.0f} / {row[n]['p99_ms']:.0f}" for n in ("10", "30", "100")]
        lines.append(f"| {name} | {row['kind']} | {' | '.join(cells)} |")
    lines.append(KINDS_END)
    section = "\n".join(lines) + "\n"
    (RESULTS / "rerank_kinds.md").write_text(section)
    splice_section(RESULTS / "rerank.md", KINDS_BEGIN, KINDS_END, section)
    print(section)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reranker", default="mpnet-rerank")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--search-requests", type=int, default=100, help="per search row (plain / stored, interleaved)")
    parser.add_argument("--no-rerank-calls", action="store_true", help="skip /v1/rerank rows (see --kinds)")
    parser.add_argument(
        "--compare",
        choices=sorted(COMPARISONS),
        default="query-variant",
        help="search rows also from servers with these settings (one server each, interleaved)",
    )
    parser.add_argument(
        "--kinds",
        type=Path,
        nargs="+",
        help="reranker folders of any kind: only measure /v1/rerank latency of each (one server, interleaved); "
        "writes results/rerank_kinds.{json,md} and that section of results/rerank.md",
    )
    args = parser.parse_args()
    if args.kinds:
        write_kinds_latency(kinds_latency(args.kinds, args.requests), args.requests)
        return
    report = {name: quality(name, folder, args.reranker) for name, folder in DATASETS.items()}
    report["latency"] = latency(
        args.reranker, args.requests, args.search_requests, not args.no_rerank_calls, COMPARISONS[args.compare]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rerank_served.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# The served default reranker ({args.reranker}, kind bi-encoder) on held-out queries",
        "",
        "Produced by `benchmarks/rerank_served.py`: served ONNX variants, first stage = minilm-l6's top-50, "
        "held-out half of the judged queries (seed 0); the fusion weight is fitted on the train half only.",
        "",
    ]
    for name in DATASETS:
        q = report[name]
        first = q["rows"]["first stage (minilm-l6)"]["ndcg@10"]
        lines += [
            f"## {name} ({q['queries']} held-out queries)",
            "",
            "| ranking | nDCG@10 | MRR@10 | vs first stage |",
            "|---|---|---|---|",
        ]
        for label, m in q["rows"].items():
            lines.append(f"| {label} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['ndcg@10'] - first:+.4f} |")
        lines.append("")
    lines += [
        f"## Latency (2 cores, sequential requests: /v1/rerank {args.requests} per row, re-embedding 5, plain and "
        f"stored-vector search {args.search_requests} each over varied Cranfield queries, interleaved)",
        "",
        "| call | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for label, m in report["latency"].items():
        lines.append(f"| {label} | {m['p50_ms']} | {m['p99_ms']} |")
    plain = report["latency"]["search, top 10"]["p50_ms"]
    stored = report["latency"][STORED_ROW]["p50_ms"]
    embedded = report["latency"]["search, top 10 reranked from 50 by re-embedding the candidates"]["p50_ms"]
    lines += [
        "",
        f"Search with rescore from stored vectors: p50 **{stored / plain:.2f}x** plain search (target <= 2x); "
        f"reranking by re-embedding the 50 candidates: {embedded / plain:.1f}x.",
    ]
    for suffix in COMPARISONS[args.compare]:
        other = (
            report["latency"][STORED_ROW + suffix]["p50_ms"] / report["latency"]["search, top 10" + suffix]["p50_ms"]
        )
        lines.append(
            f"A server of its own{suffix}, interleaved: stored rescore {report['latency'][STORED_ROW + suffix]['p50_ms']}"
            f" ms p50, {other:.2f}x its plain search; as served {stored} ms ({stored / plain:.2f}x)."
        )
    (RESULTS / "rerank_served.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
