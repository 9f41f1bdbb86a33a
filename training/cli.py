"""`python -m training`: export (and, as they land, train / eval / mine)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from training.sources import DEFAULT_BASE_MODEL, ModelSourceError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and export Tessera models.")


@app.callback()
def root() -> None:
    """Train, evaluate and export Tessera models."""


DEFAULT_PARITY_DATA = Path("../shared/data/stsbenchmark/sts-dev.csv")


def load_parity_sentences(path: Path, count: int) -> list[str]:
    """STS-B style TSV (both sentences of each pair) or plain text, one sentence per line."""
    from training.data.sts import sts_sentences

    if not path.is_file():
        raise typer.BadParameter(f"{path}: parity data not found (pass --parity-data)")
    if path.suffix in {".csv", ".tsv"}:
        sentences = sts_sentences(path, limit=count)
    else:
        sentences = [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()][:count]
    if len(sentences) < count:
        raise typer.BadParameter(f"{path}: {len(sentences)} sentences, fewer than the {count} asked for")
    return sentences


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
) -> None:
    """Export a text encoder to ONNX (pooling + normalisation in the graph) with parity figures."""
    from app.core.manifest import Manifest

    target = out or Path("models") / name
    if if_missing and (target / "manifest.json").is_file():
        manifest = Manifest.load(target)
        if not manifest.verify_files(target):
            typer.echo(f"{target}: present and intact, not re-exported")
            return
    sentences = load_parity_sentences(parity_data, parity_sentences)
    from training.export.text import export_text_model

    try:
        manifest = export_text_model(source, target, name, sentences, threads=threads)
    except ModelSourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for variant in manifest.parity:
        typer.echo(
            f"{variant.key:>18}: min cosine {variant.min_cosine:.6f}, mean {variant.mean_cosine:.6f}, "
            f"{variant.sentences_per_s:.0f} sentences/s ({variant.n_sentences} sentences)"
        )
    typer.echo(f"wrote {target}")


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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()
