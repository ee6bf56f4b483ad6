"""Routes of the dashboard: the page, its static files (a fixed list, never a path from the URL) and the
status → allowed-actions table the buttons are enabled from."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from openft import __version__
from openft.domain.job_states import TERMINAL, JobStatus, UserAction, action_sources

STATIC_DIR = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
"""The page loads nothing from elsewhere (it must work offline) and runs no inline script, so a strict
policy costs nothing and turns any escaping mistake into a blocked script rather than an XSS."""
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}

router = APIRouter(include_in_schema=False)


def _static_files() -> dict[str, Path]:
    """Every file under static/ by its relative path, read once: a request can only name one of these,
    so no URL (`..`, encoded slashes, absolute paths) can reach anything else on disk."""
    return {p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file()}


STATIC_FILES = _static_files()


def status_actions() -> dict[str, list[str]]:
    """For every job status, the user actions (`pause`, `resume`, `cancel`) the server accepts in it,
    straight from the state machine, so the page needs no copy of the rules."""
    return {status.value: [a.value for a in UserAction if status in action_sources(a)] for status in JobStatus}


@router.get("/")
def page() -> FileResponse:
    """The single page; its views (jobs, a job, upload, playground) are chosen by the URL's #fragment."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/dashboard/config.json")
def config() -> dict[str, Any]:
    """Public facts the page needs before it has a key: no job data, so no authentication."""
    return {
        "version": __version__,
        "actions": status_actions(),
        "terminal": sorted(s.value for s in TERMINAL),
    }


@router.get("/dashboard/static/{name:path}")
def static(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise HTTPException(404)  # answered in the OpenAI error envelope, like any unknown URL
    media_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=_HEADERS)
