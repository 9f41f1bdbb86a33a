"""Training beyond one process: torchrun (gloo, loopback) gives the one-process step; checkpoints
resume a killed run exactly; bad devices and checkpoints stop with one line before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import _free_port, make_tiny_sentence_transformer
from tests.training.conftest import train_killed_at_step
from training.checkpoint import CHECKPOINT_NAME, CheckpointError
from training.cli import app as training_cli
from training.config import TrainConfig
from training.data.beir import load_beir
from training.distributed import DistributedSetupError, Workers, shard_bounds, shard_rows
from training.trainer import BatchSampler, _check_resumable, train

ROOT = Path(__file__).resolve().parents[2]
STEPS_SCRIPT = Path(__file__).with_name("distributed_steps.py")


@pytest.fixture(scope="module")
def deterministic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model without dropout: one process and two compute the same step exactly."""
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-nodrop"), dropout=0.0)


@pytest.fixture(scope="module")
def tiny_with_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-drop"), dropout=0.1)


def _launch(processes: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`python ARGS` as one process, or under torchrun with `processes` CPU workers on loopback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    result = subprocess.run(launcher + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_same_step(one: Path, two: Path) -> None:
    a, b = torch.load(one), torch.load(two)
    assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["loss"], b["loss"])
    assert a["grads"].keys() == b["grads"].keys() and "tau" in a["grads"]
    assert max(v.abs().max().item() for v in a["grads"].values()) > 1e-3  # a real step, not zeros
    for name in a["grads"]:
        torch.testing.assert_close(a["grads"][name], b["grads"][name], atol=1e-5, rtol=0, msg=name)


def test_shards_of_every_segment_put_back_in_rank_order_give_the_group() -> None:
    examples, segments = 7, [1, 3]  # e.g. 7 positives, then 3 hard negatives per query, query-major
    group = list(range(examples * 4))
    shards = [shard_rows(group, segments, examples, Workers(rank, 3)) for rank in range(3)]
    sizes = [shard_bounds(examples, rank, 3) for rank in range(3)]
    assert [end - start for start, end in sizes] == [3, 2, 2]
    rebuilt: list[int] = []  # segment by segment, each rank's part of it in rank order
    for segment, per_example in enumerate(segments):
        for rank, (start, end) in enumerate(sizes):
            offset = sum((end - start) * k for k in segments[:segment])
            rebuilt += shards[rank][offset : offset + (end - start) * per_example]
    assert rebuilt == group
    with pytest.raises(ValueError, match="does not match segments"):
        shard_rows(group[:-1], segments, examples, Workers(0, 3))


def test_the_ranks_cover_every_training_pair_exactly_once_per_epoch(cranfield: Path) -> None:
    train_set, _ = load_beir(cranfield).split_queries(0, 0.5)
    sampler = BatchSampler(train_set, batch_size=2 * 16, seed=3, min_batch=2)
    for _ in range(2):  # two epochs
        seen = []
        for batch in sampler.epoch():
            shards = [shard_rows(batch, [1], len(batch), Workers(rank, 2)) for rank in range(2)]
            assert all(shards) and shards[0] + shards[1] == batch
            seen += shards[0] + shards[1]
        assert sorted(seen) == sorted(sampler.pairs)


@pytest.mark.parametrize("mini_batch", [0, 4], ids=["plain", "gradcache"])
def test_two_processes_of_8_take_the_one_process_step_of_16(
    tmp_path: Path, deterministic_model: Path, small_beir: Path, mini_batch: int
) -> None:
    args = ["text", str(deterministic_model), str(small_beir)]
    _launch(1, [str(STEPS_SCRIPT), *args, "16", str(mini_batch), str(tmp_path / "one.pt")])
    _launch(2, [str(STEPS_SCRIPT), *args, "8", str(mini_batch), str(tmp_path / "two.pt")])
    _assert_same_step(tmp_path / "one.pt", tmp_path / "two.pt")


@pytest.mark.parametrize(("trainer", "extra"), [("clip", []), ("image", ["0"])], ids=["image-text", "image"])
def test_two_processes_take_the_one_process_image_step(tmp_path: Path, trainer: str, extra: list[str]) -> None:
    _launch(1, [str(STEPS_SCRIPT), trainer, "16", *extra, str(tmp_path / "one.pt")])
    _launch(2, [str(STEPS_SCRIPT), trainer, "8", *extra, str(tmp_path / "two.pt")])
    _assert_same_step(tmp_path / "one.pt", tmp_path / "two.pt")


def _write_config(path: Path, model: Path, data: Path, runs: Path, name: str, **extra: object) -> Path:
    raw = {
        "name": name,
        "base_model": str(model),
        "data": {"format": "beir", "path": str(data)},
        "batch_size": 8,
        "max_steps": 3,
        "max_seq_length": 48,
        "learning_rate": 1e-4,
        "runs_dir": str(runs),
        "eval_sts": None,
        "eval_before": False,
        "mining": {"per_query": 4, "rank_window": [2, 30]},
        "hard_negatives": 1,
        "device": "cpu",
        **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "steps.jsonl").read_text().splitlines()]


def test_torchrun_trains_one_run_that_rank_0_alone_writes(
    tmp_path: Path, deterministic_model: Path, small_beir: Path
) -> None:
    runs = tmp_path / "runs"
    single = _write_config(tmp_path / "one.yaml", deterministic_model, small_beir, runs, "one", batch_size=16)
    double = _write_config(tmp_path / "two.yaml", deterministic_model, small_beir, runs, "two")
    _launch(1, ["-m", "training", "train", "--config", str(single)])
    result = _launch(2, ["-m", "training", "train", "--config", str(double)])
    assert result.stdout.count('"processes": 2') == 1  # one report, from rank 0
    assert _losses(runs / "two") == pytest.approx(_losses(runs / "one"), abs=1e-5)
    written = sorted(p.name for p in (runs / "two").iterdir())
    assert written == ["config.yaml", "metrics.json", "model", "plots.png", "steps.jsonl"]
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]
    metrics = json.loads((runs / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 3 and metrics["device"] == "cpu"


def test_a_killed_run_resumed_ends_as_the_uninterrupted_one(
    tmp_path: Path, tiny_with_dropout: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropout on, mining on: the RNG states, sampler position and mined negatives all matter."""
    raw = yaml.safe_load(
        _write_config(tmp_path / "c.yaml", tiny_with_dropout, small_beir, tmp_path / "runs", "x").read_text()
    )
    whole = TrainConfig.model_validate({**raw, "name": "whole", "max_steps": 6, "checkpoint_every": 2})
    resumed = whole.model_copy(update={"name": "killed"})
    expected = train(whole, show_progress=False)
    assert not (expected.run_dir / CHECKPOINT_NAME).exists()  # removed once the run finished

    train_killed_at_step(resumed, 5, monkeypatch)
    run_dir = tmp_path / "runs" / "killed"
    assert (run_dir / CHECKPOINT_NAME).is_file() and len(_losses(run_dir)) == 4

    result = CliRunner().invoke(training_cli, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    got, want = _losses(run_dir), _losses(expected.run_dir)
    assert len(got) == 6
    assert got == pytest.approx(want, abs=1e-6)
    final = json.loads((run_dir / "metrics.json").read_text())["after"]
    assert final == pytest.approx(json.loads((expected.run_dir / "metrics.json").read_text())["after"], abs=1e-6)


def test_two_processes_resume_their_checkpoint_to_the_same_end(
    tmp_path: Path, tiny_with_dropout: Path, small_beir: Path
) -> None:
    """Each rank's dropout RNG is in the checkpoint: resuming step 2 of a 2-process run (its kept
    checkpoint) under torchrun repeats steps 3-4 and the metrics exactly."""
    runs = tmp_path / "runs"
    config = _write_config(
        tmp_path / "c.yaml", tiny_with_dropout, small_beir, runs, "pair",
        max_steps=4, checkpoint_every=2, keep_checkpoint=True,
    )  # fmt: skip
    _launch(2, ["-m", "training", "train", "--config", str(config)])
    first = _losses(runs / "pair")
    first_metrics = json.loads((runs / "pair" / "metrics.json").read_text())["after"]
    assert torch.load(runs / "pair" / CHECKPOINT_NAME, weights_only=True)["step"] == 2
    (runs / "pair" / "metrics.json").unlink()
    _launch(2, ["-m", "training", "train", "--resume", str(runs / "pair")])
    assert _losses(runs / "pair") == pytest.approx(first, abs=1e-6) and len(first) == 4
    again = json.loads((runs / "pair" / "metrics.json").read_text())["after"]
    assert again == pytest.approx(first_metrics, abs=1e-6)


def test_missing_or_corrupt_checkpoints_stop_with_one_line_before_training(
    tmp_path: Path, deterministic_model: Path, small_beir: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(training_cli, ["train", "--resume", str(tmp_path / "runs" / "nope")])
    assert result.exit_code == 2 and "not a run folder" in result.output and len(result.output.splitlines()) == 1

    config = _write_config(tmp_path / "c.yaml", deterministic_model, small_beir, tmp_path / "runs", "r")
    assert runner.invoke(training_cli, ["train", "--config", str(config)]).exit_code == 0
    run_dir = tmp_path / "runs" / "r"
    result = runner.invoke(training_cli, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 2 and "no checkpoint" in result.output and "run finished" in result.output

    before = (run_dir / "steps.jsonl").read_text()
    for damage, message in ((b"not a zip at all", "not a readable checkpoint"), (b"", "not a readable checkpoint")):
        (run_dir / CHECKPOINT_NAME).write_bytes(damage)
        result = runner.invoke(training_cli, ["train", "--resume", str(run_dir)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    torch.save({"version": 1, "step": 2}, run_dir / CHECKPOINT_NAME)
    result = runner.invoke(training_cli, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 2 and "missing keys" in result.output
    assert (run_dir / "steps.jsonl").read_text() == before  # nothing trained


def test_a_checkpoint_resumes_only_with_the_same_number_of_processes(tmp_path: Path, small_beir: Path) -> None:
    config = TrainConfig.model_validate({"name": "r", "data": {"format": "beir", "path": str(small_beir)}})
    with pytest.raises(CheckpointError, match="written by 1 processes, resumed with 2"):
        _check_resumable({"run": {"world_size": 1}}, config, Workers(0, 2))


def test_devices_and_precisions_this_machine_cannot_run_stop_with_one_line(
    tmp_path: Path, deterministic_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    for extra, message in (({"device": "cuda"}, "no CUDA GPU"), ({"precision": "fp16"}, "fp16 needs a CUDA device")):
        config = _write_config(tmp_path / "c.yaml", deterministic_model, small_beir, tmp_path / "runs", "d", **extra)
        result = runner.invoke(training_cli, ["train", "--config", str(config)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "runs" / "d").exists()
    with pytest.raises(DistributedSetupError):
        from training.distributed import resolve_device

        resolve_device("cuda")


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32(
    tmp_path: Path, deterministic_model: Path, small_beir: Path
) -> None:
    raw = yaml.safe_load(
        _write_config(tmp_path / "c.yaml", deterministic_model, small_beir, tmp_path / "runs", "p").read_text()
    )
    raw["mining"] = {"enabled": False}
    full = train(TrainConfig.model_validate({**raw, "name": "fp32"}), False)
    half = train(TrainConfig.model_validate({**raw, "name": "bf16", "precision": "bf16"}), False)
    assert half.metrics["precision"] == "bf16"
    first = [full.steps[0]["loss"], half.steps[0]["loss"]]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 0.05 * first[0]  # autocast ran, and agrees
