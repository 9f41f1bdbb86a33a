"""Export a sentence-transformers text encoder to a Tessera model folder.

The ONNX graph takes token ids and returns the pooled (and, if the model normalises,
L2-normalised) sentence embedding, so every runtime gets the finished vector. Parity is
measured through the service's own tokenizer and backends against sentence-transformers.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from app.core.manifest import (
    MANIFEST_FILE,
    Backend,
    BiEncoderSpec,
    Manifest,
    ModelKind,
    OnnxIO,
    Pooling,
    Precision,
    Quantization,
    SourceInfo,
    TextTower,
    VariantParity,
    sha256_file,
)
from app.inference.text_model import TextModel
from training.export.common import (
    CANDIDATE_VARIANTS,
    INT8_VARIANTS,
    measure_query_latency,
    measure_speeds,
    open_candidates,
    row_cosine,
    staged_folder,
    version,
)
from training.export.quantize import weight_only_int8
from training.sources import load_sentence_transformer

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"  # weight-only int8 copy (training/export/quantize.py)
QUERY_LATENCY_SAMPLES = 100
TOKENIZER_FILE = "tokenizer.json"
QUERY_TOWER_DIR = "query"  # a bi-encoder reranker's query tower, a text model folder inside it
ALIGNMENT_SAMPLES = 500
# The longest query a query tower embeds: twice the 32 tokens it is distilled on (training/query_tower.py).
# Held-out Cranfield queries of 33-59 tokens kept mpnet's gain through the 4-layer tower; nothing longer
# was measured, so longer queries go to the reranker's own graph.
QUERY_TOWER_MAX_TOKENS = 64


class PooledEncoder(nn.Module):
    """Transformer + pooling (+ L2 normalisation) as one graph."""

    def __init__(self, transformer: nn.Module, pooling: Pooling, normalize: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.normalize = normalize

    def forward(
        self,
        input_ids: torch.Tensor,  # (batch, seq) int64
        attention_mask: torch.Tensor,  # (batch, seq) int64, 1 for real tokens
        token_type_ids: torch.Tensor | None = None,  # (batch, seq) int64
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.transformer(**kwargs).last_hidden_state  # (batch, seq, hidden)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        if self.pooling == Pooling.MEAN:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (batch, hidden)
        elif self.pooling == Pooling.CLS:
            pooled = hidden[:, 0]  # (batch, hidden)
        elif self.pooling == Pooling.MAX:
            pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values  # (batch, hidden)
        else:  # last real token (right padding)
            last = attention_mask.sum(1) - 1  # (batch,)
            pooled = hidden[torch.arange(hidden.shape[0]), last]  # (batch, hidden)
        if self.normalize:
            normalized = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return normalized, pooled  # (batch, hidden) each
        return pooled


def pooling_of(st_model) -> tuple[Pooling, bool]:  # type: ignore[no-untyped-def]
    from sentence_transformers.sentence_transformer.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling as StPooling

    modules = list(st_model)
    pool = next((m for m in modules if isinstance(m, StPooling)), None)
    if pool is None:
        raise ValueError("model has no Pooling module; cannot put pooling into the graph")
    mode = pool.get_config_dict()["pooling_mode"]
    if isinstance(mode, list):
        if len(mode) != 1:
            raise ValueError(f"combined pooling {mode} is not supported for export")
        mode = mode[0]
    mapping = {"mean": Pooling.MEAN, "cls": Pooling.CLS, "max": Pooling.MAX, "lasttoken": Pooling.LAST_TOKEN}
    if mode not in mapping:
        raise ValueError(f"pooling mode {mode!r} is not supported for export")
    normalize = any(isinstance(m, Normalize) for m in modules)
    return mapping[mode], normalize


def export_onnx(st_model, path: Path, opset: int = 17) -> OnnxIO:  # type: ignore[no-untyped-def]
    """Write the pooled encoder as ONNX; returns the graph's input/output names."""
    pooling, normalize = pooling_of(st_model)
    transformer = st_model[0].auto_model.eval()
    wrapper = PooledEncoder(transformer, pooling, normalize).eval()
    tokenizer = st_model.tokenizer
    sample = tokenizer(["a short example", "a slightly longer example sentence"], padding=True, return_tensors="pt")
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    args = tuple(sample[n] for n in input_names)
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    output_names = ["sentence_embedding"] + (["pooled_embedding"] if normalize else [])
    for name in output_names:
        dynamic_axes[name] = {0: "batch"}
    with torch.inference_mode():
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return OnnxIO(
        inputs=input_names,
        output="sentence_embedding",
        unnormalized_output="pooled_embedding" if normalize else None,
    )


def measure_variant(
    folder: Path,
    manifest: Manifest,
    backend: Backend,
    precision: Precision,
    sentences: list[str],
    reference: np.ndarray,  # (n, dim) sentence-transformers embeddings, fp32
    threads: int = 0,
    onnx_file: str = ONNX_FILE,
) -> tuple[VariantParity, TextModel]:
    """Parity of one variant against the reference; speed is measured later, interleaved."""
    model = TextModel(folder, manifest, backend=backend, precision=precision, threads=threads, onnx_file=onnx_file)
    model.encode(sentences[:64])  # warm-up: compilation and allocator
    vectors = model.encode(sentences, batch_size=32)
    cosines = row_cosine(vectors, reference)
    parity = VariantParity(
        backend=backend,
        precision=precision,
        onnx_file=onnx_file,
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        n_samples=len(sentences),
    )
    return parity, model


def export_text_model(
    source: str,
    out_dir: Path,
    name: str,
    parity_sentences: list[str],
    eval_scores: dict[str, float] | None = None,
    threads: int = 0,
    bi_encoder: BiEncoderSpec | None = None,
) -> Manifest:
    """Export `source` to `out_dir` (replaced atomically) and record parity per variant. With
    `bi_encoder`, the folder is a reranker of kind bi-encoder (cosine, fused by those weights)."""
    if len(parity_sentences) == 0:
        raise ValueError("parity needs at least one sentence")
    st_model = load_sentence_transformer(source)
    pooling, normalize = pooling_of(st_model)
    with staged_folder(out_dir, name) as staging:
        onnx_io = export_onnx(st_model, staging / ONNX_FILE)
        st_model.tokenizer.save_pretrained(str(staging))
        if not (staging / TOKENIZER_FILE).is_file():
            raise ValueError("the model's tokenizer has no fast (tokenizer.json) form")
        _strip_tokenizer_padding(staging / TOKENIZER_FILE)
        quantised = weight_only_int8(staging / ONNX_FILE, staging / INT8_ONNX_FILE) > 0
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
        manifest = Manifest(
            name=name,
            kind=ModelKind.TEXT if bi_encoder is None else ModelKind.BI_ENCODER,
            bi_encoder=bi_encoder,
            dim=_embedding_dim(st_model),
            text=TextTower(max_tokens=int(st_model.max_seq_length), pooling=pooling, normalize=normalize, onnx=onnx_io),
            files=files,
            source=SourceInfo(
                checkpoint=source,
                exported_with={"torch": torch.__version__, "sentence_transformers": version("sentence_transformers")},
            ),
            eval_scores=eval_scores or {},
        )
        with torch.inference_mode():
            reference = st_model.encode(
                parity_sentences, batch_size=32, convert_to_numpy=True, normalize_embeddings=False
            )
        manifest.quantization = calibration_ranges(reference, normalize, f"{len(parity_sentences)} parity sentences")
        models: list[TextModel] = []
        measured = open_candidates(
            lambda b, p: measure_variant(
                staging, manifest, b, p, parity_sentences, reference, threads, onnx_file=_graph_file(p)
            ),
            CANDIDATE_VARIANTS + (INT8_VARIANTS if quantised else []),
        )
        for _, _, requires, (parity, model) in measured:
            parity.requires = requires
            manifest.parity.append(parity)
            models.append(model)
        speeds = measure_speeds(models, parity_sentences[:500])
        latencies = measure_query_latency(models, _short(parity_sentences, QUERY_LATENCY_SAMPLES))
        for parity, speed, latency in zip(manifest.parity, speeds, latencies, strict=True):
            parity.samples_per_s, parity.query_ms = speed, latency
            log.info(
                "%s: min cos %.6f mean %.6f, %.0f sentences/s, one query %.1f ms",
                parity.key,
                parity.min_cosine,
                parity.mean_cosine,
                speed,
                latency,
            )
        del models
        _drop_unservable_int8(staging, manifest)
        if bi_encoder is not None:
            manifest.bi_encoder = bi_encoder.model_copy(update=_carry_query_tower(out_dir, source, staging))
        manifest.save(staging)
    return manifest


def _carry_query_tower(out_dir: Path, source: str, staging: Path) -> dict[str, Any]:
    """A re-export of the same checkpoint keeps the folder's query tower (an hour of training; its
    alignment holds, the reranker's vectors being the same): its sub-folder is copied into `staging`
    and its `bi_encoder` fields returned. {} when there is none or the checkpoint differs."""
    try:
        previous = Manifest.load(out_dir)
    except (OSError, ValidationError):
        return {}  # nothing readable to carry: the export replaces it
    spec = previous.bi_encoder
    if spec is None or spec.query_tower is None or previous.source.checkpoint != source:
        return {}
    if not (out_dir / spec.query_tower / MANIFEST_FILE).is_file():
        return {}
    shutil.copytree(out_dir / spec.query_tower, staging / spec.query_tower)
    log.info("%s: kept its query tower %r (same checkpoint %s)", out_dir, spec.query_tower, source)
    return {
        "query_tower": spec.query_tower,
        "query_alignment": spec.query_alignment,
        "query_tower_max_tokens": spec.query_tower_max_tokens,
    }


def export_query_tower(
    reranker: Path,
    source: str,
    parity_sentences: list[str],
    threads: int = 0,
    sub: str = QUERY_TOWER_DIR,
    max_query_tokens: int | None = QUERY_TOWER_MAX_TOKENS,
) -> Manifest:
    """Export the sentence-transformers model `source` (a query tower distilled into the reranker's
    space: training/query_tower.py) as a text model in `reranker/sub`, with its own parity, and
    record it in the reranker's manifest (`bi_encoder.query_tower`, `query_alignment`: the mean
    cosine of its vectors to the reranker's on the shortest parity sentences, both fp32 graphs;
    `query_tower_max_tokens`: longer queries are embedded by the reranker itself, None for none).
    The reranker's `files`, and so its fingerprint, stay as they were: stored vectors are its own."""
    if max_query_tokens is not None and max_query_tokens < 1:
        raise ValueError(f"max_query_tokens must be >= 1, got {max_query_tokens}")
    manifest = Manifest.load(reranker)
    if manifest.kind != ModelKind.BI_ENCODER:
        raise ValueError(f"{reranker}: a query tower belongs to a bi-encoder reranker, not {manifest.kind.value}")
    problems = manifest.verify_files(reranker)
    if problems:
        raise ValueError(f"{reranker}: {'; '.join(problems)}")
    tower = export_text_model(source, reranker / sub, f"{manifest.name}-{sub}", parity_sentences, threads=threads)
    if tower.dim != manifest.dim or tower.text_tower.normalize != manifest.text_tower.normalize:
        shutil.rmtree(reranker / sub)
        raise ValueError(
            f"{source}: a query tower must give the reranker's {manifest.dim}-dimensional "
            f"{'normalised ' if manifest.text_tower.normalize else ''}vectors (it gives {tower.dim})"
        )
    queries = _short(parity_sentences, ALIGNMENT_SAMPLES)
    own = TextModel(reranker, manifest, threads=threads).encode(queries)
    distilled = TextModel(reranker / sub, tower, threads=threads).encode(queries)
    spec = manifest.bi_encoder or BiEncoderSpec()
    if max_query_tokens is not None and max_query_tokens >= tower.text_tower.max_tokens:
        max_query_tokens = None  # the tower takes every query it can read whole
    manifest.bi_encoder = spec.model_copy(
        update={
            "query_tower": sub,
            "query_alignment": round(float(row_cosine(own, distilled).mean()), 4),
            "query_tower_max_tokens": max_query_tokens,
        }
    )
    manifest.save(reranker)
    return manifest


def _graph_file(precision: Precision) -> str:
    """int8 variants run the weight-only int8 copy; the others the fp32 graph."""
    return INT8_ONNX_FILE if precision == Precision.INT8 else ONNX_FILE


def _short(sentences: list[str], n: int) -> list[str]:
    """The `n` shortest sentences: query-like inputs for the single-query latency."""
    return sorted(sentences, key=len)[:n]


def _drop_unservable_int8(folder: Path, manifest: Manifest) -> None:
    """An int8 graph no variant may serve is not shipped (its parity stays in the manifest, as measured)."""
    if INT8_ONNX_FILE in manifest.files and not any(
        p.servable for p in manifest.parity if p.onnx_file == INT8_ONNX_FILE
    ):
        del manifest.files[INT8_ONNX_FILE]
        (folder / INT8_ONNX_FILE).unlink()


def calibration_ranges(embeddings: np.ndarray, normalize: bool, calibrated_on: str) -> Quantization:
    """Per-dimension [min, max] of the embeddings as served ((n, dim) model outputs, L2-normalised
    first where the graph normalises): what int8 / uint8 output is scaled by."""
    vectors = np.asarray(embeddings, dtype=np.float64)
    if normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    return Quantization(
        ranges=[vectors.min(axis=0).tolist(), vectors.max(axis=0).tolist()],
        calibrated_on=calibrated_on,
        n_samples=len(vectors),
    )


def _embedding_dim(st_model) -> int:  # type: ignore[no-untyped-def]
    getter = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    return int(getter())


def _strip_tokenizer_padding(path: Path) -> None:
    """The runtime pads per batch; a fixed padding baked into tokenizer.json would waste compute."""
    data = json.loads(path.read_text())
    data["padding"] = None
    path.write_text(json.dumps(data, ensure_ascii=False))


def score_model_manifest(
    name: str,
    kind: ModelKind,
    max_tokens: int,
    files: dict[str, str],
    checkpoint: str,
    eval_scores: dict[str, float] | None = None,
    onnx: OnnxIO | None = None,
    **spec: Any,
) -> Manifest:
    """The manifest of a model that outputs one relevance score per input (a cross-encoder, BlockRank):
    a text tower without pooling (its ONNX graph, if any, outputs the score), no `dim`, exported from
    transformers. `spec`: the kind's own sections."""
    return Manifest(
        name=name,
        kind=kind,
        text=TextTower(max_tokens=max_tokens, onnx=onnx),
        files=files,
        source=SourceInfo(
            checkpoint=checkpoint,
            library="transformers",
            exported_with={"torch": torch.__version__, "transformers": version("transformers")},
        ),
        eval_scores=eval_scores or {},
        **spec,
    )
