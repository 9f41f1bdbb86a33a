"""`tessera`: run the service (and, as they land, batch jobs)."""

from __future__ import annotations

from typing import Annotated

import typer

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

    from app.core.config import get_settings

    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
        access_log=False,  # one log line per request costs more than the embedding of a short text
        loop="uvloop",
        http="httptools",
    )


def main() -> None:
    cli()
