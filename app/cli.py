"""`tessera`: run the service (and, as they land, batch jobs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from app.core.auth import KeyConfigError, is_loopback, parse_keys
from app.core.config import ENV_FILE, Settings, env_file_problem, get_settings
from app.search.build_policies import Engine, OnBadImage, OnDuplicate, OnEmpty

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Tessera embedding service.")


@cli.callback()
def root() -> None:
    """Tessera embedding service."""


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: TESSERA_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: TESSERA_PORT")] = None,
) -> None:
    """Serve the API on the models in TESSERA_MODELS_DIR."""
    import uvicorn

    from app.core import open_files

    open_files.raise_soft_limit()  # before the protocol's import sizes its connection limit by it
    from app.api.http_protocol import GuardedHttpToolsProtocol

    settings = _settings_or_exit()
    bind = host or settings.host
    try:
        keys = parse_keys(settings.api_keys)
    except (KeyConfigError, OSError) as exc:
        _exit(str(exc))
    if not keys and not settings.allow_unauthenticated and not is_loopback(bind):
        _exit(
            f"refusing to serve {bind} without API keys: set TESSERA_API_KEYS, or "
            "TESSERA_ALLOW_UNAUTHENTICATED=true to serve it open, or bind 127.0.0.1"
        )
    uvicorn.run(
        "app.main:app",
        host=bind,
        port=port or settings.port,
        log_level=settings.log_level,
        access_log=False,  # one log line per request costs more than the embedding of a short text
        loop="uvloop",
        http=GuardedHttpToolsProtocol,  # httptools, with JSON refusals, a head size bound and read timeouts
    )


index_cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Batch index building.")
cli.add_typer(index_cli, name="index")


@index_cli.command("build")
def index_build(
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            help="JSONL/CSV/Parquet/NPY file or folder of them; for an image model, a folder of JPEG/PNG/WebP images "
            "(recursively; optional metadata.jsonl keyed by 'file')",
        ),
    ],
    model: Annotated[str, typer.Option(help="model folder name in TESSERA_MODELS_DIR")] = "minilm-l6",
    index: Annotated[str, typer.Option(help="collection name (created if missing)")] = "docs",
    engine: Annotated[Engine, typer.Option(help="local, or ray (Ray Data actor pool)")] = Engine.LOCAL,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one)")] = None,
    ray_actors: Annotated[int, typer.Option(min=1, help="embedding actors for --engine ray")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="records per durable commit (and per chunk)")] = 256,
    index_spec: Annotated[str, typer.Option("--index-spec", help="auto or a FAISS factory string")] = "auto",
    optimize: Annotated[bool, typer.Option(help="build the final index and measure recall at the end")] = True,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="skip if the index already exists (one embedded by another version of the model is rebuilt)",
        ),
    ] = False,
    replace_stale: Annotated[
        bool,
        typer.Option(
            "--replace-stale", help="an index embedded by another version of the model is deleted and rebuilt"
        ),
    ] = False,
    on_duplicate: Annotated[
        OnDuplicate, typer.Option("--on-duplicate", help="an id seen twice: error, last (the last wins) or first")
    ] = OnDuplicate.LAST,
    on_empty: Annotated[
        OnEmpty, typer.Option("--on-empty", help="a record with an empty text: error, or skip (counted)")
    ] = OnEmpty.ERROR,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore an interrupted build of this input; start from the first record")
    ] = False,
    on_bad_image: Annotated[
        OnBadImage, typer.Option("--on-bad-image", help="an image that cannot be read: error (stop), or skip (listed)")
    ] = OnBadImage.ERROR,
    rescore: Annotated[
        str | None,
        typer.Option(
            "--rescore", help="a new index also keeps this reranker's (or text model's) vectors for search's rerank"
        ),
    ] = None,
) -> None:
    """Embed a dataset into an index the server loads; resumes after an interruption.

    Progress and messages go to stderr; the result (JSON) alone to stdout."""
    from app.core.errors import StorageFull, TesseraError
    from app.inference.variants import NoServableVariant
    from app.search.builder import BuildOptions, Existing, build_index, existing_index

    settings = _settings_or_exit()
    try:
        existing = existing_index(settings, model, index) if if_missing else Existing.NONE
    except TesseraError as exc:
        _exit(str(exc))
    # An interrupted build leaves its checkpoint behind: that one is resumed, not skipped.
    if existing is Existing.CURRENT:
        typer.echo(f"index {index!r} exists, not rebuilt", err=True)
        typer.echo(json.dumps({"index": index, "skipped": "exists"}))
        return
    if existing is Existing.STALE:
        typer.echo(f"index {index!r} was embedded by another version of {model!r}: rebuilding it", err=True)
    options = BuildOptions(
        batch_size=batch_size,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
        index_spec=index_spec,
        optimize=optimize,
        on_duplicate=on_duplicate,
        on_empty=on_empty,
        restart=restart,
        on_bad_image=on_bad_image,
        rescore=rescore,
        replace_stale=replace_stale or existing is Existing.STALE,
    )
    progress = _BuildBar(index)
    try:
        with progress:
            result = build_index(settings, model, input_path, index, options, progress)
    except StorageFull as exc:
        _exit(f"{exc}; the build resumes after its {progress.done} committed records when run again")
    except (TesseraError, NoServableVariant) as exc:
        _exit(str(exc))
    except KeyboardInterrupt:
        typer.echo(
            f"\ninterrupted after {progress.done} committed records; run the same command again to resume", err=True
        )
        raise typer.Exit(130) from None
    typer.echo(json.dumps(result, indent=2, default=str))


class _BuildBar:
    """The build's progress on stderr: records committed (not lines), the rate since the first
    commit of this run (model loading excluded), and whether it resumed."""

    def __init__(self, index: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.0f} rec/s"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task(f"embedding into {index}", total=None, rate=0.0)
        self.done = 0
        self._first: tuple[float, int] | None = None

    def __enter__(self) -> _BuildBar:
        return self  # the bar appears once the input is checked (planned), not before an error

    def __exit__(self, *_: object) -> None:
        self.bar.stop()

    def planned(self, plan, resumed_from: int) -> None:  # type: ignore[no-untyped-def]
        self.done = resumed_from
        files = f"{len(plan.files)} file{'s' * (len(plan.files) != 1)}"
        skipped = f", {len(plan.skipped_files)} other files skipped" if plan.skipped_files else ""
        dupes = f", {plan.duplicates} duplicate ids" if plan.duplicates else ""
        empty = f", {plan.empty} with an empty text left out" if plan.empty else ""
        self.console.print(f"{plan.records} records in {files}{skipped}{dupes}{empty}")
        self.bar.start()
        if resumed_from:
            self.console.print(f"resuming after {resumed_from} records committed by an interrupted build")
        self.bar.update(self.task, completed=resumed_from, total=plan.records)

    def committed(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self._first is None:  # the rate counts from the first commit (model loading excluded)
            self._first = (now, done)
        started, base = self._first
        rate = (done - base) / max(now - started, 1e-9) if done > base else 0.0
        self.done = done
        self.bar.update(self.task, completed=done, total=total, rate=rate)


def _exit(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _settings_or_exit() -> Settings:
    """The settings, or one line naming the bad setting and exit code 2 (not a traceback)."""
    if (problem := env_file_problem()) is not None:
        _exit(problem)
    try:
        return get_settings()
    except UnicodeDecodeError:  # only the env file is decoded here: the environment is already text
        _exit(f"env file {ENV_FILE!r}: not UTF-8 text")
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "TESSERA_" + str(error["loc"][0]).upper() if error.get("loc") else "a TESSERA_ setting"
        _exit(f"{name}={error.get('input')!r}: {error['msg']}")


def main() -> None:
    cli()
