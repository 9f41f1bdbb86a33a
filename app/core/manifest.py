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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 2
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
    BI_ENCODER = "bi-encoder"


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
    INT8 = "int8"  # int8 weights in their own ONNX file (the variant's onnx_file); float activations


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OnnxIO(_Strict):
    """One tower's ONNX graph: its input names and its (pooled, optionally normalised) output."""

    inputs: list[str]
    output: str = "sentence_embedding"
    # Pooled vector before L2 normalisation, when the graph normalises (for `normalize: false`).
    unnormalized_output: str | None = None

    @property
    def outputs(self) -> list[str]:
        return [self.output] + ([self.unnormalized_output] if self.unnormalized_output else [])


class TextTower(_Strict):
    """How text becomes model input and what the text graph computes. Tokenisation rules live in
    `tokenizer_file`. Score models (cross-encoder, BlockRank) have a text tower without pooling."""

    tokenizer_file: str = "tokenizer.json"
    query_prefix: str = ""
    document_prefix: str = ""
    max_tokens: int = Field(gt=0)
    pooling: Pooling | None = None  # embedding kinds: how token states become one vector (in the graph)
    normalize: bool = False  # embedding kinds: L2-normalised in the graph
    onnx: OnnxIO | None = None  # every kind but blockrank (PyTorch weights)
    onnx_file: str = "model.onnx"  # the fp32 graph (a `clip` folder's is text.onnx beside image.onnx)


class ImageTower(_Strict):
    """How an image becomes model input (done by the service exactly as written here) and its graph.

        Resize so the shorter side is `resize_size` (`resize: shortest`) or to a square of that side
        (`squash`), then cut the centre `input_size` square (`crop: center`), scale to [0, 1], subtract
        `mean` and divide by `std` per channel, in `channel_order`, laid out NCHW (after
        `trim_transparent`'s cut to the visible pixels, when set). `app/inference/images.py`
    does it; training imports that same code."""

    input_size: int = Field(gt=0)
    resize_size: int = Field(gt=0)
    resize: Literal["shortest", "squash"] = "shortest"
    crop: Literal["center", "none"] = "center"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # Transparent pixels are composited onto this colour before anything else.
    background: list[int] = Field(default_factory=lambda: [255, 255, 255], min_length=3, max_length=3)
    # Set: an image with transparency is first cut to the box of its visible pixels and padded
    # square with this margin (a fraction of the box's longer side), so drawings that leave
    # different empty borders (emoji sets do) reach the model at one scale. Opaque images: unchanged.
    trim_transparent: float | None = Field(None, ge=0, le=1)
    normalize: bool = True
    onnx: OnnxIO
    onnx_file: str = "image.onnx"


Tower = Literal["text", "image"]


class VariantParity(_Strict):
    """One way of running one tower (backend x precision) and how close it is to the reference."""

    backend: Backend
    precision: Precision
    onnx_file: str
    tower: Tower = "text"
    min_cosine: float
    mean_cosine: float
    n_samples: int = Field(description="inputs (sentences, pairs, images) the parity was measured on")
    reference: str = "sentence-transformers fp32 (PyTorch)"
    # Throughput measured at export time on the exporting machine; used to rank variants.
    samples_per_s: float | None = None
    # Median ms of one short input on its own (a query), measured beside the other variants at export;
    # the service runs single queries on the variant fastest by it (see TextModel).
    query_ms: float | None = None
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


class HubnessSpec(_Strict):
    """A search hubness correction (app/inference/hubness.py): an image hit's score is its cosine
    minus `weight` x (its mean cosine to its `neighbours` nearest bank vectors - `mean`)."""

    file: str = Field(
        description="(t, dim) float32 .npy of unit vectors: the texts (or, for image queries, the images) "
        "the image head learnt from"
    )
    neighbours: int = Field(10, ge=1, le=1000)
    weight: float = Field(0.5, ge=0, le=10)
    mean: float = Field(ge=-1, le=1, description="the training images' mean neighbourhood similarity")


class ClipSpec(_Strict):
    """How a `clip` model classifies images by label (POST /v1/classify) and corrects hubness."""

    temperature: float = Field(0.05, gt=0, description="softmax temperature over the image-label cosines")
    prompt: str = Field("a photo of a {label}", description="default label template; {label} is replaced")
    hubness: HubnessSpec | None = Field(None, description="text queries' correction: a bank of training captions")
    image_hubness: HubnessSpec | None = Field(
        None, description="image queries' correction: a bank of the training images' vectors"
    )


class BiEncoderSpec(_Strict):
    """How a `bi-encoder` reranker scores: the cosine of its own (stronger) embeddings of query and
    document, fused with the first stage's score where one exists (search's `rerank`):
    `model_weight * cosine + first_stage_weight * first-stage score`."""

    model_weight: float = Field(1.0, ge=0)
    first_stage_weight: float = Field(0.0, ge=0)
    fitted_on: str = Field("", description="the training queries the weights were fitted on (never evaluation ones)")
    query_tower: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="a sub-folder holding a smaller text model (its own manifest, files and parity) distilled into "
        "this model's space: search embeds its query by it when it rescores with stored vectors. Documents, and "
        "/v1/rerank's query, are always embedded by this folder's own graph, so the sub-folder's files are not "
        "among this manifest's `files` and a new query tower keeps the fingerprint stored vectors were made with",
    )
    query_alignment: float | None = Field(
        None, ge=-1, le=1, description="mean cosine of the query tower's vectors to this model's, on short texts"
    )
    query_tower_max_tokens: int | None = Field(
        None,
        ge=1,
        description="the longest query (in tokens) the query tower embeds; a longer one is embedded by this "
        "folder's own graph (the tower was distilled on short texts only). None: every query",
    )


class SourceInfo(_Strict):
    checkpoint: str
    library: str = "sentence-transformers"
    exported_with: dict[str, str] = Field(default_factory=dict)


# Which towers (and whether a shared `dim`) each kind has.
EMBEDDING_KINDS = frozenset({ModelKind.TEXT, ModelKind.IMAGE, ModelKind.CLIP})
# Kinds whose graph pools to one vector: the embedders, and rerankers that score by cosine.
POOLED_KINDS = EMBEDDING_KINDS | {ModelKind.BI_ENCODER}
_TOWERS: dict[ModelKind, tuple[bool, bool]] = {  # kind -> (text tower, image tower)
    ModelKind.TEXT: (True, False),
    ModelKind.IMAGE: (False, True),
    ModelKind.CLIP: (True, True),
    ModelKind.CROSS_ENCODER: (True, False),
    ModelKind.BLOCKRANK: (True, False),
    ModelKind.BI_ENCODER: (True, False),
}


class Quantization(_Strict):
    """Per-dimension ranges of the model's (served, normalised) embeddings over a calibration set:
    int8 / uint8 output maps [min, max] of each dimension onto 256 steps (sentence-transformers'
    `quantize_embeddings` with `ranges`). Measured at export."""

    ranges: list[list[float]] = Field(description="[[min per dimension], [max per dimension]]")
    calibrated_on: str
    n_samples: int = Field(gt=0)


class Manifest(_Strict):
    """Schema v2: a section per tower (`text`, `image`), a shared `dim` where the kind embeds, the
    kind's own section (`blockrank`), and parity per tower x backend x precision. Version-1 files
    (text-shaped top level) are read and converted on load."""

    schema_version: Literal[2] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: ModelKind
    dim: int | None = Field(None, gt=0, description="the embedding size, shared by every tower (embedding kinds)")
    similarity: Similarity = Similarity.COSINE
    text: TextTower | None = None
    image: ImageTower | None = None
    blockrank: BlockRankSpec | None = None  # kind blockrank only
    clip: ClipSpec | None = None  # kind clip only (defaults when absent)
    bi_encoder: BiEncoderSpec | None = None  # kind bi-encoder only (defaults when absent)
    files: dict[str, str] = Field(description="relative path -> sha256 of every file the model needs")
    source: SourceInfo
    parity: list[VariantParity] = Field(default_factory=list)
    eval_scores: dict[str, float] = Field(default_factory=dict)
    quantization: Quantization | None = None  # embedding kinds: int8 / uint8 output ranges
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @model_validator(mode="before")
    @classmethod
    def _read_v1(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version") == 1:  # v1 files always wrote it
            return _upgrade_v1(data)
        return data

    @model_validator(mode="after")
    def _sections_match_kind(self) -> Manifest:
        wants_text, wants_image = _TOWERS[self.kind]
        embeds = self.kind in POOLED_KINDS
        rules = [
            ("`text` section", wants_text, self.text is not None),
            ("`image` section", wants_image, self.image is not None),
            ("`dim`", embeds, self.dim is not None),
            ("`blockrank` section", self.kind == ModelKind.BLOCKRANK, self.blockrank is not None),
        ]
        for section, kind in ((self.clip, ModelKind.CLIP), (self.bi_encoder, ModelKind.BI_ENCODER)):
            if section is not None and self.kind != kind:
                raise ValueError(f"a {self.kind.value} model has no `{kind.value.replace('-', '_')}` section")
        if self.text is not None:
            rules += [
                ("ONNX graph for its text tower", self.kind != ModelKind.BLOCKRANK, self.text.onnx is not None),
                ("`pooling` in its text tower", embeds, self.text.pooling is not None),
            ]
        for what, wanted, present in rules:
            if wanted != present:
                raise ValueError(f"a {self.kind.value} model {'needs' if wanted else 'has no'} {what}")
        for section in ("hubness", "image_hubness"):
            spec = getattr(self.clip, section, None)
            if spec is not None and spec.file not in self.files:
                raise ValueError(f"`clip.{section}.file` {spec.file!r} is not among the folder's `files`")
        if self.quantization is not None:
            ranges = self.quantization.ranges
            if len(ranges) != 2 or any(len(row) != self.dim for row in ranges):
                raise ValueError(f"`quantization.ranges` must be 2 rows of {self.dim} values (min, max)")
            if any(not (low <= high) for low, high in zip(*ranges, strict=True)):
                raise ValueError("`quantization.ranges`: every min must be <= its max (and finite)")
        return self

    @property
    def text_tower(self) -> TextTower:
        """The text section of a kind that has one (validated present)."""
        if self.text is None:
            raise ValueError(f"model {self.name!r} ({self.kind.value}) has no text tower")
        return self.text

    @property
    def embedding_dim(self) -> int:
        if self.dim is None:
            raise ValueError(f"model {self.name!r} ({self.kind.value}) does not embed")
        return self.dim

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((folder / MANIFEST_FILE).read_text())

    def save(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
        tmp.replace(path)
        return path

    @property
    def fingerprint(self) -> str | None:
        """A short digest of the hashes of every file the model needs: a re-export of the same weights
        keeps it, a retrained model gets another. Collections record it, so vectors from two versions
        of a model are never mixed unnoticed. None when the manifest lists no files."""
        if not self.files:
            return None
        return hashlib.sha256(json.dumps(sorted(self.files.items())).encode()).hexdigest()[:16]

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


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A v1 manifest (text-shaped top level; score models with a fake dim/pooling) as v2."""
    data = dict(data)
    kind = data.get("kind")
    preprocessing = data.pop("preprocessing", None) or {}
    pooling, normalize = data.pop("pooling", None), data.pop("normalize", False)
    text: dict[str, Any] = {
        **preprocessing,
        "max_tokens": data.pop("max_tokens", None),
        "onnx": data.pop("onnx", None),
    }
    embeds = kind in {k.value for k in EMBEDDING_KINDS}
    if embeds:
        text.update(pooling=pooling, normalize=normalize)
    else:
        data.pop("dim", None)  # v1 wrote dim=1 for score models
    data["text"] = {k: v for k, v in text.items() if v is not None}
    data["parity"] = [
        {
            **{k: v for k, v in p.items() if k not in ("n_sentences", "sentences_per_s")},
            "n_samples": p.get("n_sentences", p.get("n_samples", 0)),
            "samples_per_s": p.get("sentences_per_s", p.get("samples_per_s")),
            "tower": "text",
        }
        for p in data.get("parity", [])
    ]
    data["schema_version"] = SCHEMA_VERSION
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
