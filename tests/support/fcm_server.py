"""A local FCM HTTP v1 with its own OAuth2 token endpoint, checking requests the way Google's servers do.

- `POST /token`: the service-account JWT grant (`urn:ietf:params:oauth:grant-type:jwt-bearer`). The
  assertion's RS256 signature is verified with the trusted service account's public key, with `kid`,
  `iss`, `aud` (Google's token endpoint, or this one), `scope` (firebase.messaging) and a lifetime of
  at most an hour. It issues opaque bearer tokens that expire after `token_lifetime_s`.
- `POST /v1/projects/{project}/messages:send`: checks the bearer token, the project, and the message
  against the v1 schema (known field names only, exactly one target, data values strings, reserved data
  keys, `android.priority`, `android.ttl` as a Duration string, 4 KB of data), answering errors in
  Google's shape (`{"error": {"code", "message", "status", "details": [FcmError | BadRequest]}}`).

Tests make it fail on purpose with magic registration tokens (`fcm_token("unregistered")`,
`fcm_token("unavailable", times=2)`) or with `script(token, (status, code), ...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Self

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.support.loop_thread import LoopThread
from tests.support.push_keys import ServiceAccount

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth (like Google) always uses Google's token endpoint as the assertion's audience.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
MAGIC = {
    "unregistered": (404, "UNREGISTERED"),
    "invalid": (400, "INVALID_ARGUMENT"),
    "quota": (429, "QUOTA_EXCEEDED"),
    "unavailable": (503, "UNAVAILABLE"),
    "internal": (500, "INTERNAL"),
}
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{20,4096}$")
_DURATION = re.compile(r"^\d{1,12}(\.\d{1,9})?s$")
_MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "fcmOptions",
    "token",
    "topic",
    "condition",
}
_ANDROID_FIELDS = {
    "collapse_key",
    "collapseKey",
    "priority",
    "ttl",
    "restricted_package_name",
    "restrictedPackageName",
    "data",
    "notification",
    "fcm_options",
    "fcmOptions",
    "direct_boot_ok",
    "directBootOk",
}
_RESERVED_DATA = {"from", "notification", "message_type", "collapse_key"}


def fcm_token(kind: str | None = None, times: int = 0) -> str:
    """A well-formed registration token; with `kind` (a MAGIC key) one the server fails with that error.

    `times` = 0 fails every time; otherwise the first `times` requests fail and later ones succeed.
    """
    body = secrets.token_urlsafe(96).replace("-", "A")
    if kind is None:
        return f"d{body[:20]}:APA91b{body}"
    if kind not in MAGIC or not 0 <= times <= 9:
        raise ValueError(f"no magic token {kind} x{times}")
    return f"{kind}-{times}-{body}"


@dataclass
class FcmRecord:
    """One messages:send request and the answer."""

    status: int
    code: str | None
    project: str
    token: str | None
    message: dict[str, Any] | None
    authorization: str | None
    at: float


class _Reject(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.field = status, message, code, field


def _error(status: int, message: str, code: str | None = None, field: str | None = None) -> web.Response:
    details: list[dict[str, Any]] = []
    if code is not None:
        details.append({"@type": FCM_ERROR, "errorCode": code})
    if field is not None:
        details.append({"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]})
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


class FcmServer:
    """A strict local FCM v1 + OAuth2 token endpoint on 127.0.0.1, on its own thread."""

    def __init__(self, project_id: str, *, token_lifetime_s: int = 3600, retry_after: str = "1") -> None:
        self.project_id = project_id
        self.token_lifetime_s = token_lifetime_s
        self.retry_after = retry_after
        self.port = 0
        self.clock_offset = 0.0
        self._accounts: dict[str, tuple[str, Any]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._records: list[FcmRecord] = []
        self.grants: list[dict[str, Any]] = []
        self._scripts: dict[str, list[tuple[int, str]]] = {}
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self.connections_seen: set[tuple[str, int]] = set()
        self.delay_s = 0.0  # answer every send this much later
        self.in_flight = 0
        self.max_in_flight = 0  # the most sends the server was handling at once

    # -- control --------------------------------------------------------------------------------
    def start(self) -> Self:
        self._thread = LoopThread("fcm-server")
        self._thread.run(self._listen())
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            self._thread.run(self._runner.cleanup())
        self._thread.stop()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"

    def now(self) -> float:
        return time.time() + self.clock_offset

    def trust(self, account: ServiceAccount) -> None:
        """Accept JWT grants signed by this service account."""
        self._accounts[account.client_email] = (account.key_id, load_pem_public_key(account.public_pem.encode()))

    def script(self, token: str, *responses: tuple[int, str]) -> None:
        """Answer the next sends to `token` with these (status, FCM error code) pairs, then normally."""
        with self._lock:
            self._scripts.setdefault(token, []).extend(responses)

    def revoke_tokens(self) -> None:
        """Forget every issued access token (the next send with one gets 401)."""
        with self._lock:
            self._tokens.clear()

    def records(self, token: str | None = None, status: int | None = None) -> list[FcmRecord]:
        with self._lock:
            return [
                r
                for r in self._records
                if (token is None or r.token == token) and (status is None or r.status == status)
            ]

    def delivered(self, token: str | None = None) -> list[FcmRecord]:
        """Messages answered 200."""
        return self.records(token, 200)

    # -- serving --------------------------------------------------------------------------------
    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=512).start()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != GRANT:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            email = self._verify_grant(str(form.get("assertion", "")))
        except _Reject as exc:
            return web.json_response({"error": "invalid_grant", "error_description": exc.message}, status=400)
        token = "ya29.test-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (email, self.now() + self.token_lifetime_s)
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"})

    def _verify_grant(self, assertion: str) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            key_id, public_key = self._accounts[str(unverified.get("iss"))]
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                audience=[GOOGLE_TOKEN_URI, self.token_uri],
                options={"verify_exp": False, "verify_iat": False, "require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except (jwt.PyJWTError, KeyError) as exc:
            raise _Reject(400, f"Invalid JWT: {type(exc).__name__}") from None
        if header.get("alg") != "RS256" or header.get("kid") != key_id:
            raise _Reject(400, "Invalid JWT Signature.")
        iat, exp = claims["iat"], claims["exp"]
        if not iat - 300 <= self.now() <= exp or exp - iat > 3600:
            raise _Reject(400, "Invalid JWT: Token must be a short-lived token (60 minutes) in a reasonable timeframe.")
        if SCOPE not in str(claims["scope"]).split():
            raise _Reject(400, "Invalid OAuth scope or ID token audience provided.")
        with self._lock:
            self.grants.append({"header": header, "claims": claims})
        return str(claims["iss"])

    async def _send(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        if peer is not None:
            with self._lock:
                self.connections_seen.add((str(peer[0]), int(peer[1])))
        authorization = request.headers.get("Authorization")
        raw = await request.read()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            return self._handle_send(project, authorization, raw, request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle_send(self, project: str, authorization: str | None, raw: bytes, request: web.Request) -> web.Response:
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(raw)
        message = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), dict) else None
        token = message.get("token") if message is not None else None
        try:
            self._authenticate(authorization)
            if project != self.project_id:
                raise _Reject(403, f"Permission 'cloudmessaging.messages.create' denied on projects/{project}")
            self._check_body(request, body)
            assert message is not None
            self._check_message(message)
            self._outcome(str(token))
        except _Reject as exc:
            self._record(exc.status, exc.code, project, token, message, authorization)
            response = _error(exc.status, exc.message, exc.code, exc.field)
            if exc.status in (429, 503):
                response.headers["Retry-After"] = self.retry_after
            return response
        self._record(200, None, project, token, message, authorization)
        return web.json_response({"name": f"projects/{project}/messages/0:{secrets.token_hex(8)}"})

    def _record(self, status: int, code: str | None, project: str, token: Any, message: Any, auth: str | None) -> None:
        with self._lock:
            self._records.append(
                FcmRecord(status, code, project, token if isinstance(token, str) else None, message, auth, self.now())
            )

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization or not authorization.startswith("Bearer "):
            raise _Reject(401, "Request is missing required authentication credential.")
        with self._lock:
            known = self._tokens.get(authorization.removeprefix("Bearer "))
        if known is None or known[1] <= self.now():
            raise _Reject(401, "Request had invalid authentication credentials. Expected OAuth 2 access token.")

    def _check_body(self, request: web.Request, body: Any) -> None:
        if not request.content_type.startswith("application/json"):
            raise _Reject(400, "Invalid JSON payload received.")
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            raise _Reject(400, "Invalid JSON payload received. Expected an object with 'message'.")
        unknown = set(body) - {"message", "validate_only", "validateOnly"}
        if unknown:
            name = sorted(unknown)[0]
            raise _Reject(400, f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')

    def _check_message(self, message: dict[str, Any]) -> None:
        unknown = set(message) - _MESSAGE_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            raise _Reject(400, f"Invalid JSON payload received. Unknown name \"{name}\" at 'message'.")
        targets = [k for k in ("token", "topic", "condition") if k in message]
        if len(targets) != 1:
            raise _Reject(400, "Exactly one of token, topic or condition must be specified.", field="message")
        token = message.get("token")
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise _Reject(400, "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT")
        data = message.get("data", {})
        if not isinstance(data, dict):
            raise _Reject(400, "Invalid value at 'message.data'", field="message.data")
        for index, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                where = f"message.data[{index}].value"
                raise _Reject(400, f"Invalid value at '{where}' (TYPE_STRING), {value}", field=where)
            if key in _RESERVED_DATA or key.startswith(("google", "gcm")):
                raise _Reject(400, f"Invalid data payload key: {key}", "INVALID_ARGUMENT", field="message.data")
        if len(json.dumps(data).encode()) > 4096:
            raise _Reject(400, "Message is too big", "INVALID_ARGUMENT", field="message")
        android = message.get("android", {})
        if not isinstance(android, dict) or set(android) - _ANDROID_FIELDS:
            raise _Reject(400, "Invalid JSON payload received at 'message.android'.", field="message.android")
        if "priority" in android and android["priority"] not in ("normal", "high", "NORMAL", "HIGH"):
            raise _Reject(400, "Invalid value at 'message.android.priority'", field="message.android.priority")
        if "ttl" in android and (not isinstance(android["ttl"], str) or not _DURATION.match(android["ttl"])):
            raise _Reject(
                400,
                "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
                field="message.android.ttl",
            )

    def _outcome(self, token: str) -> None:
        with self._lock:
            queue = self._scripts.get(token)
            if queue:
                status, code = queue.pop(0)
                raise _Reject(status, f"scripted {code}", code)
            kind, _, rest = token.partition("-")
            if kind not in MAGIC:
                return
            times = int(rest.split("-", 1)[0])
            served = self._served.get(token, 0)
            self._served[token] = served + 1
        if times and served >= times:
            return
        status, code = MAGIC[kind]
        if kind == "invalid":
            raise _Reject(400, "The registration token is not a valid FCM registration token", code)
        if kind == "unregistered":
            raise _Reject(404, "Requested entity was not found.", code)
        raise _Reject(status, f"The service is {code.lower().replace('_', ' ')}.", code)
