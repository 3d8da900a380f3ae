"""Routes for admins (claim `admin`; anyone with MEMHARBOR_AUTH=none): support's view of calls.

`GET /api/admin/calls/{call_id}/timeline` answers what `memharbor inspect CALL_ID --json` prints: the
call, the watcher's server document, every recorded server step and the call's recordings, with the
explanation of `memharbor.timeline.explain` (docs/support.md). The console (`/console`) reads the other
routes: recent calls, push errors and violations, workers, recordings and a recording's audio.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from memharbor.repositories.console import ConsoleReader
from memharbor.repositories.timeline import TimelineReader
from memharbor.timeline import iso, to_json
from token_http import console_views, recording_routes
from token_http.errors import ApiError, bad_request, checked_id, configured, json_response
from token_http.keys import DEPS

# Rows a console list shows by default and at most (`?limit=`).
DEFAULT_ROWS = 20
MAX_ROWS = 100
# Calls scanned for push errors and violations.
PROBLEM_SCAN = 100


def _reader(request: web.Request) -> TimelineReader:
    return configured(request.app[DEPS].timeline, "the call timeline")


def _console(request: web.Request) -> ConsoleReader:
    return configured(request.app[DEPS].console, "the console's reading of calls")


async def _admin(request: web.Request, what: str) -> None:
    principal = await request.app[DEPS].authenticator.authenticate(request.headers.get("Authorization"))
    if not principal.unrestricted:
        raise ApiError(403, f"only admins may read {what}")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_ROWS
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_ROWS:
        raise bad_request("limit", f"limit must be an integer from 1 to {MAX_ROWS}")
    return int(raw)


def _now(request: web.Request) -> datetime:
    return datetime.fromtimestamp(request.app[DEPS].clock.time(), UTC)


async def get_timeline(request: web.Request) -> web.Response:
    """A call's timeline; admins only (a timeline names every device and worker that touched the call)."""
    await _admin(request, "call timelines")
    call_id = checked_id(request.match_info["call_id"], "call_id")
    timeline = await _reader(request).read(call_id)
    if timeline is None:
        raise ApiError(404, f"unknown call {call_id}", field="call_id")
    return json_response(to_json(timeline))


async def get_calls(request: web.Request) -> web.Response:
    """The most recently updated calls: status, how long they rang, the pushes per device."""
    await _admin(request, "calls")
    limit, now = _limit(request), _now(request)
    rows = console_views.call_rows(await _console(request).recent_calls(limit), now)
    return json_response({"now": iso(now), "calls": rows})


async def get_problems(request: web.Request) -> web.Response:
    """Push errors, failed pushes and violations among the most recently updated calls."""
    await _admin(request, "problems")
    limit, now = _limit(request), _now(request)
    rows = console_views.call_rows(await _console(request).recent_calls(PROBLEM_SCAN), now)
    found = console_views.problems(rows)
    return json_response({"scannedCalls": len(rows), "problems": found[:limit]})


async def get_workers(request: web.Request) -> web.Response:
    """Every worker's heartbeat and whether it is alive."""
    await _admin(request, "workers")
    now = _now(request)
    beats = await request.app[DEPS].health.heartbeats()
    return json_response({"now": iso(now), "workers": console_views.worker_rows(beats, now)})


async def get_recordings(request: web.Request) -> web.Response:
    """The newest recording sessions in any status, with their file's format."""
    await _admin(request, "recordings")
    sessions = await _console(request).recent_recordings(_limit(request))
    return json_response({"recordings": [console_views.recording_row(sid, doc) for sid, doc in sessions]})


async def get_recording_audio(request: web.Request) -> web.Response:
    """A stopped session's WAV file (from Storage, else the recorder's local directory)."""
    await _admin(request, "recordings")
    sid = checked_id(request.match_info["sid"], "sid")
    session = await _console(request).recording(sid)
    if session is None:
        raise ApiError(404, f"unknown recording session {sid}", field="sid")
    return await recording_routes.audio_response(request, sid, session)


def routes() -> list[web.RouteDef]:
    """The admin routes, for the application's router."""
    return [
        web.get("/api/admin/calls/{call_id}/timeline", get_timeline),
        web.get("/api/admin/calls", get_calls),
        web.get("/api/admin/problems", get_problems),
        web.get("/api/admin/workers", get_workers),
        web.get("/api/admin/recordings", get_recordings),
        web.get("/api/admin/recordings/{sid}/audio", get_recording_audio),
    ]
