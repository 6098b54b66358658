"""The playground: a static page at `/` that builds its form from `/openapi.json` and drives the queue API.

Plain files inside the package (no CDN, no build step), so it works offline and ships in the wheel. The page talks
to the same public routes as any client; this module only serves the files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def add_playground(app: FastAPI) -> None:
    """`GET /` answers the page; its scripts and styles live under `/web/`."""
    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")

    @app.get("/", include_in_schema=False)
    def playground() -> FileResponse:
        # no-cache: a new server version's page is picked up at once (the files are small)
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"cache-control": "no-cache"})
