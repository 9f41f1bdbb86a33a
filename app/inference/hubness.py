"""Hubness correction for search over images (CSLS, Conneau et al., "Word Translation Without
Parallel Data", ICLR 2018).

In a space learnt into, some images are near many queries at once (hubs): they top the results of
queries they do not match. CSLS ranks image g for a query q by cos(q, g) - weight * r(g), with r(g)
the mean cosine of g to its `neighbours` nearest vectors in a bank shipped with the model: for text
queries the captions the image head was trained on (`manifest.clip.hubness`), for image queries the
training images' own vectors (`manifest.clip.image_hubness`). The served penalty is centred on the
training images' own mean r, so an average image keeps its cosine and scores stay comparable with
unpenalised documents. Measured in benchmarks/results/clip_hubness.md and clip_image_hubness*.md;
the banks and their parameters are written by training (`training/clip_training.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.manifest import HubnessSpec


def mean_of_nearest(sims: np.ndarray, neighbours: int) -> np.ndarray:
    """(n,) each row of `sims` (n, t)'s mean over its `neighbours` largest values (all of them if fewer)."""
    k = min(neighbours, sims.shape[1])
    return np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def neighbourhood_similarity(bank: np.ndarray, vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """(n,) each of `vectors` (n, dim)'s mean cosine to its `neighbours` nearest rows of `bank`
    (t, dim); all unit length."""
    return mean_of_nearest(vectors @ bank.T, neighbours)  # (n, t) cosines


@dataclass(frozen=True)
class HubCorrection:
    bank: np.ndarray  # (t, dim) unit text vectors
    neighbours: int
    weight: float
    mean: float  # the training images' mean neighbourhood similarity

    @classmethod
    def load(cls, folder: Path, spec: HubnessSpec, dim: int) -> HubCorrection:
        """The bank `spec` names in `folder`, checked: (t, dim) finite floats."""
        bank = np.load(folder / spec.file, allow_pickle=False)
        if bank.ndim != 2 or bank.shape[1] != dim or len(bank) == 0 or not np.isfinite(bank).all():
            raise ValueError(f"{spec.file}: the hubness bank must hold finite (t, {dim}) vectors, not {bank.shape}")
        return cls(np.ascontiguousarray(bank, dtype=np.float32), spec.neighbours, spec.weight, spec.mean)

    def penalties(self, vectors: np.ndarray) -> np.ndarray:
        """(n,) what text->image search subtracts from each image's cosine; `vectors` (n, dim)."""
        if not len(vectors):
            return np.zeros(0, np.float32)
        r = neighbourhood_similarity(self.bank, np.asarray(vectors, np.float32), self.neighbours)
        return (self.weight * (r - self.mean)).astype(np.float32)


class PenaltyCache:
    """One collection's hub penalties by document key. An upsert stores a new key and keys are never
    reused (SQLite AUTOINCREMENT), so a key's vector, and with it its penalty, never changes: entries
    hold as long as the correction does (all dropped when it is another, or past `limit` entries)."""

    NOT_AN_IMAGE = math.nan  # texts and vector-only documents are not penalised

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._correction: HubCorrection | None = None
        self._penalty: dict[int, float] = {}

    def known(self, correction: HubCorrection, keys: list[int]) -> tuple[dict[int, float], list[int]]:
        """(key -> penalty or NOT_AN_IMAGE for the keys known, the keys not known)."""
        if correction is not self._correction:
            self._correction, self._penalty = correction, {}
        penalty = self._penalty  # one dict throughout, whatever add() does meanwhile
        found = {k: penalty[k] for k in keys if k in penalty}
        return found, [k for k in keys if k not in found]

    def add(self, correction: HubCorrection, values: dict[int, float]) -> None:
        if correction is not self._correction:
            return  # computed with a correction replaced meanwhile
        if len(self._penalty) + len(values) > self.limit:
            self._penalty = {}
        self._penalty.update(values)
