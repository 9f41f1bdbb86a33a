"""Parity of each served text variant beyond the export's parity set: short queries, medium and long documents.

The export checks every variant against PyTorch on 1,000 STS-B sentences (short: ~10-20 tokens) and
serves those with min cosine >= 0.999. Documents are longer. This measures, per model and variant,
the cosine to the ONNX Runtime fp32 vectors (which match PyTorch to >= 0.9999998 on the export's
set, per each manifest) on:

- the export's own parity sentences (STS-B dev, the first 1,000);
- Cranfield queries (225);
- Cranfield abstracts cut to their first 300 characters (~60 tokens), and whole (up to the
  model's max tokens), 600 of each;

in batches of 32 (bulk upserts, index builds) for every variant, and one input alone on the
variant the service runs lone inputs on (`choose_query_variant`: a search query, or a single
document upserted alone). Rows: min cosine, 1st percentile, and the share of inputs under 0.999.

Usage: .venv/bin/python benchmarks/parity_lengths.py   (needs `make model rerank-model`)
Writes benchmarks/results/parity_lengths.json and .md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.manifest import SERVING_MIN_COSINE, Manifest  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402
from app.inference.variants import choose_query_variant, choose_variant  # noqa: E402
from benchmarks.rerank_served import cranfield_queries, cranfield_texts  # noqa: E402
from training.data.parity import load_parity_sentences  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("minilm-l6", "mpnet-rerank")
STS_DEV = ROOT.parent / "shared" / "data" / "stsbenchmark" / "sts-dev.csv"
DOCS = 600
REFERENCE = "onnxruntime-fp32"


def input_sets() -> dict[str, list[str]]:
    abstracts = [t for t in cranfield_texts() if t.strip()][:DOCS]
    return {
        "STS-B dev (the export's parity set)": load_parity_sentences(STS_DEV, 1000),
        "Cranfield queries": cranfield_queries(),
        "Cranfield abstracts, first 300 characters": [t[:300] for t in abstracts],
        "Cranfield abstracts, whole": abstracts,
    }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def summary(values: np.ndarray) -> dict[str, float]:
    return {
        "min": round(float(values.min()), 5),
        "p1": round(float(np.percentile(values, 1)), 5),
        "share_below_bar": round(float((values < SERVING_MIN_COSINE).mean()), 4),
    }


def one_alone(model: TextModel, texts: list[str]) -> np.ndarray:
    """Each text in a pass of its own (the lone-input path: the query session where there is one)."""
    return np.stack([model.forward([t.ids])[0, 0] for t in model.tokenize(texts)])


def measure_model(name: str, sets: dict[str, list[str]]) -> dict:
    folder = ROOT / "models" / name
    manifest = Manifest.load(folder)
    variants = {p.key: p for p in manifest.parity if p.tower == "text"}
    batch_key, query_key = choose_variant(manifest).key, choose_query_variant(manifest).key
    reference = TextModel(folder, manifest, variants[REFERENCE], threads=0)
    expected = {label: reference.encode(texts) for label, texts in sets.items()}
    rows = []
    for key, variant in variants.items():
        if key == REFERENCE:
            continue
        model = TextModel(folder, manifest, variant, threads=0)
        modes = {"batches of 32": lambda texts, m=model: m.encode(texts, batch_size=32)}
        if key == query_key:
            modes["one input alone"] = lambda texts, m=model: one_alone(m, texts)
        for mode, run in modes.items():
            for label, texts in sets.items():
                started = time.perf_counter()
                got = run(texts)
                row = {"variant": key, "mode": mode, "inputs": label, "count": len(texts)}
                row.update(summary(cosines(got, expected[label])))
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(name, row, flush=True)
    return {
        "export_min_cosine": {k: v.min_cosine for k, v in variants.items()},
        "served_batch": batch_key,
        "served_alone": query_key,
        "rows": rows,
    }


def write(report: dict) -> None:
    (RESULTS / "parity_lengths.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Parity of served text variants beyond the export's parity set",
        "",
        f"Produced by `benchmarks/parity_lengths.py` on {report['date']}: cosine of each variant's vectors to "
        "ONNX Runtime fp32's (equal to PyTorch's to >= 0.9999998 on the export's set), per input set; the "
        f"serving bar is min cosine >= {SERVING_MIN_COSINE} on the export's 1,000 STS-B sentences.",
    ]
    for name, model in report["models"].items():
        lines += [
            "",
            f"## {name} (served: {model['served_batch']} for batches, {model['served_alone']} for one input alone)",
            "",
            "| variant | mode | inputs | n | min cosine | 1st percentile | share < bar |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in model["rows"]:
            lines.append(
                f"| {row['variant']} | {row['mode']} | {row['inputs']} | {row['count']} | {row['min']} | "
                f"{row['p1']} | {row['share_below_bar'] * 100:.1f}% |"
            )
    (RESULTS / "parity_lengths.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    sets = input_sets()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "models": {name: measure_model(name, sets) for name in MODELS},
    }
    write(report)


if __name__ == "__main__":
    main()
