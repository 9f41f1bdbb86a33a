"""Quantised embedding output: int8, uint8 (per-dimension calibration ranges from the manifest),
binary and ubinary (the sign of each dimension, 8 per byte). The semantics of sentence-transformers'
`quantize_embeddings`, so vectors from Tessera and from it compare: int8 maps each dimension's
[min, max] onto -128..127 in 256 steps (uint8: 0..255), values outside the range saturating;
binary packs `value > 0` bits big-endian per byte, minus 128 (int8), ubinary as uint8.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from app.core.errors import InvalidRequest

QuantizedFormat = Literal["int8", "uint8", "binary", "ubinary"]
FORMATS: tuple[str, ...] = ("int8", "uint8", "binary", "ubinary")


def quantize(vectors: np.ndarray, fmt: QuantizedFormat, ranges: list[list[float]] | None) -> np.ndarray:
    """(n, dim) float vectors -> (n, dim) int8/uint8, or (n, ceil(dim / 8)) packed bits.
    `ranges`: [[min per dimension], [max per dimension]] (int8 / uint8 only)."""
    if fmt in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if fmt == "binary" else packed
    if ranges is None:
        raise InvalidRequest(f"{fmt} output needs calibration ranges")
    low = np.asarray(ranges[0], dtype=np.float32)
    high = np.asarray(ranges[1], dtype=np.float32)
    steps = (high - low) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: as sentence-transformers does
    levels = np.clip(np.floor((vectors - low) / steps), 0, 255)
    return (levels - 128).astype(np.int8) if fmt == "int8" else levels.astype(np.uint8)
