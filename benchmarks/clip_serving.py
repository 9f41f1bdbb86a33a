"""Serving the image-text model (kind clip): each tower in-process and over HTTP, and /v1/classify.

1. In-process, served variants: images/s of the image tower alone on preprocessed 224x224 pixels
   (batch 32) and texts/s of the text tower on COCO-mini captions (batch 32).
2. HTTP (`tessera serve` on loopback, wrk): /v1/embeddings with 8 base64 JPEGs per request
   (4 connections), with 32 captions per request (4 connections), and /v1/classify with 1 image x 10
   labels (1 connection: its latency alone), each `--duration` s, best of `--rounds`.

Usage: .venv/bin/python benchmarks/clip_serving.py [--model clip-minilm]   (needs `make clip-model`)
Writes benchmarks/results/clip_serving.json and .md.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.config import Settings  # noqa: E402
from app.core.manifest import Manifest  # noqa: E402
from app.inference.image_model import ImageModel  # noqa: E402
from app.inference.images import ImageLimits, load_pixels  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402
from app.inference.variants import choose_variant  # noqa: E402
from benchmarks.embed_http import WRK_LUA, run_wrk, start_tessera, wait_ready  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COCO = ROOT.parent / "shared" / "data" / "coco-mini"
PORT = 8112
LABELS = ["cat", "dog", "person", "car", "pizza", "train", "airplane", "bird", "horse", "boat"]


def coco() -> tuple[list[bytes], list[str]]:
    photos = [p.read_bytes() for p in sorted((COCO / "train2017").glob("*.jpg"))]
    captions = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())["annotations"]
    return photos, [c["caption"] for c in captions]


def best_rate(run, rounds: int) -> float:  # type: ignore[no-untyped-def]
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def in_process(folder: Path, photos: list[bytes], captions: list[str], rounds: int) -> dict:
    manifest = Manifest.load(folder)
    settings = Settings()
    image_variant = choose_variant(manifest, settings.backend, settings.precision, tower="image")
    text_variant = choose_variant(manifest, settings.backend, settings.precision)
    image = ImageModel(folder, manifest, image_variant)
    text = TextModel(folder, manifest, text_variant)
    pixels = np.stack([load_pixels(p, manifest.image, ImageLimits()) for p in photos[:64]])  # (64, 3, 224, 224)
    image.encode(pixels[:8])
    text.encode(captions[:8])
    return {
        "image variant": image_variant.key,
        "text variant": text_variant.key,
        "images/s (image tower alone, batch 32)": round(
            best_rate(lambda: len(image.encode(pixels, batch_size=32)), rounds), 1
        ),
        "texts/s (text tower alone, batch 32)": round(best_rate(lambda: len(text.encode(captions)), rounds), 1),
    }


def http(models_dir: Path, model: str, photos: list[bytes], captions: list[str], duration: int, rounds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="clip-bench-"))
    encoded = [base64.b64encode(p).decode() for p in photos]
    cases = {
        "images": (
            "/v1/embeddings",
            [{"model": model, "input": [{"image": e} for e in encoded[i : i + 8]]} for i in range(0, 80, 8)],
            4,
            8,
        ),
        "texts": (
            "/v1/embeddings",
            [{"model": model, "input": captions[i : i + 32]} for i in range(0, 384, 32)],
            4,
            32,
        ),
        "classify": ("/v1/classify", [{"model": model, "images": [e], "labels": LABELS} for e in encoded], 1, 1),
    }
    lua = work / "bodies.lua"
    lua.write_text(WRK_LUA)
    server = start_tessera(models_dir, model, work / "data", PORT)
    out: dict[str, dict] = {}
    try:
        wait_ready(f"http://127.0.0.1:{PORT}/ready")
        for name, (path, bodies, connections, per_request) in cases.items():
            body_file = work / f"{name}.txt"
            body_file.write_text("".join(json.dumps(b) + "\n" for b in bodies))
            url = f"http://127.0.0.1:{PORT}{path}"
            run_wrk(url, body_file, lua, connections, 3)  # warm-up
            best: dict = {}
            for _ in range(rounds):
                result = run_wrk(url, body_file, lua, connections, duration)
                result["items_per_s"] = result["requests_per_s"] * per_request
                if result["items_per_s"] > best.get("items_per_s", 0):
                    best = result
            out[name] = {
                "connections": connections,
                **{k: round(v, 2) if isinstance(v, float) else v for k, v in best.items()},
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="clip-minilm")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    models_dir = ROOT / "models"
    photos, captions = coco()
    local = in_process(models_dir / args.model, photos, captions, args.rounds)
    served = http(models_dir, args.model, photos, captions, args.duration, args.rounds)
    report = {"model": args.model, "in_process": local, "http": served}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_serving.json").write_text(json.dumps(report, indent=2) + "\n")
    image_ratio = served["images"]["items_per_s"] / local["images/s (image tower alone, batch 32)"]
    text_ratio = served["texts"]["items_per_s"] / local["texts/s (text tower alone, batch 32)"]
    lines = [
        f"# Image-text model serving ({args.model}, 2 cores)",
        "",
        "Produced by `benchmarks/clip_serving.py`; COCO-mini JPEGs and captions.",
        "",
        "| path | rate | ratio to the tower alone | p50 ms | p99 ms | non-2xx |",
        "|---|---|---|---|---|---|",
        f"| image tower in-process ({local['image variant']}, batch 32) | "
        f"{local['images/s (image tower alone, batch 32)']} images/s | 1.00 | - | - | - |",
        f"| text tower in-process ({local['text variant']}, batch 32) | "
        f"{local['texts/s (text tower alone, batch 32)']} texts/s | 1.00 | - | - | - |",
        f"| HTTP /v1/embeddings, 8 base64 JPEGs x 4 connections | {served['images']['items_per_s']} images/s | "
        f"{image_ratio:.2f} (decoding included) | {served['images']['p50_ms']} | {served['images']['p99_ms']} | "
        f"{served['images']['non2xx']} |",
        f"| HTTP /v1/embeddings, 32 captions x 4 connections | {served['texts']['items_per_s']} texts/s | "
        f"{text_ratio:.2f} | {served['texts']['p50_ms']} | {served['texts']['p99_ms']} | {served['texts']['non2xx']} |",
        f"| HTTP /v1/classify, 1 image x 10 labels, 1 connection | {served['classify']['requests_per_s']} requests/s "
        f"| - | **{served['classify']['p50_ms']}** | {served['classify']['p99_ms']} | {served['classify']['non2xx']} |",
        "",
    ]
    (RESULTS / "clip_serving.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
