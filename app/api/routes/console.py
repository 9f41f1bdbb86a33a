"""The web console at /ui: static files shipped in the package (no CDN, no build step). They hold
no data: the page calls the public API with the key the user types, so they are served without a
key, under a Content-Security-Policy that allows only this origin's scripts and connections."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "console" / "static"
CONSOLE_PREFIX = "/ui"
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def is_console_path(path: str) -> bool:
    """The page, its assets and the root redirect: open without a key (they carry no data)."""
    return path == "/" or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(f"{CONSOLE_PREFIX}/", status_code=307)


@router.get(CONSOLE_PREFIX)
@router.get(f"{CONSOLE_PREFIX}/")
async def console_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=CONSOLE_HEADERS)


class _ConsoleAssets(StaticFiles):
    """The assets with the console's headers."""

    async def get_response(self, path: str, scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        response.headers.update(CONSOLE_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(f"{CONSOLE_PREFIX}/assets", _ConsoleAssets(directory=STATIC_DIR), name="console-assets")
