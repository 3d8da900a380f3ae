"""Per-user rate limits on the routes that create documents or work: POST /api/call/invite and /api/recording/start.

Each user has one budget of MEMHARBOR_RATE_LIMIT requests (a moving window, `limits`' in-memory storage)
shared by those routes, keyed by the authenticated uid; with MEMHARBOR_AUTH=none, where nobody has a uid,
by the client's address. The count lives in this process: with MEMHARBOR_HTTP_WORKERS > 1 (or several
replicas) a user may get up to the limit from each process. POST /api/token is not limited: it creates no
work and is benchmarked for throughput.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from memharbor.access import Principal
from token_http.errors import too_many_requests
from token_http.keys import DEPS


class RateLimiter(Protocol):
    """Counts requests per key; the only thing the routes need of a rate limiter."""

    async def hit(self, key: str) -> int | None:
        """Count one request of `key`: None when allowed, else whole seconds until one would be."""
        ...


class MemoryRateLimiter:
    """One rate (`30/minute`, `limits` syntax) over a moving window per key, held in this process's memory."""

    def __init__(self, rate: str) -> None:
        self.item: RateLimitItem = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def hit(self, key: str) -> int | None:
        """Count one request of `key`: None when allowed, else whole seconds until one would be."""
        if await self._limiter.hit(self.item, key):
            return None
        stats = await self._limiter.get_window_stats(self.item, key)
        # limits stamps its windows with time.time(), not our Clock: measure the wait on the same clock.
        return max(1, math.ceil(stats.reset_time - time.time()))


def limit_key(request: web.Request, principal: Principal) -> str:
    """Whose budget a request spends: the user's uid, or the client's address when nobody is authenticated."""
    if principal.uid is not None:
        return f"uid:{principal.uid}"
    # Behind a reverse proxy every open-mode client shares the proxy's address (and so one budget):
    # a forwarded-for header is not trusted, since any client can write one.
    return f"addr:{request.remote or 'unknown'}"


async def enforce(request: web.Request, principal: Principal) -> None:
    """Count this work-creating request against its user's budget; a 429 with Retry-After when it is spent."""
    limiter = request.app[DEPS].rate_limiter
    if limiter is None:
        return
    retry_after = await limiter.hit(limit_key(request, principal))
    if retry_after is not None:
        raise too_many_requests(
            f"too many calls or recordings started in a short time; try again in {retry_after} s", retry_after
        )
