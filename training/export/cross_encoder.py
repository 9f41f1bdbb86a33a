"""Export a cross-encoder (HF sequence classifier, one logit) into the model-folder contract.

The graph takes input_ids, attention_mask, token_type_ids and outputs `score` (batch, 1), the raw
relevance logit. Parity per backend x precision is measured on real (query, document) pairs built
exactly as the service builds them: `max_abs_error` on the logits, and as `min_cosine` the
correlation of the score vectors (scores have no direction, so a cosine of centred vectors).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.manifest import Backend, Manifest, ModelKind, OnnxIO, Precision, VariantParity, sha256_file
from app.inference.cross_encoder import SCORE_OUTPUT, CrossEncoderModel
from training.export.common import open_candidates, staged_folder
from training.export.text import ONNX_FILE, TOKENIZER_FILE, _strip_tokenizer_padding, score_model_manifest

log = logging.getLogger(__name__)
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


class _Scorer(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export_cross_encoder(
    source: Path,
    out_dir: Path,
    name: str,
    pairs: list[tuple[str, str]],
    eval_scores: dict[str, float] | None = None,
    max_tokens: int = 512,
) -> Manifest:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    with staged_folder(out_dir, name) as staging:
        _trace(model, tokenizer, staging / ONNX_FILE)
        tokenizer.save_pretrained(str(staging))
        _strip_tokenizer_padding(staging / TOKENIZER_FILE)
        manifest = score_model_manifest(
            name,
            ModelKind.CROSS_ENCODER,
            max_tokens=min(max_tokens, int(model.config.max_position_embeddings)),
            files={f: sha256_file(staging / f) for f in (ONNX_FILE, TOKENIZER_FILE)},
            checkpoint=str(source),
            eval_scores=eval_scores,
            onnx=OnnxIO(inputs=INPUTS, output=SCORE_OUTPUT),
        )
        manifest.save(staging)  # the runtime reads it to build pairs
        reference_model = CrossEncoderModel(staging, manifest)  # only for the pair ids
        by_query: dict[str, list[str]] = {}
        for query, doc in pairs:
            by_query.setdefault(query, []).append(doc)
        sequences = [s for q, docs in by_query.items() for s in reference_model.pairs(q, docs)]
        # A fresh copy: the ONNX exporter leaves the traced model in a state that scores differently.
        fresh = AutoModelForSequenceClassification.from_pretrained(source, attn_implementation="eager").eval()
        reference = _torch_scores(fresh, sequences, reference_model)
        opened = open_candidates(lambda b, p: CrossEncoderModel(staging, manifest, backend=b, precision=p))
        for backend, precision, requires, runner in opened:
            parity = _variant_parity(runner, sequences, reference, backend, precision, requires)
            manifest.parity.append(parity)
            log.info("%s: correlation %.6f, max |error| %.5f", parity.key, parity.min_cosine, parity.max_abs_error)
        manifest.save(staging)
    return manifest


def _trace(model: Any, tokenizer: Any, path: Path) -> None:
    """The scorer as an ONNX graph with dynamic batch and sequence axes."""
    # A padded batch, so the traced graph keeps the attention-mask path (an all-ones sample
    # lets transformers drop the mask, and padded batches would then score wrongly).
    example = tokenizer(
        ["a query", "another query"],
        ["a document", "a much longer document with more words"],
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        torch.onnx.export(
            _Scorer(model),
            (example["input_ids"], example["attention_mask"], example["token_type_ids"]),
            str(path),
            input_names=INPUTS,
            output_names=[SCORE_OUTPUT],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in INPUTS}, SCORE_OUTPUT: {0: "batch"}},
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )


def _variant_parity(
    runner: CrossEncoderModel,
    sequences: list[np.ndarray],
    reference: np.ndarray,
    backend: Backend,
    precision: Precision,
    requires: list[str],
) -> VariantParity:
    """One variant's scores against PyTorch's `reference` (n,): a score has no direction, so the
    cosine fields hold the Pearson correlation (scores centred), and its throughput."""
    start = time.perf_counter()
    scores = np.concatenate([runner.forward(sequences[i : i + 32])[:, 0, 0] for i in range(0, len(sequences), 32)])
    elapsed = time.perf_counter() - start
    a, b = scores - scores.mean(), reference - reference.mean()
    correlation = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return VariantParity(
        backend=backend,
        precision=precision,
        onnx_file=ONNX_FILE,
        min_cosine=correlation,
        mean_cosine=correlation,
        max_abs_error=float(np.abs(scores - reference).max()),
        n_samples=len(sequences),
        reference="transformers fp32 (PyTorch) logits",
        samples_per_s=round(len(sequences) / elapsed, 1),
        requires=requires,
    )


def _torch_scores(model, sequences: list[np.ndarray], runner: CrossEncoderModel) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = []
    with torch.inference_mode():
        for start in range(0, len(sequences), 32):
            chunk = sequences[start : start + 32]
            length = max(len(s) for s in chunk)
            ids = np.full((len(chunk), length), runner.pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
                types[row, int(np.argmax(seq == runner.sep_id)) + 1 : len(seq)] = 1
            logits = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types),
            ).logits
            out.append(logits[:, 0].numpy())
    return np.concatenate(out)
