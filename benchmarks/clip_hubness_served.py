"""The hubness correction as served: `make clip-model`'s `clip-minilm` (trained on split 0) in the
real app, its held-out drawings upserted into collections through the API (the service decodes,
trims and embeds them), every held-out name / caption searched with `hubness_correction` on and off.

Galleries: the 400 held-out emoji codepoints of split 0 (Google's drawings; queries: their names) and
the 1,200 held-out OpenClipart files (queries: their non-boilerplate captions), neither trained on.
The ASGI app runs in process (no socket), as the server runs it otherwise.

Usage: .venv/bin/python benchmarks/clip_hubness_served.py  (needs `make clip-model`; ~3 min).
Writes benchmarks/results/clip_hubness_served.{json,md}.
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from training.clip_training import _clipart  # noqa: E402
from training.config import ClipTrainConfig  # noqa: E402
from training.data.clipart import clip_path  # noqa: E402
from training.data.images import emoji_path, load_identities, split_identities  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "clip-minilm"
BATCH = 32


def galleries(config: ClipTrainConfig) -> dict[str, tuple[list[tuple[str, Path]], list[tuple[str, set[str]]]]]:
    """name -> (documents (id, image file), queries (text, relevant ids)), held out on split 0."""
    _, test_ids = split_identities(load_identities(config.emoji), config.emoji_test, config.split_seed)  # type: ignore[arg-type]
    emoji_docs = [(i.unified, emoji_path(config.emoji, "google", i.unified)) for i in test_ids]  # type: ignore[arg-type]
    emoji_queries = [(i.name, {i.unified}) for i in test_ids]
    _, test, repeats, _ = _clipart(config)
    clip_docs = [(f"c{n}", clip_path(config.clipart, c)) for n, c in enumerate(test)]
    by_caption: dict[str, set[str]] = {}
    for n, clip in enumerate(test):
        if repeats[clip.caption] <= config.clipart_max_caption_repeats:
            by_caption.setdefault(clip.caption, set()).add(f"c{n}")
    return {"emoji": (emoji_docs, emoji_queries), "openclipart": (clip_docs, sorted(by_caption.items()))}


def recall_at_1(
    client: TestClient, index: str, queries: list[tuple[str, set[str]]], corrected: bool
) -> tuple[float, list[float]]:
    """Recall@1 over `queries`, and each request's latency in ms (as the client sees it, in process)."""
    hits, latencies = 0, []
    for text, relevant in queries:
        body = {"query": text, "top_k": 10, "include": [], "hubness_correction": corrected}
        started = time.perf_counter()
        response = client.post(f"/indexes/{index}/search", json=body)
        latencies.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        hits += response.json()["hits"][0]["id"] in relevant
    return hits / len(queries), latencies


def main() -> None:
    config = ClipTrainConfig.model_validate({**json.loads(json.dumps(_serve_config())), "name": "served-hubness"})
    started = time.monotonic()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(models_dir=ROOT / "models", models=MODEL, data_dir=Path(data_dir))  # type: ignore[call-arg]
        # from loopback: Starlette's default caller name is no address, which a keyless server refuses
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            for name, (docs, queries) in galleries(config).items():
                client.post("/indexes", json={"name": name, "model": MODEL}).raise_for_status()
                for start in range(0, len(docs), BATCH):
                    documents = [
                        {"id": doc_id, "image": base64.b64encode(path.read_bytes()).decode()}
                        for doc_id, path in docs[start : start + BATCH]
                    ]
                    client.put(f"/indexes/{name}/documents", json={"documents": documents}).raise_for_status()
                recall_at_1(client, name, queries[:20], corrected=True)  # warm up both paths
                plain, plain_ms = recall_at_1(client, name, queries, corrected=False)
                corrected, corrected_ms = recall_at_1(client, name, queries, corrected=True)
                rows[name] = {
                    "images": len(docs),
                    "queries": len(queries),
                    "plain": plain,
                    "corrected": corrected,
                    "plain_p50_ms": round(statistics.median(plain_ms), 2),
                    "corrected_p50_ms": round(statistics.median(corrected_ms), 2),
                }
                print(name, rows[name], flush=True)
    report = {"model": MODEL, "split": config.split_seed, "rows": rows, "measured": time.strftime("%Y-%m-%d %H:%M")}
    report["minutes"] = round((time.monotonic() - started) / 60, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_hubness_served.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# The hubness correction as served (`clip-minilm`, text->image Recall@1 through the API)",
        "",
        f"`benchmarks/clip_hubness_served.py` ({report['measured']}, {report['minutes']} min): held-out drawings of "
        f"split {config.split_seed} (the split `make clip-model` trains on) upserted as images into a collection; "
        "each held-out name or caption searched once with `hubness_correction: false` and once with the default.",
        "",
        "Latency: each search request (top 10, ids only) as the in-process client sees it, p50 over the "
        "queries, plain and corrected runs one after the other on an otherwise idle machine.",
        "",
        "| gallery | images | queries | plain R@1 | corrected R@1 | change | plain p50 ms | corrected p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['images']} | {row['queries']} | {row['plain']:.4f} | {row['corrected']:.4f} | "
            f"{row['corrected'] - row['plain']:+.4f} | {row['plain_p50_ms']} | {row['corrected_p50_ms']} |"
        )
    (RESULTS / "clip_hubness_served.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _serve_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "training" / "configs" / "serve-clip.yaml").read_text())


if __name__ == "__main__":
    main()
