"""Request authentication: Firebase ID tokens, or the seed's open mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import firebase_admin
from firebase_admin import auth as fb_auth

from memharbor.access import Principal
from token_http.errors import ApiError

_BEARER = "bearer "


class Authenticator(Protocol):
    """Turns the Authorization header into a Principal, or raises a 401 ApiError."""

    async def authenticate(self, authorization: str | None) -> Principal: ...


class OpenAccess:
    """MEMHARBOR_AUTH=none: everyone is trusted, as the seed did."""

    # One shared principal: it is immutable, and building a frozen dataclass per request cost 2 % of a token.
    _anyone = Principal.anyone()

    async def authenticate(self, authorization: str | None) -> Principal:
        return self._anyone


class FirebaseIdTokens:
    """Verifies `Authorization: Bearer <Firebase ID token>` with Firebase Admin."""

    def __init__(self, app: firebase_admin.App, now: Callable[[], float] = time.time) -> None:
        self._app = app
        self._now = now

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization[: len(_BEARER)].lower() == _BEARER:
            raise ApiError(401, "missing Authorization: Bearer <Firebase ID token>", field="Authorization")
        token = authorization[len(_BEARER) :].strip()
        if not token:
            raise ApiError(401, "missing Authorization: Bearer <Firebase ID token>", field="Authorization")
        try:
            claims = await asyncio.to_thread(fb_auth.verify_id_token, token, self._app)
        except fb_auth.CertificateFetchError:
            raise ApiError(503, "cannot fetch Firebase public keys to verify the ID token") from None
        except (ValueError, fb_auth.InvalidIdTokenError):
            # Never echo the token: the message says what is wrong, not what was sent.
            raise ApiError(401, "invalid or expired Firebase ID token", field="Authorization") from None
        # Firebase Admin skips the expiry check for emulator-format tokens; checked here so the local stack
        # refuses an expired token as production does (a signed token already passed this check).
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or isinstance(expires, bool) or expires <= self._now():
            raise ApiError(401, "invalid or expired Firebase ID token", field="Authorization")
        return Principal(uid=str(claims["uid"]), admin=claims.get("admin") is True)
