"""Training-side BlockRank: loading from a base checkpoint, the dense O(L²) reference forward the
tests check the served block-sparse forward against, the full-attention baseline of the efficiency
benchmark, the causal LM's answer loss, and the training helpers. The served model itself is
`app.inference.blockrank.BlockRankModel`."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from app.inference.blockrank import Backbone, BlockInputs, BlockRankModel, load_backbone


def default_layer(depth: int) -> int:
    """l* ≈ 2/3 of the depth, 0-based."""
    return max(0, round(depth * 2 / 3) - 1)


def load_blockrank(  # type: ignore[no-untyped-def]
    source: str | Path, layer: int | None = None, doc_tokens: int = 96, kind: Backbone = "encoder"
):
    """(BlockRankModel, tokenizer) on the weights in `source`. `layer` defaults to ~2/3 of the depth."""
    backbone, tokenizer = load_backbone(source, kind)
    depth = backbone.config.num_hidden_layers
    model = BlockRankModel(backbone, kind, layer if layer is not None else default_layer(depth), doc_tokens)
    return model.eval(), tokenizer


def trainable_parameters(model: BlockRankModel) -> list[nn.Parameter]:
    """Embeddings and layers 0..l*: nothing after l* runs, so nothing after it learns."""
    params = [p for i, layer in enumerate(model.parts.layers) if i <= model.layer for p in layer.parameters()]
    embeddings = model.backbone.embeddings if model.kind == "encoder" else model.backbone.embed_tokens
    return params + list(embeddings.parameters())


def dropout_off(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


# --- the causal LM's answer loss -------------------------------------------------------------------
def answer_ids(tokenizer, index: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Token ids of the answer naming document `index` (1-based, as in the prompt)."""
    return torch.tensor(tokenizer(f" {index}", add_special_tokens=False)["input_ids"])


def forward_with_answer(
    model: BlockRankModel, inputs: BlockInputs, answer: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores at l*, next-token cross-entropy of `answer` after the final block, tied LM head)."""
    if model.kind != "causal-lm" or not getattr(model.backbone.config, "tie_word_embeddings", False):
        raise ValueError("the answer loss needs a causal LM with tied input/output embeddings")
    scores, final_hidden = model.forward_blocks(inputs, answer=answer)  # final_hidden: (Lf + A, d)
    start = len(inputs.final) - 1
    hidden = model.backbone.norm(final_hidden[start : start + len(answer)])  # (A, d)
    logits = hidden @ model.backbone.embed_tokens.weight.T  # (A, vocab)
    return scores, torch.nn.functional.cross_entropy(logits, answer)


# --- dense reference (quadratic) -------------------------------------------------------------------
def dense_mask(model: BlockRankModel, inputs: BlockInputs) -> torch.Tensor:
    """(L, L) boolean: may row attend to column, for the concatenated sequence."""
    l0, (n, ld), lf = len(inputs.instruction), inputs.documents.shape, len(inputs.final)
    total = l0 + n * ld + lf

    def inside(size: int) -> torch.Tensor:
        block = torch.ones(size, size, dtype=torch.bool)
        return block.tril() if model.parts.causal else block

    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:l0, :l0] = inside(l0)
    for i in range(n):
        start = l0 + i * ld
        allowed[start : start + ld, :l0] = True
        allowed[start : start + ld, start : start + ld] = inside(ld)
    allowed[l0 + n * ld :, : l0 + n * ld] = True
    allowed[l0 + n * ld :, l0 + n * ld :] = inside(lf)
    return allowed & _real_tokens(inputs)[None, :]  # padded document tokens are never attended to


def _real_tokens(inputs: BlockInputs) -> torch.Tensor:
    l0, lf = len(inputs.instruction), len(inputs.final)
    return torch.cat(
        [torch.ones(l0, dtype=torch.bool), inputs.document_mask.flatten().bool(), torch.ones(lf, dtype=torch.bool)]
    )


def forward_dense(model: BlockRankModel, inputs: BlockInputs, mask: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
    """The same computation on the full sequence with an (L, L) mask: O(L²) time and memory.
    Returns (scores, hidden states at l* of every position)."""
    pos0, posd, posf = model.positions(inputs)
    n = inputs.documents.shape[0]
    ids = torch.cat([inputs.instruction, inputs.documents.flatten(), inputs.final])
    positions = torch.cat([pos0, posd.repeat(n), posf])[None]  # (1, L)
    hidden = model.parts.embed(ids[None], positions)  # (1, L, d)
    mask = dense_mask(model, inputs) if mask is None else mask
    l0, ld = len(inputs.instruction), inputs.documents.shape[1]
    for index in range(model.layer + 1):
        q, k, v = model.parts.qkv(index, hidden, positions)  # (1, H, L, hd)
        if index == model.layer:
            signal = [l0 + n * ld + s for s in inputs.signal]
            scores = model.scores_from(q[0][:, signal], k[0][:, l0 : l0 + n * ld], inputs.document_mask)
            return scores, hidden
        logits = q @ k.transpose(-1, -2) / math.sqrt(model.head_dim)  # (1, H, L, L)
        logits = logits.masked_fill(~mask[None, None], torch.finfo(logits.dtype).min)
        hidden = model.parts.finish(index, hidden, torch.softmax(logits, dim=-1) @ v)
    raise AssertionError("unreachable")


def full_attention_scores(model: BlockRankModel, inputs: BlockInputs) -> torch.Tensor:
    """Baseline for the efficiency benchmark: every token attends to every token (causally for an
    LM; no block structure), same layers, same early exit, same score read-out."""
    real = _real_tokens(inputs)
    total = len(real)
    mask = real[None, :].expand(total, -1)
    if model.parts.causal:
        mask = mask & torch.ones(total, total, dtype=torch.bool).tril()
    return forward_dense(model, inputs, mask)[0]
