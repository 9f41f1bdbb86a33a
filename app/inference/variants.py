"""Pick which backend x precision runs a model on this machine."""

from __future__ import annotations

from app.backends import available
from app.core.manifest import Backend, Manifest, Precision, Tower, VariantParity


class NoServableVariant(RuntimeError):
    pass


def choose_variant(
    manifest: Manifest, backend: str = "auto", precision: str = "auto", tower: Tower = "text"
) -> VariantParity:
    """`auto`: the fastest variant this machine can run whose parity clears the serving bar.

    An explicit backend/precision narrows the choice but never admits a variant that fails the
    parity bar: wrong vectors are not a speed-up.
    """
    candidates = [
        v
        for v in manifest.parity
        if v.servable
        and v.tower == tower
        and (backend == "auto" or v.backend == Backend(backend))
        and (precision == "auto" or v.precision == Precision(precision))
        and available(v.backend, v.precision)
    ]
    if not candidates:
        measured = ", ".join(f"{v.key}={v.min_cosine:.5f}" for v in manifest.parity if v.tower == tower) or "none"
        raise NoServableVariant(
            f"{manifest.name}: no {tower}-tower variant for backend={backend} precision={precision} that this "
            f"machine runs with min cosine >= 0.999 (measured: {measured})"
        )
    # Unmeasured speed sorts last; ties prefer the more exact variant.
    return max(candidates, key=lambda v: (v.samples_per_s or 0.0, v.min_cosine))
