"""A local APNs that checks requests the way Apple's servers do, reached like the real one through a proxy.

Clients reach it with an HTTP CONNECT to `api.push.apple.com:443` (or the development host); it then
speaks TLS with ALPN `h2` (a certificate for Apple's host names signed by a test CA) and HTTP/2 with the
`h2` package. Every request is checked: method, path and device token, the provider JWT (ES256
signature with the test key, `kid`, `iss`, `iat` younger than an hour, not changed on one connection
within 20 minutes), `apns-topic`, `apns-push-type`, `apns-priority`, `apns-expiration`,
`apns-collapse-id`, `apns-id`, payload JSON and size. Answers use Apple's status codes and reasons.

Tests make it fail on purpose with magic device tokens (`apns_token(410)` is always Unregistered,
`apns_token(500, times=2)` fails twice, then delivers) or with `script(token, (status, reason), ...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from tests.support.loop_thread import LoopThread
from tests.support.push_keys import APNS_HOSTS, ApnsKey, Tls

MAGIC_PREFIX = "dead"
REASONS = {
    400: "BadDeviceToken",
    403: "ExpiredProviderToken",
    410: "Unregistered",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
TOKEN_UPDATE_MIN_S = 20 * 60
TOKEN_MAX_AGE_S = 60 * 60
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def apns_token(status: int | None = None, times: int = 0) -> str:
    """A well-formed device token (64 hex digits); with `status`, a magic one the server fails with it.

    `times` = 0 fails every time; otherwise the first `times` requests fail and later ones succeed.
    """
    if status is None:
        while True:
            token = secrets.token_hex(32)
            if not token.startswith(MAGIC_PREFIX):
                return token
    if status not in REASONS or not 0 <= times <= 9:
        raise ValueError(f"no magic token for status {status} x{times}")
    prefix = f"{MAGIC_PREFIX}{status:03d}{times}"
    return prefix + secrets.token_hex(32)[len(prefix) :]


@dataclass
class ApnsRecord:
    """One request as the server saw it, and how it answered."""

    status: int
    reason: str | None
    token: str
    host: str
    headers: dict[str, str]
    payload: Any
    jwt_header: dict[str, Any] | None
    jwt_claims: dict[str, Any] | None
    authorization: str | None
    connection: int
    at: float

    @property
    def push_type(self) -> str | None:
        return self.headers.get("apns-push-type")


@dataclass
class _Conn:
    number: int
    host: str
    iat: int | None = None


@dataclass
class _Verdict:
    status: int
    reason: str | None = None
    claims: dict[str, Any] | None = None
    jwt_header: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ApnsServer:
    """A strict local APNs on 127.0.0.1 behind an HTTP CONNECT front door, on its own thread."""

    def __init__(self, key: ApnsKey, bundle_id: str, tls: Tls, *, max_streams: int = 1000) -> None:
        self.key = key
        self.bundle_id = bundle_id
        self.tls = tls
        self.max_streams = max_streams
        self.delay_s = 0.0  # answer every request this much later (timeouts, late answers)
        self.clock_offset = 0.0  # seconds added to the server's clock (tests that move time)
        self.port = 0
        self.connections_opened = 0
        self.refused_alpn = 0
        public_key = load_pem_public_key(key.public_pem.encode())
        if not isinstance(public_key, EllipticCurvePublicKey):  # ES256 verifies with a P-256 key only
            raise TypeError(f"an APNs key is an EC key, not {type(public_key).__name__}")
        self._public_key = public_key
        self._verified: dict[str, dict[str, Any]] = {}
        self._records: list[ApnsRecord] = []
        self._scripts: dict[str, list[tuple[int, str]]] = {}
        self._served: dict[str, int] = {}
        self._topics: dict[str, str] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._thread: LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ssl: ssl.SSLContext | None = None

    # -- control (from the test's thread) -------------------------------------------------------
    def start(self) -> Self:
        """Listen on a free loopback port."""
        self._ssl = self._ssl_context()
        self._thread = LoopThread("apns-server")
        self._thread.run(self._listen())
        return self

    def stop(self) -> None:
        """Close every connection and stop the thread."""
        if self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._thread.run(self._close())
        self._thread.stop()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def proxy(self) -> tuple[str, int]:
        """The address clients give aioapns as its proxy."""
        return ("127.0.0.1", self.port)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def script(self, token: str, *responses: tuple[int, str]) -> None:
        """Answer the next requests for `token` with these (status, reason) pairs, then normally."""
        with self._lock:
            self._scripts.setdefault(token, []).extend(responses)

    def register(self, token: str, topic: str) -> None:
        """Tie a device token to a topic, as Apple does: other topics then get DeviceTokenNotForTopic."""
        with self._lock:
            self._topics[token] = topic

    def records(self, token: str | None = None, status: int | None = None) -> list[ApnsRecord]:
        """Requests seen so far, optionally only for one token and/or one answer status."""
        with self._lock:
            return [
                r
                for r in self._records
                if (token is None or r.token == token) and (status is None or r.status == status)
            ]

    def delivered(self, token: str | None = None, push_type: str | None = None) -> list[ApnsRecord]:
        """Requests answered 200 (optionally for one token / push type)."""
        return [r for r in self.records(token, 200) if push_type is None or r.push_type == push_type]

    def provider_tokens(self) -> list[str]:
        """The distinct provider JWTs accepted so far, in order of first use."""
        seen: dict[str, None] = {}
        for r in self.records():
            if r.jwt_claims is not None and r.authorization:
                seen.setdefault(r.authorization, None)
        return list(seen)

    def kill_connections(self) -> None:
        """Drop every open connection at once (clients must reconnect)."""
        assert self._thread is not None
        self._thread.run(self._drop_all())

    # -- serving (on the server's loop) ---------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="apns-tls-") as directory:
            _, cert_file, key_file = self.tls.write(Path(directory))
            ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            host = await self._tunnel(reader, writer)
            if host is None:
                return
            assert self._ssl is not None  # start() builds it before the listener exists
            await writer.start_tls(self._ssl)
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                self.refused_alpn += 1  # APNs speaks HTTP/2 only
                return
            with self._lock:
                self.connections_opened += 1
            await self._h2(reader, writer, _Conn(next(self._numbers), host))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ProtocolError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        parts = head.split("\r\n", 1)[0].split(" ")
        target = parts[1] if len(parts) == 3 and parts[0] == "CONNECT" else ""
        host, _, port = target.rpartition(":")
        if host not in APNS_HOSTS or port != "443":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        return host

    async def _h2(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_state: _Conn) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                elif isinstance(event, DataReceived):
                    streams[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    headers, body = streams.pop(event.stream_id)
                    if self.delay_s > 0:
                        late = (conn, writer, event.stream_id, conn_state, headers, bytes(body))
                        asyncio.get_running_loop().call_later(self.delay_s, self._answer_late, *late)
                    else:
                        self._answer(conn, event.stream_id, conn_state, headers, bytes(body))
                elif isinstance(event, StreamReset):
                    streams.pop(event.stream_id, None)
                elif isinstance(event, ConnectionTerminated):
                    writer.write(conn.data_to_send())
                    return
            writer.write(conn.data_to_send())
            await writer.drain()

    def _answer_late(
        self,
        conn: H2Connection,
        writer: asyncio.StreamWriter,
        stream_id: int,
        state: _Conn,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        if writer.is_closing():
            return
        with contextlib.suppress(ProtocolError):  # the client may have reset the stream meanwhile
            self._answer(conn, stream_id, state, headers, body)
        writer.write(conn.data_to_send())

    def _answer(self, conn: H2Connection, stream_id: int, state: _Conn, headers: dict[str, str], body: bytes) -> None:
        token = headers.get(":path", "").removeprefix("/3/device/")
        apns_id = headers.get("apns-id") or _new_uuid()
        payload: Any = None
        with contextlib.suppress(ValueError):
            payload = json.loads(body) if body else None
        verdict = self._judge(state, headers, body, payload, token)
        record = ApnsRecord(
            status=verdict.status,
            reason=verdict.reason,
            token=token,
            host=headers.get(":authority") or headers.get("host", ""),
            headers={k: v for k, v in headers.items() if not k.startswith(":")},
            payload=payload,
            jwt_header=verdict.jwt_header,
            jwt_claims=verdict.claims,
            authorization=headers.get("authorization"),
            connection=state.number,
            at=self.now(),
        )
        with self._lock:
            self._records.append(record)
        response = [(":status", str(verdict.status)), ("apns-id", apns_id)]
        if verdict.status == 200:
            conn.send_headers(stream_id, response, end_stream=True)
            return
        error: dict[str, Any] = {"reason": verdict.reason, **verdict.extra}
        conn.send_headers(stream_id, [*response, ("content-type", "application/json")])
        conn.send_data(stream_id, json.dumps(error).encode(), end_stream=True)

    # -- the checks -----------------------------------------------------------------------------
    def _judge(self, state: _Conn, headers: dict[str, str], body: bytes, payload: Any, token: str) -> _Verdict:
        if headers.get(":method") != "POST":
            return _Verdict(405, "MethodNotAllowed")
        if not headers.get(":path", "").startswith("/3/device/"):
            return _Verdict(404, "BadPath")
        auth = self._authorize(state, headers.get("authorization"))
        if auth.status != 200:
            return auth
        verdict = self._check_request(headers, body, payload, token, state)
        if verdict is None:
            verdict = self._scripted(token)
        verdict.claims, verdict.jwt_header = auth.claims, auth.jwt_header
        return verdict

    def _authorize(self, state: _Conn, authorization: str | None) -> _Verdict:
        if not authorization or not authorization.startswith("bearer "):
            return _Verdict(403, "MissingProviderToken")
        token = authorization.removeprefix("bearer ")
        try:
            header = jwt.get_unverified_header(token)
            claims = self._verified.get(token)
            if claims is None:
                claims = jwt.decode(
                    token,
                    self._public_key,
                    algorithms=["ES256"],
                    options={"verify_iat": False, "verify_exp": False, "require": ["iss", "iat"]},
                )
                self._verified[token] = claims
        except jwt.PyJWTError:
            return _Verdict(403, "InvalidProviderToken")
        iat = claims.get("iat")
        if header.get("alg") != "ES256" or header.get("kid") != self.key.key_id:
            return _Verdict(403, "InvalidProviderToken")
        if claims.get("iss") != self.key.team_id:
            return _Verdict(403, "InvalidProviderToken")
        if not isinstance(iat, int) or iat > self.now() + 60:
            return _Verdict(403, "InvalidProviderToken")
        if self.now() - iat > TOKEN_MAX_AGE_S:
            return _Verdict(403, "ExpiredProviderToken")
        if state.iat is not None and iat > state.iat and iat - state.iat < TOKEN_UPDATE_MIN_S:
            return _Verdict(429, "TooManyProviderTokenUpdates")
        state.iat = max(iat, state.iat or iat)
        return _Verdict(200, claims=claims, jwt_header=header)

    def _check_request(  # noqa: C901 - one flat list of Apple's checks, in Apple's order
        self, headers: dict[str, str], body: bytes, payload: Any, token: str, state: _Conn
    ) -> _Verdict | None:
        push_type = headers.get("apns-push-type")
        topic = headers.get("apns-topic")
        priority = headers.get("apns-priority")
        host = headers.get(":authority") or headers.get("host")
        if host != state.host:
            return _Verdict(400, "BadPath")
        if not _HEX64.match(token):
            return _Verdict(400, "BadDeviceToken")
        if "apns-id" in headers and not _UUID.match(headers["apns-id"]):
            return _Verdict(400, "BadMessageId")
        if not topic:
            return _Verdict(400, "MissingTopic")
        if topic not in (self.bundle_id, f"{self.bundle_id}.voip"):
            return _Verdict(400, "TopicDisallowed")
        if push_type not in ("alert", "background", "voip"):
            return _Verdict(400, "InvalidPushType")
        if (push_type == "voip") != topic.endswith(".voip"):
            return _Verdict(400, "InvalidPushType")
        if priority not in (None, "5", "10", "1"):
            return _Verdict(400, "BadPriority")
        if push_type == "background" and priority != "5":
            return _Verdict(400, "BadPriority")
        if "apns-expiration" in headers and not headers["apns-expiration"].isdigit():
            return _Verdict(400, "BadExpirationDate")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return _Verdict(400, "BadCollapseId")
        if not body:
            return _Verdict(400, "PayloadEmpty")
        if len(body) > (5120 if push_type == "voip" else 4096):
            return _Verdict(413, "PayloadTooLarge")
        if not isinstance(payload, dict):
            return _Verdict(400, "BadPayload")
        registered = self._topics.get(token)
        if registered is not None and registered != topic:
            return _Verdict(400, "DeviceTokenNotForTopic")
        return None

    def _scripted(self, token: str) -> _Verdict:
        with self._lock:
            queue = self._scripts.get(token)
            if queue:
                status, reason = queue.pop(0)
                return _Verdict(status, reason)
            if not token.startswith(MAGIC_PREFIX):
                return _Verdict(200)
            status, times = int(token[4:7]), int(token[7])
            served = self._served.get(token, 0)
            self._served[token] = served + 1
        if times and served >= times:
            return _Verdict(200)
        extra = {"timestamp": int(self.now() * 1000)} if status == 410 else {}
        return _Verdict(status, REASONS[status], extra=extra)


def _new_uuid() -> str:
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
