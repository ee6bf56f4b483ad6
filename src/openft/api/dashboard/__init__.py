"""The web dashboard: one static page at `/` that drives the public `/v1` API from the browser.

Everything it shows comes from the same endpoints the SDKs use, with the key the user pastes once (kept in
the browser's localStorage). The server adds only what the page cannot learn from `/v1`: which user
actions each job status allows, rendered from `openft.domain.job_states` so the buttons never disagree with the
state machine. No route here is in `/openapi.json`: the dashboard is not part of the API.
"""

from openft.api.dashboard.routes import router

__all__ = ["router"]
