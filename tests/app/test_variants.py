from pathlib import Path

import pytest

from app.core.manifest import Manifest, VariantParity
from app.inference.variants import NoServableVariant, choose_query_variant, choose_variant


def _manifest(default_models_dir: Path, variants: list[VariantParity]) -> Manifest:
    manifest = Manifest.load(default_models_dir / "minilm-l6")
    return manifest.model_copy(update={"parity": variants})


def _variant(backend: str, precision: str, min_cos: float, speed: float) -> VariantParity:
    return VariantParity(
        backend=backend,
        precision=precision,
        onnx_file="model.onnx",
        min_cosine=min_cos,
        mean_cosine=min_cos,
        n_samples=1000,
        samples_per_s=speed,
    )


def test_auto_picks_fastest_variant_that_clears_parity(default_models_dir: Path) -> None:
    manifest = _manifest(
        default_models_dir,
        [
            _variant("onnxruntime", "fp32", 1.0, 700),
            _variant("onnxruntime", "int8", 0.857, 1500),  # fast but wrong vectors: never chosen
            _variant("openvino", "fp32", 1.0, 690),
        ],
    )
    assert choose_variant(manifest).key == "onnxruntime-fp32"
    assert choose_variant(manifest, backend="openvino").key == "openvino-fp32"
    with pytest.raises(NoServableVariant, match="int8"):
        choose_variant(manifest, precision="int8")


def test_no_variant_raises(default_models_dir: Path) -> None:
    with pytest.raises(NoServableVariant):
        choose_variant(_manifest(default_models_dir, []))


def test_single_queries_get_the_lowest_latency_servable_variant(default_models_dir: Path) -> None:
    def timed(backend: str, precision: str, min_cos: float, speed: float, query_ms: float | None) -> VariantParity:
        return _variant(backend, precision, min_cos, speed).model_copy(update={"query_ms": query_ms})

    variants = [
        timed("openvino", "fp32", 1.0, 30, 40.0),
        timed("openvino", "int8", 0.9997, 64, 8.0),  # slower in batches, fastest alone
        timed("onnxruntime", "int8", 0.79, 200, 2.0),  # fastest of all but wrong vectors
        timed("onnxruntime", "fp32", 1.0, 96, 14.0),
    ]
    manifest = _manifest(default_models_dir, variants)
    assert choose_variant(manifest).key == "onnxruntime-fp32"
    assert choose_query_variant(manifest).key == "openvino-int8"
    assert choose_query_variant(manifest, precision="fp32").key == "onnxruntime-fp32"  # explicit pins both
    # An export without latencies (older folders): single queries run the throughput choice.
    unmeasured = _manifest(default_models_dir, [v.model_copy(update={"query_ms": None}) for v in variants])
    assert choose_query_variant(unmeasured).key == "onnxruntime-fp32"
    # Faster alone, but by less than QUERY_VARIANT_GAIN: not worth a second session.
    close = [variants[0], variants[1].model_copy(update={"query_ms": 13.0}), variants[3]]
    assert choose_query_variant(_manifest(default_models_dir, close)).key == "onnxruntime-fp32"


def test_a_less_exact_variant_must_be_clearly_faster_to_be_served(
    default_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within THROUGHPUT_VARIANT_GAIN of the fastest, the most exact variant is served: a re-export
    measuring int8 a few per cent faster than bf16 does not change the served precision. (The
    policy on a CPU that runs every precision: one without bf16 never considers the bf16 variant.)"""
    monkeypatch.setattr("app.inference.variants.available", lambda backend, precision: True)
    bf16 = _variant("openvino", "bf16", 0.99989, 100)
    for int8_speed, chosen in ((105, "openvino-bf16"), (109, "openvino-bf16"), (112, "openvino-int8")):
        int8 = _variant("openvino", "int8", 0.99941, int8_speed)
        manifest = _manifest(default_models_dir, [_variant("openvino", "fp32", 1.0, 46), bf16, int8])
        assert choose_variant(manifest).key == chosen, int8_speed
        # single queries fall back to the same batch choice when no latency is measured
        assert choose_query_variant(manifest).key == chosen
    # a CPU without bf16 serves the fastest of what it runs, however close the bf16 variant measured
    monkeypatch.setattr("app.inference.variants.available", lambda backend, precision: precision != "bf16")
    manifest = _manifest(
        default_models_dir, [_variant("openvino", "fp32", 1.0, 46), bf16, _variant("openvino", "int8", 0.99941, 105)]
    )
    assert choose_variant(manifest).key == "openvino-int8"
