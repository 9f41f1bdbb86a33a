"""One training step's loss and gradients, run as one process or under torchrun (gloo, loopback);
tests/training/test_distributed.py compares the two. Rank 0 saves {"loss", "grads"} to OUT.

    python tests/training/distributed_steps.py text MODEL DATA BATCH MINI_BATCH OUT
    python -m torch.distributed.run --nproc_per_node 2 tests/training/distributed_steps.py text ...
    ... clip BATCH OUT
    ... image BATCH UNFREEZE_BLOCKS OUT
"""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.distributed import Workers, setup_workers, shutdown, sum_gradients


def _save(out: Path, workers: Workers, loss: torch.Tensor | float, named: list[tuple[str, torch.nn.Parameter]]) -> None:
    if workers.is_main:
        grads = {name: p.grad.detach().clone() for name, p in named if p.grad is not None}
        torch.save({"loss": float(loss), "grads": grads}, out)


def text_step(model_path: str, data_path: str, batch: int, mini_batch: int, out: Path) -> None:
    """One step of the text trainer's loop: InfoNCE with a learnable temperature and 2 hard
    negatives per query (fixed, so every run draws the same), GradCache when mini_batch > 0."""
    from training.config import TrainConfig
    from training.losses.registry import build_embedding_loss
    from training.run import seed_everything
    from training.sources import load_sentence_transformer
    from training.trainer import TrainingData, _build_loop

    workers = setup_workers("cpu")
    config = TrainConfig.model_validate(
        {
            "name": "step",
            "base_model": model_path,
            "data": {"format": "beir", "path": data_path},
            "batch_size": batch,
            "mini_batch_size": mini_batch,
            "hard_negatives": 2,
            "max_seq_length": 32,
            "loss": {"learnable_temperature": True},
        }
    )
    rng = seed_everything(config.seed)
    data = TrainingData.load(config)
    assert data.train_set is not None
    corpus = sorted(data.train_set.corpus)
    for query_id in data.train_set.qrels:  # 5 documents per query that it does not judge
        data.negatives[query_id] = [d for d in corpus[:20] if d not in data.train_set.qrels[query_id]][:5]
    model = load_sentence_transformer(config.base_model)
    model.max_seq_length = config.max_seq_length
    loop = _build_loop(model, build_embedding_loss(config.loss), config, data, rng, workers)
    model.train()
    loop.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]  # keep the gradients
    loop.optimizer.zero_grad = lambda *a, **k: None  # type: ignore[method-assign]
    raw = next(loop.sampler.stream())
    loss, _ = loop.step(raw)
    _save(out, workers, loss, list(model.named_parameters()) + [("tau", p) for p in loop.loss.parameters()])
    shutdown(workers)


def clip_step(batch: int, out: Path) -> None:
    """One step of the image-text trainer (ClipStep, as `fit` runs it): the ConSE+MLP head and a
    trainable text map under InfoNCE with a learnable temperature, on synthetic pooled features."""
    from training.clip_training import ClipStep, TrainSet
    from training.losses import InfoNCELoss
    from training.models.clip import ClipImageConfig, ClipImageHead, _classifier
    from training.models.image_towers import load_tower

    workers = setup_workers("cpu")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    dim, n = 16, 64
    captions = F.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    pooled = (captions @ torch.randn(dim, 1280, generator=gen)).relu() + 0.05 * torch.rand(n, 1280, generator=gen)
    train = TrainSet(pooled.half(), captions, np.arange(n), [[i] for i in range(n)])
    classes = F.normalize(torch.randn(1000, dim, generator=gen), dim=-1)
    head = ClipImageHead(
        ClipImageConfig(dim=dim, residual="mlp", residual_hidden=32, residual_scale=None),
        _classifier(load_tower("mobilenet_v2")),
        classes,
    )
    text_map = torch.nn.Linear(dim, dim, bias=False)
    torch.nn.init.eye_(text_map.weight)
    loss_fn = InfoNCELoss(0.05, learnable_temperature=True, symmetric=True)
    step = ClipStep(head, loss_fn, None, 0.0, text_map, workers)
    rows = random.Random(0).sample(range(n), batch * workers.world_size)
    loss = step.loss(train, rows, None)
    loss.backward()
    sum_gradients(step.trainable(), workers)
    named = [(f"head.{k}", p) for k, p in head.named_parameters()] + [("text_map", text_map.weight)]
    _save(out, workers, loss, named + [("tau", p) for p in loss_fn.parameters()])
    shutdown(workers)


def image_step(batch: int, unfreeze: int, out: Path) -> None:
    """The first step of the image trainer's `_fit` (InfoNCE between two views of an identity) on
    frozen-stage activations of random 64 px images; the optimiser step records the gradients."""
    from training.config import ImageTrainConfig
    from training.image_training import ImageSet, _fit
    from training.models.image import ImageEncoder, ImageEncoderConfig

    workers = setup_workers("cpu")
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(projection_dim=16, unfreeze_blocks=unfreeze))
    pixels = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        activations = encoder.frozen_activations(pixels).half()
    identities = [str(i // 2) for i in range(64)]
    train_set = ImageSet(activations, identities, ["a", "b"] * 32)
    config = ImageTrainConfig(
        name="step",
        batch_size=batch,
        epochs=1,
        projection_dim=16,
        unfreeze_blocks=unfreeze,
        loss={"name": "infonce", "temperature": 0.05, "symmetric": True, "learnable_temperature": True},
    )

    class Recorded(Exception):
        pass

    def record(optimizer: torch.optim.Optimizer, *args: object, **kwargs: object) -> None:
        named = list(encoder.named_parameters()) + [("tau", p) for p in optimizer.param_groups[0]["params"][-1:]]
        _save(out, workers, recorded_loss["value"], named)
        raise Recorded

    recorded_loss: dict[str, float] = {}
    real_backward = torch.Tensor.backward

    def keep_loss(tensor: torch.Tensor, *args: object, **kwargs: object) -> None:
        recorded_loss["value"] = float(tensor)
        real_backward(tensor, *args, **kwargs)

    torch.Tensor.backward = keep_loss  # type: ignore[method-assign]
    torch.optim.AdamW.step = record  # type: ignore[method-assign, assignment]
    with contextlib.suppress(Recorded):
        _fit(encoder, train_set, config, random.Random(0), None, workers)
    shutdown(workers)


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, *args = sys.argv[1:]
    if mode == "text":
        text_step(args[0], args[1], int(args[2]), int(args[3]), Path(args[4]))
    elif mode == "clip":
        clip_step(int(args[0]), Path(args[1]))
    elif mode == "image":
        image_step(int(args[0]), int(args[1]), Path(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
