"""Text tokenisation with HF `tokenizers` (no torch, no transformers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app.core.errors import InputTooLong

__all__ = ["InputTooLong", "TextTokenizer", "Tokenized"]


# Batch lengths up to this are padded exactly; longer ones are rounded up to `multiple`
# (benchmarks/results/soak.md: rounding everything cost 12-17% on short-sentence traffic).
ROUND_LENGTHS_ABOVE = 32


@dataclass(slots=True)
class Tokenized:
    ids: np.ndarray  # (seq,) int64 token ids, special tokens included
    truncated: bool


class TextTokenizer:
    """Encodes text to unpadded id arrays and pads groups of them into model feeds."""

    def __init__(self, tokenizer_file: Path, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        # A second copy without truncation, only to report the true length of a rejected input.
        self._untruncated = Tokenizer.from_file(str(tokenizer_file))
        self._untruncated.no_padding()
        self._untruncated.no_truncation()
        self.max_tokens = max_tokens
        padding = self._tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if padding is None else padding

    def encode(self, texts: list[str], truncate: bool = True) -> list[Tokenized]:
        encodings = [self._tokenizer.encode(texts[0])] if len(texts) == 1 else self._tokenizer.encode_batch(texts)
        out = []
        for index, enc in enumerate(encodings):
            truncated = bool(enc.overflowing)
            if truncated and not truncate:
                full = len(self._untruncated.encode(texts[index]).ids)
                raise InputTooLong(index, full, self.max_tokens)
            out.append(Tokenized(np.asarray(enc.ids, dtype=np.int64), truncated))
        return out

    def pad(self, sequences: list[np.ndarray], input_names: list[str], multiple: int = 1) -> dict[str, np.ndarray]:
        """Right-pad to the longest sequence of the group (rounded up to `multiple`: fewer distinct
        shapes for the backends' per-shape caches) and build the graph's feeds."""
        length = max(len(s) for s in sequences)
        if length > ROUND_LENGTHS_ABOVE:  # short batches: few distinct lengths, and rounding costs most there
            length = -(-length // multiple) * multiple
        ids = np.full((len(sequences), length), self.pad_id, dtype=np.int64)  # (batch, seq)
        mask = np.zeros((len(sequences), length), dtype=np.int64)  # (batch, seq)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds
