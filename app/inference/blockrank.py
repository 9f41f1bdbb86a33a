"""BlockRank-style in-context reranking on a BERT encoder (all-MiniLM-L6-v2's), in PyTorch.

After "Scalable In-context Ranking with Generative Models" (BlockRank, 2025; reference code
github.com/nilesh2797/BlockRank). This is the encoder ("fast") variant; it needs torch, which the
service never imports unless a `blockrank` model is used (`pip install 'tessera[train]'`).

Layout, one prompt per query:
    block 0     instruction that contains the query            positions 0 .. L0-1
    blocks 1..N `ID: i | CONTENT: <doc> | END ID: i`, each
                truncated/padded to Ld tokens                    positions L0 .. L0+Ld-1 (shared)
    final block the query again + a prompt ending in [MASK]      positions L0+Ld ...
Attention (structured, linear in N): block 0 attends to itself; each document to block 0 and to
itself, never to another document; the final block attends to everything. Inside a block
attention is bidirectional (an encoder).
Score: at layer l* (early exit, later layers never run), the pre-softmax attention logits of the
signal token over all document tokens, re-softmaxed over document tokens only, summed per document
and averaged over heads: a distribution over the N documents, no decoding.

`forward_blocks` computes this block-sparsely: block 0 once, the N documents as a batch whose keys
are [block 0 ; the document], the final block against all keys. `forward_dense` runs the same layers
on the concatenated sequence with the equivalent full mask (the O(L²) reference the tests compare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

INSTRUCTION = "Rank the passages by relevance to the query. Query: {query}"
DOCUMENT = "ID: {index} | CONTENT: {text} | END ID: {index}"
FINAL = "Query: {query} The most relevant passage is [MASK]"


@dataclass
class BlockInputs:
    """Token ids (int64) and masks of one prompt, block by block (padding id 0, mask 0)."""

    instruction: torch.Tensor  # (L0,)
    documents: torch.Tensor  # (N, Ld)
    document_mask: torch.Tensor  # (N, Ld) 1 = real token
    final: torch.Tensor  # (Lf,)
    signal: list[int]  # positions of the signal token(s) inside the final block


class BlockRankEncoder(nn.Module):
    """Wraps a HF `BertModel`; runs its first `layer + 1` layers with BlockRank's structure."""

    def __init__(self, bert: nn.Module, layer: int, doc_tokens: int = 96, temperature: float = 0.05) -> None:
        super().__init__()
        self.bert = bert
        self.layer = layer  # l*, 0-based: layers 0..l* run
        self.doc_tokens = doc_tokens
        self.temperature = temperature
        config = bert.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads

    # --- inputs ----------------------------------------------------------------------------------
    def encode_prompt(self, tokenizer, query: str, documents: list[str], with_ids: bool = True) -> BlockInputs:  # type: ignore[no-untyped-def]
        """Tokenise one prompt. `with_ids=False` drops the `ID: i` markers (order-free layout)."""

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
        instruction = [cls, *ids(INSTRUCTION.format(query=query))[:126], sep]
        rows = []
        for index, text in enumerate(documents, 1):
            body = DOCUMENT.format(index=index, text=text) if with_ids else text
            rows.append([*ids(body)[: self.doc_tokens - 1], sep])
        docs = torch.zeros(len(rows), self.doc_tokens, dtype=torch.long)
        doc_mask = torch.zeros_like(docs)
        for row, tokens in enumerate(rows):
            docs[row, : len(tokens)] = torch.tensor(tokens)
            doc_mask[row, : len(tokens)] = 1
        final = [*ids(FINAL.format(query=query).replace("[MASK]", "").strip())[:120], mask, sep]
        return BlockInputs(torch.tensor(instruction), docs, doc_mask, torch.tensor(final), [len(final) - 2])

    # --- shared layer pieces ---------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        emb = self.bert.embeddings
        hidden = (
            emb.word_embeddings(ids)
            + emb.position_embeddings(positions)
            + emb.token_type_embeddings(torch.zeros_like(ids))
        )
        return emb.dropout(emb.LayerNorm(hidden))

    def _qkv(self, layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., L, d) -> three (..., heads, L, head_dim)."""
        attn = layer.attention.self

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(*x.shape[:-1], self.heads, self.head_dim).transpose(-2, -3)

        return split(attn.query(hidden)), split(attn.key(hidden)), split(attn.value(hidden))

    def _finish(self, layer: nn.Module, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attention output projection + residual, then the feed-forward block."""
        context = context.transpose(-2, -3).reshape(*hidden.shape)  # (..., L, d)
        attended = layer.attention.output(context, hidden)
        return layer.output(layer.intermediate(attended), attended)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (..., heads, Lq, Lk)
        logits = logits.masked_fill(~key_mask[..., None, None, :].bool(), torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) @ v

    def _scores(self, q_signal: torch.Tensor, k_docs: torch.Tensor, doc_mask: torch.Tensor) -> torch.Tensor:
        """Signal queries (heads, S, hd) vs document keys (heads, N*Ld, hd) -> (N,) relevance."""
        logits = q_signal @ k_docs.transpose(-1, -2) / math.sqrt(self.head_dim)  # (heads, S, N*Ld)
        logits = logits.masked_fill(~doc_mask.flatten().bool()[None, None, :], torch.finfo(logits.dtype).min)
        mass = torch.softmax(logits, dim=-1).view(*logits.shape[:2], *doc_mask.shape).sum(-1)  # (heads, S, N)
        return mass.mean(dim=(0, 1))  # (N,), sums to 1

    def _positions(self, inputs: BlockInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        l0, ld, lf = len(inputs.instruction), inputs.documents.shape[1], len(inputs.final)
        device = inputs.instruction.device
        return (
            torch.arange(l0, device=device),
            torch.arange(l0, l0 + ld, device=device),  # every document shares this range
            torch.arange(l0 + ld, l0 + ld + lf, device=device),
        )

    # --- block-sparse (linear in N) --------------------------------------------------------------
    def forward_blocks(self, inputs: BlockInputs, return_hidden: bool = False):  # type: ignore[no-untyped-def]
        """(N,) relevance distribution (and the per-block hidden states at l* if asked)."""
        n = inputs.documents.shape[0]
        pos0, posd, posf = self._positions(inputs)
        h0 = self._embed(inputs.instruction[None], pos0[None])  # (1, L0, d)
        hd = self._embed(inputs.documents, posd.expand(n, -1))  # (N, Ld, d)
        hf = self._embed(inputs.final[None], posf[None])  # (1, Lf, d)
        mask0 = torch.ones(1, h0.shape[1], device=h0.device)
        for index, layer in enumerate(self.bert.encoder.layer[: self.layer + 1]):
            q0, k0, v0 = self._qkv(layer, h0)  # (1, H, L0, hd)
            qd, kd, vd = self._qkv(layer, hd)  # (N, H, Ld, hd)
            qf, kf, vf = self._qkv(layer, hf)  # (1, H, Lf, hd)
            flat_kd = kd.transpose(0, 1).reshape(1, self.heads, -1, self.head_dim)  # (1, H, N*Ld, hd)
            flat_vd = vd.transpose(0, 1).reshape(1, self.heads, -1, self.head_dim)
            if index == self.layer:  # l*: score from the signal token's logits, then stop
                scores = self._scores(qf[0][:, inputs.signal], flat_kd[0], inputs.document_mask)
                if return_hidden:
                    return scores, (h0, hd, hf)
                return scores
            new_h0 = self._finish(layer, h0, self._attend(q0, k0, v0, mask0))
            doc_keys = torch.cat([k0.expand(n, -1, -1, -1), kd], dim=2)  # (N, H, L0+Ld, hd)
            doc_values = torch.cat([v0.expand(n, -1, -1, -1), vd], dim=2)
            doc_mask = torch.cat([mask0.expand(n, -1), inputs.document_mask.float()], dim=1)  # (N, L0+Ld)
            new_hd = self._finish(layer, hd, self._attend(qd, doc_keys, doc_values, doc_mask))
            all_keys = torch.cat([k0, flat_kd, kf], dim=2)  # (1, H, L0+N*Ld+Lf, hd)
            all_values = torch.cat([v0, flat_vd, vf], dim=2)
            all_mask = torch.cat(
                [mask0, inputs.document_mask.float().reshape(1, -1), torch.ones(1, hf.shape[1], device=hf.device)],
                dim=1,
            )
            new_hf = self._finish(layer, hf, self._attend(qf, all_keys, all_values, all_mask))
            h0, hd, hf = new_h0, new_hd, new_hf
        raise AssertionError("unreachable: the loop returns at l*")

    # --- dense reference (quadratic) -------------------------------------------------------------
    def dense_mask(self, inputs: BlockInputs) -> torch.Tensor:
        """(L, L) boolean: may row attend to column, for the concatenated sequence."""
        l0, (n, ld), lf = len(inputs.instruction), inputs.documents.shape, len(inputs.final)
        total = l0 + n * ld + lf
        allowed = torch.zeros(total, total, dtype=torch.bool)
        allowed[:l0, :l0] = True
        for i in range(n):
            start = l0 + i * ld
            allowed[start : start + ld, :l0] = True
            allowed[start : start + ld, start : start + ld] = True
        allowed[l0 + n * ld :, :] = True
        real = torch.cat(
            [torch.ones(l0, dtype=torch.bool), inputs.document_mask.flatten().bool(), torch.ones(lf, dtype=torch.bool)]
        )
        return allowed & real[None, :]  # padded document tokens are never attended to

    def forward_dense(self, inputs: BlockInputs, mask: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        """The same computation on the full sequence with an (L, L) mask: O(L²) time and memory.
        Returns (scores, hidden states at l* of every position)."""
        pos0, posd, posf = self._positions(inputs)
        n = inputs.documents.shape[0]
        ids = torch.cat([inputs.instruction, inputs.documents.flatten(), inputs.final])
        positions = torch.cat([pos0, posd.repeat(n), posf])
        hidden = self._embed(ids[None], positions[None])  # (1, L, d)
        mask = self.dense_mask(inputs) if mask is None else mask
        l0, ld = len(inputs.instruction), inputs.documents.shape[1]
        for index, layer in enumerate(self.bert.encoder.layer[: self.layer + 1]):
            q, k, v = self._qkv(layer, hidden)  # (1, H, L, hd)
            if index == self.layer:
                signal = [l0 + n * ld + s for s in inputs.signal]
                scores = self._scores(q[0][:, signal], k[0][:, l0 : l0 + n * ld], inputs.document_mask)
                return scores, hidden
            logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (1, H, L, L)
            logits = logits.masked_fill(~mask[None, None], torch.finfo(logits.dtype).min)
            hidden = self._finish(layer, hidden, torch.softmax(logits, dim=-1) @ v)
        raise AssertionError("unreachable")


def blockrank_loss(scores: torch.Tensor, positives: list[int], temperature: float = 0.05) -> torch.Tensor:
    """Multi-positive InfoNCE on BlockRank's relevance distribution: -log Σ_pos softmax(log s / τ)."""
    logits = torch.log(scores.clamp_min(1e-12)) / temperature  # (N,)
    return -(torch.logsumexp(logits[positives], 0) - torch.logsumexp(logits, 0))


def full_attention_scores(model: BlockRankEncoder, inputs: BlockInputs) -> torch.Tensor:
    """Baseline for the efficiency benchmark: every token attends to every token (no structure),
    same layers, same early exit, same score read-out."""
    l0, (n, ld), lf = len(inputs.instruction), inputs.documents.shape, len(inputs.final)
    real = torch.cat(
        [torch.ones(l0, dtype=torch.bool), inputs.document_mask.flatten().bool(), torch.ones(lf, dtype=torch.bool)]
    )
    mask = real[None, :].expand(l0 + n * ld + lf, -1)
    return model.forward_dense(inputs, mask)[0]


def load_blockrank(source: str, layer: int | None = None, doc_tokens: int = 96):  # type: ignore[no-untyped-def]
    """A BlockRankEncoder on the BERT weights in `source` (a transformers or sentence-transformers
    folder). `layer` defaults to about 2/3 of the depth."""
    from transformers import AutoModel, AutoTokenizer

    bert = AutoModel.from_pretrained(source, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(source)
    depth = bert.config.num_hidden_layers
    model = BlockRankEncoder(bert, layer if layer is not None else max(0, round(depth * 2 / 3) - 1), doc_tokens)
    return model.eval(), tokenizer


def dropout_off(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


__all__ = [
    "BlockInputs",
    "BlockRankEncoder",
    "blockrank_loss",
    "dropout_off",
    "full_attention_scores",
    "load_blockrank",
]
