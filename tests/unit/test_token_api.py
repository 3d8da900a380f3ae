"""Unit tests for token_http: /api/token and /api/health over in-memory fakes of the service's ports."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import firebase_admin
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from memharbor import firebase, logs
from memharbor.access import Principal
from memharbor.devtokens import emulator_id_token
from memharbor.errors import Conflict, DomainError, Forbidden, IllegalTransition, InvalidInput, NotFound, Unavailable
from memharbor.recording_requests import LiveCapReached
from memharbor.settings import HttpSettings, http_settings
from tests.support.agora_tokens import (
    PUBLISHER_PRIVILEGES,
    SUBSCRIBER_PRIVILEGES,
    decode_006,
    decode_007,
    verify_006,
    verify_007,
)
from tests.support.api_worlds import APP_CERT, APP_ID, TokenWorld, beat
from tests.support.http_fakes import FakeAuthenticator
from token_http import health as health_mod
from token_http import main as main_mod
from token_http import token_route
from token_http.access_log import RequestIds
from token_http.app import create_app
from token_http.auth import FirebaseIdTokens
from token_http.errors import ApiError, from_domain
from token_http.keys import Deps

PROJECT = "demo-token-api"
NOW = TokenWorld.NOW
CHANNEL = TokenWorld.CHANNEL
ALICE, BOB, MALLORY, ADMIN = TokenWorld.ALICE, TokenWorld.BOB, TokenWorld.MALLORY, TokenWorld.ADMIN
World = TokenWorld


def make_settings(**extra: str) -> HttpSettings:
    return http_settings({"FIREBASE_PROJECT_ID": PROJECT, "AGORA_APP_ID": APP_ID, "AGORA_APP_CERT": APP_CERT, **extra})


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer for the test; logging is reset afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    logs.configure("json", "info", stream=stream)
    yield stream
    structlog.reset_defaults()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


@pytest.fixture
async def client(world: World, log_stream: io.StringIO) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as test_client:
        yield test_client


@pytest.fixture
async def open_client(world: World, log_stream: io.StringIO) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(make_settings(MEMHARBOR_AUTH="none"), world.deps(open_access=True))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


Client = TestClient[web.Request, web.Application]


async def post_token(client: Client, body: Any, who: str | None = "tok-admin", **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {who}"} if who else {}
    response = await client.post("/api/token", json=body, headers=headers, **kwargs)
    return response.status, await response.json()


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- issuing


class TestTokenIssuing:
    """What a successful POST /api/token returns and what the issued token contains."""

    async def test_publisher_uid_token_006(self, client: Client) -> None:
        """A publisher uid token is a signed 006 token for that channel and uid with publish privileges."""
        status, body = await post_token(client, {"channel": CHANNEL, "uid": 12345, "role": "publisher", "expire": 600})
        assert status == 200
        assert body["expire_in"] == 600
        assert body["expire_at"] == NOW + 600
        token = decode_006(body["token"])
        assert token.app_id == APP_ID
        assert verify_006(token, app_certificate=APP_CERT, channel=CHANNEL, uid="12345")
        assert set(token.privileges) == PUBLISHER_PRIVILEGES
        assert set(token.privileges.values()) == {NOW + 600}

    async def test_role_defaults_to_subscriber_and_expire_to_a_day(self, client: Client) -> None:
        """Without role and expire the token only joins, for 86400 seconds."""
        status, body = await post_token(client, {"channel": CHANNEL, "uid": 7})
        assert status == 200
        assert body["expire_in"] == 86400 and body["expire_at"] == NOW + 86400
        token = decode_006(body["token"])
        assert set(token.privileges) == SUBSCRIBER_PRIVILEGES
        assert set(token.privileges.values()) == {NOW + 86400}

    async def test_expire_above_a_day_is_clamped(self, client: Client) -> None:
        """An expire over 86400 seconds is clamped to 86400, in the response and in the token."""
        status, body = await post_token(client, {"channel": CHANNEL, "uid": 7, "expire": 10**9})
        assert status == 200
        assert body["expire_in"] == 86400
        assert set(decode_006(body["token"]).privileges.values()) == {NOW + 86400}

    async def test_version_007_gives_access_token_2(self, client: Client) -> None:
        """ "version": "007" issues an AccessToken2 naming the channel and uid with relative expiries."""
        status, body = await post_token(
            client, {"channel": CHANNEL, "uid": 4294967295, "role": "publisher", "expire": 3600, "version": "007"}
        )
        assert status == 200
        token = decode_007(body["token"])
        assert verify_007(token, app_certificate=APP_CERT)
        assert token.app_id == APP_ID
        assert token.rtc.channel == CHANNEL and token.rtc.uid == "4294967295"
        assert set(token.rtc.privileges) == PUBLISHER_PRIVILEGES
        assert set(token.rtc.privileges.values()) == {3600}
        assert token.expire == 3600

    async def test_user_account_tokens_name_the_account(self, client: Client) -> None:
        """A user_account token carries the account string as its uid, in both formats."""
        _, body = await post_token(client, {"channel": CHANNEL, "user_account": "acct 1"})
        assert verify_006(decode_006(body["token"]), app_certificate=APP_CERT, channel=CHANNEL, uid="acct 1")
        _, body = await post_token(client, {"channel": CHANNEL, "user_account": "acct 1", "version": "007"})
        assert decode_007(body["token"]).rtc.uid == "acct 1"

    async def test_legacy_string_uid_is_accepted(self, client: Client) -> None:
        """The seed's clients send the uid as a string of digits; it is treated as that number."""
        status, body = await post_token(client, {"channel": CHANNEL, "uid": "12345"})
        assert status == 200
        assert verify_006(decode_006(body["token"]), app_certificate=APP_CERT, channel=CHANNEL, uid="12345")

    async def test_limits_are_inclusive(self, client: Client) -> None:
        """A 63-byte channel, a 255-byte account, uid 1 and expire 1 are all accepted."""
        assert (await post_token(client, {"channel": "c" * 63, "uid": 1, "expire": 1}))[0] == 200
        assert (await post_token(client, {"channel": CHANNEL, "user_account": "a" * 255}))[0] == 200

    async def test_json_content_type_with_charset_is_accepted(self, client: Client) -> None:
        """application/json with a charset parameter is still JSON."""
        response = await client.post(
            "/api/token",
            data=json.dumps({"channel": CHANNEL, "uid": 3}),
            headers={"Authorization": "Bearer tok-admin", "Content-Type": "application/json; charset=utf-8"},
        )
        assert response.status == 200
        assert set(await response.json()) == {"token", "expire_at", "expire_in"}


# ---------------------------------------------------------------------------------------------- auth


class TestTokenAuthorization:
    """Who gets a token: participants of a live call on the channel, admins, or anyone in open mode."""

    async def test_no_authorization_is_401(self, client: Client, world: World) -> None:
        """Without an Authorization header the answer is 401 naming the header, and no call is looked up."""
        status, body = await post_token(client, {"channel": CHANNEL, "uid": 1}, who=None)
        assert status == 401
        assert body["field"] == "Authorization"
        assert world.calls.queries == []

    async def test_invalid_id_token_is_401_without_echo(self, client: Client) -> None:
        """An unknown bearer token is 401 and the response never repeats it."""
        response = await client.post(
            "/api/token", json={"channel": CHANNEL, "uid": 1}, headers={"Authorization": "Bearer forged-xyz-123"}
        )
        assert response.status == 401
        assert "forged-xyz-123" not in await response.text()

    @pytest.mark.parametrize(
        ("who", "status"),
        [("tok-alice", "pending"), ("tok-bob", "pending"), ("tok-alice", "accepted"), ("tok-bob", "accepted")],
    )
    async def test_participants_of_a_live_call_get_a_token(
        self, client: Client, world: World, who: str, status: str
    ) -> None:
        """The caller and the receiver of a pending or accepted call on the channel get a token."""
        world.calls.add(status)
        code, body = await post_token(client, {"channel": CHANNEL, "uid": 5}, who=who)
        assert code == 200, body
        assert world.calls.queries == [CHANNEL]

    @pytest.mark.parametrize("status", ["declined", "cancelled", "missed", "ended", "unknown"])
    async def test_finished_calls_give_no_token(self, client: Client, world: World, status: str) -> None:
        """A call that is over (or in an unknown state) does not authorise a token: 403 naming the channel."""
        world.calls.add(status)
        code, body = await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-alice")
        assert code == 403
        assert body["field"] == "channel"

    async def test_strangers_get_no_token(self, client: Client, world: World) -> None:
        """A user who is neither caller nor receiver of the live call gets 403."""
        world.calls.add("accepted")
        code, _ = await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-mallory")
        assert code == 403

    async def test_no_call_on_the_channel_is_403(self, client: Client, world: World) -> None:
        """A channel that no call uses gives no token, even with a live call elsewhere."""
        world.calls.add("pending", channel="other_channel")
        code, body = await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-alice")
        assert code == 403 and body["field"] == "channel"

    async def test_one_live_call_among_finished_ones_is_enough(self, client: Client, world: World) -> None:
        """Old finished calls on the channel do not hide a live one."""
        world.calls.add("ended")
        world.calls.add("pending", caller=MALLORY, receiver=BOB)
        assert (await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-mallory"))[0] == 200

    async def test_user_account_must_be_own_uid(self, client: Client, world: World) -> None:
        """A participant may ask for their own uid as user_account, not for someone else's."""
        world.calls.add("accepted")
        ok, _ = await post_token(client, {"channel": CHANNEL, "user_account": ALICE}, who="tok-alice")
        assert ok == 200
        code, body = await post_token(client, {"channel": CHANNEL, "user_account": BOB}, who="tok-alice")
        assert code == 403
        assert body["field"] == "user_account"

    async def test_admin_gets_any_token_without_a_call(self, client: Client, world: World) -> None:
        """A user with the admin claim gets a token for any channel and any account, no call needed."""
        code, _ = await post_token(client, {"channel": "anything", "user_account": "someone"}, who="tok-admin")
        assert code == 200
        assert world.calls.queries == []

    async def test_open_mode_needs_no_authorization(self, open_client: Client, world: World) -> None:
        """With MEMHARBOR_AUTH=none anyone gets a token without a header, as in the seed."""
        response = await open_client.post("/api/token", json={"channel": "free", "uid": 9})
        assert response.status == 200
        assert "token" in await response.json()

    async def test_firestore_down_is_503(self, client: Client, world: World) -> None:
        """When the call lookup fails the answer is 503, not 500 and not a token."""
        world.calls.failure = Unavailable("firestore down at 10.0.0.1")
        code, body = await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-alice")
        assert code == 503
        assert "10.0.0.1" not in body["error"]

    async def test_bug_in_call_lookup_is_500_not_503(self, client: Client, world: World) -> None:
        """Only an outage of the lookup is a 503: any other exception is a bug, answered 500 without details."""
        world.calls.failure = KeyError("channelName")
        code, body = await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-alice")
        assert code == 500 and body["error"] == "internal error"

    async def test_hanging_call_lookup_is_a_bounded_503(
        self, client: Client, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A call lookup that never answers is cut at the lookup timeout and answered with 503."""
        assert token_route.CALL_LOOKUP_TIMEOUT_S <= 10.0
        monkeypatch.setattr(token_route, "CALL_LOOKUP_TIMEOUT_S", 0.2)
        world.calls.delay = 30.0
        started = time.monotonic()
        code, _ = await post_token(client, {"channel": CHANNEL, "uid": 5}, who="tok-alice")
        assert code == 503
        assert time.monotonic() - started < 2.0


# ---------------------------------------------------------------------------------------------- bad input

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("missing-channel", {"uid": 1}, "channel"),
    ("empty-channel", {"channel": "", "uid": 1}, "channel"),
    ("channel-number", {"channel": 123, "uid": 1}, "channel"),
    ("channel-list", {"channel": ["a"], "uid": 1}, "channel"),
    ("channel-too-long", {"channel": "c" * 64, "uid": 1}, "channel"),
    ("channel-bad-char", {"channel": "a/b", "uid": 1}, "channel"),
    ("channel-non-ascii", {"channel": "통화", "uid": 1}, "channel"),
    ("no-identity", {"channel": CHANNEL}, "uid"),
    ("both-identities", {"channel": CHANNEL, "uid": 1, "user_account": "a"}, "uid"),
    ("uid-zero", {"channel": CHANNEL, "uid": 0}, "uid"),
    ("uid-string-zero", {"channel": CHANNEL, "uid": "0"}, "uid"),
    ("uid-negative", {"channel": CHANNEL, "uid": -1}, "uid"),
    ("uid-too-big", {"channel": CHANNEL, "uid": 2**32}, "uid"),
    ("uid-float", {"channel": CHANNEL, "uid": 1.5}, "uid"),
    ("uid-whole-float", {"channel": CHANNEL, "uid": 1.0}, "uid"),
    ("uid-bool", {"channel": CHANNEL, "uid": True}, "uid"),
    ("uid-text", {"channel": CHANNEL, "uid": "abc"}, "uid"),
    ("uid-superscript", {"channel": CHANNEL, "uid": "²"}, "uid"),
    ("uid-long-digits", {"channel": CHANNEL, "uid": "9" * 5000}, "uid"),
    ("uid-object", {"channel": CHANNEL, "uid": {"n": 1}}, "uid"),
    ("account-too-long", {"channel": CHANNEL, "user_account": "a" * 256}, "user_account"),
    ("account-number", {"channel": CHANNEL, "user_account": 5}, "user_account"),
    ("account-non-ascii", {"channel": CHANNEL, "user_account": "é"}, "user_account"),
    ("role-unknown", {"channel": CHANNEL, "uid": 1, "role": "admin"}, "role"),
    ("role-upper", {"channel": CHANNEL, "uid": 1, "role": "PUBLISHER"}, "role"),
    ("role-list", {"channel": CHANNEL, "uid": 1, "role": []}, "role"),
    ("expire-zero", {"channel": CHANNEL, "uid": 1, "expire": 0}, "expire"),
    ("expire-negative", {"channel": CHANNEL, "uid": 1, "expire": -5}, "expire"),
    ("expire-float", {"channel": CHANNEL, "uid": 1, "expire": 1.5}, "expire"),
    ("expire-string", {"channel": CHANNEL, "uid": 1, "expire": "60"}, "expire"),
    ("expire-bool", {"channel": CHANNEL, "uid": 1, "expire": True}, "expire"),
    ("version-unknown", {"channel": CHANNEL, "uid": 1, "version": "008"}, "version"),
    ("version-number", {"channel": CHANNEL, "uid": 1, "version": 7}, "version"),
    ("body-list", [1, 2], "body"),
    ("body-string", "channel", "body"),
    ("body-number", 7, "body"),
]


class TestTokenBadInput:
    """Bad input is a 4xx JSON error naming the field, never a 500."""

    @pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES])
    async def test_bad_field_is_400_naming_it(self, client: Client, body: Any, field: str) -> None:
        """Each malformed body gives 400 with an error message and the offending field."""
        status, payload = await post_token(client, body)
        assert status == 400, payload
        assert payload["field"] == field
        assert isinstance(payload["error"], str) and payload["error"]

    @pytest.mark.parametrize(
        "raw",
        [b"{", b"not json", b"", b"null", b"\xff\xfe{}", b"[" * 60000, b'{"uid": ' + b"9" * 5000 + b"}", b"NaN"],
        ids=["truncated", "text", "empty", "null", "not-utf8", "deep-nesting", "huge-int-literal", "bare-nan"],
    )
    async def test_invalid_json_is_400(self, client: Client, raw: bytes) -> None:
        """A body that is not a JSON object is 400 naming `body`."""
        response = await client.post(
            "/api/token", data=raw, headers={"Authorization": "Bearer tok-admin", "Content-Type": "application/json"}
        )
        assert response.status == 400
        assert (await response.json())["field"] == "body"

    @pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
    async def test_wrong_content_type_is_415(self, client: Client, content_type: str | None) -> None:
        """A body that is not declared as application/json is 415 naming Content-Type."""
        headers = {"Authorization": "Bearer tok-admin"}
        if content_type:
            headers["Content-Type"] = content_type
        response = await client.post("/api/token", data=b'{"channel": "c", "uid": 1}', headers=headers)
        assert response.status == 415
        assert (await response.json())["field"] == "Content-Type"

    async def test_body_over_64_kib_is_413(self, client: Client) -> None:
        """A body just over 64 KiB with a Content-Length is refused with 413."""
        body = json.dumps({"channel": CHANNEL, "uid": 1, "pad": "x" * (64 * 1024)})
        response = await client.post(
            "/api/token", data=body, headers={"Authorization": "Bearer tok-admin", "Content-Type": "application/json"}
        )
        assert response.status == 413
        assert "error" in await response.json()

    async def test_chunked_body_over_64_kib_is_413(self, client: Client) -> None:
        """A chunked body (no Content-Length) that grows past 64 KiB is refused with 413 too."""

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"channel": "c", "uid": 1, "pad": "'
            for _ in range(20):
                yield b"x" * 4096
            yield b'"}'

        response = await client.post(
            "/api/token",
            data=chunks(),
            headers={"Authorization": "Bearer tok-admin", "Content-Type": "application/json"},
        )
        assert response.status == 413
        assert "error" in await response.json()

    async def test_body_of_exactly_64_kib_is_read(self, client: Client) -> None:
        """A body of exactly 64 KiB is within the limit and gets a token."""
        prefix = json.dumps({"channel": CHANNEL, "uid": 1, "pad": ""})[:-2]
        body = prefix + "x" * (64 * 1024 - len(prefix) - 2) + '"}'
        assert len(body.encode()) == 64 * 1024
        response = await client.post(
            "/api/token", data=body, headers={"Authorization": "Bearer tok-admin", "Content-Type": "application/json"}
        )
        assert response.status == 200

    async def test_wrong_method_is_405_json(self, client: Client) -> None:
        """GET on the token route is 405 with an Allow header and a JSON error."""
        response = await client.get("/api/token")
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert (await response.json())["error"]

    async def test_unknown_path_is_404_json(self, client: Client) -> None:
        """An unknown path is a JSON 404."""
        response = await client.get("/api/nope")
        assert response.status == 404
        assert (await response.json())["error"] == "not found"


ADMIN_JSON = {"Authorization": "Bearer tok-admin", "Content-Type": "application/json"}
# Raw bodies: a lone \uD800-\uDFFF escape is valid JSON text but no UTF-8 string (json.dumps would not write one).
SURROGATE_BODIES = [
    ("channel", b'{"channel": "\\ud800", "uid": 1}', "channel"),
    ("low-half", b'{"channel": "c\\udc00", "uid": 1}', "channel"),
    ("reversed-pair", b'{"channel": "\\udc00\\ud800", "uid": 1}', "channel"),
    ("user-account", b'{"channel": "c1", "user_account": "\\ud800"}', "user_account"),
    ("role", b'{"channel": "c1", "uid": 1, "role": "\\ud800"}', "role"),
    ("unknown-field", b'{"channel": "c1", "uid": 1, "note": "\\ud800"}', "note"),
    ("nested-deep", b'{"channel": "c1", "uid": 1, "x": {"a": [1, {"b": ["\\udfff"]}]}}', "x"),
    ("nested-key", b'{"channel": "c1", "uid": 1, "x": {"\\ud800": 1}}', "x"),
    ("top-level-key", b'{"channel": "c1", "uid": 1, "\\ud800": 1}', "body"),
    ("first-of-two", b'{"uid": 1, "role": "\\ud800", "channel": "\\ud800"}', "role"),
]


class TestLoneSurrogates:
    """body.json_object: a lone surrogate escape anywhere in a body is a 400 naming its top-level field."""

    @pytest.mark.parametrize(
        ("raw", "field"), [(r, f) for _, r, f in SURROGATE_BODIES], ids=[i for i, _, _ in SURROGATE_BODIES]
    )
    async def test_is_400_naming_the_field(
        self, client: Client, log_stream: io.StringIO, raw: bytes, field: str
    ) -> None:
        """The answer is a 400 naming the field (`body` for a key), and nothing is logged as an error."""
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        payload = await response.json()
        assert response.status == 400, payload
        assert payload["field"] == field
        assert "surrogate" in payload["error"]
        assert not [line for line in log_lines(log_stream) if line["level"] == "error"]

    async def test_valid_pair_in_a_fallback_body_is_accepted(self, client: Client) -> None:
        """A proper surrogate pair read by the stdlib parser (NaN forces it) is one character, not refused."""
        raw = b'{"channel": "c1", "uid": 5, "note": "\\ud83d\\ude00", "x": NaN}'
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        assert response.status == 200, await response.text()

    async def test_deep_nesting_in_a_fallback_body_is_checked_without_recursion(self, client: Client) -> None:
        """A surrogate at the deepest level the parser accepts is still found (and the check cannot overflow)."""
        depth = 900
        raw = b'{"channel": "c1", "uid": 1, "x": ' + b"[" * depth + b'"\\ud800"' + b"]" * depth + b"}"
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        assert response.status == 400
        assert (await response.json())["field"] == "x"


class TestIntegersBeyond64Bits:
    """body.optional_int: an integer literal beyond 64 bits is an integer (orjson hands it over as a float)."""

    @pytest.mark.parametrize(
        "literal", [b"18446744073709551616", b"1e19", b"99999999999999999999999999999", b"1.8446744073709552e19"]
    )
    async def test_huge_expire_is_clamped(self, client: Client, literal: bytes) -> None:
        """expire beyond 64 bits (or its exponent form) is clamped to 86400 like any expire above a day."""
        raw = b'{"channel": "c1", "uid": 5, "expire": ' + literal + b"}"
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        payload = await response.json()
        assert response.status == 200, payload
        assert payload["expire_in"] == 86400 and payload["expire_at"] == NOW + 86400

    @pytest.mark.parametrize("literal", [b"-18446744073709551616", b"-1e19"])
    async def test_hugely_negative_expire_is_the_positive_400(self, client: Client, literal: bytes) -> None:
        """A negative expire beyond 64 bits gets the usual 'must be positive' 400, not a type error."""
        raw = b'{"channel": "c1", "uid": 5, "expire": ' + literal + b"}"
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        payload = await response.json()
        assert response.status == 400 and payload["field"] == "expire"
        assert "positive" in payload["error"]

    @pytest.mark.parametrize("literal", [b"1.5", b"3600.0", b"1e3", b"1e400", b"-1e400", b"NaN", b"Infinity"])
    async def test_fractions_and_infinities_stay_400(self, client: Client, literal: bytes) -> None:
        """Non-integral, small float-form and non-finite numbers are still 'must be an integer'."""
        raw = b'{"channel": "c1", "uid": 5, "expire": ' + literal + b"}"
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        payload = await response.json()
        assert response.status == 400 and payload["field"] == "expire"
        assert "integer" in payload["error"]

    async def test_huge_uid_gets_the_range_400(self, client: Client) -> None:
        """A uid beyond 64 bits is refused with the uid range message."""
        raw = b'{"channel": "c1", "uid": 18446744073709551616}'
        response = await client.post("/api/token", data=raw, headers=ADMIN_JSON)
        payload = await response.json()
        assert response.status == 400 and payload["field"] == "uid"
        assert "from 1 to 4294967295" in payload["error"]


class TestDomainErrorMapping:
    """token_http/errors.py gives each domain refusal its HTTP status once, for every route."""

    @pytest.mark.parametrize(
        ("error", "status"),
        [
            (InvalidInput("callerId must be 1-128 characters", field="callerId"), 400),
            (Forbidden("not yours", field="groupId"), 403),
            (NotFound("unknown call c1", field="call_id"), 404),
            (IllegalTransition("cannot go from ended to accepted", field="status"), 409),
            (Conflict("a call with this id already exists", field="callId"), 409),
        ],
        ids=["invalid", "forbidden", "not-found", "illegal", "conflict"],
    )
    def test_refusals_keep_message_and_field(self, error: DomainError, status: int) -> None:
        """Each refusal becomes its status with the message and field it was raised with."""
        api_error = from_domain(error)
        assert (api_error.status, api_error.body()) == (status, {"error": error.message, "field": error.field})

    def test_fields_are_renamed_to_request_terms(self) -> None:
        """A route that speaks in request fields renames the document field a refusal names."""
        api_error = from_domain(Forbidden("not members", field="groupId"), {"groupId": "group_id"})
        assert api_error.body() == {"error": "not members", "field": "group_id"}

    def test_outage_is_503_without_details(self) -> None:
        """Unavailable is a 503 that says Firestore is unavailable and nothing of the cause."""
        api_error = from_domain(Unavailable("ConnectionError to 10.0.0.1"))
        assert (api_error.status, api_error.body()) == (503, {"error": "Firestore is unavailable; try again"})

    def test_live_cap_is_429_with_retry_after(self) -> None:
        """LiveCapReached is a 429 naming channel, with a Retry-After in whole seconds."""
        api_error = from_domain(LiveCapReached("alice", 3))
        assert api_error.status == 429 and api_error.field == "channel"
        assert api_error.headers == {"Retry-After": "30"} and "3 recordings" in api_error.message


class TestUnexpectedErrors:
    """A bug in a dependency is a 500 without details, logged with its request id."""

    async def test_crash_is_500_without_details(self, world: World, log_stream: io.StringIO) -> None:
        """An exception from a port becomes {"error": "internal error", "request_id"} and a logged traceback."""

        class Broken(FakeAuthenticator):
            async def authenticate(self, authorization: str | None) -> Principal:
                raise RuntimeError("secret-internal-detail")

        deps = Deps(authenticator=Broken({}), calls=world.calls, health=world.health, clock=world.clock)
        async with TestClient(TestServer(create_app(make_settings(), deps))) as test_client:
            response = await test_client.post("/api/token", json={"channel": "c", "uid": 1})
            body = await response.json()
        assert response.status == 500
        assert body == {"error": "internal error", "request_id": response.headers["X-Request-ID"]}
        crash = [line for line in log_lines(log_stream) if line["event"] == "http.unhandled"]
        assert len(crash) == 1
        assert "secret-internal-detail" in crash[0]["exception"]
        assert crash[0]["request_id"] == body["request_id"]


# ---------------------------------------------------------------------------------------------- health


AS_ADMIN = {"Authorization": "Bearer tok-admin"}


class TestHealth:
    """GET /api/health: Firestore reachability, worker heartbeats, push transports; briefly cached."""

    async def test_healthy_with_a_live_watcher_is_ok(self, client: Client, world: World) -> None:
        """Firestore answering and a live watcher heartbeat give 200 status ok (the full report, to an admin)."""
        world.health.beats = [beat("watcher", 10), beat("recorder", 10)]
        response = await client.get("/api/health", headers=AS_ADMIN)
        body = await response.json()
        assert response.status == 200
        assert body["status"] == "ok" and body["problems"] == []
        assert body["firestore"]["ok"] is True and body["firestore"]["latency_ms"] >= 0
        assert body["workers"]["watcher"] == {"alive": 1, "instances": ["watcher-1"]}
        assert body["push"] == {"apns": {"configured": False}, "fcm": {"configured": False}}
        assert body["auth"] == "firebase"

    async def test_no_live_watcher_is_degraded_but_200(self, client: Client, world: World) -> None:
        """An expired watcher heartbeat is reported as a problem, status degraded, still 200."""
        world.health.beats = [beat("watcher", -1)]
        response = await client.get("/api/health")
        body = await response.json()
        assert response.status == 200
        assert body["status"] == "degraded"
        assert body["workers"]["watcher"]["alive"] == 0
        assert any("watcher" in problem for problem in body["problems"])

    async def test_firestore_error_is_503(self, client: Client, world: World) -> None:
        """A failing ping gives 503 with firestore.ok false; the error names the type, not the message."""
        world.health.failure = ConnectionError("cannot reach 10.9.8.7 with key sk-secret")
        response = await client.get("/api/health", headers=AS_ADMIN)
        body = await response.json()
        assert response.status == 503
        assert body["status"] == "degraded"
        assert body["firestore"] == {"ok": False, "error": "ConnectionError"}
        assert "sk-secret" not in await response.text()

    async def test_hanging_firestore_is_503_within_the_timeout(self, client: Client, world: World) -> None:
        """A ping that never answers is cut at the check timeout (at most 2 s) and answered with 503."""
        world.health.delay = 30.0
        started = time.monotonic()
        response = await client.get("/api/health")
        elapsed = time.monotonic() - started
        assert response.status == 503
        assert health_mod.FIRESTORE_TIMEOUT_S <= 2.0
        assert elapsed < health_mod.FIRESTORE_TIMEOUT_S + 0.5
        assert (await response.json())["firestore"]["ok"] is False

    async def test_result_is_cached_between_one_and_two_seconds(self, client: Client, world: World) -> None:
        """Requests within the cache window reuse one check; after it, Firestore is asked again."""
        assert 1.0 <= health_mod.CACHE_TTL_S <= 2.0
        await client.get("/api/health")
        world.clock.advance(0.9)
        await client.get("/api/health")
        assert world.health.pings == 1
        world.clock.advance(1.2)
        await client.get("/api/health")
        assert world.health.pings == 2

    async def test_recovery_is_seen_after_the_cache_expires(self, client: Client, world: World) -> None:
        """A 503 is not stuck: once Firestore answers again and the cache expires, health is 200."""
        world.health.failure = ConnectionError("down")
        assert (await client.get("/api/health")).status == 503
        world.health.failure = None
        world.clock.advance(2.5)
        assert (await client.get("/api/health")).status == 200

    async def test_concurrent_requests_share_one_check(self, client: Client, world: World) -> None:
        """Many simultaneous health requests cause a single Firestore round trip."""
        world.health.delay = 0.2
        responses = await asyncio.gather(*(client.get("/api/health") for _ in range(8)))
        assert {r.status for r in responses} == {200}
        assert world.health.pings == 1

    async def test_push_transports_and_open_auth_are_reported(self, world: World, log_stream: io.StringIO) -> None:
        """Configured APNs and the open auth mode show up in the health body."""
        settings = make_settings(
            MEMHARBOR_AUTH="none",
            APNS_TEAM_ID="T",
            APNS_KEY_ID="K",
            APNS_BUNDLE_ID="b",
            APNS_KEY_CONTENT="-----BEGIN PRIVATE KEY-----\\nx\\n-----END PRIVATE KEY-----",
        )
        async with TestClient(TestServer(create_app(settings, world.deps(open_access=True)))) as test_client:
            body = await (await test_client.get("/api/health")).json()
        assert body["push"]["apns"] == {"configured": True}
        assert body["push"]["fcm"] == {"configured": False}
        assert body["auth"] == "none"


# ---------------------------------------------------------------------------------------------- access log


class TestRequestIds:
    """Request ids made without a syscall each."""

    def test_unique_32_hex_characters(self) -> None:
        """Ten thousand ids are distinct and each is 32 lowercase hex characters."""
        ids = RequestIds()
        made = [ids.next() for _ in range(10_000)]
        assert len(set(made)) == len(made)
        assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in made)

    def test_reset_starts_a_new_prefix(self) -> None:
        """After reset() (what a forked worker does) no earlier id repeats."""
        ids = RequestIds()
        before = {ids.next() for _ in range(100)}
        ids.reset()
        after = {ids.next() for _ in range(100)}
        assert not before & after


class TestAccessLog:
    """One access line per request with method, path, status, duration, client and request id."""

    async def test_one_access_line_per_request(self, client: Client, log_stream: io.StringIO) -> None:
        """A request produces exactly one http.request line whose request id is also the X-Request-ID header."""
        response = await client.post(
            "/api/token", json={"channel": CHANNEL, "uid": 1}, headers={"Authorization": "Bearer tok-admin"}
        )
        access = [line for line in log_lines(log_stream) if line["event"] == "http.request"]
        assert len(access) == 1
        line = access[0]
        assert line["method"] == "POST"
        assert line["path"] == "/api/token"
        assert line["status"] == 200
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
        assert line["client"] == "127.0.0.1"
        assert line["request_id"] == response.headers["X-Request-ID"]
        assert len(line["request_id"]) >= 16

    async def test_error_responses_are_logged_with_their_status(self, client: Client, log_stream: io.StringIO) -> None:
        """401, 404 and 405 answers each get an access line with the status sent, and an X-Request-ID."""
        for method, path, expected in (("POST", "/api/token", 401), ("GET", "/nope", 404), ("PUT", "/api/token", 405)):
            response = await client.request(method, path)
            assert response.status == expected
            assert response.headers["X-Request-ID"]
        statuses = [
            (line["method"], line["status"]) for line in log_lines(log_stream) if line["event"] == "http.request"
        ]
        assert statuses == [("POST", 401), ("GET", 404), ("PUT", 405)]

    async def test_every_route_answers_in_the_request_context(self, client: Client, log_stream: io.StringIO) -> None:
        """Each registered route and the catch-all answer with an X-Request-ID that one access line also names."""
        requests = []
        for route in client.server.app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = re.sub(r"\{[^}]*\}", "x", info.get("path") or info.get("formatter") or "")
            requests.append(("GET", "/nowhere") if route.method == "*" else (route.method, path))
        assert len(requests) > 10 and ("POST", "/api/token") in requests
        for method, path in requests:
            response = await client.request(method, path)
            request_id = response.headers["X-Request-ID"]
            access = [
                line
                for line in log_lines(log_stream)
                if line["event"] == "http.request" and line["request_id"] == request_id
            ]
            assert [(line["method"], line["path"], line["status"]) for line in access] == [
                (method, path, response.status)
            ]

    async def test_wrong_method_lists_the_methods_the_path_has(self, client: Client) -> None:
        """A method a path lacks is a JSON 405 whose Allow header names exactly the path's methods."""
        response = await client.put("/api/call/status/abc")
        assert response.status == 405
        assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
        assert (await response.json()) == {"error": "method not allowed"}
        assert response.headers["X-Request-ID"]

    async def test_safe_incoming_request_id_is_kept(self, client: Client, log_stream: io.StringIO) -> None:
        """A well-formed X-Request-ID from the caller is reused in the response and the log."""
        response = await client.get("/api/health", headers={"X-Request-ID": "edge-abc.123:4"})
        assert response.headers["X-Request-ID"] == "edge-abc.123:4"
        [line] = [entry for entry in log_lines(log_stream) if entry["event"] == "http.request"]
        assert line["request_id"] == "edge-abc.123:4"

    @pytest.mark.parametrize("incoming", ["a" * 65, "has space", 'quote"d', "<script>"])
    async def test_unsafe_incoming_request_id_is_replaced(self, client: Client, incoming: str) -> None:
        """An overlong or odd X-Request-ID is not echoed; a fresh id is generated instead."""
        response = await client.get("/api/health", headers={"X-Request-ID": incoming})
        assert response.headers["X-Request-ID"] != incoming
        assert len(response.headers["X-Request-ID"]) == 32

    async def test_request_id_is_on_every_line_of_the_request(self, client: Client, log_stream: io.StringIO) -> None:
        """Lines logged while handling a request (here by the call lookup) carry its request id."""
        response = await client.post(
            "/api/token", json={"channel": CHANNEL, "uid": 1}, headers={"Authorization": "Bearer tok-alice"}
        )
        lookup = [line for line in log_lines(log_stream) if line["event"] == "fake.calls_on_channel"]
        assert len(lookup) == 1
        assert lookup[0]["request_id"] == response.headers["X-Request-ID"]

    async def test_no_secret_reaches_the_log(self, client: Client, log_stream: io.StringIO) -> None:
        """Neither the ID token, the app certificate nor the issued Agora token appear in any line."""
        response = await client.post(
            "/api/token", json={"channel": CHANNEL, "uid": 1}, headers={"Authorization": "Bearer tok-admin"}
        )
        issued = (await response.json())["token"]
        await client.post(
            "/api/token", json={"channel": CHANNEL, "uid": 1}, headers={"Authorization": "Bearer forged-id-token-77"}
        )
        text = log_stream.getvalue()
        assert "http.request" in text
        for secret in ("tok-admin", "forged-id-token-77", APP_CERT, issued):
            assert secret not in text


# ---------------------------------------------------------------------------------------------- real authenticator


@pytest.fixture
def emulator_admin_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[firebase_admin.App]:
    """A Firebase Admin app that checks ID tokens in emulator format (no network call is made)."""
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    settings = http_settings(
        {"FIREBASE_PROJECT_ID": PROJECT, "FIREBASE_USE_EMULATOR": "1", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
    )
    app = firebase.admin_app(settings, name=f"unit-auth-{time.monotonic_ns()}")
    yield app
    firebase_admin.delete_app(app)


class TestFirebaseIdTokens:
    """The real authenticator, checking emulator-format Firebase ID tokens."""

    async def test_valid_token_names_the_user(self, emulator_admin_app: firebase_admin.App) -> None:
        """A token for this project yields a principal with its uid and no admin rights."""
        principal = await FirebaseIdTokens(emulator_admin_app).authenticate(
            f"Bearer {emulator_id_token(PROJECT, ALICE)}"
        )
        assert principal == Principal(uid=ALICE, admin=False)

    async def test_admin_claim_must_be_true(self, emulator_admin_app: firebase_admin.App) -> None:
        """admin: true makes an admin; admin: "true" (a string) does not."""
        auth = FirebaseIdTokens(emulator_admin_app)
        assert (await auth.authenticate(f"Bearer {emulator_id_token(PROJECT, ADMIN, admin=True)}")).admin is True
        assert (await auth.authenticate(f"Bearer {emulator_id_token(PROJECT, ADMIN, admin='true')}")).admin is False

    async def test_expired_emulator_token_is_401(self, emulator_admin_app: firebase_admin.App) -> None:
        """Firebase Admin does not check expiry in emulator mode; the authenticator does."""
        expired = emulator_id_token(PROJECT, ALICE, lifetime_s=-10, admin=True)
        with pytest.raises(ApiError) as caught:
            await FirebaseIdTokens(emulator_admin_app).authenticate(f"Bearer {expired}")
        assert caught.value.status == 401 and caught.value.field == "Authorization"

    async def test_lowercase_bearer_scheme_is_accepted(self, emulator_admin_app: firebase_admin.App) -> None:
        """The auth scheme is case-insensitive."""
        principal = await FirebaseIdTokens(emulator_admin_app).authenticate(f"bearer {emulator_id_token(PROJECT, BOB)}")
        assert principal.uid == BOB

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Bearer",
            "Bearer    ",
            "Basic dXNlcjpwYXNz",
            "Bearer not-a-jwt",
            "Bearer a.b.c",
            f"Bearer {emulator_id_token('another-project', ALICE)}",
        ],
        ids=["none", "empty", "scheme-only", "blank-token", "basic", "garbage", "bad-segments", "other-project"],
    )
    async def test_bad_authorization_is_401(self, emulator_admin_app: firebase_admin.App, header: str | None) -> None:
        """Missing, malformed or foreign-project tokens are a 401 naming Authorization, never echoing it."""
        with pytest.raises(ApiError) as caught:
            await FirebaseIdTokens(emulator_admin_app).authenticate(header)
        assert caught.value.status == 401
        assert caught.value.field == "Authorization"
        if header and len(header) > 12:
            assert header.split(" ", 1)[1] not in str(caught.value.body())


# ---------------------------------------------------------------------------------------------- start-up


class TestStartup:
    """token_http.main: what start-up says before serving."""

    def test_open_auth_logs_a_warning(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
    ) -> None:
        """MEMHARBOR_AUTH=none logs an auth.disabled warning at start-up."""
        served: list[HttpSettings] = []
        monkeypatch.setattr(main_mod, "_serve", lambda settings, reuse_port: served.append(settings))
        assert main_mod.main(make_settings(MEMHARBOR_AUTH="none", MEMHARBOR_LOG_FORMAT="json")) == 0
        assert len(served) == 1
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        warnings = [line for line in lines if line["event"] == "auth.disabled"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"

    def test_firebase_auth_logs_no_warning(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
    ) -> None:
        """With Firebase auth (the default) start-up logs no auth warning."""
        monkeypatch.setattr(main_mod, "_serve", lambda settings, reuse_port: None)
        assert main_mod.main(make_settings(MEMHARBOR_LOG_FORMAT="json")) == 0
        assert "auth.disabled" not in capsys.readouterr().err
