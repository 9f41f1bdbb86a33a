"""Reranker training lists and the leave-one-corpus-out mixture: how lists are drawn, how sources
are mixed by weight, the ensemble teacher's scores, the mixture's sources (keys per corpus, a
pseudo-query's own document kept out of its list, STS pairs), corpus vectors cached per model, and
the cross-encoder's list training moving towards the teacher."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.beir import load_beir
from training.rerank_lists import QueryMixture, TrainingQuery, draw_list, set_teacher_scores
from training.rerank_mixture import Encoder, MixtureData, corpus_sources, score_with_teachers, sts_source, without


def _query(name: str, judged: bool = True) -> TrainingQuery:
    return TrainingQuery(name, [f"{name}-{i}" for i in range(10)], {f"{name}-3": 2} if judged else None)


def test_draw_list_takes_the_positive_and_hard_negatives() -> None:
    rng = random.Random(0)
    query = TrainingQuery("q", [f"d{i}" for i in range(40)], {"d5": 1, "missed": 3})
    for _ in range(20):
        chosen, target = draw_list(query, 4, rng)
        assert target is not None and chosen[target] == "d5"  # the judged one the first stage found
        assert len(chosen) == 4 and len(set(chosen)) == 4
        assert all(int(d[1:]) < 12 for d in chosen)  # from the first 3 x list_size candidates
    unjudged = TrainingQuery("p", ["a", "b", "c"])
    chosen, target = draw_list(unjudged, 8, rng)
    assert target is None and sorted(chosen) == ["a", "b", "c"]


def test_mixture_draws_sources_by_weight() -> None:
    sources = {"big": [_query("b")], "small": [_query("s")], "off": [_query("o")], "empty": []}
    mixture = QueryMixture(sources, {"big": 3, "small": 1, "off": 0, "empty": 5}, random.Random(0))
    drawn = Counter(mixture.next()[0] for _ in range(4000))
    assert set(drawn) == {"big", "small"}
    assert drawn["big"] / drawn["small"] == pytest.approx(3, rel=0.15)
    only_zero = QueryMixture({"a": [_query("a")], "b": [_query("b")]}, {"a": 0, "b": 0}, random.Random(0))
    assert set(only_zero.next()[0] for _ in range(50)) == {"a", "b"}  # all zero: uniform
    with pytest.raises(ValueError, match="every source of the mixture is empty"):
        QueryMixture({"a": []}, {}, random.Random(0))
    # each pass over a source visits every query once
    pool = [_query(str(i)) for i in range(5)]
    passes = QueryMixture({"p": pool}, {}, random.Random(1))
    assert sorted(passes.next()[1].text for _ in range(5)) == [str(i) for i in range(5)]


def test_teacher_scores_are_the_mean_cosine_over_teachers() -> None:
    query = TrainingQuery("q", ["a", "b"], {"c": 1})  # c: judged, missed by the first stage
    docs_1 = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([0.6, 0.8])}
    docs_2 = {"a": np.array([0.0, 1.0, 0.0]), "b": np.array([1.0, 0.0, 0.0]), "c": np.array([0.0, 0.0, 1.0])}
    set_teacher_scores([query], [np.array([[1.0, 0.0]]), np.array([[0.6, 0.8, 0.0]])], [docs_1, docs_2])
    assert query.teacher == pytest.approx({"a": (1.0 + 0.8) / 2, "b": (0.0 + 0.6) / 2, "c": (0.6 + 0.0) / 2})


class _HashEncoder:
    """A stand-in bi-encoder: a fixed random unit vector per word, summed (texts sharing words are near)."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), 16), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i] += np.random.default_rng(abs(hash(word)) % 2**32).standard_normal(16)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_corpus_sources_keep_corpora_apart_and_pseudo_queries_off_their_own_document(
    small_beir: Path, tmp_path: Path
) -> None:
    dataset = load_beir(small_beir)
    train, _ = dataset.split_queries(0)
    model = _HashEncoder()
    encoder = Encoder("hash", model.encode, tmp_path / "cache")
    data = corpus_sources("cran", dataset, train, encoder, pool=12, pseudo_limit=15)
    assert set(data.sources) == {"cran/labelled", "cran/titles", "cran/first_sentences"}
    assert all(key.startswith("cran:") for key in data.doc_text) and len(data.doc_text) == len(dataset.corpus)
    labelled = data.sources["cran/labelled"]
    assert len(labelled) == sum(1 for q in train.queries if train.qrels.get(q))
    assert all(q.qrels and set(q.qrels) <= set(data.doc_text) and len(q.candidates) == 12 for q in labelled)
    shared = Counter(dataset.corpus[d]["title"] for d in dataset.corpus)
    titles = {dataset.corpus[d]["title"]: d for d in dataset.corpus}
    for query in data.sources["cran/titles"]:
        assert query.qrels is None and len(query.candidates) == 12
        if shared[query.text] == 1:
            assert f"cran:{titles[query.text]}" not in query.candidates  # its own document is left out
    assert len(data.sources["cran/titles"]) == 15 and len(data.sources["cran/first_sentences"]) == 15
    calls = model.calls
    again = corpus_sources("cran", dataset, train, encoder, pool=12, pseudo_limit=15)
    assert model.calls == calls  # every vector came from the cache
    assert [q.candidates for q in again.sources["cran/labelled"]] == [q.candidates for q in labelled]

    sts = tmp_path / "sts.csv"
    rows = [("A man is playing a guitar.", "A man plays the guitar.", 4.8), ("A cat sleeps.", "A dog runs.", 0.4)]
    rows += [(f"Sentence number {i} about wings.", f"Another sentence {i} about lift.", 4.2) for i in range(6)]
    sts.write_text("".join(f"main\tx\t2012\t{i}\t{s}\t{a}\t{b}\n" for i, (a, b, s) in enumerate(rows)))
    data.add(sts_source(sts, encoder, pool=5, limit=100))
    pairs = data.sources["sts"]
    assert len(pairs) == 7  # the 0.4 pair is not a relevant one
    guitar = next(q for q in pairs if q.text == "A man is playing a guitar.")
    assert guitar.qrels is not None and data.doc_text[next(iter(guitar.qrels))] == "A man plays the guitar."

    score_with_teachers(data, [encoder])
    for query in [q for source in data.sources.values() for q in source]:
        assert query.teacher is not None and set(query.candidates) <= set(query.teacher)
    rest = without(data, "cran")
    assert set(rest.sources) == {"sts"} and not any(k.startswith("cran:") for k in rest.doc_text)
    assert isinstance(rest, MixtureData)


def test_cross_encoder_list_training_follows_the_teacher(tmp_path: Path) -> None:
    from tests.conftest import make_tiny_cross_encoder
    from training.cross_encoder import train_on_lists
    from training.models.cross_encoder import load_classifier, score_pairs

    model, tokenizer = load_classifier(str(make_tiny_cross_encoder(tmp_path / "ce")), 64)
    docs = {"a": "wings produce lift", "b": "a cake recipe", "c": "stock prices fell", "d": "boundary layers"}
    query = TrainingQuery("how do wings work", list(docs))  # unjudged: distillation only
    before = score_pairs(model, tokenizer, [(query.text, t) for t in docs.values()])
    favourite = list(docs)[int(before.argmin())]
    query.teacher = {d: float(d == favourite) for d in docs}
    mixture = QueryMixture({"pseudo": [query]}, {}, random.Random(0))
    torch.manual_seed(0)
    history = train_on_lists(
        model, tokenizer, mixture, docs, steps=15, list_size=4, lists_per_step=2, learning_rate=1e-3
    )
    after = score_pairs(model, tokenizer, [(query.text, t) for t in docs.values()])
    assert history[-1]["loss"] < history[0]["loss"]
    assert list(docs)[int(after.argmax())] == favourite
