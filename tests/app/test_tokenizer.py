"""Padding of a batch: exact for short batches, rounded up for long ones (fewer distinct shapes)."""

from __future__ import annotations

import numpy as np

from app.inference.tokenizer import ROUND_LENGTHS_ABOVE, TextTokenizer
from tests.conftest import DEFAULT_MODEL_DIR


def test_short_batches_pad_exactly_and_long_ones_round_up() -> None:
    tokenizer = TextTokenizer(DEFAULT_MODEL_DIR / "tokenizer.json", 256)
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def width(lengths: list[int], multiple: int) -> int:
        feeds = tokenizer.pad([np.arange(1, n + 1, dtype=np.int64) for n in lengths], names, multiple)
        assert feeds["attention_mask"].sum() == sum(lengths)  # padding is never attended to
        return feeds["input_ids"].shape[1]

    assert width([5, 11], 8) == 11
    assert width([ROUND_LENGTHS_ABOVE], 8) == ROUND_LENGTHS_ABOVE
    assert width([ROUND_LENGTHS_ABOVE + 1, 3], 8) == ROUND_LENGTHS_ABOVE + 8
    assert width([77], 8) == 80 and width([77], 1) == 77
