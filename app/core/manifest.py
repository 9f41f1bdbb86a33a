"""The model-folder contract: `models/<name>/manifest.json`.

This file is the only thing training and serving agree on. Training writes a folder that
validates against `Manifest`; the service loads any folder that does. It is owned by the
runtime side (here) and imported by `training/`, never the reverse.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
# A served variant must match the reference (PyTorch / sentence-transformers fp32) at least this well.
SERVING_MIN_COSINE = 0.999
# A served score model's logits may differ from the reference by at most this much.
SERVING_MAX_SCORE_ERROR = 0.05


class ModelKind(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    CLIP = "clip"
    CROSS_ENCODER = "cross-encoder"
    BLOCKRANK = "blockrank"


class Pooling(StrEnum):
    MEAN = "mean"
    CLS = "cls"
    MAX = "max"
    LAST_TOKEN = "lasttoken"


class Similarity(StrEnum):
    COSINE = "cosine"
    DOT = "dot"


class Backend(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Preprocessing(_Strict):
    """How raw input becomes model input. Tokenisation rules live in `tokenizer_file`."""

    tokenizer_file: str = "tokenizer.json"
    query_prefix: str = ""
    document_prefix: str = ""


class OnnxIO(_Strict):
    """Names of the ONNX graph's inputs and its (pooled, optionally normalised) output."""

    inputs: list[str]
    output: str = "sentence_embedding"
    # Pooled vector before L2 normalisation, when the graph normalises (for `normalize: false`).
    unnormalized_output: str | None = None

    @property
    def outputs(self) -> list[str]:
        return [self.output] + ([self.unnormalized_output] if self.unnormalized_output else [])


class VariantParity(_Strict):
    """One way of running the model (backend x precision) and how close it is to the reference."""

    backend: Backend
    precision: Precision
    onnx_file: str
    min_cosine: float
    mean_cosine: float
    n_sentences: int
    reference: str = "sentence-transformers fp32 (PyTorch)"
    # Throughput measured at export time on the exporting machine; used to rank variants.
    sentences_per_s: float | None = None
    # CPU capabilities the variant needs (OpenVINO capability names, e.g. "BF16").
    requires: list[str] = Field(default_factory=list)
    # Score models (cross-encoders): largest |logit - reference logit|; min_cosine is then the
    # correlation of the score vectors.
    max_abs_error: float | None = None

    @property
    def key(self) -> str:
        return f"{self.backend.value}-{self.precision.value}"

    @property
    def servable(self) -> bool:
        if self.max_abs_error is not None and self.max_abs_error > SERVING_MAX_SCORE_ERROR:
            return False
        return self.min_cosine >= SERVING_MIN_COSINE


class BlockRankSpec(_Strict):
    """How a `blockrank` folder runs: in-context reranking on PyTorch weights (`transformers` layout)
    in the folder itself; see app/inference/blockrank.py."""

    backbone: Literal["encoder", "causal-lm"]
    layer: int = Field(ge=0, description="l*, 0-based: the layer whose attention scores; later layers never run")
    doc_tokens: int = Field(gt=0, description="every document block is truncated/padded to this many tokens")
    max_documents: int = Field(200, gt=0, description="documents per prompt")


class SourceInfo(_Strict):
    checkpoint: str
    library: str = "sentence-transformers"
    exported_with: dict[str, str] = Field(default_factory=dict)


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: ModelKind
    dim: int = Field(gt=0)
    pooling: Pooling
    normalize: bool
    max_tokens: int = Field(gt=0)
    similarity: Similarity = Similarity.COSINE
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    onnx: OnnxIO | None = None  # every kind but blockrank
    blockrank: BlockRankSpec | None = None  # kind blockrank only
    files: dict[str, str] = Field(description="relative path -> sha256 of every file the model needs")
    source: SourceInfo
    parity: list[VariantParity] = Field(default_factory=list)
    eval_scores: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _runtime_matches_kind(self) -> Manifest:
        if self.kind == ModelKind.BLOCKRANK and self.blockrank is None:
            raise ValueError("a blockrank model needs a `blockrank` section")
        if self.kind != ModelKind.BLOCKRANK and self.onnx is None:
            raise ValueError(f"a {self.kind.value} model needs an `onnx` section")
        return self

    @property
    def graph(self) -> OnnxIO:
        """The ONNX section of an ONNX-served kind (validated present)."""
        assert self.onnx is not None
        return self.onnx

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((folder / MANIFEST_FILE).read_text())

    def save(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        tmp.replace(path)
        return path

    def verify_files(self, folder: Path) -> list[str]:
        """Return the problems found (missing files, hash mismatches); empty when intact."""
        problems = []
        for rel, digest in self.files.items():
            path = folder / rel
            if not path.is_file():
                problems.append(f"missing {rel}")
            elif sha256_file(path) != digest:
                problems.append(f"sha256 mismatch for {rel}")
        return problems


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
