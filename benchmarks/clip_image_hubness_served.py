"""Image->image hubness correction as served: `make clip-model`'s `clip-minilm` (trained on split 0)
in the real app. Split 0's 400 held-out emoji codepoints: their Twitter drawings are upserted as
images into a collection through the API (the service decodes, trims and embeds them), and each
codepoint's Google drawing searches it (an `image` query) with `hubness_correction` off and on.
Recall@1: the query's own codepoint first. `clip_image_hubness.py` measured the same on the head's
vectors in process (full gallery; served: top 50 re-ranked).

Usage: .venv/bin/python benchmarks/clip_image_hubness_served.py  (needs `make clip-model`; ~2 min).
Writes benchmarks/results/clip_image_hubness_served.{json,md}.
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
from benchmarks.clip_hubness_served import BATCH, MODEL, _serve_config  # noqa: E402
from training.config import ClipTrainConfig  # noqa: E402
from training.data.images import emoji_path, load_identities, split_identities  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def recall_at_1(client: TestClient, queries: list[tuple[str, str]], corrected: bool) -> tuple[float, list[float]]:
    hits, latencies = 0, []
    for unified, image in queries:
        body = {"image": image, "top_k": 10, "include": [], "hubness_correction": corrected}
        started = time.perf_counter()
        response = client.post("/indexes/emoji/search", json=body)
        latencies.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        hits += response.json()["hits"][0]["id"] == unified
    return hits / len(queries), latencies


def main() -> None:
    config = ClipTrainConfig.model_validate({**_serve_config(), "name": "served-image-hubness"})
    _, test_ids = split_identities(load_identities(config.emoji), config.emoji_test, config.split_seed)  # type: ignore[arg-type]
    pairs = [
        (i.unified, emoji_path(config.emoji, "google", i.unified), emoji_path(config.emoji, "twitter", i.unified))  # type: ignore[arg-type]
        for i in test_ids
        if {"google", "twitter"} <= set(i.styles)
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(models_dir=ROOT / "models", models=MODEL, data_dir=Path(data_dir))  # type: ignore[call-arg]
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            client.post("/indexes", json={"name": "emoji", "model": MODEL}).raise_for_status()
            for start in range(0, len(pairs), BATCH):
                documents = [{"id": u, "image": b64(twitter)} for u, _, twitter in pairs[start : start + BATCH]]
                client.put("/indexes/emoji/documents", json={"documents": documents}).raise_for_status()
            queries = [(u, b64(google)) for u, google, _ in pairs]
            recall_at_1(client, queries[:20], corrected=True)  # warm up both paths
            plain, plain_ms = recall_at_1(client, queries, corrected=False)
            corrected, corrected_ms = recall_at_1(client, queries, corrected=True)
    report = {
        "model": MODEL,
        "split": config.split_seed,
        "codepoints": len(pairs),
        "plain": plain,
        "corrected": corrected,
        "plain_p50_ms": round(statistics.median(plain_ms), 2),
        "corrected_p50_ms": round(statistics.median(corrected_ms), 2),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_image_hubness_served.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Image->image hubness correction as served (`clip-minilm`, emoji Google -> Twitter through the API)",
        "",
        f"`benchmarks/clip_image_hubness_served.py` ({report['measured']}, {report['minutes']} min): split "
        f"{config.split_seed}'s {len(pairs)} held-out codepoints (the split `make clip-model` trains on), Twitter "
        "drawings upserted as images, each Google drawing an `image` query with `hubness_correction: false`, "
        "then with the default. Latency: each search request (top 10, ids only, the query image embedded by "
        "the service) in process, p50.",
        "",
        "| plain R@1 | corrected R@1 | change | plain p50 ms | corrected p50 ms |",
        "|---|---|---|---|---|",
        f"| {plain:.4f} | {corrected:.4f} | {corrected - plain:+.4f} | {report['plain_p50_ms']} | "
        f"{report['corrected_p50_ms']} |",
        "",
    ]
    (RESULTS / "clip_image_hubness_served.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
