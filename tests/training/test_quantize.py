"""Weight-only int8 graphs: the grouped scheme's error bound, the rewritten graph's outputs on both
backends, and how the text exporter ships (or drops) the int8 variant."""

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.backends import available
from app.core.manifest import Backend, Manifest, Precision
from app.inference.text_model import TextModel
from tests.conftest import make_tiny_sentence_transformer
from training.export import text as text_export
from training.export.common import row_cosine
from training.export.quantize import quantize_group, weight_only_int8
from training.sources import load_sentence_transformer


def test_grouped_int8_is_within_half_a_step_of_each_weight() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(256, 48)).astype(np.float32)  # (K, N)
    weight[:128, 5] = 0.0  # an all-zero group
    weight[128:, 7] *= 100.0  # one group far larger than the rest of its column
    q, scale = quantize_group(weight, 128)
    assert q.dtype == np.int8 and q.shape == (48, 2, 128) and scale.shape == (48, 2, 1)
    rebuilt = (q.astype(np.float32) * scale).reshape(48, 256).T  # what the graph computes
    step = np.repeat(scale[:, :, 0], 128, axis=1).T  # (K, N): each weight's own group step
    assert np.all(np.abs(rebuilt - weight) <= step / 2 + 1e-6)
    assert np.all(rebuilt[:128, 5] == 0.0)
    # The large group does not coarsen column 7's other group (as one scale per column would).
    assert np.abs(rebuilt[:128, 7] - weight[:128, 7]).max() < 0.02


def test_int8_graph_matches_the_fp32_graph_on_both_backends(tmp_path: Path, sts_sentences: list[str]) -> None:
    source = make_tiny_sentence_transformer(tmp_path, dropout=0.0)
    folder = tmp_path / "folder"
    text_export.export_text_model(str(source), folder, "t", sts_sentences[:50])
    manifest = Manifest.load(folder)
    assert text_export.INT8_ONNX_FILE not in manifest.files  # a tiny model has nothing worth quantising
    assert weight_only_int8(folder / "model.onnx", tmp_path / "none.onnx") == 0
    assert not (tmp_path / "none.onnx").exists()

    quantised = weight_only_int8(folder / "model.onnx", folder / "int8.onnx", group=16, min_weights=0)
    graph = onnx.load(str(folder / "int8.onnx")).graph
    rebuilt = {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0].endswith(".nk")}
    matmuls_on_weights = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in rebuilt]
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    # 2 layers x (query, key, value, output, two feed-forward) = 12
    assert quantised == len(int8_weights) == 12 and len(matmuls_on_weights) == 12
    reference = load_sentence_transformer(str(source)).encode(sts_sentences[:100])
    runs = [(Backend.ONNXRUNTIME, Precision.FP32)] + [(Backend.OPENVINO, Precision.INT8)] * available(
        Backend.OPENVINO, Precision.INT8
    )
    for backend, precision in runs:
        model = TextModel(folder, manifest, backend=backend, precision=precision, onnx_file="int8.onnx")
        vectors = model.encode(sts_sentences[:100])
        assert row_cosine(vectors, reference).min() > 0.999, (backend, precision)
        assert np.abs(vectors - reference).max() > 1e-5, (backend, precision)  # and really quantised


def test_single_inputs_run_on_the_query_variant(tmp_path: Path, sts_sentences: list[str]) -> None:
    source = make_tiny_sentence_transformer(tmp_path, dropout=0.0)
    folder = tmp_path / "folder"
    manifest = text_export.export_text_model(str(source), folder, "t", sts_sentences[:50])
    weight_only_int8(folder / "model.onnx", folder / "int8.onnx", group=16, min_weights=0)
    fp32 = next(p for p in manifest.parity if p.key == "onnxruntime-fp32")
    int8 = fp32.model_copy(update={"onnx_file": "int8.onnx"})  # the int8 graph, on the same backend
    model = TextModel(folder, manifest, fp32, query_variant=int8)
    plain = TextModel(folder, manifest, fp32)
    alone = TextModel(folder, manifest, int8)
    ids = [t.ids for t in model.tokenize(sts_sentences[:2])]
    np.testing.assert_array_equal(model.forward(ids[:1]), alone.forward(ids[:1]))
    np.testing.assert_array_equal(model.forward(ids), plain.forward(ids))
    assert not np.array_equal(plain.forward(ids[:1]), alone.forward(ids[:1]))
    assert TextModel(folder, manifest, fp32, query_variant=fp32).query_session is None  # same variant: one session


def test_exporter_ships_the_int8_graph_only_with_a_servable_variant(
    tmp_path: Path, sts_sentences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not available(Backend.OPENVINO, Precision.INT8):
        pytest.skip("OpenVINO is not installed")
    source = make_tiny_sentence_transformer(tmp_path, dropout=0.0)
    # Groups of 16 and no size floor, so the tiny model's weights are quantised.
    monkeypatch.setattr(text_export, "weight_only_int8", partial(weight_only_int8, group=16, min_weights=0))
    manifest = text_export.export_text_model(str(source), tmp_path / "t", "t", sts_sentences[:100])
    int8 = next(p for p in manifest.parity if p.key == "openvino-int8")
    assert int8.onnx_file == text_export.INT8_ONNX_FILE and int8.samples_per_s
    shipped = (tmp_path / "t" / text_export.INT8_ONNX_FILE).exists()
    assert shipped == int8.servable == (text_export.INT8_ONNX_FILE in manifest.files)
    assert manifest.verify_files(tmp_path / "t") == []

    # A bar no int8 graph clears: the variant stays recorded, its file is not shipped.
    monkeypatch.setattr("app.core.manifest.SERVING_MIN_COSINE", 1.01)
    manifest = text_export.export_text_model(str(source), tmp_path / "u", "u", sts_sentences[:100])
    assert any(p.key == "openvino-int8" for p in manifest.parity)
    assert not (tmp_path / "u" / text_export.INT8_ONNX_FILE).exists()
    assert text_export.INT8_ONNX_FILE not in manifest.files and manifest.verify_files(tmp_path / "u") == []
