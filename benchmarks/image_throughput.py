"""Image embedding throughput: in-process per backend x precision, over HTTP, and batch building.

1. In-process, per variant in the manifest: images/s of the model alone on preprocessed 224x224
   pixels (batch 32), and the time one image takes to decode + preprocess (COCO-mini JPEGs, one
   thread), so decoding vs inference is visible.
2. In-process end to end for the served variant: JPEG bytes -> vectors with the service's own
   decode pool and model (what a server does minus HTTP).
3. HTTP: `tessera serve` on loopback, wrk with N connections each posting 8 base64 JPEGs per request
   to /v1/embeddings; images/s and latency.
4. Batch building: `build_index` over a folder of JPEGs vs embedding the same files in-process with
   the builder's own file encoder (ImageFileEncoder), images/s.

Measurements alternate in one run (best of `--rounds`), alone on the machine.
Usage: .venv/bin/python benchmarks/image_throughput.py [--model efficientnet-lite0-emoji] [--duration 15]
Writes benchmarks/results/image_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
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
from app.inference.image_model import ImageFileEncoder, ImageModel  # noqa: E402
from app.inference.images import ImageDecoder, ImageLimits, load_pixels  # noqa: E402
from app.inference.variants import choose_variant  # noqa: E402
from app.search.builder import BuildOptions, build_index  # noqa: E402
from benchmarks.embed_http import WRK_LUA, run_wrk, start_tessera, wait_ready  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COCO = ROOT.parent / "shared" / "data" / "coco-mini" / "train2017"
PORT = 8111
PER_REQUEST = 8


def photos() -> list[bytes]:
    return [p.read_bytes() for p in sorted(COCO.glob("*.jpg"))]


def in_process_variants(folder: Path, manifest: Manifest, images: list[bytes], rounds: int) -> list[dict]:
    limits = ImageLimits()
    pixels = np.stack([load_pixels(data, manifest.image, limits) for data in images[:64]])  # (64, 3, 224, 224)
    started = time.perf_counter()
    for data in images:
        load_pixels(data, manifest.image, limits)
    decode_ms = (time.perf_counter() - started) / len(images) * 1000
    rows = []
    models = [(v, ImageModel(folder, manifest, v, threads=0, streams=1)) for v in manifest.parity if v.tower == "image"]
    best = {v.key: 0.0 for v, _ in models}
    for _ in range(rounds):
        for variant, model in models:
            model.encode(pixels[:32], batch_size=32)  # warm
            start = time.perf_counter()
            model.encode(pixels, batch_size=32)
            best[variant.key] = max(best[variant.key], len(pixels) / (time.perf_counter() - start))
    for variant, _ in models:
        rows.append(
            {
                "variant": variant.key,
                "servable": variant.servable,
                "min_cosine": round(variant.min_cosine, 6),
                "images_per_s": round(best[variant.key], 1),
                "inference_ms_per_image": round(1000 / best[variant.key], 2),
                "decode_ms_per_image": round(decode_ms, 2),
            }
        )
    return rows


def end_to_end(folder: Path, manifest: Manifest, settings: Settings, images: list[bytes], rounds: int) -> float:
    """JPEG bytes -> vectors with the service's decode pool and the served variant, no HTTP: the next
    32 images decode while the current 32 run through the model (the same overlap a server gets)."""
    variant = choose_variant(manifest, settings.backend, settings.precision, tower="image")
    model = ImageModel(folder, manifest, variant, threads=settings.threads, streams=settings.streams)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)

    async def run() -> float:
        decoder = ImageDecoder(model.pixels, limits, settings.image_decode_workers, 10_000, "bench")
        best = 0.0
        try:
            for _ in range(rounds):
                start = time.perf_counter()
                chunks = [images[i : i + 32] for i in range(0, len(images), 32)]
                pending = asyncio.ensure_future(decoder.decode(chunks[0]))
                for following in [*chunks[1:], None]:
                    pixels = await pending
                    if following is not None:
                        pending = asyncio.ensure_future(decoder.decode(following))
                    await asyncio.to_thread(model.forward, pixels)
                best = max(best, len(images) / (time.perf_counter() - start))
        finally:
            decoder.close()
        return best

    return asyncio.run(run())


def http(models_dir: Path, model: str, images: list[bytes], connections: int, duration: int, rounds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="image-bench-"))
    bodies = work / "bodies.txt"
    encoded = [base64.b64encode(data).decode() for data in images]
    with bodies.open("w") as handle:
        for start in range(0, len(encoded), PER_REQUEST):
            items = [{"image": e} for e in (encoded * 2)[start : start + PER_REQUEST]]
            handle.write(json.dumps({"model": model, "input": items}) + "\n")
    lua = work / "bodies.lua"
    lua.write_text(WRK_LUA)
    server = start_tessera(models_dir, model, work / "data", PORT)
    try:
        wait_ready(f"http://127.0.0.1:{PORT}/ready")
        run_wrk(f"http://127.0.0.1:{PORT}/v1/embeddings", bodies, lua, connections, 3)  # warm-up
        best: dict = {}
        for _ in range(rounds):
            result = run_wrk(f"http://127.0.0.1:{PORT}/v1/embeddings", bodies, lua, connections, duration)
            result["images_per_s"] = result["requests_per_s"] * PER_REQUEST
            if result["images_per_s"] > best.get("images_per_s", 0):
                best = result
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in best.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def building(models_dir: Path, model: str, settings: Settings, images: list[bytes], copies: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="image-build-"))
    folder = work / "photos"
    folder.mkdir()
    for copy in range(copies):
        for i, data in enumerate(images):
            (folder / f"{copy:02d}-{i:03d}.jpg").write_bytes(data)
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    manifest = Manifest.load(models_dir / model)
    variant = choose_variant(manifest, settings.backend, settings.precision, tower="image")
    encoder = ImageFileEncoder(
        ImageModel(models_dir / model, manifest, variant, threads=settings.threads),
        ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
        settings.image_decode_workers,
    )
    encoder.encode(files[:32])  # warm
    start = time.perf_counter()
    encoder.encode(files, batch_size=32)
    in_process = len(files) / (time.perf_counter() - start)
    build_settings = settings.model_copy(update={"data_dir": work / "data", "models_dir": models_dir})
    start = time.perf_counter()
    result = build_index(build_settings, model, folder, "photos", BuildOptions(index_spec="Flat"))
    built = len(files) / (time.perf_counter() - start)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "images": len(files),
        "in_process_images_per_s": round(in_process, 1),
        "build_images_per_s": round(built, 1),
        "build_embedding_images_per_s": result["records_per_s"],
        "ratio": round(built / in_process, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="efficientnet-lite0-emoji")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--copies", type=int, default=4, help="copies of the 80 COCO photos for the build")
    args = parser.parse_args()
    folder = args.models_dir / args.model
    manifest = Manifest.load(folder)
    settings = Settings(models_dir=args.models_dir)
    images = photos()
    variants = in_process_variants(folder, manifest, images, args.rounds)
    served = choose_variant(manifest, settings.backend, settings.precision, tower="image").key
    e2e = end_to_end(folder, manifest, settings, images, args.rounds)
    over_http = http(args.models_dir, args.model, images, args.connections, args.duration, args.rounds)
    build = building(args.models_dir, args.model, settings, images, args.copies)
    served_row = next(r for r in variants if r["variant"] == served)
    # What 2 cores can do when every image is decoded (single-threaded) and inferred (all cores):
    # CPU-ms per image = decode + cores x inference ms; the bound is cores x 1000 / that.
    cores = os.cpu_count() or 1
    cpu_ms = served_row["decode_ms_per_image"] + cores * served_row["inference_ms_per_image"]
    bound = cores * 1000 / cpu_ms
    report = {
        "model": args.model,
        "served_variant": served,
        "cpu": os.cpu_count(),
        "variants": variants,
        "in_process_end_to_end_images_per_s": round(e2e, 1),
        "http": {"connections": args.connections, "images_per_request": PER_REQUEST, **over_http},
        "http_vs_in_process_end_to_end": round(over_http["images_per_s"] / e2e, 3),
        "http_vs_model_alone": round(over_http["images_per_s"] / served_row["images_per_s"], 3),
        "decode_plus_inference_bound_images_per_s": round(bound, 1),
        "http_vs_bound": round(over_http["images_per_s"] / bound, 3),
        "build": build,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "image_throughput.md").write_text(render(report))
    print(render(report))


def render(r: dict) -> str:
    lines = [
        f"# Image embedding throughput ({r['model']}, {r['cpu']} cores)",
        "",
        "Produced by `benchmarks/image_throughput.py`; COCO-mini JPEGs (640x~480), 224x224 model input.",
        "",
        "| variant | servable | min cosine | images/s (model alone, batch 32) | inference ms/image | decode+preprocess ms/image |",
        "|---|---|---|---|---|---|",
    ]
    for v in r["variants"]:
        lines.append(
            f"| {v['variant']} | {v['servable']} | {v['min_cosine']} | {v['images_per_s']} | "
            f"{v['inference_ms_per_image']} | {v['decode_ms_per_image']} |"
        )
    h = r["http"]
    b = r["build"]
    lines += [
        "",
        f"Served variant: **{r['served_variant']}**.",
        "",
        "| path | images/s | ratio |",
        "|---|---|---|",
        f"| in-process end to end (JPEG bytes -> vectors: decode pool overlapping the served variant) | "
        f"{r['in_process_end_to_end_images_per_s']} | 1.00 |",
        f"| HTTP, {h['connections']} connections x {h['images_per_request']} base64 JPEGs | {h['images_per_s']} | "
        f"**{r['http_vs_in_process_end_to_end']}** (vs model alone: {r['http_vs_model_alone']}) |",
        f"| CPU bound of decode + inference on {r['cpu']} cores (decode ms + cores x inference ms per image) | "
        f"{r['decode_plus_inference_bound_images_per_s']} | HTTP at **{r['http_vs_bound']}** of it |",
        f"| batch build from a folder ({b['images']} JPEGs; in-process file encoder = 1.00) | "
        f"{b['build_images_per_s']} | **{b['ratio']}** (in-process {b['in_process_images_per_s']}) |",
        "",
        f"HTTP latency p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms; non-2xx {h['non2xx']}, socket errors "
        f"{h['socket_errors']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
