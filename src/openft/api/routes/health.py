"""`GET /health`: answers without a key (for load balancers and the demo's start-up wait)."""

from __future__ import annotations

from fastapi import APIRouter

from openft import __version__

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
