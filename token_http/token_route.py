"""POST /api/token: the seed's Agora RTC token endpoint, behind authentication and authorization."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from memharbor import agora
from memharbor.access import Principal, may_get_token
from memharbor.errors import Unavailable
from memharbor.settings import HttpSettings
from token_http.body import json_object, optional_int
from token_http.errors import ApiError, bad_request, json_response
from token_http.keys import DEPS, Deps

CALL_LOOKUP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TokenRequest:
    """A checked /api/token body."""

    channel: str
    uid: int | None
    account: str | None
    role: agora.Role
    expire_s: int
    version: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TokenRequest:
        channel = body.get("channel")
        if channel is None or channel == "":
            raise bad_request("channel", "channel is required")
        problem = agora.channel_name_error(channel)
        if problem is not None:
            raise bad_request("channel", problem)
        uid, account = _identity(body)
        return cls(channel, uid, account, _role(body), _expire(body), _version(body))


def _identity(body: dict[str, Any]) -> tuple[int | None, str | None]:
    uid = body.get("uid")
    if isinstance(uid, str) and uid.isascii() and uid.isdigit() and len(uid) <= 10:
        uid = int(uid)  # legacy clients send the number as a string (ASCII digits only: int("²") raises)
    account = body.get("user_account")
    if uid is None and account in (None, ""):
        raise bad_request("uid", "uid or user_account is required")
    if uid is not None and account not in (None, ""):
        raise bad_request("uid", "give either uid or user_account, not both")
    if uid is not None:
        # uid 0 would make a token any user can join with, so it is refused like any other bad uid.
        if isinstance(uid, bool) or not isinstance(uid, int) or not 1 <= uid <= agora.MAX_UID:
            raise bad_request("uid", "uid must be an integer from 1 to 4294967295")
        return uid, None
    problem = agora.account_error(account)
    if problem is not None:
        raise bad_request("user_account", problem)
    return None, str(account)


def _role(body: dict[str, Any]) -> agora.Role:
    raw = body.get("role")
    if raw is None:
        return agora.Role.SUBSCRIBER
    try:
        return agora.Role(raw)
    except ValueError:
        raise bad_request("role", "role must be 'publisher' or 'subscriber'") from None


def _expire(body: dict[str, Any]) -> int:
    expire = optional_int(body, "expire")
    if expire is None:
        return agora.MAX_EXPIRE_S
    if expire <= 0:
        raise bad_request("expire", "expire must be a positive number of seconds")
    return min(expire, agora.MAX_EXPIRE_S)


def _version(body: dict[str, Any]) -> str:
    version = body.get("version", "006")
    if version not in ("006", "007"):
        raise bad_request("version", "version must be '006' or '007'")
    return str(version)


async def authorize(request: web.Request, principal: Principal, req: TokenRequest) -> None:
    """403 unless the principal may join `req.channel` as `req.account`."""
    if principal.unrestricted:
        return
    if req.account is not None and req.account != principal.uid:
        raise ApiError(403, "user_account must be your own uid", field="user_account")
    try:
        # Without a bound, an unreachable Firestore holds the request for minutes (client retries).
        async with asyncio.timeout(CALL_LOOKUP_TIMEOUT_S):
            calls = await request.app[DEPS].calls.calls_on_channel(req.channel)
    except (Unavailable, TimeoutError):
        # Only an outage is a 503: any other exception is a bug, answered 500 and logged with its stack.
        raise ApiError(503, "Firestore is unavailable; cannot check the call") from None
    if not may_get_token(principal, calls):
        raise ApiError(403, "no pending or accepted call of yours uses this channel", field="channel")


def token_handler(settings: HttpSettings, deps: Deps) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /api/token for one app's settings and adapters.

    They are bound here rather than read from `request.app` on each request: this is the service's
    busiest route, and the lookups were 1 % of its cost.
    """

    async def post_token(request: web.Request) -> web.Response:
        """Issue an Agora RTC token for a channel the caller may join."""
        principal = await deps.authenticator.authenticate(request.headers.get("Authorization"))
        req = TokenRequest.parse(await json_object(request))
        if not principal.unrestricted:  # saves admins and open mode a coroutine per request
            await authorize(request, principal, req)
        creds = settings.require_agora()
        now = int(deps.clock.time())
        token = agora.build_rtc_token(
            app_id=creds.app_id,
            app_certificate=creds.app_certificate.value,
            channel=req.channel,
            uid=req.uid,
            account=req.account,
            role=req.role,
            expire_s=req.expire_s,
            now=now,
            version=req.version,
        )
        return json_response({"token": token, "expire_at": now + req.expire_s, "expire_in": req.expire_s})

    return post_token
