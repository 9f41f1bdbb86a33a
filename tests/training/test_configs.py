"""Every config shipped in training/configs/ loads: a benchmark or README command naming one must
not stop at a key a later change renamed or a check a later change added."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (
    BlockRankConfig,
    ClipTrainConfig,
    ConfigError,
    CrossEncoderConfig,
    ImageTrainConfig,
    TrainConfig,
    load_yaml_config,
)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))
KINDS = (TrainConfig, CrossEncoderConfig, BlockRankConfig, ImageTrainConfig, ClipTrainConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_shipped_config_loads_as_exactly_one_kind(path: Path) -> None:
    loaded, errors = [], []
    for kind in KINDS:
        try:
            loaded.append(load_yaml_config(path, kind))
        except ConfigError as exc:
            errors.append(str(exc))
    assert len(loaded) == 1, errors
    warm_start = getattr(loaded[0], "warm_start", None)
    if warm_start is not None:  # the stage it names loads too
        load_yaml_config(warm_start.config, TrainConfig)


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 20
