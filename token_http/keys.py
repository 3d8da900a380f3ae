"""Every typed application key of the service, in one place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from memharbor.clock import Clock
from memharbor.repositories.calls import CallReader, CallRepository
from memharbor.repositories.console import ConsoleReader, RecordingAudio
from memharbor.repositories.recordings import RecordingRepository
from memharbor.repositories.timeline import TimelineReader
from memharbor.repositories.workers import HealthSource
from memharbor.settings import HttpSettings

if TYPE_CHECKING:  # annotations only: ratelimit reads DEPS from this module, so a runtime import would be a cycle
    from token_http.auth import Authenticator
    from token_http.ratelimit import RateLimiter


@dataclass(frozen=True)
class Deps:
    """The adapters the handlers use; tests pass fakes or real emulator-backed ones."""

    authenticator: Authenticator
    # Call lookups of /api/token and the recording routes.
    calls: CallReader
    health: HealthSource
    clock: Clock
    # The seed's /api/call/* routes; None answers them with 503 (tests of other routes need not set it).
    call_repository: CallRepository | None = None
    # The seed's /api/recording/* routes; None answers them with 503.
    recording_repository: RecordingRepository | None = None
    # Per-user budget of the work-creating routes (invite, recording start); None counts nothing.
    rate_limiter: RateLimiter | None = None
    # Per-call timelines for the admin routes; None answers them with 503.
    timeline: TimelineReader | None = None
    # The console's admin views (recent calls, recordings); None answers them with 503.
    console: ConsoleReader | None = None
    # Recording files for the participants' and the console's audio routes; None answers them with 503.
    audio: RecordingAudio | None = None


SETTINGS = web.AppKey("settings", HttpSettings)
DEPS = web.AppKey("deps", Deps)


@dataclass
class HealthCache:
    """One health check at a time; its result is reused briefly so load on /api/health spares Firestore."""

    at: float = float("-inf")
    result: tuple[int, dict[str, Any]] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


HEALTH_CACHE = web.AppKey("health_cache", HealthCache)
