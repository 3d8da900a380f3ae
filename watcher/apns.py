"""APNs transport: VoIP pushes that ring CallKit, and the stop-ringing alert, over aioapns (HTTP/2, token auth).

- Incoming call: `apns-push-type: voip`, topic `<bundle>.voip`, priority 10, `apns-expiration` at the ring
  deadline, `apns-collapse-id` = callId, the seed's payload as the JSON body (PushKit hands the app that
  dictionary). Sent to the user's PushKit `voipToken`.
- Stop ringing (`call_ended`, also for a call answered or declined on another device of the user, then as
  a passive alert): never a VoIP push (iOS requires every VoIP push to report a new incoming
  call to CallKit, and stops delivering VoIP pushes to apps that don't). It is an alert push to the app's
  regular topic `<bundle>` and regular APNs token (`apnsToken`), priority 10, with `content-available: 1`:
  the running app (it is running while CallKit rings) ends the CallKit call on receipt; if the app is not
  running, the user sees a localized "missed call" alert instead of nothing. See docs/firestore-contract.md.
- One provider token (ES256 JWT) for all connections and reconnections, minted again only after
  `refresh_after_s` (50 minutes: inside Apple's window of no more often than every 20 and never older
  than 60 minutes). aioapns alone gives each new connection its own token and closes connections idle
  for 10 s, so at a call every few minutes nearly every push would carry a new token; `_SharedTokenPool`
  hands all connections the one `ProviderToken`.
- Reaching APNs: directly, or through an HTTP CONNECT proxy (MEMHARBOR_APNS_PROXY, given to aioapns as
  its proxy_host/proxy_port), trusting the system CAs or MEMHARBOR_APNS_CA_FILE; TLS offers ALPN `h2`.
- Retries (429, 500, 503, timeouts, connection errors) with back-off and jitter while the call rings; a
  410 Unregistered or 400 BadDeviceToken marks the token dead. APNs sends no Retry-After and aioapns
  exposes no response headers, so the back-off alone paces retries here.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from aioapns.common import PRIORITY_HIGH, NotificationRequest, NotificationResult, PushType
from aioapns.connection import APNsBaseClientProtocol, APNsKeyConnectionPool, AuthorizationHeaderProvider
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError

from memharbor.logs import get_logger
from memharbor.settings import ApnsSettings
from watcher.push import Kind, PushResult, PushTarget, StillWanted
from watcher.retry import Attempt, RetryPolicy, TransportStats, send_counted

log = get_logger()

TOKEN_MIN_REFRESH_S = 20 * 60  # Apple: not more often than this
TOKEN_MAX_AGE_S = 60 * 60  # Apple: a token older than this is rejected (403 ExpiredProviderToken)
TOKEN_REFRESH_S = 50 * 60  # ours: late in the window, with 10 minutes of margin for clock skew
DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken"})  # with any 410: the token will never work again
RETRYABLE_STATUSES = frozenset({429, 500, 503})
# Localization keys of the stop-ringing alert; the app ships their strings (docs/firestore-contract.md).
ALERT_TITLE_KEY = "CALL_ENDED_TITLE"
ALERT_BODY_KEYS = {
    "missed": "CALL_MISSED_BODY",
    "cancelled": "CALL_CANCELLED_BODY",
    "accepted": "CALL_ANSWERED_ELSEWHERE_BODY",
    "declined": "CALL_DECLINED_ELSEWHERE_BODY",
}
# Answered or declined on another of the user's devices: nothing was missed, so the alert only lands in
# Notification Center (no sound, no lit screen); it exists because only an alert may go at priority 10.
ELSEWHERE = frozenset({"accepted", "declined"})


class ProviderToken(AuthorizationHeaderProvider):
    """The one provider authentication token (ES256 JWT: `kid` header, `iss` team, `iat`) of a transport."""

    def __init__(
        self,
        key: str,
        key_id: str,
        team_id: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh_after_s: float = TOKEN_REFRESH_S,
    ) -> None:
        if not TOKEN_MIN_REFRESH_S <= refresh_after_s < TOKEN_MAX_AGE_S:
            raise ValueError("refresh_after_s must be within Apple's window: >= 20 and < 60 minutes")
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._clock = clock
        self.refresh_after_s = refresh_after_s
        self.issued_at: int | None = None
        self.minted = 0
        self._header: str | None = None

    def get_header(self) -> str:
        """`bearer <jwt>`: the current token, minted anew once it is `refresh_after_s` old."""
        now = self._clock()
        if self._header is None or self.issued_at is None or now - self.issued_at >= self.refresh_after_s:
            self._mint(now)
        assert self._header is not None
        return self._header

    def _mint(self, now: float) -> None:
        issued_at = int(now)
        token = jwt.encode(
            {"iss": self._team_id, "iat": issued_at}, self._key, algorithm="ES256", headers={"kid": self._key_id}
        )
        self._header, self.issued_at = f"bearer {token}", issued_at
        self.minted += 1
        log.info("apns.provider_token_minted", issued_at=issued_at, minted=self.minted)

    def reported_expired(self) -> bool:
        """APNs said ExpiredProviderToken: mint anew at the next request unless that would be too soon."""
        if self.issued_at is None or self._clock() - self.issued_at < TOKEN_MIN_REFRESH_S:
            return False
        self._header = None
        return True

    def report(self) -> dict[str, Any]:
        issued = datetime.fromtimestamp(self.issued_at, UTC).isoformat() if self.issued_at is not None else None
        return {"providerTokenIssuedAt": issued, "providerTokensMinted": self.minted}


class _SharedTokenPool(APNsKeyConnectionPool):
    """aioapns' token-auth connection pool whose connections all present one shared `ProviderToken`.

    It also opens the proxy tunnel itself when `proxy_host`/`proxy_port` are set: aioapns 4.0's own
    tunnel hands the proxy transport's socket wrapper to a second transport, which fails on Python 3.11+
    ('TransportSocket' object has no attribute 'send') and on uvloop alike.
    """

    def __init__(self, provider: ProviderToken, connect_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.provider = provider
        self.connect_timeout_s = connect_timeout_s

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = functools.partial(
            self.protocol_class,
            self.apns_topic,  # type: ignore[arg-type]  # always set: the constructor requires a topic
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]  # aioapns annotates it NoReturn
            self.provider,
        )
        host, port = self.protocol_class.APNS_SERVER, self.protocol_class.APNS_PORT
        async with asyncio.timeout(self.connect_timeout_s):
            if self.proxy_host and self.proxy_port:
                sock = await open_tunnel(self.proxy_host, self.proxy_port, host, port)
                _, protocol = await self.loop.create_connection(
                    factory, sock=sock, ssl=self.ssl_context, server_hostname=host
                )
            else:
                _, protocol = await self.loop.create_connection(factory, host=host, port=port, ssl=self.ssl_context)
        connection: APNsBaseClientProtocol = protocol
        return connection


async def open_tunnel(proxy_host: str, proxy_port: int, host: str, port: int) -> socket.socket:
    """A TCP socket through an HTTP proxy to host:port (HTTP CONNECT), ready for the TLS handshake."""
    loop = asyncio.get_running_loop()
    family, kind, proto, _, address = (await loop.getaddrinfo(proxy_host, proxy_port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        await loop.sock_sendall(sock, request.encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk or len(head) > 16384:
                raise OSError("the proxy closed the tunnel before answering")
            head += chunk
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ")
        if len(parts) < 2 or parts[1] != b"200":
            raise OSError(f"the proxy refused the tunnel: {status_line.decode('latin-1')}")
    except BaseException:
        sock.close()
        raise
    return sock


def build_request(
    kind: Kind, token: str, payload: Mapping[str, str], expires_at: float, now: float, bundle_id: str
) -> NotificationRequest:
    """The APNs request for one push (a fresh apns-id each time)."""
    # aioapns writes apns-expiration = int(time()) + time_to_live, so this lands on the deadline's second.
    ttl = max(0, int(expires_at) - int(now))
    collapse = payload.get("callId") or None
    if kind == "incoming_call":
        return NotificationRequest(
            device_token=token,
            message=dict(payload),
            time_to_live=ttl,
            priority=int(PRIORITY_HIGH),
            collapse_key=collapse,
            push_type=PushType.VOIP,
            apns_topic=f"{bundle_id}.voip",
        )
    return NotificationRequest(
        device_token=token,
        message=stop_ringing_message(payload),
        time_to_live=ttl,
        priority=int(PRIORITY_HIGH),
        collapse_key=collapse,
        push_type=PushType.ALERT,
        apns_topic=bundle_id,
    )


def stop_ringing_message(payload: Mapping[str, str]) -> dict[str, Any]:
    """The stop-ringing alert: a localized missed-call alert that also wakes the running app."""
    body_key = ALERT_BODY_KEYS.get(payload.get("status", ""), ALERT_BODY_KEYS["missed"])
    aps: dict[str, Any] = {
        "alert": {"title-loc-key": ALERT_TITLE_KEY, "loc-key": body_key, "loc-args": [payload.get("callerName", "")]},
        "content-available": 1,
        "thread-id": payload.get("callId", ""),
    }
    if payload.get("status") in ELSEWHERE:
        aps["interruption-level"] = "passive"
    return {"aps": aps, **payload}


def classify(result: NotificationResult) -> Attempt:
    """What an APNs answer means for the token and for retrying."""
    status = int(result.status) if str(result.status).isdigit() else 0
    if status == 200:
        return Attempt("sent")
    reason = result.description or ""
    error = f"apns:{status}:{reason}" if reason else f"apns:{status}"
    if status == 410 or (status == 400 and reason in DEAD_TOKEN_REASONS):
        return Attempt("dead_token", error)
    if status == 429 and reason == "TooManyProviderTokenUpdates":
        return Attempt("failed", error)  # retrying cannot help for 20 minutes
    if status in RETRYABLE_STATUSES:
        return Attempt("transient", error)
    return Attempt("failed", error)


class ApnsTransport:
    """Sends pushes to iOS devices through APNs; one shared provider token, bounded concurrency."""

    name = "apns"

    def __init__(
        self,
        settings: ApnsSettings,
        *,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 256,
        request_timeout_s: float = 5.0,
        max_connections: int = 4,
        clock: Callable[[], float] = time.time,
        refresh_after_s: float = TOKEN_REFRESH_S,
    ) -> None:
        self._settings = settings
        self._policy = policy or RetryPolicy()
        self._timeout = request_timeout_s
        self._max_connections = max_connections
        self._clock = clock
        self._sem = asyncio.Semaphore(max_in_flight)
        self.provider = ProviderToken(
            settings.key.value, settings.key_id, settings.team_id, clock=clock, refresh_after_s=refresh_after_s
        )
        self.stats = TransportStats(self.name)
        self._pool: _SharedTokenPool | None = None
        self._orphans: set[asyncio.Task[NotificationResult]] = set()

    def _ssl_context(self) -> ssl.SSLContext:
        ca_file = str(self._settings.ca_file) if self._settings.ca_file else None
        context = ssl.create_default_context(cafile=ca_file)
        context.set_alpn_protocols(["h2"])
        return context

    def _get_pool(self) -> _SharedTokenPool:
        # Made on first use: aioapns binds the pool to the event loop running then.
        if self._pool is None:
            proxy_host: str | None = None
            proxy_port: int | None = None
            if self._settings.proxy:
                host, _, port = self._settings.proxy.rpartition(":")
                proxy_host, proxy_port = host, int(port)
            self._pool = _SharedTokenPool(
                self.provider,
                key=self._settings.key.value,
                key_id=self._settings.key_id,
                team_id=self._settings.team_id,
                topic=f"{self._settings.bundle_id}.voip",
                max_connections=self._max_connections,
                max_connection_attempts=1,  # our retry loop decides about retries
                use_sandbox=self._settings.use_sandbox,
                ssl_context=self._ssl_context(),
                proxy_host=proxy_host,
                proxy_port=proxy_port,
            )
        return self._pool

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
            # Built per attempt: each request gets a fresh apns-id.
            return self._attempt(
                build_request(kind, target.token, payload, expires_at, self._clock(), self._settings.bundle_id)
            )

        return await send_counted(
            target, once, expires_at, self._policy, self.stats, self._clock, still_wanted=still_wanted
        )

    async def _attempt(self, request: NotificationRequest) -> Attempt:
        async with self._sem:
            # On timeout the request is not cancelled but left to finish in the background: aioapns
            # would otherwise fail on the late answer (InvalidStateError in its protocol) and drop the
            # connection with every stream on it. An orphan ends with the late answer, or with
            # ConnectionClosed when the connection goes (aioapns closes it after 10 s without traffic);
            # connecting itself is bounded by the pool's connect timeout.
            task = asyncio.ensure_future(self._get_pool().send_notification(request))
            done, _ = await asyncio.wait((task,), timeout=self._timeout)
            if not done:
                self._orphan(task)
                return Attempt("transient", "apns:timeout")
            try:
                result = task.result()
            except (ApnsConnectionError, MaxAttemptsExceeded, ConnectionClosed, OSError) as exc:
                return Attempt("transient", f"apns:connection_error:{type(exc).__name__}")
            except Exception as exc:  # h2 protocol or flow-control trouble: a fresh attempt may work
                log.warning("apns.request_failed", error=type(exc).__name__)
                return Attempt("transient", f"apns:error:{type(exc).__name__}")
        attempt = classify(result)
        if result.description == "ExpiredProviderToken" and self.provider.reported_expired():
            return Attempt("transient", attempt.error)
        return attempt

    def _orphan(self, task: asyncio.Task[NotificationResult]) -> None:
        self._orphans.add(task)
        task.add_done_callback(self._orphan_done)

    def _orphan_done(self, task: asyncio.Task[NotificationResult]) -> None:
        self._orphans.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as unhandled

    def status(self) -> dict[str, Any]:
        """Counters, last error, provider token age and open connections."""
        self.stats.extra = {
            **self.provider.report(),
            "connections": len(self._pool.connections) if self._pool is not None else 0,
            "sandbox": self._settings.use_sandbox,
        }
        return self.stats.report()

    async def close(self) -> None:
        """Close every APNs connection."""
        for task in list(self._orphans):
            task.cancel()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
