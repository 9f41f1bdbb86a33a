"""Training without labels: pseudo-queries from titles or first sentences; bad corpora stop early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from training.cli import app as training_cli
from training.config import TrainConfig
from training.data.beir import DatasetError, load_beir
from training.data.pseudo import pseudo_query_dataset
from training.trainer import train


def test_titles_and_first_sentences_become_queries_without_leaking_into_their_positive(small_beir: Path) -> None:
    corpus = load_beir(small_beir).corpus
    titles = pseudo_query_dataset(small_beir / "corpus.jsonl", "titles")
    assert len(titles.queries) > 100
    for query_id, query in titles.queries.items():
        (doc,) = titles.qrels[query_id]
        assert query_id == f"pq-{doc}" and query == corpus[doc]["title"].strip()
        assert titles.corpus[doc]["title"] == "" and titles.doc_text(doc).strip() == corpus[doc]["text"].strip()
    firsts = pseudo_query_dataset(small_beir / "corpus.jsonl", "first_sentences", limit=10)
    assert len(firsts.queries) == 10
    for query_id, query in firsts.queries.items():
        (doc,) = firsts.qrels[query_id]
        assert corpus[doc]["text"].startswith(query) and query not in firsts.corpus[doc]["text"]


def test_a_corpus_without_titles_stops_with_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": "words " * 20}) + "\n" for i in range(5)))
    with pytest.raises(DatasetError, match=r"data\.pseudo_queries titles: no document has a title"):
        pseudo_query_dataset(corpus, "titles")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "u", "data": {"format": "corpus", "path": str(corpus)}}))
    result = CliRunner().invoke(training_cli, ["train", "--config", str(config)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "title" in result.output


def test_an_unlabelled_run_trains_on_pseudo_queries_and_scores_the_real_held_out_ones(
    tmp_path: Path, small_beir: Path
) -> None:
    from tests.conftest import make_tiny_sentence_transformer

    model = make_tiny_sentence_transformer(tmp_path / "tiny")
    config = TrainConfig.model_validate(
        {
            "name": "unlabelled",
            "base_model": str(model),
            "data": {"format": "corpus", "path": str(small_beir), "pseudo_queries": "first_sentences"},
            "batch_size": 8,
            "max_steps": 3,
            "max_seq_length": 32,
            "runs_dir": str(tmp_path / "runs"),
            "eval_sts": None,
            "mining": {"per_query": 2, "rank_window": [1, 20]},
            "checkpoint_every": 0,
        }
    )
    metrics = train(config, show_progress=False).metrics
    assert metrics["train_queries"] > 100  # one per usable document, none of the real queries
    assert metrics["eval_queries"] == 20  # the real judged queries' held-out half, as labelled runs
    assert "ndcg@10" in metrics["before"] and "ndcg@10" in metrics["after"]
