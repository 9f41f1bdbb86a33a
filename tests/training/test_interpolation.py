"""WiSE-FT: the interpolation itself on hand-made weights, and a run with `wise_ft` keeping exactly
the interpolated weights of the same run without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.training.conftest import tiny_train_config
from training.config import ConfigError, load_config
from training.interpolation import InterpolationError, interpolate_weights
from training.sources import load_sentence_transformer
from training.trainer import evaluate_interpolated, train


class _Tiny(nn.Module):
    def __init__(self, weight: list[float], steps: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1, bias=False)
        self.linear.weight.data = torch.tensor([weight])
        self.register_buffer("steps", torch.tensor([steps]))  # an integer buffer: never interpolated


def test_interpolation_moves_each_float_weight_alpha_of_the_way_from_the_start() -> None:
    tuned, start = _Tiny([1.0, -2.0], steps=7), _Tiny([3.0, 2.0], steps=0)
    interpolate_weights(tuned, start, 0.25)
    # 3 + 0.25 (1 - 3) = 2.5 and 2 + 0.25 (-2 - 2) = 1
    assert tuned.linear.weight.tolist() == [[2.5, 1.0]]
    assert tuned.steps.tolist() == [7]
    assert start.linear.weight.tolist() == [[3.0, 2.0]]  # the start model is read, never written


@pytest.mark.parametrize(("alpha", "expected"), [(1.0, [[1.0, -2.0]]), (0.0, [[3.0, 2.0]]), (1.5, [[0.0, -4.0]])])
def test_alpha_one_keeps_the_fine_tune_zero_the_start_and_above_one_extrapolates(
    alpha: float, expected: list[list[float]]
) -> None:
    tuned = _Tiny([1.0, -2.0], steps=7)
    interpolate_weights(tuned, _Tiny([3.0, 2.0], steps=0), alpha)
    assert tuned.linear.weight.tolist() == expected


def test_models_of_different_architectures_are_refused() -> None:
    other = nn.Sequential(nn.Linear(2, 1))
    with pytest.raises(InterpolationError, match="different weights"):
        interpolate_weights(_Tiny([1.0, 2.0], 0), other, 0.5)
    wider = _Tiny([1.0, 2.0], 0)
    wider.linear = nn.Linear(3, 1, bias=False)
    with pytest.raises(InterpolationError, match=r"linear.weight: shape \(1, 2\) vs \(1, 3\)"):
        interpolate_weights(_Tiny([1.0, 2.0], 0), wider, 0.5)


@pytest.mark.parametrize("alpha", [0, -0.5, 2.01])
def test_wise_ft_alpha_outside_zero_to_two_is_a_config_error_naming_the_key(tmp_path: Path, alpha: float) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"name: x\ndata: {{format: beir, path: data}}\nwise_ft: {{alpha: {alpha}}}\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*wise_ft.alpha"):
        load_config(path)


def test_a_run_with_wise_ft_keeps_the_interpolation_of_the_same_run_without_it(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    settings = {"learning_rate": 1e-3, "mining.enabled": False}
    plain = tiny_train_config(tmp_path, tiny_model, small_beir, **settings)
    half = tiny_train_config(tmp_path, tiny_model, small_beir, **settings, name="tiny-wise", **{"wise_ft.alpha": 0.5})
    trained, interpolated = train(plain, show_progress=False), train(half, show_progress=False)

    base = load_sentence_transformer(str(tiny_model)).state_dict()
    tuned = load_sentence_transformer(str(trained.run_dir / "model")).state_dict()
    kept = load_sentence_transformer(str(interpolated.run_dir / "model")).state_dict()
    moved = [k for k in base if base[k].is_floating_point() and not torch.equal(base[k], tuned[k])]
    assert moved  # the learning rate moved the weights, so the check below can fail
    for key in moved:
        torch.testing.assert_close(kept[key], (base[key] + tuned[key]) / 2, rtol=0, atol=1e-6)
    assert interpolated.metrics["wise_ft"] == {"alpha": 0.5, "start": str(tiny_model)}
    # the run's "after" is the interpolated model's, as the benchmark scores it from the plain run
    offline = evaluate_interpolated(str(trained.run_dir / "model"), str(tiny_model), 0.5, plain)
    for metric, value in offline.items():
        assert interpolated.metrics["after"][metric] == pytest.approx(value, abs=1e-4)
