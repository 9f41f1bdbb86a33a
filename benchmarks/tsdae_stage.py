"""Issue 19 lever: a TSDAE stage (Wang, Reimers, Gurevych 2021, "TSDAE: Using Transformer-based
Sequential Denoising Auto-Encoder for Unsupervised Sentence Embedding Learning") before the
unlabelled and labelled Cranfield stages.

Objective: the encoder embeds a sentence with 60% of its words deleted; a decoder (tied to the encoder's
weights, cross-attending to that one sentence vector only) must reconstruct the original sentence
(token cross-entropy). The sentence vector learns the corpus's vocabulary and what matters in its
sentences, with no queries or labels. Inputs: Cranfield's title and abstract sentences (>= 4 words).

Writes a sentence-transformers folder that configs name as `base_model`
(training/configs/cranfield-unlabelled-tsdae.yaml, cranfield-warm-tsdae.yaml). Gains are measured
against all-MiniLM-L6-v2 itself by benchmarks/splits_uncertainty.py (the trainer's own "before" would
be this stage's model).

Usage: .venv/bin/python benchmarks/tsdae_stage.py [--epochs 1] [--out runs/tsdae/minilm-cranfield-tsdae]
       .venv/bin/python benchmarks/tsdae_stage.py --evaluate   (the stage's model against all-MiniLM-L6-v2
       on the held-out queries of splits 0 and 1, and STS-B dev; writes benchmarks/results/tsdae_stage.*)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.sources import DEFAULT_BASE_MODEL, load_sentence_transformer  # noqa: E402

CORPUS = ROOT / "data" / "beir" / "cranfield" / "corpus.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
LABELLED = ROOT / "training" / "configs" / "cranfield-warm-lr2e5.yaml"  # its evaluation set and length
DELETION, BATCH, MAX_TOKENS, MIN_WORDS = 0.6, 8, 128, 4  # the paper's deletion ratio and batch size


def corpus_sentences(path: Path) -> list[str]:
    sentences = []
    for line in path.open():
        doc = json.loads(line)
        for part in re.split(r"\s\.\s+|\.\s+", f"{doc.get('title', '')} . {doc['text']}"):
            if len(part.split()) >= MIN_WORDS:
                sentences.append(part.strip())
    return sentences


def delete_words(text: str, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() > DELETION]
    return " ".join(kept or [rng.choice(words)])


def evaluate_stage(folder: Path) -> None:
    """nDCG@10 etc. of all-MiniLM-L6-v2 and of the stage's model on splits 0 and 1's held-out halves."""
    from training.config import load_config
    from training.trainer import evaluate, evaluation_set

    models = {"all-MiniLM-L6-v2": DEFAULT_BASE_MODEL, "after the TSDAE stage": str(folder)}
    models = {label: load_sentence_transformer(source) for label, source in models.items()}
    rows = []
    for split in (0, 1):
        config = load_config(LABELLED, {"data.query_split.seed": split})
        eval_set = evaluation_set(config)
        for label, model in models.items():
            model.max_seq_length = config.max_seq_length
            scores = evaluate(model, eval_set, config.eval_sts)
            rows.append({"split": split, "model": label, **{k: round(v, 4) for k, v in scores.items()}})
            print(rows[-1], flush=True)
    stage = json.loads((folder / "tsdae.json").read_text())
    (RESULTS / "tsdae_stage.json").write_text(json.dumps({"stage": stage, "rows": rows}, indent=2))
    lines = [
        "# A TSDAE stage on Cranfield's corpus (issue 19), before any query",
        "",
        f"`benchmarks/tsdae_stage.py` then `--evaluate` ({time.strftime('%Y-%m-%d %H:%M')}): {stage['steps']} steps "
        f"(batch {BATCH}, {stage['sentences']} corpus sentences, {DELETION:.0%} of words deleted, decoder tied to the "
        f"encoder) in {stage['seconds'] / 60:.1f} min; held-out half of each query split, STS-B dev.",
        "",
        "| split | model | nDCG@10 | MRR@10 | recall@100 | STS-B Spearman |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['split']} | {r['model']} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {r['recall@100']:.4f} "
            f"| {r.get('sts_spearman', float('nan')):.2f} |"
            for r in rows
        ),
        "",
    ]
    (RESULTS / "tsdae_stage.md").write_text("\n".join(lines))


def main() -> None:
    from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "tsdae" / "minilm-cranfield-tsdae")
    parser.add_argument("--evaluate", action="store_true", help="score the stage's model in --out, train nothing")
    args = parser.parse_args()
    if args.evaluate:
        evaluate_stage(args.out)
        return
    rng = random.Random(0)
    torch.manual_seed(0)
    sentences = corpus_sentences(CORPUS)
    model = load_sentence_transformer(DEFAULT_BASE_MODEL)
    model.max_seq_length = MAX_TOKENS
    loss = DenoisingAutoEncoderLoss(model, tie_encoder_decoder=True)
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=args.learning_rate)
    per_epoch = len(sentences) // BATCH
    steps = args.epochs * per_epoch
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    print(f"{len(sentences)} sentences, {steps} steps", flush=True)
    model.train()
    started = time.time()
    for step in range(steps):
        if step % per_epoch == 0:
            rng.shuffle(sentences)
        at = (step % per_epoch) * BATCH
        batch = sentences[at : at + BATCH]
        damaged = model.tokenize([delete_words(s, rng) for s in batch])
        value = loss([damaged, model.tokenize(batch)], None)
        value.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {value.item():.3f}, {time.time() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(str(args.out))
    (args.out / "tsdae.json").write_text(
        json.dumps({"sentences": len(sentences), "steps": steps, "seconds": round(time.time() - started, 1)})
    )
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
