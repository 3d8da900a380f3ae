"""Routes for admins (claim `admin`; anyone with MEMHARBOR_AUTH=none): support's view of a call.

`GET /api/admin/calls/{call_id}/timeline` answers what `memharbor inspect CALL_ID --json` prints: the
call, the watcher's server document, every recorded server step and the call's recordings, with the
explanation of `memharbor.timeline.explain` (docs/support.md).
"""

from __future__ import annotations

from aiohttp import web

from memharbor import calls
from memharbor.repositories.timeline import TimelineReader
from memharbor.timeline import to_json
from token_http.errors import ApiError, bad_request, json_response
from token_http.keys import DEPS


def _reader(request: web.Request) -> TimelineReader:
    reader = request.app[DEPS].timeline
    if reader is None:
        raise ApiError(503, "the call timeline is not configured")
    return reader


async def get_timeline(request: web.Request) -> web.Response:
    """A call's timeline; admins only (a timeline names every device and worker that touched the call)."""
    principal = await request.app[DEPS].authenticator.authenticate(request.headers.get("Authorization"))
    if not principal.unrestricted:
        raise ApiError(403, "only admins may read call timelines")
    call_id = request.match_info["call_id"]
    if not calls.ID_PATTERN.fullmatch(call_id):
        raise bad_request("call_id", "call_id must be 1-128 characters of A-Z a-z 0-9 _ -, not __reserved__")
    timeline = await _reader(request).read(call_id)
    if timeline is None:
        raise ApiError(404, f"unknown call {call_id}", field="call_id")
    return json_response(to_json(timeline))


def routes() -> list[web.RouteDef]:
    """The admin routes, for the application's router."""
    return [web.get("/api/admin/calls/{call_id}/timeline", get_timeline)]
