import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.manifest import Manifest, ModelKind, sha256_file


def test_default_manifest_is_complete_and_intact(default_models_dir: Path) -> None:
    folder = default_models_dir / "minilm-l6"
    manifest = Manifest.load(folder)
    assert manifest.kind == ModelKind.TEXT
    assert manifest.dim == 384 and manifest.pooling == "mean" and manifest.normalize
    assert manifest.max_tokens == 256
    assert manifest.onnx.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(manifest.files) >= {"model.onnx", "tokenizer.json"}
    assert manifest.verify_files(folder) == []
    # Parity recorded on >= 1,000 real sentences for every variant, the fp32 reference exact.
    assert manifest.parity and all(v.n_sentences >= 1000 for v in manifest.parity)
    fp32 = next(v for v in manifest.parity if v.key == "onnxruntime-fp32")
    assert fp32.min_cosine >= 0.99999


def test_verify_files_detects_tampering(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"abc")
    manifest = Manifest(
        name="m",
        kind="text",
        dim=4,
        pooling="mean",
        normalize=True,
        max_tokens=8,
        onnx={"inputs": ["input_ids"]},
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


def test_runtime_section_must_match_the_kind() -> None:
    common = {"name": "m", "dim": 1, "pooling": "cls", "normalize": False, "max_tokens": 8, "files": {}}
    source = {"checkpoint": "x"}
    with pytest.raises(ValidationError, match="needs an `onnx` section"):
        Manifest(kind="cross-encoder", source=source, **common)
    with pytest.raises(ValidationError, match="needs a `blockrank` section"):
        Manifest(kind="blockrank", source=source, **common)
    with pytest.raises(ValidationError):  # unknown backbone
        Manifest(kind="blockrank", blockrank={"backbone": "rnn", "layer": 1, "doc_tokens": 8}, source=source, **common)
    ok = Manifest(
        kind="blockrank", blockrank={"backbone": "causal-lm", "layer": 19, "doc_tokens": 64}, source=source, **common
    )
    assert ok.blockrank is not None and ok.blockrank.max_documents == 200
