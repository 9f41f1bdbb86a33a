from pathlib import Path

import pytest

from app.core.manifest import Manifest, VariantParity
from app.inference.variants import NoServableVariant, choose_variant


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
