"""The web dashboard: static pages (public); their data calls send the API key."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"


FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#1f6feb"/>'
    '<path d="M3 11h10M3 8l3-3 3 3 4-4" stroke="#fff" stroke-width="1.6" fill="none"/></svg>'
)


def mount_dashboard(app: FastAPI) -> None:
    app.mount("/dashboard", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        """The dashboard's icon: a small SVG, so that browsers do not log a 404 on every page."""
        return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
