"""The APNs and FCM transports against local servers that check requests the way Apple's and Google's do."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioapns.common import NotificationRequest, PushType

from memharbor.settings import ApnsSettings, FcmSettings, Secret
from tests.support.apns_server import ApnsServer, apns_token
from tests.support.fcm_server import SCOPE, FcmServer, fcm_token
from tests.support.google_logging import google_logger_configured
from tests.support.push_fixtures import BUNDLE
from tests.support.push_keys import ApnsKey, ServiceAccount, make_apns_key, make_service_account
from watcher.apns import ApnsTransport, ProviderToken, open_tunnel
from watcher.fcm import FcmTransport
from watcher.push import PushTarget, call_ended_payload, incoming_call_payload
from watcher.retry import RetryPolicy

PROJECT = "demo-push"
CALL = {
    "callId": "call-42",
    "channelName": "group1_alice_bob_1700000000000",
    "callerName": "Alice Kim",
    "callerId": "alice",
    "groupId": "group1",
    "receiverId": "bob",
    "status": "cancelled",
}
FAST = RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=8)


class Offset:
    """A clock that runs `seconds` ahead of the real one (tests that need minutes to pass)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return time.time() + self.seconds


@pytest.fixture(scope="module", autouse=True)
def google_logs_keep_propagating() -> Iterator[None]:
    """google-auth's first request must not silence the `google` logger for later tests."""
    with google_logger_configured():
        yield


def apns_settings(key: ApnsKey, server: ApnsServer, ca_file: Path | None, sandbox: bool = False) -> ApnsSettings:
    return ApnsSettings(
        team_id=key.team_id,
        key_id=key.key_id,
        bundle_id=BUNDLE,
        key=Secret(key.p8),
        use_sandbox=sandbox,
        proxy=f"127.0.0.1:{server.port}",
        ca_file=ca_file,
    )


@pytest.fixture
async def apns_transport(apns_key: ApnsKey, apns: ApnsServer, ca_file: Path) -> AsyncIterator[ApnsTransport]:
    """An APNs transport reaching the local APNs through its proxy and CA settings."""
    transport = ApnsTransport(apns_settings(apns_key, apns, ca_file), policy=FAST, request_timeout_s=3.0)
    yield transport
    await transport.close()


def ios(token: str) -> PushTarget:
    return PushTarget("bob", "ios", token)


def android(token: str) -> PushTarget:
    return PushTarget("bob", "android", token)


class TestApnsDelivery:
    """Pushes reach the local APNs with Apple's headers, the seed payload and a valid provider token."""

    async def test_incoming_call_arrives_as_a_voip_push(self, apns_transport: ApnsTransport, apns: ApnsServer) -> None:
        """The VoIP push carries voip/topic/priority/expiration/collapse-id headers and the seed payload."""
        token = apns_token()
        deadline = time.time() + 45
        result = await apns_transport.send(ios(token), "incoming_call", incoming_call_payload(CALL), deadline)
        assert result.sent is True and result.error is None
        [record] = apns.delivered(token)
        assert record.host == "api.push.apple.com"
        assert record.headers["apns-push-type"] == "voip"
        assert record.headers["apns-topic"] == f"{BUNDLE}.voip"
        assert record.headers["apns-priority"] == "10"
        assert abs(int(record.headers["apns-expiration"]) - int(deadline)) <= 1
        assert record.headers["apns-collapse-id"] == "call-42"
        assert record.payload == incoming_call_payload(CALL)
        assert record.jwt_claims is not None and record.jwt_claims["iss"] == apns.key.team_id
        assert record.jwt_header is not None and record.jwt_header["kid"] == apns.key.key_id

    async def test_sandbox_reaches_the_development_host(
        self, apns_key: ApnsKey, apns: ApnsServer, ca_file: Path
    ) -> None:
        """APNS_USE_SANDBOX sends to api.development.push.apple.com."""
        transport = ApnsTransport(apns_settings(apns_key, apns, ca_file, sandbox=True), policy=FAST)
        try:
            token = apns_token()
            assert (await transport.send(ios(token), "incoming_call", {"callId": "c"}, time.time() + 30)).sent
        finally:
            await transport.close()
        assert apns.delivered(token)[0].host == "api.development.push.apple.com"

    async def test_stop_ringing_is_an_alert_to_the_apps_regular_token(
        self, apns_transport: ApnsTransport, apns: ApnsServer
    ) -> None:
        """call_ended goes as an alert push to the bundle topic; a VoIP token is refused for that topic."""
        voip, regular = apns_token(), apns_token()
        apns.register(voip, f"{BUNDLE}.voip")
        apns.register(regular, BUNDLE)
        payload = call_ended_payload(CALL)
        assert (await apns_transport.send(ios(regular), "call_ended", payload, time.time() + 60)).sent
        [record] = apns.delivered(regular)
        assert record.headers["apns-push-type"] == "alert"
        assert record.headers["apns-topic"] == BUNDLE
        assert record.payload["aps"]["alert"]["loc-key"] == "CALL_CANCELLED_BODY"
        assert record.payload["callId"] == "call-42" and record.payload["type"] == "call_ended"
        wrong = await apns_transport.send(ios(voip), "call_ended", payload, time.time() + 60)
        assert (wrong.sent, wrong.error, wrong.token_invalid) == (False, "apns:400:DeviceTokenNotForTopic", False)

    async def test_many_concurrent_pushes_share_one_connection_and_one_token(
        self, apns_transport: ApnsTransport, apns: ApnsServer
    ) -> None:
        """200 simultaneous pushes are multiplexed on one HTTP/2 connection with one provider token."""
        tokens = [apns_token() for _ in range(200)]
        results = await asyncio.gather(
            *(apns_transport.send(ios(t), "incoming_call", {"callId": t[:8]}, time.time() + 30) for t in tokens)
        )
        assert all(r.sent for r in results)
        assert len(apns.delivered()) == 200
        assert apns.connections_opened == 1
        assert len(apns.provider_tokens()) == 1


class TestApnsErrors:
    """Dead tokens, transient failures and deadlines end in the right result."""

    @pytest.mark.parametrize(("status", "error"), [(410, "apns:410:Unregistered"), (400, "apns:400:BadDeviceToken")])
    async def test_dead_tokens_are_reported_without_retry(
        self, apns_transport: ApnsTransport, apns: ApnsServer, status: int, error: str
    ) -> None:
        """410 Unregistered and 400 BadDeviceToken mark the token invalid after a single request."""
        token = apns_token(status)
        result = await apns_transport.send(ios(token), "incoming_call", {"callId": "c"}, time.time() + 30)
        assert (result.sent, result.error, result.token_invalid) == (False, error, True)
        assert len(apns.records(token)) == 1

    @pytest.mark.parametrize("status", [429, 500, 503])
    async def test_transient_failures_are_retried_then_sent(
        self, apns_transport: ApnsTransport, apns: ApnsServer, status: int
    ) -> None:
        """Two failures with 429/500/503, then success: three requests, sent, the error remembered."""
        token = apns_token(status, times=2)
        result = await apns_transport.send(ios(token), "incoming_call", {"callId": "c"}, time.time() + 30)
        assert result.sent is True
        assert [r.status for r in apns.records(token)] == [status, status, 200]
        assert apns_transport.status()["lastError"].startswith(f"apns:{status}:")
        assert apns_transport.status()["retries"] == 2

    async def test_persistent_500_gives_up_at_the_deadline(
        self, apns_transport: ApnsTransport, apns: ApnsServer
    ) -> None:
        """A server failing every time is retried only until the ring deadline, then reported."""
        token = apns_token(500)
        started = time.monotonic()
        result = await apns_transport.send(ios(token), "incoming_call", {"callId": "c"}, time.time() + 1.5)
        assert (result.sent, result.error, result.token_invalid) == (False, "apns:500:InternalServerError", False)
        assert time.monotonic() - started < 1.6
        assert len(apns.records(token)) >= 3

    async def test_retries_stop_when_the_call_stops_ringing(
        self, apns_transport: ApnsTransport, apns: ApnsServer
    ) -> None:
        """Once still_wanted() says the call no longer rings, no further request is made."""
        token = apns_token(500)

        async def not_ringing() -> bool:
            return False

        result = await apns_transport.send(ios(token), "incoming_call", {"callId": "c"}, time.time() + 30, not_ringing)
        assert result.sent is False
        assert len(apns.records(token)) == 1

    async def test_nothing_is_sent_after_the_deadline(self, apns_transport: ApnsTransport, apns: ApnsServer) -> None:
        """A push whose deadline has passed is not sent at all."""
        result = await apns_transport.send(ios(apns_token()), "incoming_call", {"callId": "c"}, time.time() - 1)
        assert (result.sent, result.error) == (False, "expired")
        assert apns.records() == []

    async def test_untrusted_server_certificate_is_refused(self, apns_key: ApnsKey, apns: ApnsServer) -> None:
        """Without the test CA the TLS handshake fails: a connection error, and APNs never sees a request."""
        # aioapns pauses a second after a failed connect before giving up, so each attempt takes ~1 s.
        transport = ApnsTransport(apns_settings(apns_key, apns, None), policy=FAST, request_timeout_s=3.0)
        try:
            result = await transport.send(ios(apns_token()), "incoming_call", {"callId": "c"}, time.time() + 1.5)
        finally:
            await transport.close()
        assert result.sent is False
        assert result.error is not None and result.error.startswith("apns:connection_error")
        assert apns.records() == [] and apns.connections_opened == 0


class TestApnsTimeouts:
    """A slow APNs costs a timeout, not the connection: late answers are absorbed."""

    async def test_a_slow_answer_times_out_and_the_connection_survives(
        self, apns_key: ApnsKey, apns: ApnsServer, ca_file: Path
    ) -> None:
        """Answers 0.6 s late with a 0.2 s timeout: apns:timeout, and later pushes still use the same connection."""
        transport = ApnsTransport(apns_settings(apns_key, apns, ca_file), policy=FAST, request_timeout_s=0.2)
        try:
            assert (await transport.send(ios(apns_token()), "incoming_call", {"callId": "a"}, time.time() + 30)).sent
            apns.delay_s = 0.6
            slow = await transport.send(ios(apns_token()), "incoming_call", {"callId": "b"}, time.time() + 0.5)
            assert (slow.sent, slow.error) == (False, "apns:timeout")
            await asyncio.sleep(0.8)  # the late answers arrive on the open connection
            apns.delay_s = 0.0
            assert (await transport.send(ios(apns_token()), "incoming_call", {"callId": "c"}, time.time() + 30)).sent
        finally:
            await transport.close()
        assert apns.connections_opened == 1


class TestApnsProviderToken:
    """The provider token is reused across connections and refreshed inside Apple's window."""

    async def test_token_survives_reconnects(self, apns_transport: ApnsTransport, apns: ApnsServer) -> None:
        """After the server drops the connection, the new connection presents the same token."""
        assert (await apns_transport.send(ios(apns_token()), "incoming_call", {"callId": "a"}, time.time() + 30)).sent
        apns.kill_connections()
        await asyncio.sleep(0.1)
        assert (await apns_transport.send(ios(apns_token()), "incoming_call", {"callId": "b"}, time.time() + 30)).sent
        assert apns.connections_opened == 2
        assert len(apns.provider_tokens()) == 1
        assert apns_transport.provider.minted == 1

    async def test_token_is_refreshed_after_fifty_minutes_and_accepted(
        self, apns_key: ApnsKey, apns: ApnsServer, ca_file: Path
    ) -> None:
        """At +30 min the token is reused; at +51 min a new one is minted and APNs accepts it on the same connection."""
        clock = Offset()
        transport = ApnsTransport(apns_settings(apns_key, apns, ca_file), policy=FAST, clock=clock)
        try:
            for minutes in (0, 30, 51):
                clock.seconds = apns.clock_offset = minutes * 60.0
                result = await transport.send(ios(apns_token()), "incoming_call", {"callId": "c"}, clock() + 30)
                assert result.sent, result
        finally:
            await transport.close()
        records = apns.records()
        assert [r.status for r in records] == [200, 200, 200]
        assert records[0].authorization == records[1].authorization != records[2].authorization
        assert records[2].jwt_claims is not None and records[0].jwt_claims is not None
        assert records[2].jwt_claims["iat"] - records[0].jwt_claims["iat"] >= 50 * 60
        assert apns.connections_opened == 1
        assert transport.status()["providerTokensMinted"] == 2

    async def test_a_token_older_than_an_hour_is_refused(self, apns_transport: ApnsTransport, apns: ApnsServer) -> None:
        """APNs answers 403 ExpiredProviderToken to a token whose iat is over an hour old."""
        apns.clock_offset = 61 * 60.0
        result = await apns_transport.send(ios(apns_token()), "incoming_call", {"callId": "c"}, time.time() + 30)
        assert (result.sent, result.error) == (False, "apns:403:ExpiredProviderToken")

    async def test_a_provider_that_remints_per_request_is_throttled(
        self, apns_transport: ApnsTransport, apns: ApnsServer
    ) -> None:
        """A new token on the same connection within 20 minutes gets 429 TooManyProviderTokenUpdates."""
        key = apns.key
        apns_transport.provider = Reminting(key.p8, key.key_id, key.team_id)
        first = await apns_transport.send(ios(apns_token()), "incoming_call", {"callId": "a"}, time.time() + 30)
        second = await apns_transport.send(ios(apns_token()), "incoming_call", {"callId": "b"}, time.time() + 30)
        assert first.sent is True
        assert (second.sent, second.error) == (False, "apns:429:TooManyProviderTokenUpdates")

    async def test_a_token_signed_with_another_key_is_refused(
        self, apns_key: ApnsKey, apns: ApnsServer, ca_file: Path
    ) -> None:
        """A JWT with the right kid and team but the wrong key fails the ES256 check: 403 InvalidProviderToken."""
        impostor = make_apns_key()
        settings = apns_settings(apns_key, apns, ca_file)
        forged = dataclasses.replace(settings, key=Secret(impostor.p8))
        transport = ApnsTransport(forged, policy=FAST)
        try:
            result = await transport.send(ios(apns_token()), "incoming_call", {"callId": "c"}, time.time() + 30)
        finally:
            await transport.close()
        assert (result.sent, result.error) == (False, "apns:403:InvalidProviderToken")


class Reminting(ProviderToken):
    """A broken provider that signs a new token, one second newer, for every request."""

    def get_header(self) -> str:
        self._mint(time.time() + self.minted)
        assert self._header is not None
        return self._header


class TestApnsServerStrictness:
    """The local APNs refuses what Apple refuses, so a wrong header or payload fails a test."""

    @pytest.mark.parametrize(
        ("request_kwargs", "reason"),
        [
            ({"push_type": PushType.VOIP, "apns_topic": BUNDLE}, "InvalidPushType"),
            ({"push_type": PushType.ALERT, "apns_topic": f"{BUNDLE}.voip"}, "InvalidPushType"),
            ({"push_type": PushType.VOIP, "apns_topic": "com.other.app.voip"}, "TopicDisallowed"),
            ({"push_type": PushType.BACKGROUND, "apns_topic": BUNDLE, "priority": 10}, "BadPriority"),
            ({"push_type": PushType.VOIP, "apns_topic": f"{BUNDLE}.voip", "collapse_key": "x" * 65}, "BadCollapseId"),
            ({"push_type": PushType.VOIP, "apns_topic": f"{BUNDLE}.voip", "device_token": "not-hex"}, "BadDeviceToken"),
            ({"push_type": None, "apns_topic": f"{BUNDLE}.voip"}, "InvalidPushType"),
            ({"push_type": PushType.ALERT, "apns_topic": BUNDLE, "message": {"x": "y" * 5000}}, "PayloadTooLarge"),
        ],
    )
    async def test_bad_requests_get_apples_reasons(
        self, apns_transport: ApnsTransport, apns: ApnsServer, request_kwargs: dict[str, Any], reason: str
    ) -> None:
        """Each malformed request is answered with Apple's status and reason."""
        fields: dict[str, Any] = {"device_token": apns_token(), "message": {"callId": "c"}, "priority": 10}
        fields.update(request_kwargs)
        result = await apns_transport._get_pool().send_notification(NotificationRequest(**fields))
        assert result.description == reason
        assert result.status in ("400", "413")

    async def test_a_client_without_alpn_h2_is_refused(self, apns: ApnsServer, ca_file: Path) -> None:
        """TLS without ALPN h2 is closed before any HTTP/2 is spoken."""
        sock = await open_tunnel("127.0.0.1", apns.port, "api.push.apple.com", 443)
        context = ssl.create_default_context(cafile=str(ca_file))
        reader, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname="api.push.apple.com")
        assert await reader.read() == b""
        writer.close()
        assert apns.refused_alpn == 1 and apns.connections_opened == 0


# ----------------------------------------------------------------------------------------------- FCM


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    """A fresh local FCM + OAuth2 token endpoint per test."""
    with FcmServer(PROJECT) as server:
        yield server


@pytest.fixture
def account(fcm: FcmServer) -> ServiceAccount:
    """A service account the local token endpoint trusts, whose key file names that endpoint."""
    created = make_service_account(PROJECT, fcm.token_uri)
    fcm.trust(created)
    return created


def fcm_settings(server: FcmServer, account: ServiceAccount, project: str = PROJECT) -> FcmSettings:
    return FcmSettings(
        project_id=project, service_account_json=Secret(account.json), endpoint=server.endpoint, token_uri=None
    )


@pytest.fixture
async def fcm_transport(fcm: FcmServer, account: ServiceAccount) -> AsyncIterator[FcmTransport]:
    """An FCM transport whose endpoint is the local server."""
    transport = FcmTransport(fcm_settings(fcm, account), policy=FAST, request_timeout_s=3.0)
    yield transport
    await transport.close()


class TestFcmDelivery:
    """Data messages reach the local FCM with a bearer token from the service-account grant."""

    async def test_incoming_call_arrives_as_a_high_priority_data_message(
        self, fcm_transport: FcmTransport, fcm: FcmServer, account: ServiceAccount
    ) -> None:
        """The message is data-only, high priority, TTL up to the deadline, all values strings."""
        token = fcm_token()
        payload = incoming_call_payload(CALL)
        result = await fcm_transport.send(android(token), "incoming_call", payload, time.time() + 40)
        assert result.sent is True
        [record] = fcm.delivered(token)
        message = record.message
        assert message is not None and set(message) == {"token", "data", "android"}
        assert message["token"] == token
        assert message["data"] == incoming_call_payload(CALL)
        assert message["android"]["priority"] == "high"
        assert message["android"]["ttl"] in ("39s", "40s")
        [grant] = fcm.grants
        assert grant["header"]["alg"] == "RS256" and grant["header"]["kid"] == account.key_id
        assert grant["claims"]["iss"] == account.client_email and grant["claims"]["scope"] == SCOPE

    async def test_stop_ringing_is_a_data_message_too(self, fcm_transport: FcmTransport, fcm: FcmServer) -> None:
        """call_ended reaches Android as a data message with type call_ended."""
        token = fcm_token()
        assert (await fcm_transport.send(android(token), "call_ended", call_ended_payload(CALL), time.time() + 60)).sent
        [record] = fcm.delivered(token)
        assert record.message is not None and record.message["data"]["type"] == "call_ended"
        assert "notification" not in record.message

    async def test_token_override_reaches_the_configured_token_uri(self, fcm: FcmServer) -> None:
        """MEMHARBOR_FCM_TOKEN_URI wins over the key file's token_uri."""
        elsewhere = make_service_account(PROJECT, "http://127.0.0.1:9/never")
        fcm.trust(elsewhere)
        settings = FcmSettings(PROJECT, Secret(elsewhere.json), fcm.endpoint, token_uri=fcm.token_uri)
        transport = FcmTransport(settings, policy=FAST)
        try:
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 10)).sent
        finally:
            await transport.close()
        assert len(fcm.grants) == 1

    async def test_one_access_token_and_kept_alive_connections_serve_many_pushes(
        self, fcm_transport: FcmTransport, fcm: FcmServer
    ) -> None:
        """100 pushes in 4 waves of 25 use one grant and at most 25 connections (keep-alive reuse)."""
        for _ in range(4):
            results = await asyncio.gather(
                *(
                    fcm_transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 30)
                    for _ in range(25)
                )
            )
            assert all(r.sent for r in results)
        assert len(fcm.delivered()) == 100
        assert len(fcm.grants) == 1
        assert len(fcm.connections_seen) <= 25


class TestFcmLimits:
    """At most max_in_flight requests at once, each bounded by the request timeout."""

    async def test_concurrency_is_bounded(self, fcm: FcmServer, account: ServiceAccount) -> None:
        """Twelve simultaneous pushes with max_in_flight=3 never put more than 3 requests on the server."""
        fcm.delay_s = 0.05
        transport = FcmTransport(fcm_settings(fcm, account), policy=FAST, max_in_flight=3)
        try:
            results = await asyncio.gather(
                *(transport.send(android(fcm_token()), "incoming_call", {}, time.time() + 30) for _ in range(12))
            )
        finally:
            await transport.close()
        assert all(r.sent for r in results)
        assert fcm.max_in_flight == 3

    async def test_a_slow_server_times_out(self, fcm: FcmServer, account: ServiceAccount) -> None:
        """Answers slower than the request timeout end as fcm:timeout once the deadline is near."""
        transport = FcmTransport(fcm_settings(fcm, account), policy=FAST, request_timeout_s=0.2)
        try:
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 30)).sent
            fcm.delay_s = 1.0
            started = time.monotonic()
            result = await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 0.5)
        finally:
            await transport.close()
        assert (result.sent, result.error) == (False, "fcm:timeout")
        assert time.monotonic() - started < 0.9


class TestFcmAccessToken:
    """The OAuth2 access token is cached, refreshed ahead of expiry off the loop, and replaced after a 401."""

    async def test_refreshed_in_the_background_when_under_five_minutes_left(
        self, fcm: FcmServer, account: ServiceAccount
    ) -> None:
        """With 4 minutes left the push goes out at once with the old token while a new one is fetched."""
        clock = Offset()
        transport = FcmTransport(fcm_settings(fcm, account), policy=FAST, clock=clock)
        try:
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, clock() + 30)).sent
            first = fcm.records()[0].authorization
            clock.seconds = 3600 - 240.0
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, clock() + 30)).sent
            assert fcm.records()[1].authorization == first
            for _ in range(100):
                if transport.tokens.refreshes == 2:
                    break
                await asyncio.sleep(0.02)
            assert len(fcm.grants) == 2
            # google-auth dates the new token by the real clock: come back to it before the next send.
            clock.seconds = 0.0
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, clock() + 30)).sent
        finally:
            await transport.close()
        assert len(fcm.grants) == 2
        assert fcm.records()[2].authorization != first

    async def test_a_nearly_expired_token_is_replaced_before_sending(
        self, fcm: FcmServer, account: ServiceAccount
    ) -> None:
        """With 20 seconds left the transport waits for a new token and sends with it."""
        clock = Offset()
        transport = FcmTransport(fcm_settings(fcm, account), policy=FAST, clock=clock)
        try:
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, clock() + 30)).sent
            clock.seconds = 3600 - 20.0
            assert (await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, clock() + 30)).sent
        finally:
            await transport.close()
        first, second = fcm.records()
        assert first.authorization != second.authorization
        assert len(fcm.grants) == 2

    async def test_a_rejected_token_is_replaced_and_the_push_retried(
        self, fcm_transport: FcmTransport, fcm: FcmServer
    ) -> None:
        """A 401 (revoked token) drops the cached token, fetches a new one and sends again."""
        assert (await fcm_transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 30)).sent
        fcm.revoke_tokens()
        token = fcm_token()
        assert (await fcm_transport.send(android(token), "incoming_call", {"a": "b"}, time.time() + 30)).sent
        assert [r.status for r in fcm.records(token)] == [401, 200]
        assert len(fcm.grants) == 2

    async def test_an_untrusted_service_account_never_gets_a_token(self, fcm: FcmServer) -> None:
        """A key the token endpoint does not trust is refused; the push fails with an OAuth error."""
        stranger = make_service_account(PROJECT, fcm.token_uri)
        transport = FcmTransport(fcm_settings(fcm, stranger), policy=FAST)
        try:
            result = await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 1.0)
        finally:
            await transport.close()
        assert (result.sent, result.error) == (False, "fcm:oauth_error:RefreshError")
        assert fcm.grants == [] and fcm.records() == []


class TestFcmErrors:
    """Dead tokens, transient failures with Retry-After, deadlines and schema errors end in the right result."""

    @pytest.mark.parametrize(
        ("kind", "error"), [("unregistered", "fcm:404:UNREGISTERED"), ("invalid", "fcm:400:INVALID_ARGUMENT")]
    )
    async def test_dead_tokens_are_reported_without_retry(
        self, fcm_transport: FcmTransport, fcm: FcmServer, kind: str, error: str
    ) -> None:
        """404 UNREGISTERED and 400 INVALID_ARGUMENT about the token mark it invalid after one request."""
        token = fcm_token(kind)
        result = await fcm_transport.send(android(token), "incoming_call", {"a": "b"}, time.time() + 30)
        assert (result.sent, result.error, result.token_invalid) == (False, error, True)
        assert len(fcm.records(token)) == 1

    @pytest.mark.parametrize("kind", ["quota", "unavailable", "internal"])
    async def test_transient_failures_are_retried_then_sent(
        self, fcm_transport: FcmTransport, fcm: FcmServer, kind: str
    ) -> None:
        """429, 503 and 500 are retried until the push goes through."""
        token = fcm_token(kind, times=2)
        result = await fcm_transport.send(android(token), "incoming_call", {"a": "b"}, time.time() + 30)
        assert result.sent is True
        assert [r.status for r in fcm.records(token)][-1] == 200 and len(fcm.records(token)) == 3

    async def test_retry_after_is_honoured(self, fcm_transport: FcmTransport, fcm: FcmServer) -> None:
        """A 503 with Retry-After: 1 is retried no sooner than a second later."""
        fcm.retry_after = "1"
        token = fcm_token("unavailable", times=1)
        assert (await fcm_transport.send(android(token), "incoming_call", {"a": "b"}, time.time() + 30)).sent
        failed, sent = fcm.records(token)
        assert sent.at - failed.at >= 0.95

    async def test_persistent_500_gives_up_at_the_deadline(self, fcm_transport: FcmTransport, fcm: FcmServer) -> None:
        """A server failing every time is retried until the deadline, then reported with FCM's code."""
        token = fcm_token("internal")
        result = await fcm_transport.send(android(token), "incoming_call", {"a": "b"}, time.time() + 1.0)
        assert (result.sent, result.error, result.token_invalid) == (False, "fcm:500:INTERNAL", False)
        assert len(fcm.records(token)) >= 2

    async def test_wrong_project_is_refused(self, fcm: FcmServer, account: ServiceAccount) -> None:
        """Sending for another project is a permanent 403."""
        transport = FcmTransport(fcm_settings(fcm, account, project="someone-else"), policy=FAST)
        try:
            result = await transport.send(android(fcm_token()), "incoming_call", {"a": "b"}, time.time() + 30)
        finally:
            await transport.close()
        assert (result.sent, result.error) == (False, "fcm:403:PERMISSION_DENIED")

    @pytest.mark.parametrize(
        "message",
        [
            {"token": "T" * 40, "data": {"a": 1}},
            {"token": "T" * 40, "data": {"from": "x"}},
            {"token": "T" * 40, "android": {"priority": "urgent"}},
            {"token": "T" * 40, "android": {"ttl": "60"}},
            {"token": "T" * 40, "android": {"time_to_live": "60s"}},
            {"token": "T" * 40, "topic": "calls"},
            {"token": "T" * 40, "dataa": {}},
        ],
    )
    async def test_the_server_refuses_schema_violations(
        self, fcm_transport: FcmTransport, fcm: FcmServer, message: dict[str, Any]
    ) -> None:
        """Non-string data, reserved keys, bad priority/TTL, unknown fields and two targets are 400s, not retried."""
        attempt = await fcm_transport._attempt({"message": message})
        assert attempt.outcome == "failed"
        assert attempt.error is not None and attempt.error.startswith("fcm:400:")
        assert fcm.records()[0].status == 400
