"""Export of any sentence-transformers folder, on a tiny random BERT made here."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from app.core.manifest import Manifest
from app.inference.text_model import TextModel
from tests.conftest import STS_DEV, make_tiny_sentence_transformer
from training.cli import app as cli
from training.export.text import export_text_model
from training.sources import ModelSourceError, load_sentence_transformer


def test_tiny_model_exports_with_pooling_and_normalisation_in_graph(tiny_models_dir: Path, sts_sentences) -> None:
    folder = tiny_models_dir / "tiny"
    manifest = Manifest.load(folder)
    assert manifest.schema_version == 2 and manifest.dim == 32
    assert manifest.text_tower.max_tokens == 64 and manifest.text_tower.normalize
    assert manifest.verify_files(folder) == []
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert [o.name for o in graph.output] == ["sentence_embedding", "pooled_embedding"]
    ops = {n.op_type for n in graph.node}
    assert {"ReduceSum", "Div"} <= ops  # mean pooling and normalisation live in the graph
    fp32 = next(v for v in manifest.parity if v.key == "onnxruntime-fp32")
    assert fp32.min_cosine >= 0.99999 and fp32.n_samples == 200
    vectors = TextModel(folder, manifest).encode(sts_sentences[:20])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_other_poolings_without_normalisation_match(tmp_path: Path, sts_sentences, pooling: str) -> None:
    source = make_tiny_sentence_transformer(tmp_path, pooling=pooling, normalize=False)
    manifest = export_text_model(str(source), tmp_path / "models" / "t", "t", sts_sentences[:50])
    text = manifest.text_tower
    assert text.pooling == pooling and not text.normalize
    assert text.onnx is not None and text.onnx.unnormalized_output is None
    assert all(v.min_cosine >= 0.999 for v in manifest.parity if v.precision == "fp32")
    reference = load_sentence_transformer(str(source)).encode(sts_sentences[:10])
    served = TextModel(tmp_path / "models" / "t", manifest).encode(sts_sentences[:10])
    np.testing.assert_allclose(served, reference, atol=1e-4)  # raw vectors, not just directions


def test_cli_export_reports_a_missing_model_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--source",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
            "--parity-data",
            str(STS_DEV),
            "--parity-sentences",
            "10",
        ],
    )
    assert result.exit_code == 2
    assert "no such folder" in result.output
    with pytest.raises(ModelSourceError, match="pypi:unknown_pkg"):
        load_sentence_transformer("pypi:unknown_pkg")


def test_cli_export_if_missing_keeps_an_intact_folder(tiny_models_dir: Path) -> None:
    result = CliRunner().invoke(
        cli, ["export", "--if-missing", "--name", "tiny", "--out", str(tiny_models_dir / "tiny")]
    )
    assert result.exit_code == 0 and "intact, not re-exported" in result.output
