"""Image-to-image contrastive training, before (raw ImageNet features) vs after, over 3 seeds.

Each seed draws its own split of held-out codepoints (`split_seed = seed`), its own initialisation
and batch order; OpenMoji is never trained on (held out entirely). Reports cross-style Recall@1/@10
per style pair, identity mAP on held-out codepoints and Fashion-MNIST same-class Precision@10 on its
10,000 test images, with the issue's targets: cross-style error (1 - Recall@1) at most half the
baseline's, Fashion-MNIST Precision@10 within 0.02.

Usage: .venv/bin/python benchmarks/image_training.py [--config training/configs/serve-image.yaml]
Writes benchmarks/results/image_training.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import ImageTrainConfig, load_yaml_config  # noqa: E402
from training.image_training import raw_features_metrics, train_image_encoder  # noqa: E402
from training.models.image_towers import TOWER_TITLES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ISSUE_BASELINE_TOWER = "mobilenet_v2"  # the issue states its target against MobileNetV2's raw features
KEYS = [
    "google->twitter recall@1",
    "twitter->google recall@1",
    "google->twitter recall@10",
    "held_out_style recall@1 (mean)",
    "cross_style recall@1 (mean)",
    "identity mAP",
    "fashion_mnist precision@10",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "serve-image.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        overrides = {
            "name": f"bench-image-seed{seed}",
            "seed": seed,
            "split_seed": seed,
            "fashion_mnist": str(ROOT / "data" / "fashion-mnist"),
            "export": None,
        }
        config = load_yaml_config(args.config, ImageTrainConfig, overrides)
        metrics = train_image_encoder(config)  # type: ignore[arg-type]
        run = {"seed": seed, "before": metrics["before"], "after": metrics["after"]}
        if config.tower != ISSUE_BASELINE_TOWER:  # type: ignore[union-attr]
            run["issue_baseline"] = raw_features_metrics(config, ISSUE_BASELINE_TOWER)  # type: ignore[arg-type]
        runs.append(run)
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "config": str(args.config.relative_to(ROOT)),
        "tower": config.tower,  # type: ignore[union-attr]
        "preprocessing": (
            f"transparent images trimmed to their visible pixels, margin {config.trim_transparent}"  # type: ignore[union-attr]
            if config.trim_transparent is not None  # type: ignore[union-attr]
            else None
        ),
        "runs": runs,
        "summary": summarise(runs),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image_training.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "image_training.md").write_text(render(report))
    print(render(report))


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in KEYS:
        before = [r["before"][key] for r in runs]
        after = [r["after"][key] for r in runs]
        out[key] = {
            "before_mean": round(statistics.mean(before), 4),
            "after_mean": round(statistics.mean(after), 4),
            "after_min": round(min(after), 4),
            "after_max": round(max(after), 4),
        }
        if all("issue_baseline" in r for r in runs):
            out[key]["issue_baseline_mean"] = round(statistics.mean(r["issue_baseline"][key] for r in runs), 4)
    for key in ("google->twitter recall@1", "held_out_style recall@1 (mean)"):
        s = out[key]
        s["error_ratio"] = round((1 - s["after_mean"]) / (1 - s["before_mean"]), 3)
        s["target_met (error ratio <= 0.5)"] = s["error_ratio"] <= 0.5
        if "issue_baseline_mean" in s:
            s["error_ratio_vs_issue_baseline"] = round((1 - s["after_mean"]) / (1 - s["issue_baseline_mean"]), 3)
    fm = out["fashion_mnist precision@10"]
    fm["change"] = round(fm["after_mean"] - fm["before_mean"], 4)
    fm["target_met (drop <= 0.02)"] = fm["change"] >= -0.02
    return out


def render(report: dict) -> str:
    tower = TOWER_TITLES[report.get("tower", ISSUE_BASELINE_TOWER)]
    issue_baseline = TOWER_TITLES[ISSUE_BASELINE_TOWER]
    other = tower != issue_baseline
    lines = [
        "# Image-to-image contrastive training: before vs after",
        "",
        f"Config `{report['config']}` ({tower} tower), seeds {', '.join(str(r['seed']) for r in report['runs'])} "
        "(each its own split of 400 held-out codepoints); OpenMoji never trained on. Before = the tower's raw "
        "pooled ImageNet features (cosine)"
        + (f", with the config's preprocessing ({report['preprocessing']})" if report.get("preprocessing") else "")
        + (
            f"; {issue_baseline} raw = the issue's baseline (ImageNet preprocessing), on the same splits"
            if other
            else ""
        )
        + ". Produced by `benchmarks/image_training.py`.",
        "",
        "| metric | "
        + (f"{issue_baseline} raw (mean) | " if other else "")
        + "before (mean) | after (mean) | after min..max | target |",
        "|---|---|---|---|---|" + ("---|" if other else ""),
    ]
    for key, s in report["summary"].items():
        target = ""
        if "error_ratio_vs_issue_baseline" in s:
            ratio = s["error_ratio_vs_issue_baseline"]
            target = (
                f"error ratio {ratio} vs {issue_baseline} raw ({'met' if ratio <= 0.5 else 'missed'}; <= 0.5); "
                f"{s['error_ratio']} vs {tower} raw"
            )
        elif "error_ratio" in s:
            target = f"error ratio {s['error_ratio']} ({'met' if s['error_ratio'] <= 0.5 else 'missed'}; <= 0.5)"
        elif "change" in s:
            target = f"change {s['change']:+.4f} ({'met' if s['change'] >= -0.02 else 'missed'}; >= -0.02)"
        baseline = f"{s.get('issue_baseline_mean', '–')} | " if other else ""
        lines.append(
            f"| {key} | {baseline}{s['before_mean']} | {s['after_mean']} | {s['after_min']}..{s['after_max']} "
            f"| {target} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
