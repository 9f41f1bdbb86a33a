import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.manifest import Manifest, ModelKind, sha256_file


def test_default_manifest_is_complete_and_intact(default_models_dir: Path) -> None:
    folder = default_models_dir / "minilm-l6"
    manifest = Manifest.load(folder)
    assert manifest.kind == ModelKind.TEXT
    text = manifest.text_tower
    assert manifest.dim == 384 and text.pooling == "mean" and text.normalize
    assert text.max_tokens == 256 and manifest.image is None
    assert text.onnx is not None and text.onnx.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(manifest.files) >= {"model.onnx", "tokenizer.json"}
    assert manifest.verify_files(folder) == []
    # Parity recorded on >= 1,000 real sentences for every variant, the fp32 reference exact.
    assert manifest.parity and all(v.n_samples >= 1000 and v.tower == "text" for v in manifest.parity)
    fp32 = next(v for v in manifest.parity if v.key == "onnxruntime-fp32")
    assert fp32.min_cosine >= 0.99999


def test_verify_files_detects_tampering(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"abc")
    manifest = Manifest(
        name="m",
        kind="text",
        dim=4,
        text={"pooling": "mean", "normalize": True, "max_tokens": 8, "onnx": {"inputs": ["input_ids"]}},
        files={"model.onnx": sha256_file(tmp_path / "model.onnx"), "gone.json": "0"},
        source={"checkpoint": "x"},
    )
    assert manifest.verify_files(tmp_path) == ["missing gone.json"]
    (tmp_path / "model.onnx").write_bytes(b"abd")
    assert "sha256 mismatch for model.onnx" in manifest.verify_files(tmp_path)


def test_manifest_rejects_unknown_keys_and_bad_values(default_models_dir: Path) -> None:
    data = json.loads((default_models_dir / "minilm-l6" / "manifest.json").read_text())
    with pytest.raises(ValidationError):
        Manifest.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        Manifest.model_validate({**data, "kind": "audio"})
    with pytest.raises(ValidationError):
        Manifest.model_validate({**data, "name": "../escape"})


def test_sections_must_match_the_kind() -> None:
    source = {"checkpoint": "x"}
    onnx = {"inputs": ["input_ids"], "output": "score"}
    with pytest.raises(ValidationError, match="needs ONNX graph"):
        Manifest(name="m", kind="cross-encoder", text={"max_tokens": 8}, files={}, source=source)
    with pytest.raises(ValidationError, match="has no `dim`"):  # score models have no fake dim any more
        Manifest(name="m", kind="cross-encoder", dim=1, text={"max_tokens": 8, "onnx": onnx}, files={}, source=source)
    with pytest.raises(ValidationError, match="needs `blockrank` section"):
        Manifest(name="m", kind="blockrank", text={"max_tokens": 8}, files={}, source=source)
    with pytest.raises(ValidationError, match="needs `image` section"):
        Manifest(name="m", kind="image", dim=4, files={}, source=source)
    with pytest.raises(ValidationError, match="needs `pooling`"):
        Manifest(name="m", kind="text", dim=4, text={"max_tokens": 8, "onnx": onnx}, files={}, source=source)
    with pytest.raises(ValidationError):  # unknown backbone
        Manifest(
            name="m",
            kind="blockrank",
            text={"max_tokens": 8},
            blockrank={"backbone": "rnn", "layer": 1, "doc_tokens": 8},
            files={},
            source=source,
        )
    ok = Manifest(
        name="m",
        kind="blockrank",
        text={"max_tokens": 64},
        blockrank={"backbone": "causal-lm", "layer": 19, "doc_tokens": 64},
        files={},
        source=source,
    )
    assert ok.blockrank is not None and ok.blockrank.max_documents == 200 and ok.dim is None
    image = Manifest(
        name="img",
        kind="image",
        dim=1280,
        image={
            "input_size": 224,
            "resize_size": 256,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "onnx": {"inputs": ["pixel_values"], "output": "image_embedding"},
        },
        files={},
        source=source,
    )
    assert image.image is not None and image.text is None and image.image.crop == "center"


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("manifest_v1_text.json", "text"),
        ("manifest_v1_cross_encoder.json", "cross-encoder"),
        ("manifest_v1_blockrank.json", "blockrank"),
    ],
)
def test_version_1_manifests_are_read_as_version_2(fixture: str, kind: str) -> None:
    v1 = json.loads((FIXTURES / fixture).read_text())
    manifest = Manifest.model_validate(v1)
    assert manifest.schema_version == 2 and manifest.kind == kind
    text = manifest.text_tower
    assert text.max_tokens == v1["max_tokens"]
    assert text.tokenizer_file == v1["preprocessing"]["tokenizer_file"]
    if kind == "text":
        assert manifest.dim == v1["dim"] and text.pooling == v1["pooling"] and text.normalize == v1["normalize"]
        assert text.onnx is not None and text.onnx.outputs == ["sentence_embedding", "pooled_embedding"]
    else:
        assert manifest.dim is None and text.pooling is None  # v1's fake dim=1 / pooling=cls are gone
    for old, new in zip(v1["parity"], manifest.parity, strict=True):
        assert (new.n_samples, new.samples_per_s, new.tower) == (old["n_sentences"], old["sentences_per_s"], "text")
    # Re-saved, it is a valid v2 file that loads to the same manifest.
    again = Manifest.model_validate_json(json.dumps(manifest.model_dump(mode="json", exclude_none=True)))
    assert again == manifest
