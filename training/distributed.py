"""Data-parallel contrastive training under torch.distributed, launched by `torchrun`.

Naive data parallelism is wrong for contrastive losses: each worker's in-batch negatives must
include every other worker's embeddings. The scheme here (open_clip's `gather_with_grad` with
local gradients):

1. Every rank draws the same *global* batch (same seed, same sampler) and embeds only its shard
   (`shard_bounds`): a segment whose examples contribute k rows each (queries k=1, hard negatives
   k=count, lists k=size) gives rank r the rows [start*k, end*k) of its example range.
2. `gather_segments` all-gathers the shards (padded to equal length, as gloo and NCCL need) and puts
   the rank's own shard back with its graph, so every rank computes the identical full-batch loss
   and backward reaches only the rank's own embeddings.
3. `sum_gradients` all-reduces the encoder's gradients with SUM: sum_r dL/de_r * de_r/dtheta is
   the single-process dL/dtheta. The loss's own parameters (a learned temperature) see the whole
   loss on every rank, so their gradients are already identical and are left alone.

One process (no torchrun) has world size 1, and every function here is then the identity, so the
same code runs on one CPU process, several CPU processes (gloo) and GPUs (NCCL).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

DeviceSetting = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16", "fp16"]
Rows = TypeVar("Rows", list[Any], torch.Tensor)


class DistributedSetupError(RuntimeError):
    """A device or process-group setting that cannot work here; one line saying why."""


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder, metrics, checkpoints and export."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills caches), then the others (they read them)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def resolve_device(setting: DeviceSetting, local_rank: int = 0) -> torch.device:
    """`auto`: CUDA (this process's GPU) when present, else CPU; `cuda` without a GPU is an error."""
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if setting == "cuda":
        raise DistributedSetupError("device: cuda was asked for but torch sees no CUDA GPU (use device: auto or cpu)")
    return torch.device("cpu")


def check_precision(precision: Precision, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise DistributedSetupError("precision: fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")


def setup_workers(device: DeviceSetting = "auto") -> Workers:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in
    the environment): NCCL on GPUs, gloo on CPUs. Without torchrun: one process, no group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Workers(rank, world_size, local_rank, resolved)


def shard_bounds(examples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of `rank`'s examples in a global batch of `examples`; sizes differ by at most 1."""
    base, extra = divmod(examples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_rows(items: Rows, segments: list[int], examples: int, workers: Workers) -> Rows:
    """This rank's rows of a group (a list of inputs or a tensor) laid out as consecutive segments,
    segment s holding `segments[s]` rows per example, example-major (e.g. a documents group is
    [positives (b), negatives (b * count)])."""
    if not workers.enabled:
        return items
    start, end = shard_bounds(examples, workers.rank, workers.world_size)
    pieces = []
    offset = 0
    for per_example in segments:
        pieces.append(items[offset + start * per_example : offset + end * per_example])
        offset += examples * per_example
    if offset != len(items):
        raise ValueError(f"group of {len(items)} rows does not match segments {segments} x {examples} examples")
    if isinstance(items, torch.Tensor):
        return torch.cat(pieces)
    return [row for piece in pieces for row in piece]


def _gather_rows(local: torch.Tensor, counts: list[int], workers: Workers) -> torch.Tensor:
    """cat over ranks of each rank's `local` (rank r has counts[r] rows); own rows keep their graph."""
    width = max(counts)
    padded = local.detach()
    if len(local) < width:
        padded = torch.cat([padded, padded.new_zeros((width - len(local), *local.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(workers.world_size)]
    dist.all_gather(parts, padded.contiguous())
    parts = [part[:count] for part, count in zip(parts, counts, strict=True)]
    parts[workers.rank] = local
    return torch.cat(parts)


def gather_segments(local: torch.Tensor, segments: list[int], examples: int, workers: Workers) -> torch.Tensor:
    """The global group's embeddings from every rank's shard (`shard_rows` layout), (n, dim)."""
    if not workers.enabled:
        return local
    sizes = [
        end - start for start, end in (shard_bounds(examples, r, workers.world_size) for r in range(workers.world_size))
    ]
    own = sizes[workers.rank]
    pieces: list[torch.Tensor] = []
    offset = 0
    for per_example in segments:
        piece = local[offset : offset + own * per_example]
        pieces.append(_gather_rows(piece, [size * per_example for size in sizes], workers))
        offset += own * per_example
    return torch.cat(pieces)


def sum_gradients(parameters: Iterable[torch.nn.Parameter], workers: Workers) -> None:
    """All-reduce (SUM) the gradients of `parameters` in one flat buffer. A parameter without a
    gradient on every rank keeps none; one with a gradient on some rank gets the sum."""
    if not workers.enabled:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    reference = params[0]
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(reference.dtype) for p in params]
        + [torch.tensor([p.grad is not None for p in params], dtype=reference.dtype, device=reference.device)]
    )
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
    for p, present in zip(params, flat[offset:].tolist(), strict=True):
        if not present:
            p.grad = None


def autocast(device: torch.device, precision: Precision) -> Any:
    """Mixed precision for the forward passes (`fp32`: a no-op context)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# How long shutdown leaves gloo's worker threads to drop the collectives they finished.
GLOO_RELEASE_GRACE_S = 0.25


def shutdown(workers: Workers) -> None:
    """Leave the group once every rank is here, then give gloo's worker threads time to release
    their finished work while the interpreter still runs. A worker frees a collective's tensors
    shortly after `wait()` returns, and that needs the GIL: if the process was already finalising,
    the thread exited inside a destructor and the rank died of SIGABRT ("terminate called without
    an active exception"), about one torchrun run in 20 here, after the work was done (core dump:
    ProcessGroupGloo::runLoop -> ~AsyncWork -> decref_pyobject -> take_gil -> pthread_exit)."""
    if workers.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        time.sleep(GLOO_RELEASE_GRACE_S)  # releases the GIL: the workers can take it
