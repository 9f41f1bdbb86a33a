"""Training lists for rerankers (BlockRank, the cross-encoder): queries with their first stage's
candidates, judgements and teacher scores; how a training step draws one list from a query; and
`QueryMixture`, which draws queries from several sources (labelled queries, pseudo-queries, other
corpora) by weight.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from training.data.beir import RetrievalDataset


@dataclass
class TrainingQuery:
    """One query a reranker trains on, with the first stage's candidates for it."""

    text: str
    candidates: list[str]  # first-stage ranking: hard negatives, or the pool a pseudo-query's list is drawn from
    qrels: dict[str, int] | None = None  # judged documents; None for a pseudo-query (distillation only)
    teacher: dict[str, float] | None = None  # teacher score per candidate (listwise distillation)


def labelled_queries(train_set: RetrievalDataset, candidates: dict[str, list[str]]) -> list[TrainingQuery]:
    return [
        TrainingQuery(train_set.queries[q], candidates[q], train_set.qrels[q])
        for q in train_set.queries
        if train_set.qrels.get(q) and candidates.get(q)
    ]


def title_queries(dataset: RetrievalDataset, min_words: int = 3) -> dict[str, str]:
    """Pseudo-queries without judgements: each document's title (titles of < `min_words` words are
    too vague to rank by). Keyed `title:<doc id>`."""
    titles = {}
    for doc_id, doc in dataset.corpus.items():
        title = (doc.get("title") or "").strip()
        if len(title.split()) >= min_words:
            titles[f"title:{doc_id}"] = title
    return titles


def attach_teacher_scores(
    queries: list[TrainingQuery],
    doc_text: dict[str, str],
    teachers: list,  # type: ignore[type-arg]  # sentence-transformers bi-encoders
    known_doc_vectors: dict[int, dict[str, np.ndarray]] | None = None,
) -> None:
    """Set each query's teacher scores: the mean over teachers of cosine(query, candidate).
    `known_doc_vectors` maps a teacher's index to document vectors by id it already encoded."""
    from training.eval.first_stage import encode

    docs = sorted({d for q in queries for d in scored_documents(q)})
    doc_vectors, query_vectors = [], []
    for t, teacher in enumerate(teachers):
        if known_doc_vectors and t in known_doc_vectors:
            doc_vectors.append(known_doc_vectors[t])
        else:
            doc_vectors.append(dict(zip(docs, encode(teacher, [doc_text[d] for d in docs]), strict=True)))
        query_vectors.append(encode(teacher, [q.text for q in queries]))
    set_teacher_scores(queries, query_vectors, doc_vectors)


def scored_documents(query: TrainingQuery) -> list[str]:
    """The documents a teacher scores for `query`: its candidates and judged documents (a judged one
    the first stage missed can be a training positive)."""
    return list(dict.fromkeys([*query.candidates, *(query.qrels or {})]))


def set_teacher_scores(
    queries: list[TrainingQuery], query_vectors: list[np.ndarray], doc_vectors: list[dict[str, np.ndarray]]
) -> None:
    """Each query's teacher scores from every teacher's vectors: the mean cosine over teachers.
    query_vectors[t]: (len(queries), dim_t) unit rows; doc_vectors[t]: id -> (dim_t,) unit vector."""
    for i, query in enumerate(queries):
        ids = scored_documents(query)
        total = sum(
            np.stack([docs[d] for d in ids]) @ rows[i] for rows, docs in zip(query_vectors, doc_vectors, strict=True)
        )
        query.teacher = dict(zip(ids, (total / len(query_vectors)).tolist(), strict=True))


def draw_list(query: TrainingQuery, list_size: int, rng: random.Random) -> tuple[list[str], int | None]:
    """The documents of one training list and the position of its positive (None for an unjudged
    query: its list is trained by distillation only). Documents come from the first `3 x list_size`
    candidates, so lists hold hard negatives."""
    pool = query.candidates[: 3 * list_size]
    if not query.qrels:
        return rng.sample(pool, min(len(pool), list_size)), None
    # The positive comes from the first stage's candidates when it found any: lists then look like
    # the ones to rerank, and a judged document the retriever missed (often unlike the query)
    # against hard negatives (like it) would teach "unlike the query = relevant".
    found = {d: g for d, g in query.qrels.items() if d in query.candidates} or query.qrels
    positive = rng.choices(list(found), weights=list(found.values()))[0]
    negatives = [d for d in pool if d not in query.qrels]
    chosen = [positive, *rng.sample(negatives, min(len(negatives), list_size - 1))]
    rng.shuffle(chosen)
    return chosen, chosen.index(positive)


class QueryMixture:
    """Draws training queries: a source with probability proportional to its weight, then the next
    query of a shuffled pass over that source. Empty sources are never drawn; when every non-empty
    source has weight 0 they are drawn uniformly."""

    def __init__(self, sources: dict[str, list[TrainingQuery]], weights: dict[str, float], rng: random.Random) -> None:
        self.names = [name for name, queries in sources.items() if queries]
        if not self.names:
            raise ValueError("no training queries: every source of the mixture is empty")
        given = [max(0.0, weights.get(name, 1.0)) for name in self.names]
        self.weights = given if sum(given) > 0 else [1.0] * len(given)
        self.rng = rng
        self._passes = {name: self._passes_over(list(sources[name])) for name in self.names}

    @classmethod
    def judged_and_pseudo(
        cls, queries: list[TrainingQuery], pseudo_fraction: float, rng: random.Random
    ) -> QueryMixture:
        """Judged queries, and unjudged ones with teacher scores drawn with probability
        `pseudo_fraction` (always, when nothing is judged)."""
        judged = [q for q in queries if q.qrels]
        pseudo = [q for q in queries if not q.qrels and q.teacher]
        if not judged and not pseudo:
            raise ValueError("no training queries: none is judged and none has teacher scores")
        weights = {"judged": 1 - pseudo_fraction, "pseudo": pseudo_fraction}
        return cls({"judged": judged, "pseudo": pseudo}, weights, rng)

    def _passes_over(self, pool: list[TrainingQuery]) -> Iterator[TrainingQuery]:
        while True:
            self.rng.shuffle(pool)  # a new pass over this source
            yield from pool

    def next(self) -> tuple[str, TrainingQuery]:
        """(source name, query)."""
        name = self.rng.choices(self.names, weights=self.weights)[0] if len(self.names) > 1 else self.names[0]
        return name, next(self._passes[name])
