"""Pick which backend x precision runs a model on this machine."""

from __future__ import annotations

from app.backends import available
from app.core.manifest import Backend, Manifest, Precision, Tower, VariantParity

# A less exact variant is served for throughput only when at least this much faster than the most
# exact one near it (the export's measurement varies by a few per cent between runs).
THROUGHPUT_VARIANT_GAIN = 0.1
QUERY_VARIANT_GAIN = 0.1  # the latency a query variant must save over the batch variant


class NoServableVariant(RuntimeError):
    pass


def choose_variant(
    manifest: Manifest, backend: str = "auto", precision: str = "auto", tower: Tower = "text"
) -> VariantParity:
    """`auto`: the fastest variant (by throughput) this machine can run whose parity clears the
    serving bar; among those within THROUGHPUT_VARIANT_GAIN of the fastest, the most exact (so a
    re-export whose measurement moves a few per cent does not flip the served precision).

    An explicit backend/precision narrows the choice but never admits a variant that fails the
    parity bar: wrong vectors are not a speed-up.
    """
    candidates = _servable(manifest, backend, precision, tower)
    fastest = max(_throughput(v)[0] for v in candidates)
    close = [v for v in candidates if _throughput(v)[0] >= fastest * (1 - THROUGHPUT_VARIANT_GAIN)]
    return max(close, key=lambda v: (v.min_cosine, v.samples_per_s or 0.0))


def choose_query_variant(
    manifest: Manifest, backend: str = "auto", precision: str = "auto", tower: Tower = "text"
) -> VariantParity:
    """The variant for one input alone (a search query): among those `choose_variant` may pick from,
    the one with the lowest single-input latency measured at export. Batches and single queries
    are bound by different things (arithmetic vs reading the weights), so this can differ from the
    throughput choice: for all-mpnet-base-v2 the weight-only int8 graph. It replaces the throughput
    choice only when at least QUERY_VARIANT_GAIN faster (a second session costs memory, and a few
    per cent is within the noise of the export's measurement). Without latencies in the manifest
    (older exports), the throughput choice."""
    candidates = _servable(manifest, backend, precision, tower)
    batch = choose_variant(manifest, backend, precision, tower)
    measured = [v for v in candidates if v.query_ms is not None]
    if batch.query_ms is None or not measured:
        return batch
    fastest = min(measured, key=lambda v: (v.query_ms or 0.0, -v.min_cosine))
    return fastest if (fastest.query_ms or 0.0) <= batch.query_ms * (1 - QUERY_VARIANT_GAIN) else batch


def _throughput(variant: VariantParity) -> tuple[float, float]:
    # Unmeasured speed sorts last; ties prefer the more exact variant.
    return (variant.samples_per_s or 0.0, variant.min_cosine)


def _servable(manifest: Manifest, backend: str, precision: str, tower: Tower) -> list[VariantParity]:
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
    return candidates
