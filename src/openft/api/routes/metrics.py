"""`GET /metrics`: the Prometheus exposition (services/metrics.py) on the API port, for admin keys only.

The numbers are the whole server's, of every organization (queue depths, job counts, memory), so a tenant's key
gets 403; no key or a wrong one gets 401 from `auth_gate.AuthGate`, which `create_app` puts in front of this
path as of the resource prefixes. Operators who would rather not hand an admin key to Prometheus set
`OPENFT_METRICS_PORT` and scrape that loopback listener instead (README "Metrics").

Not in `/openapi.json`: it is an operator's endpoint, not part of the OpenAI API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.errors import PermissionDenied

METRICS_PATH = "/metrics"
router = APIRouter(tags=["metrics"])


@router.get(METRICS_PATH, include_in_schema=False)
def metrics(request: Request, principal: PrincipalDep) -> Response:
    """A plain `def`: the scrape reads the job table, so it runs in the thread pool, off the event loop."""
    if not principal.admin:
        raise PermissionDenied("Reading /metrics needs an admin API key (`openft keys create --admin`).")
    body, content_type = container(request).metrics.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)
