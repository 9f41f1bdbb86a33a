"""Generated pseudo-queries (training/query_generation.py, data.pseudo_queries generated): what is
written, kept, cached, trained on and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_tiny_llama, make_tiny_sentence_transformer
from training.config import ConfigError, TrainConfig, load_config
from training.data.beir import DatasetError, load_beir
from training.data.pseudo import MIN_QUERY_WORDS, corpus_documents, pseudo_query_dataset
from training.query_generation import (
    MAX_DOCUMENT_WORDS,
    MAX_QUERY_WORDS,
    clean_query,
    generated_queries,
    generation_cache,
    query_prompt,
)
from training.trainer import train


def _asker(calls: list[list[str]]):  # type: ignore[no-untyped-def]
    """A writer that asks how the document's first word behaves, quoted as small LMs do (the reply
    was started at "Question: How", so the completion goes on from there)."""

    def generate(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        first_words = [p.split("\n\n")[1].split()[0] for p in prompts]
        return [f' does {word} change with speed?"\nmore text' for word in first_words]

    return generate


def test_each_chosen_document_gets_one_cleaned_question_and_the_cache_answers_a_rerun(
    tmp_path: Path, small_beir: Path
) -> None:
    documents = corpus_documents(small_beir / "corpus.jsonl")
    calls: list[list[str]] = []
    cache = generation_cache(tmp_path, "writer|32")
    queries, stats = generated_queries(documents, _asker(calls), cache, budget=10, seed=0, min_words=MIN_QUERY_WORDS)
    assert len(queries) == 10 and stats.documents == 10 and stats.kept == 10 and stats.generated == 10
    for doc_id, query in queries.items():
        title, _ = documents[doc_id]
        assert query == f"How does {title.split()[0]} change with speed?"  # the quote and the second line gone
    assert max(map(len, calls)) <= 8 and sum(map(len, calls)) == 10
    again, stats = generated_queries(documents, _asker([]), cache, budget=10, seed=0, min_words=MIN_QUERY_WORDS)
    assert again == queries and stats.generated == 0 and stats.record()["queries_per_minute"] is None
    other, _ = generated_queries(documents, _asker([]), cache, budget=10, seed=1, min_words=MIN_QUERY_WORDS)
    assert set(other) != set(queries)  # the seed draws the documents
    assert next(tmp_path.glob("queries-*.jsonl")).is_file() and not list(tmp_path.glob("synthetic-*"))


def test_clean_query_keeps_questions_and_drops_what_is_not_one() -> None:
    assert clean_query(' do heated wings lose stiffness?"\nAnswer: ...', 3) == "How do heated wings lose stiffness?"
    assert clean_query("", 3) is None and clean_query("fast?", 3) is None
    assert clean_query(" ".join(["word"] * MAX_QUERY_WORDS), 3) is None
    # a question about the prompt's situation, not the document, is no query
    assert clean_query(" does a researcher find a paper on wings?", 3) is None
    prompt = query_prompt("Heated wings", "word " * 500)
    assert len(prompt.split("\n\n")[1].split()) == MAX_DOCUMENT_WORDS and "Heated wings word" in prompt


def test_titles_and_generated_queries_share_one_positive_without_the_title(small_beir: Path) -> None:
    corpus = load_beir(small_beir).corpus
    some = list(corpus)[:5]
    written = {some[0]: "how fast does the boundary layer grow", some[1]: "too short"}
    both = pseudo_query_dataset(small_beir / "corpus.jsonl", ["titles", "generated"], generated=written)
    assert both.queries[f"gq-{some[0]}"] == written[some[0]] and both.qrels[f"gq-{some[0]}"] == {some[0]: 1}
    assert f"gq-{some[1]}" not in both.queries  # under MIN_QUERY_WORDS: dropped, its title query kept
    assert both.queries[f"pq-{some[1]}"] == corpus[some[1]]["title"].strip()
    assert both.corpus[some[0]]["title"] == ""  # a title query must not be matched by copying it
    alone = pseudo_query_dataset(small_beir / "corpus.jsonl", "generated", generated=written)
    assert list(alone.queries) == [f"gq-{some[0]}"] and alone.corpus[some[0]]["title"] == corpus[some[0]]["title"]
    with pytest.raises(DatasetError, match=r"data\.pseudo_queries generated: no document has a generated question"):
        pseudo_query_dataset(small_beir / "corpus.jsonl", "generated", generated={})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pseudo_queries": "generated"}, "data.query_generation: needed with pseudo_queries generated"),
        ({"pseudo_queries": "titles", "query_generation": {"budget": 5}}, "refused otherwise"),
        ({"pseudo_queries": "generated", "query_generation": {"budget": 0}}, "data.query_generation.budget"),
        ({"pseudo_queries": ["titles", "first_sentences"]}, "first_sentences cannot be combined"),
        ({"pseudo_queries": ["titles", "titles"]}, "name each kind once"),
        ({"pseudo_queries": []}, "name each kind once"),
        ({"pseudo_queries": "abstracts"}, "data.pseudo_queries"),
    ],
)
def test_bad_generation_settings_stop_with_one_line_naming_file_and_key(
    tmp_path: Path, small_beir: Path, data: dict, message: str
) -> None:
    raw = {"name": "x", "data": {"format": "corpus", "path": str(small_beir), **data}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)


def _config(tmp_path: Path, data: Path, generation: dict, name: str = "gen-run") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": name,
            "base_model": str(make_tiny_sentence_transformer(tmp_path / "tiny")),
            "data": {
                "format": "corpus",
                "path": str(data),
                "pseudo_queries": ["titles", "generated"],
                "query_generation": generation,
            },
            "batch_size": 8,
            "max_steps": 2,
            "max_seq_length": 32,
            "runs_dir": str(tmp_path / "runs"),
            "eval_sts": None,
            "mining": {"per_query": 2, "rank_window": [1, 20]},
            "checkpoint_every": 0,
        }
    )


def test_an_unlabelled_run_writes_its_questions_once_and_records_them(tmp_path: Path, small_beir: Path) -> None:
    settings = {"generator": str(make_tiny_llama(tmp_path / "llm")), "budget": 4, "max_new_tokens": 12}
    settings["cache_dir"] = str(tmp_path / "cache")
    result = train(_config(tmp_path, small_beir, settings), show_progress=False)
    written = result.metrics["query_generation"]
    assert written["documents"] == 4 and written["generated"] == 4 and written["kept"] + written["dropped"] == 4
    assert written["queries_per_minute"] > 0
    titles = len(pseudo_query_dataset(small_beir / "corpus.jsonl", "titles").queries)
    assert result.metrics["train_queries"] == titles + written["kept"]
    assert json.loads((result.run_dir / "metrics.json").read_text())["query_generation"] == written
    rerun = train(_config(tmp_path, small_beir, settings, name="again"), show_progress=False)
    assert rerun.metrics["query_generation"]["generated"] == 0  # every question came from the cache


def test_a_writer_that_cannot_be_loaded_stops_before_training(tmp_path: Path, small_beir: Path) -> None:
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for generator in [str(tmp_path / "no-llm"), "pypi:nope", str(empty)]:
        settings = {"generator": generator, "budget": 2, "cache_dir": str(tmp_path / "cache")}
        with pytest.raises(ConfigError, match=r"data\.query_generation\.generator") as info:
            train(_config(tmp_path, small_beir, settings), show_progress=False)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "runs" / "gen-run").exists()


def test_the_writer_continues_the_reply_it_was_started_on(tmp_path: Path) -> None:
    from training.synthetic import CausalLMGenerator

    folder = str(make_tiny_llama(tmp_path / "llm"))
    started = CausalLMGenerator(folder, max_new_tokens=8, response_prefix="Question: How")
    plain = CausalLMGenerator(folder, max_new_tokens=8)
    assert started._format("about lift").endswith("Question: How") and not plain._format("about lift").endswith("How")
    prompts = ["Write about lift and drag on wings.", "Write about heat."]
    assert started(prompts) != plain(prompts)  # the prefix is context the completion goes on from
    assert started(prompts) == started(prompts)  # greedy: the cache key (the prompt) fixes the question


def test_scoring_a_generated_config_never_runs_its_writer(tmp_path: Path, small_beir: Path) -> None:
    from training.trainer import evaluation_set

    settings = {"generator": str(tmp_path / "no-llm"), "budget": 2, "cache_dir": str(tmp_path / "cache")}
    held_out = evaluation_set(_config(tmp_path, small_beir, settings))  # the writer cannot load: not needed
    assert held_out is not None and len(held_out.queries) == 20  # the real judged queries' held-out half
    assert not (tmp_path / "cache").exists()
