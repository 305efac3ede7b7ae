"""The web dashboard at `/`: one HTML page and its ES modules and CSS, shipped in the package
(`static/dashboard/`, no build step, no framework, nothing loaded from elsewhere).

The page and its assets are open like `/docs`: they are code and hold no secret. Every piece of
data the page shows comes from the API under /api/v1 with the token the person signs in with
(kept in the browser's sessionStorage, sent as `Authorization: Bearer`, never in a URL).
A strict Content-Security-Policy allows scripts, styles and connections to this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent / "static" / "dashboard"
ASSETS_PATH = "/static/dashboard"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the dashboard at `/` and its assets under `/static/dashboard/`."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(ASSETS / "index.html", media_type="text/html", headers=HEADERS)


__all__ = ["ASSETS", "ASSETS_PATH", "install"]
