"""Export a BlockRank model into the model-folder contract (kind `blockrank`).

BlockRank is served on PyTorch, not ONNX: its block-sparse forward is a different computation per
block (instruction once, N documents batched against the instruction's keys, the final block
against everything) with an early exit at l*, and the scores are read from attention logits, which
an exported graph would have to expose per layer. The folder holds the backbone's weights up to and
including l* (later layers never run; the config's depth is cut to match) in the transformers
layout (config.json + model.safetensors), the tokenizer, and a manifest whose `blockrank` section
says how to run it. The export reloads the folder as the service does and checks it scores a real
prompt exactly as the model in memory did.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from app.core.manifest import BlockRankSpec, Manifest, ModelKind, sha256_file
from app.inference.blockrank import BlockRankModel, load_backbone
from training.export.common import staged_folder
from training.export.text import score_model_manifest

log = logging.getLogger(__name__)
EXPORT_TOLERANCE = 1e-5


def export_blockrank(
    model: BlockRankModel,
    tokenizer,  # type: ignore[no-untyped-def]
    out_dir: Path,
    name: str,
    source: str,
    check_prompt: tuple[str, list[str]],
    eval_scores: dict[str, float] | None = None,
    max_documents: int = 200,
) -> Manifest:
    """Write `model` (backbone layers 0..l*) to `out_dir`, replaced atomically. `check_prompt` is a
    (query, documents) pair scored before and after the round trip."""
    backbone = copy.deepcopy(model.backbone).eval()
    keep = model.layer + 1
    layers = backbone.encoder.layer if model.kind == "encoder" else backbone.layers
    del layers[keep:]
    backbone.config.num_hidden_layers = keep
    if model.kind == "causal-lm" and getattr(backbone.config, "layer_types", None):
        backbone.config.layer_types = backbone.config.layer_types[:keep]
    with staged_folder(out_dir, name) as staging:
        backbone.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        manifest = score_model_manifest(
            name,
            ModelKind.BLOCKRANK,
            max_tokens=model.doc_tokens,
            files={f: sha256_file(staging / f) for f in files},
            checkpoint=source,
            eval_scores=eval_scores,
            blockrank=BlockRankSpec(
                backbone=model.kind, layer=model.layer, doc_tokens=model.doc_tokens, max_documents=max_documents
            ),
        )
        manifest.save(staging)
        query, documents = check_prompt
        reloaded_backbone, reloaded_tokenizer = load_backbone(staging, model.kind)
        reloaded = BlockRankModel(reloaded_backbone, model.kind, model.layer, model.doc_tokens).eval()
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            expected = model.forward_blocks(model.encode_prompt(tokenizer, query, documents))
            got = reloaded.forward_blocks(reloaded.encode_prompt(reloaded_tokenizer, query, documents))
        model.train(was_training)
        error = float((expected - got).abs().max())
        if error > EXPORT_TOLERANCE:
            raise ValueError(f"{name}: the exported folder scores differently (max |error| {error:.2e})")
        log.info("exported %s (%s, l* = %d): round-trip max |error| %.1e", name, model.kind, model.layer, error)
    return manifest
