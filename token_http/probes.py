"""GET /livez and GET /readyz: the probes of an orchestrator (Kubernetes), apart from the /api/health contract.

/livez is answered from memory: that the loop answers at all, within the probe's timeout, is what it
tells. /readyz says whether this process can do its work: Firestore answered the last health check
(the one /api/health caches, so probes and health share one Firestore round trip per 1.5 s) and Agora
credentials are configured.
"""

from __future__ import annotations

from aiohttp import web

from memharbor.metrics_server import probe_body
from token_http.errors import json_response
from token_http.health import current_report
from token_http.keys import SETTINGS


async def get_livez(_: web.Request) -> web.Response:
    """200 while the process's event loop answers."""
    status, body = probe_body([])
    return json_response(body, status=status)


async def get_readyz(request: web.Request) -> web.Response:
    """200 when Firestore answered the latest (cached) check and Agora credentials are set; else 503 naming why."""
    problems = []
    if request.app[SETTINGS].agora is None:
        problems.append("Agora credentials missing (AGORA_APP_ID, AGORA_APP_CERT)")
    _, report = await current_report(request.app)
    if not report["firestore"]["ok"]:
        problems.append("firestore unreachable")
    status, body = probe_body(problems)
    return json_response(body, status=status)
