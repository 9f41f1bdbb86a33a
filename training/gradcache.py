"""Gradient caching: a large contrastive batch on a small memory budget.

1. Embed every text in chunks without building a graph; keep each chunk's RNG state.
2. Compute the loss on the full batch of (detached, grad-enabled) embeddings; backward gives the
   gradient of the loss w.r.t. each embedding (and the loss's own parameters, e.g. τ).
3. Re-embed each chunk with the graph and the same RNG state (same dropout masks) and backpropagate
   the cached embedding gradients through it: the encoder's gradients equal the full-batch ones.
Paper: Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (2021).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Embed = Callable[[list[str]], torch.Tensor]  # texts -> (n, dim), with a graph when grad is on


def _chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


# Data parallel (training/distributed.py): group i's local embeddings -> the global group's, and the
# global group's gradient -> this rank's rows of it. Identity for one process.
Gather = Callable[[int, torch.Tensor], torch.Tensor]


def _identity(_: int, tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def gradcache_backward(
    embed: Embed,
    groups: list[list[str]],
    loss_fn: Callable[..., torch.Tensor],
    chunk_size: int,
    gather: Gather = _identity,
    local_rows: Gather = _identity,
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> torch.Tensor:
    """Backward of `loss_fn(*embeddings of each group)` in chunks; returns the (detached) loss.
    Under data parallelism `groups` are this rank's rows, `gather` builds the global groups the loss
    sees and `local_rows` takes this rank's rows of their gradients; `scale` is fp16 loss scaling."""
    cached: list[torch.Tensor] = []
    states: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for texts in groups:
            group_states = []
            parts = []
            for chunk in _chunks(texts, chunk_size):
                group_states.append(torch.get_rng_state())
                parts.append(embed(chunk))
            states.append(group_states)
            cached.append(gather(len(cached), torch.cat(parts)).requires_grad_())  # (n_group, dim)
    loss = loss_fn(*cached)
    scale(loss).backward()  # -> cached[i].grad and the loss's own parameters
    after = torch.get_rng_state()
    for index, (texts, group_states, reps) in enumerate(zip(groups, states, cached, strict=True)):
        grads = local_rows(index, reps.grad)  # type: ignore[arg-type]  # (n_local, dim)
        offset = 0
        for chunk, state in zip(_chunks(texts, chunk_size), group_states, strict=True):
            torch.set_rng_state(state)
            embeddings = embed(chunk)  # (chunk, dim), with a graph
            grad = grads[offset : offset + len(chunk)]
            (embeddings * grad).sum().backward()
            offset += len(chunk)
    torch.set_rng_state(after)
    return loss.detach()
