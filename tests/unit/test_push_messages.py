"""Push messages, headers and answer classification for APNs and FCM, routing, and push settings: no network."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aioapns.common import NotificationResult, PushType

from memharbor.settings import HttpSettings, SettingsError, http_settings, watcher_settings
from tests.support.push_keys import make_apns_key
from token_http.health import _push as health_push
from watcher.apns import ProviderToken, build_request, stop_ringing_message
from watcher.apns import classify as apns_classify
from watcher.fcm import build_message
from watcher.fcm import classify as fcm_classify
from watcher.push import (
    PushResult,
    PushTarget,
    RoutingNotifier,
    SinkNotifier,
    call_ended_payload,
    incoming_call_payload,
    push_status,
    resolve_target,
)

CALL = {
    "callId": "call-1",
    "channelName": "group1_alice_bob_1700000000000",
    "callerName": "Alice Kim",
    "callerId": "alice",
    "groupId": "group1",
    "receiverId": "bob",
    "status": "missed",
}
SEED_KEYS = {"type", "callId", "channelName", "callerName", "callerID", "groupId", "receiverId"}
NOW = 1_800_000_000.0


def fcm_error(status: int, code: str | None, message: str = "", violations: list[str] | None = None) -> bytes:
    details: list[dict[str, Any]] = []
    if code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    if violations:
        violated = [{"field": f} for f in violations]
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violated})
    return json.dumps({"error": {"code": status, "message": message, "status": "X", "details": details}}).encode()


class TestApnsRequest:
    """The APNs request for each kind of push carries Apple's headers and the seed's payload."""

    def test_incoming_call_is_a_voip_push_to_the_voip_topic(self) -> None:
        """Incoming call: push type voip, topic <bundle>.voip, priority 10, collapse id = callId, seed payload."""
        request = build_request("incoming_call", "ab" * 32, incoming_call_payload(CALL), NOW + 42.7, NOW, "com.x.app")
        assert request.push_type is PushType.VOIP
        assert request.apns_topic == "com.x.app.voip"
        assert request.priority == 10
        assert request.collapse_key == "call-1"
        assert request.message == incoming_call_payload(CALL)
        assert set(request.message) == SEED_KEYS

    def test_expiration_lands_on_the_ring_deadline(self) -> None:
        """time_to_live is chosen so that aioapns' int(now) + ttl equals the deadline's second."""
        deadline = NOW + 59.9
        request = build_request("incoming_call", "ab" * 32, incoming_call_payload(CALL), deadline, NOW + 0.4, "b")
        assert request.time_to_live is not None
        assert int(NOW + 0.4) + request.time_to_live == int(deadline)

    def test_each_request_gets_a_fresh_apns_id(self) -> None:
        """Two requests for the same push carry different apns-id values."""
        one = build_request("incoming_call", "ab" * 32, incoming_call_payload(CALL), NOW + 30, NOW, "b")
        two = build_request("incoming_call", "ab" * 32, incoming_call_payload(CALL), NOW + 30, NOW, "b")
        assert one.notification_id != two.notification_id

    def test_stop_ringing_is_an_alert_to_the_app_topic_never_voip(self) -> None:
        """call_ended: push type alert to the bundle topic, priority 10, collapse id = callId."""
        request = build_request("call_ended", "cd" * 32, call_ended_payload(CALL), NOW + 60, NOW, "com.x.app")
        assert request.push_type is PushType.ALERT
        assert request.apns_topic == "com.x.app"
        assert request.priority == 10
        assert request.collapse_key == "call-1"

    def test_stop_ringing_alert_is_localized_and_wakes_the_app(self) -> None:
        """The alert uses the app's localization keys with the caller's name and sets content-available."""
        message = stop_ringing_message(call_ended_payload({**CALL, "status": "cancelled"}))
        aps = message["aps"]
        assert aps["alert"] == {
            "title-loc-key": "CALL_ENDED_TITLE",
            "loc-key": "CALL_CANCELLED_BODY",
            "loc-args": ["Alice Kim"],
        }
        assert aps["content-available"] == 1
        assert message["type"] == "call_ended" and message["callId"] == "call-1" and message["status"] == "cancelled"

    def test_missed_call_uses_the_missed_body(self) -> None:
        """A missed call's alert body key is CALL_MISSED_BODY."""
        assert stop_ringing_message(call_ended_payload(CALL))["aps"]["alert"]["loc-key"] == "CALL_MISSED_BODY"


class TestApnsClassification:
    """APNs answers map to sent, dead token, transient or permanent failure."""

    @pytest.mark.parametrize(
        ("status", "reason", "outcome"),
        [
            ("200", None, "sent"),
            ("410", "Unregistered", "dead_token"),
            ("400", "BadDeviceToken", "dead_token"),
            ("400", "BadTopic", "failed"),
            ("400", "DeviceTokenNotForTopic", "failed"),
            ("403", "InvalidProviderToken", "failed"),
            ("429", "TooManyRequests", "transient"),
            ("429", "TooManyProviderTokenUpdates", "failed"),
            ("500", "InternalServerError", "transient"),
            ("503", "ServiceUnavailable", "transient"),
            ("413", "PayloadTooLarge", "failed"),
        ],
    )
    def test_status_and_reason_decide_the_outcome(self, status: str, reason: str | None, outcome: str) -> None:
        """Each (status, reason) pair gets the outcome the retry and token logic rely on."""
        attempt = apns_classify(NotificationResult("id", status, reason))
        assert attempt.outcome == outcome
        if outcome != "sent":
            assert attempt.error == f"apns:{status}:{reason}"


class TestProviderToken:
    """One ES256 provider token, reused and refreshed inside Apple's 20-60 minute window."""

    def test_token_is_signed_with_kid_iss_and_iat(self) -> None:
        """The JWT verifies with the public key and carries kid, iss = team id and iat = now."""
        key = make_apns_key()
        provider = ProviderToken(key.p8, key.key_id, key.team_id, clock=lambda: NOW)
        token = provider.get_header().removeprefix("bearer ")
        claims = jwt.decode(token, key.public_pem, algorithms=["ES256"], options={"verify_iat": False})
        assert jwt.get_unverified_header(token)["kid"] == key.key_id
        assert claims == {"iss": key.team_id, "iat": int(NOW)}

    def test_token_is_reused_until_fifty_minutes_then_refreshed(self) -> None:
        """The same header comes back for 50 minutes; then a new token with a new iat is minted."""
        key = make_apns_key()
        now = [NOW]
        provider = ProviderToken(key.p8, key.key_id, key.team_id, clock=lambda: now[0])
        first = provider.get_header()
        for minutes in (1, 20, 49.9):
            now[0] = NOW + minutes * 60
            assert provider.get_header() == first
        now[0] = NOW + 50 * 60
        second = provider.get_header()
        assert second != first
        assert provider.issued_at == int(NOW + 50 * 60)
        assert provider.minted == 2

    @pytest.mark.parametrize("refresh_s", [19 * 60, 60 * 60, 90 * 60])
    def test_refresh_interval_outside_apples_window_is_refused(self, refresh_s: float) -> None:
        """A refresh interval under 20 or at/over 60 minutes is rejected at construction."""
        key = make_apns_key()
        with pytest.raises(ValueError, match="window"):
            ProviderToken(key.p8, key.key_id, key.team_id, refresh_after_s=refresh_s)

    def test_expired_report_forces_a_new_token_only_when_allowed(self) -> None:
        """After ExpiredProviderToken a token younger than 20 minutes is kept; an older one is replaced."""
        key = make_apns_key()
        now = [NOW]
        provider = ProviderToken(key.p8, key.key_id, key.team_id, clock=lambda: now[0])
        first = provider.get_header()
        now[0] = NOW + 10 * 60
        assert provider.reported_expired() is False
        assert provider.get_header() == first
        now[0] = NOW + 25 * 60
        assert provider.reported_expired() is True
        assert provider.get_header() != first


class TestFcmMessage:
    """The FCM v1 body is a high-priority data-only message with string values and a deadline TTL."""

    def test_message_is_data_only_high_priority_with_string_values(self) -> None:
        """No notification block, android.priority high, every data value a string."""
        payload = incoming_call_payload({**CALL, "callerId": 12345})
        body = build_message("tok", payload, NOW + 30, NOW)
        message = body["message"]
        assert set(body) == {"message"}
        assert set(message) == {"token", "data", "android"}
        assert message["token"] == "tok"
        assert message["android"]["priority"] == "high"
        assert all(isinstance(v, str) for v in message["data"].values())
        assert message["data"]["callerID"] == "12345"
        assert set(message["data"]) == SEED_KEYS

    @pytest.mark.parametrize(("left", "ttl"), [(42.9, "42s"), (0.5, "0s"), (-3, "0s"), (60, "60s")])
    def test_ttl_is_whole_seconds_left_until_the_deadline(self, left: float, ttl: str) -> None:
        """android.ttl is the Duration string of the whole seconds left, never negative."""
        assert build_message("tok", {"a": "b"}, NOW + left, NOW)["message"]["android"]["ttl"] == ttl


class TestFcmClassification:
    """FCM answers map to sent, dead token, transient (with Retry-After) or permanent failure."""

    def test_unregistered_is_a_dead_token(self) -> None:
        """404 with FcmError UNREGISTERED marks the token dead."""
        attempt = fcm_classify(404, fcm_error(404, "UNREGISTERED"))
        assert attempt.outcome == "dead_token" and attempt.error == "fcm:404:UNREGISTERED"

    def test_invalid_registration_token_is_a_dead_token(self) -> None:
        """400 INVALID_ARGUMENT whose message names the registration token marks it dead."""
        body = fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token")
        assert fcm_classify(400, body).outcome == "dead_token"

    def test_invalid_argument_naming_message_token_field_is_a_dead_token(self) -> None:
        """400 INVALID_ARGUMENT with a BadRequest violation on message.token marks it dead."""
        body = fcm_error(400, "INVALID_ARGUMENT", "Invalid value", ["message.token"])
        assert fcm_classify(400, body).outcome == "dead_token"

    def test_invalid_argument_about_the_data_keeps_the_token(self) -> None:
        """400 INVALID_ARGUMENT about a data value is a permanent failure, not a dead token."""
        where = "message.data[0].value"
        body = fcm_error(400, None, f"Invalid value at '{where}' (TYPE_STRING), 12", [where])
        attempt = fcm_classify(400, body)
        assert attempt.outcome == "failed"

    @pytest.mark.parametrize(("status", "code"), [(429, "QUOTA_EXCEEDED"), (500, "INTERNAL"), (503, "UNAVAILABLE")])
    def test_overload_and_server_errors_are_transient_with_retry_after(self, status: int, code: str) -> None:
        """429, 500 and 503 are retried; Retry-After (seconds) comes along."""
        attempt = fcm_classify(status, fcm_error(status, code), "7")
        assert attempt.outcome == "transient"
        assert attempt.retry_after_s == 7.0
        assert attempt.error == f"fcm:{status}:{code}"

    def test_unauthenticated_is_transient(self) -> None:
        """401 is retried (after the transport drops its access token)."""
        assert fcm_classify(401, b'{"error": {"code": 401, "status": "UNAUTHENTICATED"}}').outcome == "transient"

    def test_permission_denied_and_garbage_are_permanent(self) -> None:
        """403 and an unknown status with an unreadable body are permanent failures with a readable error."""
        assert fcm_classify(403, fcm_error(403, "SENDER_ID_MISMATCH")).outcome == "failed"
        attempt = fcm_classify(418, b"<html>teapot</html>")
        assert attempt.outcome == "failed" and attempt.error == "fcm:418"


class TestRouting:
    """Targets by users/{uid}.platform, and the notifier that picks the transport per platform."""

    def test_ios_incoming_call_uses_the_voip_token(self) -> None:
        """An iOS user is rung on voipToken; a dead one is removed from that field."""
        target = resolve_target("bob", {"platform": "ios", "voipToken": "v", "apnsToken": "a"})
        assert target == PushTarget("bob", "ios", "v", "voipToken")
        assert target is not None and target.user_field == "voipToken"

    def test_ios_stop_ringing_uses_the_regular_apns_token(self) -> None:
        """The iOS stop-ringing notice goes to apnsToken (an alert push cannot use a VoIP token)."""
        target = resolve_target("bob", {"platform": "ios", "voipToken": "v", "apnsToken": "a"}, "call_ended")
        assert target == PushTarget("bob", "ios", "a", "apnsToken")
        assert resolve_target("bob", {"platform": "ios", "voipToken": "v"}, "call_ended") is None

    def test_android_uses_the_fcm_token_for_both_kinds(self) -> None:
        """Android rings and stops ringing through fcmToken."""
        user = {"platform": "android", "fcmToken": "f", "voipToken": "v"}
        assert resolve_target("bob", user) == PushTarget("bob", "android", "f", "fcmToken")
        assert resolve_target("bob", user, "call_ended") == PushTarget("bob", "android", "f", "fcmToken")

    def test_unknown_platform_or_missing_token_has_no_target(self) -> None:
        """No platform, another platform or an empty token means nothing to ring."""
        assert resolve_target("bob", {"voipToken": "v"}) is None
        assert resolve_target("bob", {"platform": "web", "fcmToken": "f"}) is None
        assert resolve_target("bob", {"platform": "android", "fcmToken": ""}) is None

    @pytest.mark.parametrize("token", ["../../3/device/other", "abc?x=1", "a%2Fb", "a b", "t" * 1001, 12345])
    def test_token_outside_the_pattern_is_never_sent(self, token: object) -> None:
        """An admin-written token that could change APNs' request path (or is no token) is not a target."""
        assert resolve_target("bob", {"platform": "ios", "voipToken": token}) is None
        assert resolve_target("bob", {"platform": "android", "fcmToken": token}) is None

    async def test_router_sends_through_the_platforms_transport(self) -> None:
        """An Android target goes to the Android transport with the still-wanted callback passed on."""
        fake = FakeTransport()
        router = RoutingNotifier({"android": fake})

        async def wanted() -> bool:
            return True

        result = await router.send(PushTarget("bob", "android", "f"), "incoming_call", {"a": "b"}, NOW, wanted)
        assert result == PushResult(sent=True, platform="android")
        assert fake.calls == [("f", "incoming_call", NOW, wanted)]

    async def test_platform_without_transport_is_not_configured(self) -> None:
        """An iOS target with only FCM configured fails with push_not_configured, nothing sent."""
        fake = FakeTransport()
        router = RoutingNotifier({"android": fake})
        result = await router.send(PushTarget("bob", "ios", "v"), "incoming_call", {}, NOW)
        assert result == PushResult(sent=False, platform="ios", error="push_not_configured")
        assert fake.calls == []

    def test_status_names_each_transport(self) -> None:
        """The router reports apns and fcm, the missing one as configured: false."""
        router = RoutingNotifier({"android": FakeTransport()})
        assert router.status() == {"apns": {"configured": False}, "fcm": {"configured": True, "lastError": "x"}}
        assert push_status(router) == router.status()

    def test_sink_status_says_sink(self, tmp_path: Path) -> None:
        """The sink reports itself instead of transports."""
        assert push_status(SinkNotifier(tmp_path / "p.jsonl")) == {"sink": True}


class FakeTransport:
    """Records sends and succeeds."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def send(
        self, target: PushTarget, kind: Any, payload: Any, expires_at: float, still_wanted: Any = None
    ) -> PushResult:
        self.calls.append((target.token, kind, expires_at, still_wanted))
        return PushResult(sent=True, platform=target.platform)

    def status(self) -> dict[str, Any]:
        return {"configured": True, "lastError": "x"}

    async def close(self) -> None:
        return None


class TestHealthPush:
    """/api/health's push section merges token_http's settings with live watchers' transport status."""

    def _settings(self) -> HttpSettings:
        return http_settings({"FIREBASE_PROJECT_ID": "p"})

    def test_without_watcher_status_only_configuration_is_reported(self) -> None:
        """No watcher push status: the section is just configured flags."""
        assert health_push(self._settings(), [], NOW) == {"apns": {"configured": False}, "fcm": {"configured": False}}

    def test_live_watcher_reports_configuration_and_newest_last_error(self) -> None:
        """Live watchers' configured flags count and the newest lastError wins; expired beats are ignored."""
        live = datetime.fromtimestamp(NOW + 10, UTC)
        dead = datetime.fromtimestamp(NOW - 10, UTC)
        older = {"configured": True, "lastError": "apns:500:InternalServerError", "lastErrorAt": "2027-01-01T00:00:00"}
        newer = {"configured": True, "lastError": "apns:timeout", "lastErrorAt": "2027-01-02T00:00:00"}
        stale = {"configured": True, "lastError": "apns:stale", "lastErrorAt": "2027-01-03T00:00:00"}
        beats = [
            {"kind": "watcher", "expiresAt": live, "status": {"push": {"apns": older, "fcm": {"configured": False}}}},
            {"kind": "watcher", "expiresAt": live, "status": {"push": {"apns": newer}}},
            {"kind": "watcher", "expiresAt": dead, "status": {"push": {"apns": stale}}},
        ]
        report = health_push(self._settings(), beats, NOW)
        assert report["apns"] == {"configured": True, "lastError": "apns:timeout", "lastErrorAt": "2027-01-02T00:00:00"}
        assert report["fcm"] == {"configured": False, "lastError": None, "lastErrorAt": None}


class TestPushSettings:
    """The APNs proxy and CA settings are read and checked."""

    def _apns_env(self, **extra: str) -> dict[str, str]:
        key = make_apns_key()
        return {"FIREBASE_PROJECT_ID": "p", **key.env("com.x.app"), **extra}

    def test_proxy_and_ca_file_are_read(self, tmp_path: Path) -> None:
        """MEMHARBOR_APNS_PROXY and MEMHARBOR_APNS_CA_FILE end up in the APNs settings."""
        ca = tmp_path / "ca.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        settings = watcher_settings(
            self._apns_env(MEMHARBOR_APNS_PROXY="127.0.0.1:3128", MEMHARBOR_APNS_CA_FILE=str(ca))
        )
        assert settings.apns is not None
        assert settings.apns.proxy == "127.0.0.1:3128"
        assert settings.apns.ca_file == ca

    def test_bad_proxy_and_missing_ca_file_stop_start_up(self, tmp_path: Path) -> None:
        """A proxy without a port or a CA file that does not exist is a SettingsError naming it."""
        with pytest.raises(SettingsError, match="MEMHARBOR_APNS_PROXY"):
            watcher_settings(self._apns_env(MEMHARBOR_APNS_PROXY="proxy-without-port"))
        with pytest.raises(SettingsError, match="MEMHARBOR_APNS_CA_FILE"):
            watcher_settings(self._apns_env(MEMHARBOR_APNS_CA_FILE=str(tmp_path / "missing.pem")))

    def test_defaults_are_direct_with_system_trust(self) -> None:
        """Without them APNs is reached directly and trusted through the system CAs."""
        settings = watcher_settings(self._apns_env())
        assert settings.apns is not None and settings.apns.proxy is None and settings.apns.ca_file is None
