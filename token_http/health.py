"""GET /api/health: Firestore reachability, worker heartbeats and push transports, cheaply cached.

Anyone sees the states and counts; instance ids, push errors and error class names (which tell an
attacker what runs and what fails) only admins and the open mode (MEMHARBOR_AUTH=none) see.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from memharbor.clock import Clock
from memharbor.repositories.workers import HealthSource
from memharbor.settings import HttpSettings
from token_http.errors import ApiError, json_response
from token_http.keys import DEPS, HEALTH_CACHE, SETTINGS

FIRESTORE_TIMEOUT_S = 2.0
CACHE_TTL_S = 1.5
WORKER_KINDS = ("watcher", "recorder")


def _ts(value: Any) -> float | None:
    return value.timestamp() if hasattr(value, "timestamp") else None


def _workers(beats: list[dict[str, Any]], now: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for kind in WORKER_KINDS:
        live = [b.get("instanceId") for b in beats if b.get("kind") == kind and (_ts(b.get("expiresAt")) or 0.0) > now]
        report[kind] = {"alive": len(live), "instances": sorted(str(i) for i in live)}
    return report


def _push(settings: HttpSettings, beats: list[dict[str, Any]], now: float) -> dict[str, Any]:
    report: dict[str, dict[str, Any]] = {
        "apns": {"configured": settings.apns is not None},
        "fcm": {"configured": settings.fcm is not None},
    }
    # The watchers send the pushes: a live one's heartbeat says what it has configured and its last error.
    for beat in beats:
        if beat.get("kind") == "watcher" and (_ts(beat.get("expiresAt")) or 0.0) > now:
            for name, entry in report.items():
                _merge_transport(entry, ((beat.get("status") or {}).get("push") or {}).get(name))
    return report


def _merge_transport(entry: dict[str, Any], seen: Any) -> None:
    if not isinstance(seen, dict):
        return
    entry["configured"] = entry["configured"] or bool(seen.get("configured"))
    entry.setdefault("lastError", None)
    entry.setdefault("lastErrorAt", None)
    at = seen.get("lastErrorAt")
    if isinstance(at, str) and (entry["lastErrorAt"] is None or at > entry["lastErrorAt"]):
        entry["lastError"], entry["lastErrorAt"] = seen.get("lastError"), at


async def _check(source: HealthSource, settings: HttpSettings, clock: Clock) -> tuple[int, dict[str, Any]]:
    started = clock.monotonic()
    firestore: dict[str, Any] = {"ok": True}
    beats: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(FIRESTORE_TIMEOUT_S):
            await source.ping()
            firestore["latency_ms"] = round((clock.monotonic() - started) * 1000, 1)
            beats = await source.heartbeats()
    except TimeoutError:
        firestore = {"ok": False, "error": f"no answer within {FIRESTORE_TIMEOUT_S:.0f}s"}
    except Exception as exc:
        firestore = {"ok": False, "error": type(exc).__name__}
    workers = _workers(beats, clock.time())
    problems = []
    if not firestore["ok"]:
        problems.append("firestore unreachable")
    elif workers["watcher"]["alive"] == 0:
        problems.append("no live watcher: calls will not ring")
    body = {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "firestore": firestore,
        "workers": workers,
        "push": _push(settings, beats, clock.time()),
        "auth": settings.auth_label,
    }
    # Only a dead database makes this process unable to serve; a missing worker is reported, not fatal.
    return (200 if firestore["ok"] else 503), body


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report as anyone may see it: states and counts, without instance ids, errors or their causes."""
    return {
        "status": report["status"],
        "problems": report["problems"],
        "firestore": {"ok": report["firestore"]["ok"]},
        "workers": {kind: {"alive": entry["alive"]} for kind, entry in report["workers"].items()},
        "push": {name: {"configured": entry["configured"]} for name, entry in report["push"].items()},
        "auth": report["auth"],
    }


async def _sees_everything(request: web.Request) -> bool:
    """True for admins and the open mode; any failure to authenticate only means "not an admin"."""
    try:
        principal = await request.app[DEPS].authenticator.authenticate(request.headers.get("Authorization"))
    except ApiError:
        return False
    return principal.unrestricted


async def current_report(app: web.Application) -> tuple[int, dict[str, Any]]:
    """The health report and its status, checked at most once per CACHE_TTL_S (/api/health and /readyz share it)."""
    cache = app[HEALTH_CACHE]
    deps = app[DEPS]
    async with cache.lock:
        if cache.result is None or deps.clock.monotonic() - cache.at > CACHE_TTL_S:
            cache.result = await _check(deps.health, app[SETTINGS], deps.clock)
            cache.at = deps.clock.monotonic()
        return cache.result


async def get_health(request: web.Request) -> web.Response:
    """Report health (the full report to admins, states and counts to others); 503 when Firestore is unreachable."""
    status, report = await current_report(request.app)
    return json_response(report if await _sees_everything(request) else public_view(report), status=status)
