"""GET /api/health: Firestore reachability, worker heartbeats and push transports, cheaply cached."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from memharbor.clock import Clock
from memharbor.settings import Settings
from memharbor.store import HealthSource
from token_http.errors import json_response
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


def _push(settings: Settings, beats: list[dict[str, Any]], now: float) -> dict[str, Any]:
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


async def _check(source: HealthSource, settings: Settings, clock: Clock) -> tuple[int, dict[str, Any]]:
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
        "auth": settings.auth_mode,
    }
    # Only a dead database makes this process unable to serve; a missing worker is reported, not fatal.
    return (200 if firestore["ok"] else 503), body


async def get_health(request: web.Request) -> web.Response:
    """Report health; 503 when Firestore is unreachable."""
    cache = request.app[HEALTH_CACHE]
    deps = request.app[DEPS]
    async with cache.lock:
        if cache.result is None or deps.clock.monotonic() - cache.at > CACHE_TTL_S:
            cache.result = await _check(deps.health, request.app[SETTINGS], deps.clock)
            cache.at = deps.clock.monotonic()
        status, body = cache.result
    return json_response(body, status=status)
