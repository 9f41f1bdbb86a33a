"""Synthetic graded lists (training/synthetic.py): what is generated, judged, cached and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_tiny_llama
from tests.training.conftest import tiny_train_config
from training.config import ConfigError, TrainConfig, load_config
from training.data.beir import RetrievalDataset
from training.synthetic import LEVELS, CausalLMGenerator, GenerationCache, clean_generation, synthesise_lists
from training.trainer import train


def _dataset() -> RetrievalDataset:
    corpus = {f"d{i}": {"title": "", "text": f"document {i} on boundary layers"} for i in range(4)}
    queries = {"q1": "what is lift", "q2": "how does drag grow", "q3": "why do wings stall", "q4": "unjudged"}
    qrels = {"q1": {"d0": 4}, "q2": {"d1": 2, "d2": 1}, "q3": {"d3": 3}}
    return RetrievalDataset(corpus, queries, qrels, "toy")


def _writer(calls: list[list[str]], short_level: int | None = None):  # type: ignore[no-untyped-def]
    """A generator that writes a recognisable document per prompt (too short for `short_level`)."""

    def generate(prompts: list[str]) -> list[str]:
        calls.append(prompts)
        out = []
        for prompt in prompts:
            level = next(g for g, text in LEVELS if text in prompt)
            query = prompt.rsplit("Question: ", 1)[1]
            words = "two words" if level == short_level else f"a written answer at level {level} for the query"
            out.append(f'"{words} {query}"')
        return out

    return generate


def test_each_chosen_query_gets_one_judged_document_per_level(tmp_path: Path) -> None:
    dataset = _dataset()
    calls: list[list[str]] = []
    cache = GenerationCache(tmp_path, "writer|96")
    result, stats = synthesise_lists(dataset, _writer(calls, short_level=1), cache, budget=2, seed=0)
    added = {q: {d: g for d, g in r.items() if d.startswith("syn-")} for q, r in result.qrels.items()}
    chosen = [q for q, docs in added.items() if docs]
    assert len(chosen) == 2 and "q4" not in chosen  # budget 2 of the 3 judged queries; never an unjudged one
    for query_id in chosen:
        # levels 3 and 2 kept at their grades; level 1's two-word answer dropped, not judged
        assert added[query_id] == {f"syn-{query_id}-g3": 3, f"syn-{query_id}-g2": 2}
        text = result.corpus[f"syn-{query_id}-g3"]["text"]
        assert text == f"a written answer at level 3 for the query {dataset.queries[query_id]}"  # quotes stripped
        assert {d: g for d, g in result.qrels[query_id].items() if not d.startswith("syn-")} == dataset.qrels[query_id]
    assert stats.queries == 2 and stats.documents == 4 and stats.dropped == 2 and stats.generated == 6
    assert sum(map(len, calls)) == 6
    # the input (and the corpus an evaluation set shares with it) is untouched
    assert len(dataset.corpus) == 4 and all(not d.startswith("syn-") for r in dataset.qrels.values() for d in r)
    # the same seed draws the same queries (a split's rerun reads its own lists from the cache)
    again, _ = synthesise_lists(dataset, _writer([]), GenerationCache(tmp_path / "b", "w"), budget=2, seed=0)
    assert {q for q, r in again.qrels.items() if any(d.startswith("syn-") for d in r)} == set(chosen)


def test_the_cache_answers_what_was_generated_and_survives_a_cut_line(tmp_path: Path) -> None:
    dataset = _dataset()
    synthesise_lists(dataset, _writer([]), GenerationCache(tmp_path, "writer|96"), budget=3, seed=0)
    cache_file = next(tmp_path.glob("synthetic-*.jsonl"))
    lines = cache_file.read_text().splitlines()
    assert len(lines) == 9
    cache_file.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # the last line cut by a crash

    calls: list[list[str]] = []
    result, stats = synthesise_lists(dataset, _writer(calls), GenerationCache(tmp_path, "writer|96"), budget=3, seed=0)
    assert sum(map(len, calls)) == 1 and stats.generated == 1  # only the cut line's prompt is generated again
    assert stats.documents == 9 and sum(d.startswith("syn-") for d in result.corpus) == 9
    _, stats = synthesise_lists(dataset, _writer([]), GenerationCache(tmp_path, "other|96"), 3, 0)
    assert stats.generated == 9  # another generator (or length) has a cache of its own


def test_clean_generation_drops_what_cannot_be_judged() -> None:
    assert clean_generation('  Abstract:  "Heated  wings lose\nstiffness as the skin temperature rises fast."') == (
        "Heated wings lose stiffness as the skin temperature rises fast."
    )
    assert clean_generation("") is None and clean_generation("I cannot help with that.") is None


def test_a_causal_lm_writes_one_completion_per_prompt_deterministically(tmp_path: Path) -> None:
    generate = CausalLMGenerator(str(make_tiny_llama(tmp_path / "llm")), max_new_tokens=12)
    prompts = ["Write about lift.\nQuestion: what is lift", "Write about drag.\nQuestion: how does drag grow"]
    first = generate(prompts)
    assert len(first) == 2 and all(isinstance(t, str) and t.strip() for t in first)
    assert "Question" not in first[0]  # the prompt is not repeated in the completion
    assert generate(prompts) == first  # greedy: the cache key (the prompt) fixes the document
    assert generate(prompts[:1]) == first[:1]  # left padding: a prompt's completion does not depend on its batch


def _config(tmp_path: Path, tiny_model: Path, data: Path, **overrides: object) -> TrainConfig:
    graded = {"name": "synth-run", "loss.name": "wasserstein", "loss.list_size": 4, "eval_sts": None}
    return tiny_train_config(tmp_path, tiny_model, data, **{**graded, **overrides})


def test_a_run_trains_on_synthetic_lists_and_records_them(tmp_path: Path, tiny_model: Path, small_beir: Path) -> None:
    llm = make_tiny_llama(tmp_path / "llm")
    settings = {"generator": str(llm), "budget": 3, "max_new_tokens": 24, "cache_dir": str(tmp_path / "cache")}
    result = train(_config(tmp_path, tiny_model, small_beir, synthetic_lists=settings), show_progress=False)
    synthesis = result.metrics["synthetic_lists"]
    assert synthesis["queries"] == 3 and synthesis["generated"] == 3 * len(LEVELS)
    assert synthesis["documents"] + synthesis["dropped"] == 3 * len(LEVELS) and synthesis["lists_per_minute"] > 0
    assert result.metrics["steps"] == 3 and all(s["loss"] == s["loss"] for s in result.steps)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["eval_queries"] == 20  # the held-out half is scored on the real corpus alone
    rerun = train(
        _config(tmp_path, tiny_model, small_beir, name="again", synthetic_lists=settings), show_progress=False
    )
    assert rerun.metrics["synthetic_lists"]["generated"] == 0  # every document came from the cache
    assert rerun.steps[0]["loss"] == pytest.approx(result.steps[0]["loss"])  # the same lists, the same step


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"synthetic_lists": {"budget": 0}}, "synthetic_lists.budget: Input should be greater than or equal to 1"),
        ({"synthetic_lists": {"budget": 5}, "loss": {"name": "dcl"}}, "synthetic_lists add graded documents"),
        ({"synthetic_lists": {"budget": 5, "max_new_tokens": 0}}, "synthetic_lists.max_new_tokens"),
    ],
)
def test_bad_synthetic_settings_stop_with_one_line_naming_file_and_key(
    tmp_path: Path, small_beir: Path, bad: dict, message: str
) -> None:
    raw = {"name": "x", "data": {"format": "beir", "path": str(small_beir)}, "loss": {"name": "wasserstein"}, **bad}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)


def test_a_generator_that_cannot_be_loaded_stops_before_training(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    for generator, reason in [(str(tmp_path / "no-llm"), "synthetic_lists.generator"), ("pypi:nope", "nope")]:
        settings = {"generator": generator, "budget": 2, "cache_dir": str(tmp_path / "cache")}
        with pytest.raises(ConfigError, match=reason) as info:
            train(_config(tmp_path, tiny_model, small_beir, synthetic_lists=settings), show_progress=False)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "runs" / "synth-run").exists()
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    settings = {"generator": str(not_a_model), "budget": 2, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ConfigError, match=r"synthetic_lists\.generator"):
        train(_config(tmp_path, tiny_model, small_beir, synthetic_lists=settings), show_progress=False)
    assert not (tmp_path / "runs" / "synth-run" / "steps.jsonl").exists()
