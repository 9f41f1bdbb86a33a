"""Rerankers for corpora they have never seen: one training mixture of several sources, evaluated
leave-one-corpus-out (train without a corpus, test on its held-out queries).

Sources, each drawn by weight (`QueryMixture`):
- `<corpus>/labelled`: the train half of a BEIR corpus's judged queries (label loss + distillation);
- `<corpus>/titles`, `<corpus>/first_sentences`: pseudo-queries made from the corpus's documents,
  trained by distillation only. The document a pseudo-query was cut from is left out of its lists:
  a query copied from a document is matched by copying words, which no reranker needs to learn;
  the teacher's order of its *neighbours* is what carries over;
- `sts`: STS-B train pairs with gold score >= 4 (sentence 1 -> sentence 2 judged relevant; the
  candidates are the other STS sentences the first stage ranks near it).

Every list is scored by an ensemble teacher (the mean cosine of several bi-encoders, e.g.
all-mpnet-base-v2 and all-MiniLM-L6-v2). Documents are keyed `<corpus>:<id>` so corpora never
collide. Each bi-encoder's vectors are cached on disk per (model, texts), so a second run, or a
second mixture over the same corpora, encodes nothing.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.data.beir import RetrievalDataset
from training.data.pseudo import first_sentence
from training.data.sts import read_sts
from training.eval.metrics import top_k_ids
from training.features import cached
from training.rerank_lists import TrainingQuery, set_teacher_scores, title_queries

STS_RELEVANT = 4.0  # gold similarity (0..5) from which an STS pair counts as a relevant pair


class Encoder:
    """A bi-encoder's `encode(texts) -> (n, dim) unit rows` (loading its model on first use), with
    its vectors cached on disk per (name, texts): name it after the model's files."""

    def __init__(self, name: str, encode: Callable[[list[str]], np.ndarray], cache_dir: Path) -> None:
        self.name = name
        self._encode = encode
        self.cache_dir = cache_dir

    def vectors(self, texts: list[str]) -> np.ndarray:
        """(n, dim) unit rows, from the cache when these exact texts were encoded by this model."""
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        key = f"vectors|{self.name}|{len(texts)}|{digest}"
        return cached(self.cache_dir, key, lambda: torch.from_numpy(np.asarray(self._encode(texts)))).numpy()


@dataclass
class MixtureData:
    """The mixture's sources and the text of every document they name (keys `<corpus>:<id>`)."""

    sources: dict[str, list[TrainingQuery]] = field(default_factory=dict)
    doc_text: dict[str, str] = field(default_factory=dict)

    def add(self, other: MixtureData) -> None:
        self.sources.update(other.sources)
        self.doc_text.update(other.doc_text)


def corpus_sources(
    name: str,
    dataset: RetrievalDataset,
    train: RetrievalDataset,
    first_stage: Encoder,
    pool: int,
    pseudo_limit: int,
    seed: int = 0,
) -> MixtureData:
    """`<name>/labelled` (the judged queries of `train`) and pseudo-query sources from `dataset`'s
    documents (up to `pseudo_limit` of each kind, drawn with `seed`), candidates = the first
    stage's top-`pool` over the whole corpus."""
    doc_ids = list(dataset.corpus)
    keys = [f"{name}:{d}" for d in doc_ids]
    texts = [dataset.doc_text(d) for d in doc_ids]
    doc_vectors = first_stage.vectors(texts)

    def ranked(queries: dict[str, str], k: int) -> dict[str, list[str]]:
        ids = list(queries)
        return top_k_ids(ids, first_stage.vectors([queries[q] for q in ids]), keys, doc_vectors, k)

    data = MixtureData(doc_text=dict(zip(keys, texts, strict=True)))
    judged = {q: t for q, t in train.queries.items() if train.qrels.get(q)}
    candidates = ranked(judged, pool)
    data.sources[f"{name}/labelled"] = [
        TrainingQuery(text, candidates[q], {f"{name}:{d}": g for d, g in train.qrels[q].items()})
        for q, text in judged.items()
    ]
    rng = random.Random(seed)
    for kind, queries in (("titles", _titles(dataset)), ("first_sentences", _first_sentences(dataset))):
        chosen = sorted(queries)
        rng.shuffle(chosen)
        picked = {doc: queries[doc] for doc in chosen[:pseudo_limit]}
        if not picked:  # e.g. a corpus without titles
            continue
        found = ranked(picked, pool + 1)
        own = {doc: f"{name}:{doc}" for doc in picked}
        data.sources[f"{name}/{kind}"] = [
            TrainingQuery(text, [d for d in found[doc] if d != own[doc]][:pool]) for doc, text in picked.items()
        ]
    return data


def _titles(dataset: RetrievalDataset) -> dict[str, str]:
    """doc id -> its title as a pseudo-query (titles of >= 3 words)."""
    return {key.removeprefix("title:"): title for key, title in title_queries(dataset).items()}


def _first_sentences(dataset: RetrievalDataset, min_words: int = 4) -> dict[str, str]:
    """doc id -> its first sentence as a pseudo-query, where more text follows it."""
    out = {}
    for doc_id, doc in dataset.corpus.items():
        split = first_sentence(doc["text"])
        if split is not None and len(split[0].split()) >= min_words:
            out[doc_id] = split[0]
    return out


def sts_source(path: Path, first_stage: Encoder, pool: int, limit: int, seed: int = 0) -> MixtureData:
    """`sts`: up to `limit` STS-B pairs scored >= STS_RELEVANT, sentence 1 as the query and sentence 2
    judged relevant; the corpus is every sentence 2 of the file (keys `sts:<row>`)."""
    pairs = read_sts(path)
    sentences = list(dict.fromkeys(p.sentence2 for p in pairs))
    keys = [f"sts:{i}" for i in range(len(sentences))]
    key_of = dict(zip(sentences, keys, strict=True))
    relevant = [p for p in pairs if p.score >= STS_RELEVANT and p.sentence1 != p.sentence2]
    random.Random(seed).shuffle(relevant)
    relevant = relevant[:limit]
    ids = [str(i) for i in range(len(relevant))]
    query_vectors = first_stage.vectors([p.sentence1 for p in relevant])
    found = top_k_ids(ids, query_vectors, keys, first_stage.vectors(sentences), pool)
    queries = [
        TrainingQuery(p.sentence1, found[i], {key_of[p.sentence2]: 1}) for i, p in zip(ids, relevant, strict=True)
    ]
    return MixtureData({"sts": queries}, dict(zip(keys, sentences, strict=True)))


def score_with_teachers(data: MixtureData, teachers: list[Encoder]) -> None:
    """Every query's teacher scores: the mean cosine of `teachers`. Each teacher encodes every
    corpus whole (cached per model and corpus), so any mixture of these corpora reuses them."""
    corpora: dict[str, list[str]] = {}
    for key in data.doc_text:  # insertion order: each corpus in its own order, as its source encoded it
        corpora.setdefault(key.split(":", 1)[0], []).append(key)
    queries = [q for source in data.sources.values() for q in source]
    doc_vectors = []
    for teacher in teachers:
        by_key: dict[str, np.ndarray] = {}
        for keys in corpora.values():
            by_key.update(zip(keys, teacher.vectors([data.doc_text[k] for k in keys]), strict=True))
        doc_vectors.append(by_key)
    query_vectors = [t.vectors([q.text for q in queries]) for t in teachers]
    set_teacher_scores(queries, query_vectors, doc_vectors)


def without(data: MixtureData, corpus: str) -> MixtureData:
    """The mixture less every source of `corpus` (leave-one-corpus-out)."""
    sources = {name: qs for name, qs in data.sources.items() if name.split("/")[0] != corpus}
    return MixtureData(sources, {k: t for k, t in data.doc_text.items() if not k.startswith(f"{corpus}:")})
