"""BlockRank-style in-context reranking, in PyTorch, on an encoder or a causal LM.

After "Scalable In-context Ranking with Generative Models" (BlockRank, 2025; reference code
github.com/nilesh2797/BlockRank). Two backbones share one code path, picked by the model folder's
manifest (`blockrank.backbone`):
- `causal-lm`: a Llama-architecture LM (SmolLM2-135M-Instruct), causal attention inside blocks,
  rotary positions: the faithful variant;
- `encoder`: a BERT encoder (all-MiniLM-L6-v2's), bidirectional attention inside blocks, learned
  absolute positions, a [MASK] signal token: the fast variant.
It needs torch, which the service never imports unless a `blockrank` model is served
(`pip install 'tessera[blockrank]'`).

Layout, one prompt per query:
    block 0     instruction that contains the query            positions 0 .. L0-1
    blocks 1..N `ID: i | CONTENT: <doc> | END ID: i`, each
                truncated/padded to Ld tokens                    positions L0 .. L0+Ld-1 (shared)
    final block the query again + a prompt ending in the        positions L0+Ld ...
                signal token
Attention (structured, linear in N): block 0 attends to itself; each document to block 0 and to
itself, never to another document; the final block attends to everything. Inside a block attention
is causal (LM) or bidirectional (encoder).
Score: at layer l* (early exit, later layers never run), the pre-softmax attention logits of the
signal token over all document tokens, re-softmaxed over document tokens only, summed per document
and averaged over heads: a distribution over the N documents, no decoding.

`forward_blocks` computes this block-sparsely: block 0 once, the N documents as a batch whose keys
are [block 0 ; the document], the final block against all keys. Training-only pieces (the dense
O(L²) reference the tests compare against, the losses, loading from a base checkpoint) live in
`training/models/blockrank.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Backbone = Literal["encoder", "causal-lm"]


@dataclass(frozen=True)
class PromptFormat:
    instruction: str
    document: str
    final: str  # ends where the signal token goes


ENCODER_PROMPT = PromptFormat(
    instruction="Rank the passages by relevance to the query. Query: {query}",
    document="ID: {index} | CONTENT: {text} | END ID: {index}",
    final="Query: {query} The most relevant passage is",
)
CAUSAL_PROMPT = PromptFormat(
    instruction=(
        "<|im_start|>system\nYou rank passages by their relevance to a search query.<|im_end|>\n"
        "<|im_start|>user\nRank the passages below by relevance to the query.\nQuery: {query}\n\n"
    ),
    document="ID: {index} | CONTENT: {text} | END ID: {index}\n",
    final="\nQuery: {query}\nWhich passage is the most relevant? Answer with its ID.<|im_end|>\n"
    "<|im_start|>assistant\nThe most relevant passage is ID:",
)


@dataclass
class BlockInputs:
    """Token ids (int64) and masks of one prompt, block by block (padding mask 0)."""

    instruction: torch.Tensor  # (L0,)
    documents: torch.Tensor  # (N, Ld)
    document_mask: torch.Tensor  # (N, Ld) 1 = real token
    final: torch.Tensor  # (Lf,)
    signal: list[int]  # positions of the signal token(s) inside the final block

    @property
    def tokens(self) -> int:
        return len(self.instruction) + int(self.document_mask.sum()) + len(self.final)


class _BertLayers:
    """The pieces of a HF `BertModel` layer BlockRank needs, split around attention."""

    causal = False

    def __init__(self, bert: nn.Module) -> None:
        self.model = bert
        self.layers = bert.encoder.layer
        self.heads = bert.config.num_attention_heads
        self.head_dim = bert.config.hidden_size // self.heads

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        emb = self.model.embeddings
        hidden = (
            emb.word_embeddings(ids)
            + emb.position_embeddings(positions)
            + emb.token_type_embeddings(torch.zeros_like(ids))
        )
        return emb.dropout(emb.LayerNorm(hidden))

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], heads, self.head_dim).transpose(-2, -3)  # (..., heads, L, hd)

    def qkv(self, index: int, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        attn = self.layers[index].attention.self
        return tuple(self._split(proj(hidden), self.heads) for proj in (attn.query, attn.key, attn.value))

    def finish(self, index: int, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attention output projection + residual, then the feed-forward block."""
        layer = self.layers[index]
        context = context.transpose(-2, -3).reshape(*hidden.shape)  # (..., L, d)
        attended = layer.attention.output(context, hidden)
        return layer.output(layer.intermediate(attended), attended)


class _LlamaLayers(_BertLayers):
    """The same pieces for a HF `LlamaModel`: pre-norm, rotary positions, grouped-query attention."""

    causal = True

    def __init__(self, llama: nn.Module) -> None:
        self.model = llama
        self.layers = llama.layers
        config = llama.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)  # positions enter through the rotary q/k

    def qkv(self, index: int, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer = self.layers[index]
        normed = layer.input_layernorm(hidden)
        attn = layer.self_attn
        q = self._split(attn.q_proj(normed), self.heads)  # (..., H, L, hd)
        k = self._split(attn.k_proj(normed), self.kv_heads)  # (..., Hkv, L, hd)
        v = self._split(attn.v_proj(normed), self.kv_heads)
        batch_positions = positions.reshape(-1, positions.shape[-1])[:1]  # (1, L): one range per block
        cos, sin = self.model.rotary_emb(hidden, batch_positions)  # (1, L, hd)
        if q.dim() == 4:
            q, k = apply_rotary_pos_emb(q, k, cos, sin)  # unsqueeze_dim=1: heads
        else:
            q, k = apply_rotary_pos_emb(q, k, cos[0], sin[0], unsqueeze_dim=0)
        groups = self.heads // self.kv_heads
        return q, k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)

    def finish(self, index: int, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        layer = self.layers[index]
        context = context.transpose(-2, -3).reshape(*hidden.shape[:-1], -1)  # (..., L, H*hd)
        hidden = hidden + layer.self_attn.o_proj(context)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


class BlockRankModel(nn.Module):
    """Runs a backbone's first `layer + 1` layers with BlockRank's structure and scores documents."""

    def __init__(
        self, backbone: nn.Module, kind: Backbone, layer: int, doc_tokens: int = 96, temperature: float = 0.05
    ) -> None:
        super().__init__()
        self.backbone = backbone  # BertModel or LlamaModel (registered: parameters, train/eval)
        self.kind: Backbone = kind
        self.parts = _LlamaLayers(backbone) if kind == "causal-lm" else _BertLayers(backbone)
        self.layer = layer  # l*, 0-based: layers 0..l* run
        self.doc_tokens = doc_tokens
        self.temperature = temperature
        self.prompt = CAUSAL_PROMPT if kind == "causal-lm" else ENCODER_PROMPT
        self.heads = self.parts.heads
        self.head_dim = self.parts.head_dim

    @property
    def depth(self) -> int:
        return len(self.parts.layers)

    # --- inputs ----------------------------------------------------------------------------------
    def encode_prompt(  # type: ignore[no-untyped-def]
        self, tokenizer, query: str, documents: list[str], with_ids: bool = True, doc_tokens: int | None = None
    ) -> BlockInputs:
        """Tokenise one prompt. `with_ids=False` drops the `ID: i` markers (order-free layout);
        `doc_tokens` caps the document blocks below the model's own length."""
        length = min(doc_tokens or self.doc_tokens, self.doc_tokens)

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        fmt = self.prompt
        instruction_text = fmt.instruction.format(query=query)
        final_text = fmt.final.format(query=query)
        if self.kind == "encoder":
            cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
            instruction = [cls, *ids(instruction_text)[:126], sep]
            final = [*ids(final_text)[:120], mask, sep]
            signal = [len(final) - 2]
            end: list[int] = [sep]
        else:
            instruction = ids(instruction_text)[:254]
            final = ids(final_text)[-128:]
            signal = [len(final) - 1]  # the last prompt token predicts the answer's ID
            end = []
        rows = []
        for index, text in enumerate(documents, 1):
            body = fmt.document.format(index=index, text=text) if with_ids else text
            rows.append([*ids(body)[: length - len(end)], *end])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        docs = torch.full((len(rows), length), pad, dtype=torch.long)
        doc_mask = torch.zeros_like(docs)
        for row, tokens in enumerate(rows):
            docs[row, : len(tokens)] = torch.tensor(tokens)
            doc_mask[row, : len(tokens)] = 1
        return BlockInputs(torch.tensor(instruction), docs, doc_mask, torch.tensor(final), signal)

    # --- shared pieces -----------------------------------------------------------------------------
    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, own: int
    ) -> torch.Tensor:
        """Attention of q over k; the last `own` keys are q's own block (causal there for an LM)."""
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (..., heads, Lq, Lk)
        allowed = key_mask.bool()[..., None, None, :].expand(logits.shape).clone()
        if self.parts.causal:
            lq, lk = logits.shape[-2:]
            future = torch.ones(lq, own, dtype=torch.bool, device=q.device).triu(1)  # (Lq, own)
            allowed[..., lk - own :] &= ~future
        logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) @ v

    def scores_from(self, q_signal: torch.Tensor, k_docs: torch.Tensor, doc_mask: torch.Tensor) -> torch.Tensor:
        """Signal queries (heads, S, hd) vs document keys (heads, N*Ld, hd) -> (N,) relevance."""
        logits = q_signal @ k_docs.transpose(-1, -2) / math.sqrt(self.head_dim)  # (heads, S, N*Ld)
        logits = logits.masked_fill(~doc_mask.flatten().bool()[None, None, :], torch.finfo(logits.dtype).min)
        mass = torch.softmax(logits, dim=-1).view(*logits.shape[:2], *doc_mask.shape).sum(-1)  # (heads, S, N)
        return mass.mean(dim=(0, 1))  # (N,), sums to 1

    def positions(self, inputs: BlockInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        l0, ld, lf = len(inputs.instruction), inputs.documents.shape[1], len(inputs.final)
        device = inputs.instruction.device
        return (
            torch.arange(l0, device=device),
            torch.arange(l0, l0 + ld, device=device),  # every document shares this range
            torch.arange(l0 + ld, l0 + ld + lf, device=device),
        )

    # --- block-sparse (linear in N) --------------------------------------------------------------
    def forward_blocks(  # type: ignore[no-untyped-def]
        self, inputs: BlockInputs, return_hidden: bool = False, answer: torch.Tensor | None = None
    ):
        """(N,) relevance distribution (and the per-block hidden states at l* if asked).

        With `answer` (token ids appended after the final block; training's answer loss): every layer
        runs and the result is (scores at l*, the final block's last hidden states, (Lf + A, d)). The
        answer comes after the signal token, so causality keeps the scores unchanged."""
        parts, n = self.parts, inputs.documents.shape[0]
        final_ids = inputs.final if answer is None else torch.cat([inputs.final, answer])
        pos0, posd, _ = self.positions(inputs)
        posf = torch.arange(len(pos0) + len(posd), len(pos0) + len(posd) + len(final_ids), device=pos0.device)
        h0 = parts.embed(inputs.instruction[None], pos0[None])  # (1, L0, d)
        hd = parts.embed(inputs.documents, posd.expand(n, -1))  # (N, Ld, d)
        hf = parts.embed(final_ids[None], posf[None])  # (1, Lf, d)
        l0, ld, lf = h0.shape[1], hd.shape[1], hf.shape[1]
        ones0 = torch.ones(1, l0, device=h0.device)
        doc_mask = inputs.document_mask.float()
        last = self.layer if answer is None else self.depth - 1
        scores = None
        for index in range(last + 1):
            q0, k0, v0 = parts.qkv(index, h0, pos0[None])  # (1, H, L0, hd)
            qd, kd, vd = parts.qkv(index, hd, posd[None])  # (N, H, Ld, hd)
            qf, kf, vf = parts.qkv(index, hf, posf[None])  # (1, H, Lf, hd)
            flat_kd = kd.transpose(0, 1).reshape(1, self.heads, -1, self.head_dim)  # (1, H, N*Ld, hd)
            flat_vd = vd.transpose(0, 1).reshape(1, self.heads, -1, self.head_dim)
            if index == self.layer:  # l*: score from the signal token's logits, then stop
                scores = self.scores_from(qf[0][:, inputs.signal], flat_kd[0], inputs.document_mask)
                if answer is None:
                    return (scores, (h0, hd, hf)) if return_hidden else scores
            new_h0 = parts.finish(index, h0, self._attend(q0, k0, v0, ones0, own=l0))
            doc_keys = torch.cat([k0.expand(n, -1, -1, -1), kd], dim=2)  # (N, H, L0+Ld, hd)
            doc_values = torch.cat([v0.expand(n, -1, -1, -1), vd], dim=2)
            keys_mask = torch.cat([ones0.expand(n, -1), doc_mask], dim=1)  # (N, L0+Ld)
            new_hd = parts.finish(index, hd, self._attend(qd, doc_keys, doc_values, keys_mask, own=ld))
            all_keys = torch.cat([k0, flat_kd, kf], dim=2)  # (1, H, L0+N*Ld+Lf, hd)
            all_values = torch.cat([v0, flat_vd, vf], dim=2)
            all_mask = torch.cat([ones0, doc_mask.reshape(1, -1), torch.ones(1, lf, device=hf.device)], dim=1)
            new_hf = parts.finish(index, hf, self._attend(qf, all_keys, all_values, all_mask, own=lf))
            h0, hd, hf = new_h0, new_hd, new_hf
        assert answer is not None and scores is not None
        return scores, hf[0]


def load_backbone(source: str | Path, kind: Backbone):  # type: ignore[no-untyped-def]
    """(backbone, tokenizer) from a transformers or sentence-transformers folder."""
    from transformers import AutoModel, AutoTokenizer

    backbone = AutoModel.from_pretrained(str(source), attn_implementation="eager", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    expected = "LlamaModel" if kind == "causal-lm" else "BertModel"
    if type(backbone).__name__ != expected:
        raise ValueError(f"{source}: a {kind} BlockRank needs a {expected}, found {type(backbone).__name__}")
    return backbone, tokenizer


__all__ = ["BlockInputs", "BlockRankModel", "load_backbone"]
