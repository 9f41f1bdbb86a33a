"""A query tower for search's stored-vector rescoring: the bi-encoder reranker's own checkpoint keeping
a few of its transformer layers, distilled back into the reranker's space on short texts.

Search that rescores with stored second-stage vectors adds one query embedding by the reranker
(all-mpnet-base-v2 by default: ~14 ms here, twice a whole plain search). The documents' vectors must
stay the reranker's, but the query only has to land near where the reranker would put it: a tower
with a third of the layers, starting in the reranker's own embeddings and space, gets there after a
short distillation (benchmarks/results/query_student_mpnet4*.md).

Objective: mean over a batch of `1 - cos(student(text), teacher(text))`, teacher = the exported
reranker's vectors (what collections store). Inputs: short query-like texts cut to `max_tokens`.
Initialisation by keeping every k-th layer follows DistilBERT (Sanh et al., 2019); distilling the
sentence vector alone follows Reimers & Gurevych (2020), "Making monolingual sentence embeddings
multilingual using knowledge distillation".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.core.manifest import Pooling
from training.data.beir import RetrievalDataset
from training.data.pseudo import first_sentence
from training.data.sts import sts_sentences
from training.export.text import pooling_of
from training.sources import load_sentence_transformer

DEV_EVERY = 100  # steps between two dev alignments


@dataclass(frozen=True)
class QueryTowerConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-4  # AdamW, weight decay 0.01
    head_lr: float = 5e-4  # a student with a trained head (the MiniLM one in benchmarks/query_student.py)
    max_tokens: int = 32  # queries are short; longer texts are cut, which also keeps steps cheap
    warmup: int = 100
    decay: bool = True  # warm-up, then a cosine to zero; else constant after warm-up
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "max_tokens"):
            if getattr(self, field) < 1:
                raise ValueError(f"query tower: {field} must be >= 1, got {getattr(self, field)}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ValueError("query tower: learning rates must be > 0")
        if self.warmup < 0:
            raise ValueError(f"query tower: warmup must be >= 0, got {self.warmup}")


class PooledStudent(torch.nn.Module):
    """A transformer `body`, mean pooling, `head` into the teacher's space, L2-normalised."""

    body: torch.nn.Module
    head: torch.nn.Module
    max_tokens: int = 32

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        hidden = self.body(**batch).last_hidden_state  # (b, seq, width)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, width)
        return torch.nn.functional.normalize(self.head(pooled), dim=-1)  # (b, dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = np.concatenate([self(texts[i : i + 128]).numpy() for i in range(0, len(texts), 128)])
        self.train(was_training)
        return out


class LayerDropStudent(PooledStudent):
    """The sentence-transformers model `source` keeping only its layers `keep` (0-based, ascending):
    the same embeddings and the same space (no head), so it starts near the teacher."""

    def __init__(self, source: str, keep: list[int]) -> None:
        super().__init__()
        self.st = load_sentence_transformer(source)
        self.body, self.tokenizer = self.st[0].auto_model, self.st.tokenizer
        layers = getattr(getattr(self.body, "encoder", None), "layer", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise ValueError(f"{source}: not an encoder with `encoder.layer` (BERT, MPNet); cannot drop layers")
        if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= len(layers):
            raise ValueError(f"layers {keep}: give ascending, distinct indices from 0 to {len(layers) - 1}")
        if pooling_of(self.st)[0] != Pooling.MEAN:
            raise ValueError(f"{source}: the query tower pools by mean; this model pools otherwise")
        self.body.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
        self.body.config.num_hidden_layers = len(keep)
        self.head = torch.nn.Identity()

    def save(self, folder: Path) -> None:
        """A sentence-transformers folder (the source's pooling and normalisation, the kept layers
        only), which `python -m training export` and `export-query-tower` read like any checkpoint."""
        self.st.save(str(folder))


def lr_factor(step: int, config: QueryTowerConfig) -> float:
    """Linear warm-up to 1 over `warmup` steps, then a cosine down to 0 at `steps` (or 1 without decay)."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if not config.decay:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - config.warmup) / max(1, config.steps - config.warmup)))


def alignment(student: PooledStudent, texts: list[str], teacher: np.ndarray) -> float:
    """Mean cosine of the student's vectors to the teacher's (n, dim) unit vectors of `texts`."""
    return float((student.encode(texts) * teacher).sum(1).mean())


def distil(
    student: PooledStudent,
    texts: list[str],
    teacher: np.ndarray,  # (n, dim) unit vectors of `texts` by the teacher
    config: QueryTowerConfig,
    dev: tuple[list[str], np.ndarray] | None = None,
    report: Callable[[int, float, float | None], None] | None = None,
) -> list[tuple[int, float]]:
    """Train `student` in place (the caller seeds torch before building it: dropout draws from
    there; `config.seed` orders the batches); returns the dev alignment at step 0 and every DEV_EVERY steps
    (empty without `dev`). `report(step, loss, dev alignment or None)` every DEV_EVERY steps."""
    if len(texts) != len(teacher) or len(texts) < config.batch_size:
        raise ValueError(
            f"query tower: {len(texts)} texts for {len(teacher)} vectors and batches of {config.batch_size}"
        )
    student.max_tokens = config.max_tokens
    curve = [(0, alignment(student, *dev))] if dev else []
    groups = [{"params": list(student.body.parameters()), "lr": config.lr}]
    head = list(student.head.parameters())
    groups += [{"params": head, "lr": config.head_lr}] if head else []
    optimiser = torch.optim.AdamW(groups, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: lr_factor(s, config))
    targets, rng, step = torch.tensor(teacher), np.random.default_rng(config.seed), 0
    student.train()
    while step < config.steps:
        for rows in np.array_split(rng.permutation(len(texts)), len(texts) // config.batch_size):
            loss = (1 - (student([texts[i] for i in rows]) * targets[rows]).sum(-1)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            if step % DEV_EVERY == 0 or step == config.steps:
                if dev:
                    curve.append((step, alignment(student, *dev)))
                if report:
                    report(step, loss.item(), curve[-1][1] if dev else None)
            if step == config.steps:
                break
    student.eval()
    return curve


def _first_sentence(text: str) -> str:
    """The text's first sentence (the whole text when it has one), cut to 300 characters."""
    split = first_sentence(text)
    return (split[0] if split else text.strip())[:300]


def query_like_texts(sts_train: Path, datasets: dict[str, RetrievalDataset], split_seed: int = 0) -> list[str]:
    """Short query-like texts: the STS-B train sentences, every title and first sentence of each
    corpus, and each dataset's *train-half* judged queries (`split_queries(split_seed)`), so held-out
    queries stay unseen. Unique, in order."""
    texts = sts_sentences(sts_train)
    for dataset in datasets.values():
        for doc in dataset.corpus.values():
            texts += [doc["title"], _first_sentence(doc["text"])]
        train_half = dataset.split_queries(split_seed)[0]
        texts += [text for qid, text in train_half.queries.items() if train_half.qrels.get(qid)]
    return list(dict.fromkeys(t for t in texts if t.strip()))


def train_query_tower(
    reranker: Path,
    keep: list[int],
    out: Path,
    config: QueryTowerConfig,
    texts: list[str],
    dev_texts: list[str],
    report: Callable[[int, float, float | None], None] | None = None,
) -> list[tuple[int, float]]:
    """Distil the exported bi-encoder reranker in `reranker` (the teacher: its fp32 graph, the vectors
    collections store) into its own checkpoint keeping the layers `keep`; saves the student to
    `out` (a sentence-transformers folder for `export-query-tower`). Returns the dev alignment curve."""
    from app.core.manifest import Manifest, ModelKind
    from app.inference.text_model import TextModel

    manifest = Manifest.load(reranker)
    if manifest.kind != ModelKind.BI_ENCODER:
        raise ValueError(f"{reranker}: the teacher must be a bi-encoder reranker, not {manifest.kind.value}")
    teacher = TextModel(reranker, manifest)
    torch.manual_seed(config.seed)
    student = LayerDropStudent(manifest.source.checkpoint, keep)
    curve = distil(student, texts, teacher.encode(texts), config, (dev_texts, teacher.encode(dev_texts)), report)
    student.save(out)
    return curve
