"""Checkpoints of a training run: everything a killed run needs to continue as if never stopped.

One file, `<run>/checkpoint.pt`, replaced atomically (written beside, fsynced, renamed), so a crash
while saving leaves the previous checkpoint whole. It holds the model, the loss's own parameters,
optimizer, scheduler, the sampler's position, every RNG state (per rank: dropout masks differ by
rank) and the run's bookkeeping (steps so far, metrics before training, mined negatives). It is
loaded with `weights_only=True`, so only tensors and plain Python values are stored in it."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("version", "step", "model", "loss", "optimizer", "scheduler", "sampler", "rng", "run")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or from another run; one line saying which."""


def rng_state() -> dict[str, Any]:
    """This process's global RNG states (Python, NumPy, torch CPU and CUDA)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    path = run_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        torch.save({"version": FORMAT_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The run's checkpoint, checked before any training starts."""
    path = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder to resume")
    if not path.is_file():
        finished = " (the run finished: metrics.json is there)" if (run_dir / "metrics.json").is_file() else ""
        raise CheckpointError(f"{path}: no checkpoint to resume from{finished}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file (truncated zip, bad pickle, EOF) is one error here
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from exc
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a Tessera training checkpoint (missing keys)")
    if state["version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['version']}, this version reads {FORMAT_VERSION}")
    return state


def remove_checkpoint(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
