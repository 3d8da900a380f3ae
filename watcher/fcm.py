"""FCM transport: HTTP v1 (`POST {endpoint}/v1/projects/{project}/messages:send`) over aiohttp with keep-alive.

- Auth: an OAuth2 access token for the service account (google-auth `service_account.Credentials`, the
  token URI from the key file or MEMHARBOR_FCM_TOKEN_URI), cached; refreshed in a worker thread (the
  refresh is a blocking HTTP call) in the background once it has less than 5 minutes left, and waited
  for only when it has less than 30 seconds left or the server answered 401.
- Message: data-only (no `notification`, so the app's FirebaseMessagingService runs even in the
  background and shows its own full-screen incoming-call UI), every data value a string,
  `android.priority: high` (wakes the device from Doze), `android.ttl` = whole seconds left until the
  ring deadline ("37s"), so FCM drops a ring that could only arrive too late.
- Outcomes: 404 UNREGISTERED and 400 INVALID_ARGUMENT about the registration token mark the token dead;
  429, 500 and 503 (honouring Retry-After), timeouts and connection errors are retried while the call rings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
import orjson
from google.oauth2 import service_account

from memharbor.logs import get_logger
from memharbor.settings import FcmSettings
from watcher.push import Kind, PushResult, PushTarget, StillWanted
from watcher.retry import Attempt, RetryPolicy, TransportStats, retry_after_seconds, send_counted

log = get_logger()

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
REFRESH_AHEAD_S = 300.0  # refresh in the background once a token has less than this left
MUST_REFRESH_S = 30.0  # below this, wait for a fresh token before sending
RETRYABLE_STATUSES = frozenset({429, 500, 503})
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


class AccessTokens:
    """The service account's OAuth2 access token for FCM, cached and refreshed off the event loop."""

    def __init__(
        self,
        service_account_info: Mapping[str, Any],
        token_uri: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        refresh_ahead_s: float = REFRESH_AHEAD_S,
        must_refresh_s: float = MUST_REFRESH_S,
    ) -> None:
        info = dict(service_account_info)
        if token_uri:
            info["token_uri"] = token_uri
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._request = google.auth.transport.requests.Request()
        self._clock = clock
        self._refresh_ahead_s = refresh_ahead_s
        self._must_refresh_s = must_refresh_s
        self._inflight: asyncio.Task[None] | None = None
        self._rejected = False
        self.refreshes = 0

    def seconds_left(self) -> float | None:
        """Seconds until the cached token expires; None when there is none (or it was rejected)."""
        expiry = self._credentials.expiry
        if self._rejected or not self._credentials.token or expiry is None:
            return None
        return expiry.replace(tzinfo=UTC).timestamp() - self._clock()

    async def token(self) -> str:
        """A usable access token; waits for a refresh only when the cached one is (nearly) expired."""
        left = self.seconds_left()
        if left is None or left <= self._must_refresh_s:
            await self._refresh()
        elif left <= self._refresh_ahead_s and self._inflight is None:
            self._start_refresh().add_done_callback(_log_background_failure)
        token = self._credentials.token
        assert isinstance(token, str)
        return token

    def rejected(self) -> None:
        """The server answered 401: the next send waits for a new token."""
        self._rejected = True

    async def _refresh(self) -> None:
        await asyncio.shield(self._inflight or self._start_refresh())

    def _start_refresh(self) -> asyncio.Task[None]:
        self._inflight = asyncio.create_task(self._run_refresh())
        return self._inflight

    async def _run_refresh(self) -> None:
        try:
            await asyncio.to_thread(self._credentials.refresh, self._request)
            self._rejected = False
            self.refreshes += 1
            log.info("fcm.access_token_refreshed", refreshes=self.refreshes, expires_in_s=self.seconds_left())
        finally:
            self._inflight = None

    def report(self) -> dict[str, Any]:
        expiry = self._credentials.expiry
        return {
            "accessTokenExpiresAt": expiry.replace(tzinfo=UTC).isoformat() if expiry is not None else None,
            "accessTokenRefreshes": self.refreshes,
        }


def _log_background_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The token still works for a while; the next send tries again (and waits, once it must).
        log.warning("fcm.access_token_refresh_failed", error=type(task.exception()).__name__)


def build_message(token: str, payload: Mapping[str, str], expires_at: float, now: float) -> dict[str, Any]:
    """The HTTP v1 request body: a high-priority data-only message that lives until the deadline."""
    ttl = max(0, int(expires_at - now))
    return {
        "message": {
            "token": token,
            "data": {str(key): str(value) for key, value in payload.items()},
            "android": {"priority": "high", "ttl": f"{ttl}s"},
        }
    }


def classify(status: int, body: bytes, retry_after: str | None = None) -> Attempt:
    """What an FCM answer means for the token and for retrying."""
    if status == 200:
        return Attempt("sent")
    error = _error_object(body)
    details = [d for d in error.get("details", []) if isinstance(d, dict)]
    codes = [d.get("errorCode") for d in details if d.get("@type") == _FCM_ERROR]
    code = next((c for c in codes if isinstance(c, str)), None) or str(error.get("status") or "")
    text = f"fcm:{status}:{code}" if code else f"fcm:{status}"
    if status == 404 and "UNREGISTERED" in (code, error.get("status")):
        return Attempt("dead_token", text)
    if status == 400 and code == "INVALID_ARGUMENT" and _about_the_token(error):
        return Attempt("dead_token", text)
    if status in RETRYABLE_STATUSES:
        return Attempt("transient", text, retry_after_seconds(retry_after))
    if status == 401:
        return Attempt("transient", text)  # the caller drops the access token first
    return Attempt("failed", text)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _about_the_token(error: Mapping[str, Any]) -> bool:
    """True when an INVALID_ARGUMENT names the registration token (not, say, a bad data value)."""
    for detail in error.get("details", []):
        if isinstance(detail, dict) and detail.get("@type") == _BAD_REQUEST:
            fields = [v.get("field") for v in detail.get("fieldViolations", []) if isinstance(v, dict)]
            if fields:
                return "message.token" in fields
    return "registration token" in str(error.get("message", "")).lower()


class FcmTransport:
    """Sends pushes to Android devices through FCM HTTP v1; keep-alive connections, bounded concurrency."""

    name = "fcm"

    def __init__(
        self,
        settings: FcmSettings,
        *,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 256,
        request_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._policy = policy or RetryPolicy()
        self._timeout = request_timeout_s
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._sem = asyncio.Semaphore(max_in_flight)
        info = json.loads(settings.service_account_json.value)
        self.tokens = AccessTokens(info, settings.token_uri, clock=clock)
        self.url = f"{settings.endpoint.rstrip('/')}/v1/projects/{settings.project_id}/messages:send"
        self.stats = TransportStats(self.name)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Made on first use, on the running loop; its connector keeps connections alive between pushes.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_in_flight, keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def send(
        self,
        target: PushTarget,
        kind: Kind,
        payload: Mapping[str, str],
        expires_at: float,
        still_wanted: StillWanted | None = None,
    ) -> PushResult:
        """Deliver one push to `target.token`, retrying transient failures while it still matters."""

        def once() -> Awaitable[Attempt]:
            # Built per attempt: the message's TTL is the time left until `expires_at`.
            return self._attempt(build_message(target.token, payload, expires_at, self._clock()))

        return await send_counted(
            target, once, expires_at, self._policy, self.stats, self._clock, still_wanted=still_wanted
        )

    async def _attempt(self, message: dict[str, Any]) -> Attempt:
        async with self._sem:
            try:
                bearer = await self.tokens.token()
            except (google.auth.exceptions.GoogleAuthError, OSError) as exc:
                return Attempt("transient", f"fcm:oauth_error:{type(exc).__name__}")
            headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json; charset=UTF-8"}
            try:
                async with self._get_session().post(self.url, data=orjson.dumps(message), headers=headers) as response:
                    body = await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After")
            except TimeoutError:
                return Attempt("transient", "fcm:timeout")
            except (aiohttp.ClientError, OSError) as exc:
                return Attempt("transient", f"fcm:connection_error:{type(exc).__name__}")
        if status == 401:
            self.tokens.rejected()
        return classify(status, body, retry_after)

    def status(self) -> dict[str, Any]:
        """Counters, last error and the access token's expiry."""
        self.stats.extra = {**self.tokens.report(), "projectId": self._settings.project_id}
        return self.stats.report()

    async def close(self) -> None:
        """Close the HTTP session and its keep-alive connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
