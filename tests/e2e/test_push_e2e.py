"""From an app-written call document to a push at the local APNs / FCM, through the real watcher process.

The watcher runs as a subprocess with the real transports (no sink), pointed at the local servers by
settings only: APNs through MEMHARBOR_APNS_PROXY and MEMHARBOR_APNS_CA_FILE, FCM through
MEMHARBOR_FCM_ENDPOINT with the service account's token_uri naming the local OAuth endpoint.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore

from memharbor.emulators import EmulatorSet
from tests.support.apns_server import ApnsServer, apns_token
from tests.support.fcm_server import FcmRecord, FcmServer, fcm_token
from tests.support.firestore_rest import FirestoreRest
from tests.support.google_logging import google_logger_configured
from tests.support.groups import seed_group
from tests.support.push_fixtures import BUNDLE
from tests.support.push_keys import ApnsKey, ServiceAccount, make_service_account
from tests.support.waiting import wait_for
from tests.support.watchers import WatcherProcess

FCM_PROJECT = "demo-memharbor-fcm"
SEED_KEYS = {"type", "callId", "channelName", "callerName", "callerID", "groupId", "receiverId"}


@pytest.fixture(scope="module", autouse=True)
def google_logs_keep_propagating() -> Iterator[None]:
    """The in-process Firestore client must not silence the `google` logger for later tests."""
    with google_logger_configured():
        yield


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    with FcmServer(FCM_PROJECT) as server:
        yield server


@pytest.fixture
def account(fcm: FcmServer) -> ServiceAccount:
    created = make_service_account(FCM_PROJECT, fcm.token_uri)
    fcm.trust(created)
    return created


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client)
    yield client
    client.close()


@pytest.fixture
def rest(clean_emulators: EmulatorSet) -> Iterator[FirestoreRest]:
    client = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
    yield client
    client.close()


class Harness:
    """Starts watchers configured for the local push servers and plays the apps."""

    def __init__(
        self,
        emulators: EmulatorSet,
        tmp: Path,
        db: firestore.Client,
        rest: FirestoreRest,
        apns: ApnsServer,
        fcm: FcmServer,
        key: ApnsKey,
        ca_file: Path,
        account: ServiceAccount,
    ) -> None:
        self.emulators, self.tmp, self.db, self.rest = emulators, tmp, db, rest
        self.apns, self.fcm = apns, fcm
        self.apns_env = {
            **key.env(BUNDLE),
            "MEMHARBOR_APNS_PROXY": f"127.0.0.1:{apns.port}",
            "MEMHARBOR_APNS_CA_FILE": str(ca_file),
        }
        self.fcm_env = {
            "FCM_SERVICE_ACCOUNT_JSON": account.json,
            "FCM_PROJECT_ID": FCM_PROJECT,
            "MEMHARBOR_FCM_ENDPOINT": fcm.endpoint,
        }
        self.started: list[WatcherProcess] = []

    def watcher(self, ring_timeout_s: float = 30.0, apns: bool = True, fcm: bool = True) -> WatcherProcess:
        """A watcher with the real transports (the sink switched off) and this ring timeout."""
        env = {
            "MEMHARBOR_PUSH_SINK": "",
            "MEMHARBOR_RING_TIMEOUT_S": str(ring_timeout_s),
            **(self.apns_env if apns else {}),
            **(self.fcm_env if fcm else {}),
        }
        process = WatcherProcess(self.emulators, self.tmp / "unused-sink.jsonl", self.tmp, **env)
        self.started.append(process)
        return process.start(self.db)

    def ios_user(self, uid: str, voip: str | None = None, regular: str | None = None) -> tuple[str, str]:
        """Register an iPhone (PushKit token and regular APNs token), as the app does."""
        voip, regular = voip or apns_token(), regular or apns_token()
        self.apns.register(voip, f"{BUNDLE}.voip")
        self.apns.register(regular, BUNDLE)
        self.db.collection("users").document(uid).set({"platform": "ios", "voipToken": voip, "apnsToken": regular})
        return voip, regular

    def android_user(self, uid: str, token: str | None = None) -> str:
        """Register an Android phone, as the app does."""
        token = token or fcm_token()
        self.db.collection("users").document(uid).set({"platform": "android", "fcmToken": token})
        return token

    def iphone(self, uid: str, device_id: str, voip: str | None = None) -> tuple[str, str]:
        """Register one iPhone or iPad as a device document (v2 apps), with both of its APNs tokens."""
        voip, regular = voip or apns_token(), apns_token()
        self.apns.register(voip, f"{BUNDLE}.voip")
        self.apns.register(regular, BUNDLE)
        fields = {"platform": "ios", "voipToken": voip, "apnsToken": regular, "appVersion": "2.0.0"}
        result = self.rest.as_user(uid).create(f"users/{uid}/devices/{device_id}", fields, server_time=["updatedAt"])
        assert result.ok, result
        return voip, regular

    def android_device(self, uid: str, device_id: str) -> str:
        """Register one Android device as a device document (v2 apps)."""
        token = fcm_token()
        fields = {"platform": "android", "fcmToken": token, "appVersion": "2.0.0"}
        result = self.rest.as_user(uid).create(f"users/{uid}/devices/{device_id}", fields, server_time=["updatedAt"])
        assert result.ok, result
        return token

    def answer(self, call_id: str, status: str, device_id: str, receiver: str = "bob") -> None:
        """The receiver answers (or declines) on one device, naming it."""
        fields = {"status": status, "answeredOn": device_id}
        result = self.rest.as_user(receiver).update(f"calls/{call_id}", fields, server_time=["answeredAt", "updatedAt"])
        assert result.ok, result

    def place_call(self, caller: str = "alice", receiver: str = "bob") -> str:
        """The caller's app creates a pending call through the security rules."""
        call_id = uuid.uuid4().hex
        fields = {
            "callId": call_id,
            "groupId": "group1",
            "callerId": caller,
            "receiverId": receiver,
            "status": "pending",
            "callerName": "Alice Kim",
        }
        result = self.rest.as_user(caller).create(f"calls/{call_id}", fields, server_time=["createdAt", "updatedAt"])
        assert result.ok, result
        return call_id

    def cancel(self, call_id: str, caller: str = "alice") -> None:
        """The caller's app hangs up before an answer."""
        result = self.rest.as_user(caller).update(
            f"calls/{call_id}", {"status": "cancelled"}, server_time=["endedAt", "updatedAt"]
        )
        assert result.ok, result

    def call(self, call_id: str) -> dict[str, Any]:
        return self.db.collection("calls").document(call_id).get().to_dict() or {}

    def user(self, uid: str) -> dict[str, Any]:
        return self.db.collection("users").document(uid).get().to_dict() or {}

    def device(self, uid: str, device_id: str) -> dict[str, Any]:
        return self.db.collection("users").document(uid).collection("devices").document(device_id).get().to_dict() or {}

    def server(self, call_id: str) -> dict[str, Any]:
        return self.db.collection("callServer").document(call_id).get().to_dict() or {}

    def push_result(self, call_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The call once the watcher recorded pushSent/pushPlatform/pushError."""
        return wait_for(
            lambda: (d := self.call(call_id)).get("pushSent") is not None and d, timeout, what="push result"
        )

    def stop(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def harness(
    clean_emulators: EmulatorSet,
    tmp_path: Path,
    db: firestore.Client,
    rest: FirestoreRest,
    apns: ApnsServer,
    fcm: FcmServer,
    apns_key: ApnsKey,
    ca_file: Path,
    account: ServiceAccount,
) -> Iterator[Harness]:
    running = Harness(clean_emulators, tmp_path, db, rest, apns, fcm, apns_key, ca_file, account)
    yield running
    running.stop()


class TestIncomingCallPush:
    """A new call rings the receiver's device through APNs (iOS) or FCM (Android)."""

    def test_ios_receiver_gets_a_voip_push(self, harness: Harness) -> None:
        """The VoIP push reaches APNs with the seed payload; the call records pushSent true, ios."""
        voip, _ = harness.ios_user("bob")
        harness.watcher()
        call_id = harness.place_call()
        [push] = wait_for(lambda: harness.apns.delivered(voip, "voip"), what="VoIP push at APNs")
        doc = harness.push_result(call_id)
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (True, "ios", None)
        assert set(push.payload) == SEED_KEYS
        assert push.payload["callId"] == call_id and push.payload["channelName"] == doc["channelName"]
        assert push.headers["apns-topic"] == f"{BUNDLE}.voip" and push.headers["apns-collapse-id"] == call_id
        assert abs(int(push.headers["apns-expiration"]) - int(doc["ringDeadline"].timestamp())) <= 1

    def test_android_receiver_gets_a_data_message(self, harness: Harness) -> None:
        """The FCM data message carries the seed payload with a TTL up to the ring deadline."""
        token = harness.android_user("bob")
        harness.watcher()
        call_id = harness.place_call()
        [push] = wait_for(lambda: harness.fcm.delivered(token), what="FCM message")
        doc = harness.push_result(call_id)
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (True, "android", None)
        assert push.message is not None
        assert push.message["data"]["callId"] == call_id and set(push.message["data"]) == SEED_KEYS
        assert push.message["android"]["priority"] == "high"
        assert 0 < int(push.message["android"]["ttl"].removesuffix("s")) <= 30

    def test_platform_without_a_transport_is_not_configured(self, harness: Harness) -> None:
        """With only APNs configured an Android receiver's call records push_not_configured."""
        harness.android_user("bob")
        harness.watcher(fcm=False)
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (False, "android", "push_not_configured")
        assert harness.fcm.records() == []


class TestDeadTokens:
    """A token the push service reports dead is removed from users/{uid} with pushTokenInvalidAt."""

    @pytest.mark.parametrize(("status", "error"), [(410, "apns:410:Unregistered"), (400, "apns:400:BadDeviceToken")])
    def test_apns_dead_voip_token_is_removed(self, harness: Harness, status: int, error: str) -> None:
        """APNs 410/400 BadDeviceToken: pushSent false with the reason, voipToken deleted, apnsToken kept."""
        harness.ios_user("bob", voip=apns_token(status))
        harness.watcher()
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (False, "ios", error)
        user = wait_for(lambda: (u := harness.user("bob")).get("pushTokenInvalidAt") and u, what="token removal")
        assert "voipToken" not in user and "apnsToken" in user

    @pytest.mark.parametrize(
        ("kind", "error"), [("unregistered", "fcm:404:UNREGISTERED"), ("invalid", "fcm:400:INVALID_ARGUMENT")]
    )
    def test_fcm_dead_token_is_removed(self, harness: Harness, kind: str, error: str) -> None:
        """FCM 404 UNREGISTERED / 400 INVALID_ARGUMENT: pushSent false, fcmToken deleted."""
        harness.android_user("bob", fcm_token(kind))
        harness.watcher()
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (False, "android", error)
        user = wait_for(lambda: (u := harness.user("bob")).get("pushTokenInvalidAt") and u, what="token removal")
        assert "fcmToken" not in user and user["platform"] == "android"


class TestTransientFailures:
    """Transient failures are retried while the call rings; persistent ones end in pushSent false."""

    def test_apns_429_is_retried_then_sent(self, harness: Harness) -> None:
        """Two 429s, then APNs accepts: the call records pushSent true."""
        voip, _ = harness.ios_user("bob", voip=apns_token(429, times=2))
        harness.watcher()
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushError"]) == (True, None)
        assert [r.status for r in harness.apns.records(voip)] == [429, 429, 200]

    def test_fcm_503_is_retried_then_sent(self, harness: Harness) -> None:
        """Two 503s with Retry-After, then FCM accepts: pushSent true after three requests."""
        harness.fcm.retry_after = "0"
        token = harness.android_user("bob", fcm_token("unavailable", times=2))
        harness.watcher()
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushError"]) == (True, None)
        assert [r.status for r in harness.fcm.records(token)] == [503, 503, 200]

    def test_persistent_apns_500_ends_in_push_error_at_the_deadline(self, harness: Harness) -> None:
        """APNs failing every time: retried until the ring deadline, then pushSent false with the reason."""
        voip, _ = harness.ios_user("bob", voip=apns_token(500))
        harness.watcher(ring_timeout_s=3.0)
        call_id = harness.place_call()
        doc = harness.push_result(call_id)
        assert (doc["pushSent"], doc["pushPlatform"]) == (False, "ios")
        assert doc["pushError"] == "apns:500:InternalServerError"
        attempts = harness.apns.records(voip)
        assert len(attempts) >= 3
        assert max(r.at for r in attempts) <= doc["ringDeadline"].timestamp() + 0.5
        assert "voipToken" in harness.user("bob")
        wait_for(lambda: harness.call(call_id).get("status") == "missed", what="ring timeout")

    def test_persistent_fcm_500_ends_in_push_error(self, harness: Harness) -> None:
        """FCM failing every time: pushSent false with FCM's code, the token kept."""
        harness.android_user("bob", fcm_token("internal"))
        harness.watcher(ring_timeout_s=3.0)
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (False, "android", "fcm:500:INTERNAL")
        assert "fcmToken" in harness.user("bob")

    def test_cancelling_stops_the_retries(self, harness: Harness) -> None:
        """When the caller hangs up during retries, the watcher stops retrying well before the deadline."""
        voip, _ = harness.ios_user("bob", voip=apns_token(500))
        harness.watcher(ring_timeout_s=30.0)
        call_id = harness.place_call()
        wait_for(lambda: len(harness.apns.records(voip)) >= 2, what="first retries")
        harness.cancel(call_id)
        cancelled_at = time.time()
        doc = harness.push_result(call_id, timeout=15)
        assert doc["pushSent"] is False and doc["pushError"] == "apns:500:InternalServerError"
        time.sleep(1.0)
        late = [r for r in harness.apns.records(voip) if r.at > cancelled_at + 6.0]
        assert late == []
        assert doc["ringDeadline"].timestamp() - time.time() > 15


def ended_messages(server: FcmServer, token: str) -> list[FcmRecord]:
    """The call_ended messages FCM accepted for `token`."""
    return [r for r in server.delivered(token) if r.message and r.message["data"]["type"] == "call_ended"]


class TestStopRinging:
    """Cancel and ring timeout send the stop-ringing notice: an APNs alert (never VoIP) or an FCM data message."""

    def test_cancel_sends_an_alert_to_the_ios_app(self, harness: Harness) -> None:
        """After a cancel the iPhone's regular token gets an alert push with type call_ended, status cancelled."""
        voip, regular = harness.ios_user("bob")
        harness.watcher()
        call_id = harness.place_call()
        wait_for(lambda: harness.apns.delivered(voip), what="VoIP push")
        harness.cancel(call_id)
        [notice] = wait_for(lambda: harness.apns.delivered(regular, "alert"), what="stop-ringing alert")
        assert notice.headers["apns-topic"] == BUNDLE
        assert notice.payload["type"] == "call_ended" and notice.payload["callId"] == call_id
        assert notice.payload["status"] == "cancelled"
        assert notice.payload["aps"]["content-available"] == 1
        assert len(harness.apns.delivered(voip)) == 1

    def test_cancel_sends_a_data_message_to_the_android_app(self, harness: Harness) -> None:
        """After a cancel the Android phone gets a call_ended data message."""
        token = harness.android_user("bob")
        harness.watcher()
        call_id = harness.place_call()
        wait_for(lambda: harness.fcm.delivered(token), what="incoming message")
        harness.cancel(call_id)
        ended = wait_for(lambda: ended_messages(harness.fcm, token), what="stop-ringing message")
        assert ended[0].message is not None
        assert ended[0].message["data"] == {
            "type": "call_ended",
            "callId": call_id,
            "status": "cancelled",
            "callerName": "Alice Kim",
            "receiverId": "bob",
        }
        assert ended[0].message["android"]["priority"] == "high"

    def test_ring_timeout_stops_both_platforms(self, harness: Harness) -> None:
        """When nobody answers, both an iPhone and an Android phone get the notice with status missed."""
        _, regular = harness.ios_user("bob")
        token = harness.android_user("dave")
        harness.watcher(ring_timeout_s=2.0)
        ios_call = harness.place_call(receiver="bob")
        android_call = harness.place_call(receiver="dave")
        [alert] = wait_for(lambda: harness.apns.delivered(regular, "alert"), timeout=30, what="iOS missed notice")
        assert (alert.payload["callId"], alert.payload["status"]) == (ios_call, "missed")
        assert alert.payload["aps"]["alert"]["loc-key"] == "CALL_MISSED_BODY"
        notices = wait_for(lambda: ended_messages(harness.fcm, token), timeout=30, what="Android missed notice")
        assert notices[0].message is not None
        assert (notices[0].message["data"]["callId"], notices[0].message["data"]["status"]) == (android_call, "missed")


class TestEveryDeviceRings:
    """A receiver with several devices: all ring at once; an answer on one stops the others."""

    def test_fan_out_to_three_devices(self, harness: Harness) -> None:
        """Two iPhones get a VoIP push and the Android tablet an FCM message; each is recorded server-side."""
        phone, _ = harness.iphone("bob", "phone")
        pad, _ = harness.iphone("bob", "pad")
        tablet = harness.android_device("bob", "tab")
        harness.watcher()
        call_id = harness.place_call()
        wait_for(lambda: harness.apns.delivered(phone, "voip") and harness.apns.delivered(pad, "voip"), what="VoIP")
        [ring] = wait_for(lambda: harness.fcm.delivered(tablet), what="FCM ring")
        assert ring.message is not None and ring.message["data"]["callId"] == call_id
        doc = harness.push_result(call_id)
        assert (doc["pushSent"], doc["pushError"]) == (True, None)
        server = wait_for(
            lambda: len(((s := harness.server(call_id)).get("pushes") or {}).get("pending", {})) == 3 and s,
            what="per-device records",
        )
        records = server["pushes"]["pending"]
        assert {k: (r["platform"], r["result"]) for k, r in records.items()} == {
            "phone": ("ios", "sent"),
            "pad": ("ios", "sent"),
            "tab": ("android", "sent"),
        }

    def test_answered_elsewhere_stops_the_other_devices(self, harness: Harness) -> None:
        """Accepted on the phone: the iPad gets a passive alert (no second VoIP push), the tablet a data message."""
        phone, phone_regular = harness.iphone("bob", "phone")
        pad, pad_regular = harness.iphone("bob", "pad")
        tablet = harness.android_device("bob", "tab")
        harness.watcher()
        call_id = harness.place_call()
        harness.push_result(call_id)
        harness.answer(call_id, "accepted", "phone")
        [alert] = wait_for(lambda: harness.apns.delivered(pad_regular, "alert"), what="answered-elsewhere alert")
        assert (alert.payload["status"], alert.payload["callId"]) == ("accepted", call_id)
        assert alert.payload["aps"]["interruption-level"] == "passive"
        assert alert.payload["aps"]["alert"]["loc-key"] == "CALL_ANSWERED_ELSEWHERE_BODY"
        [stop] = wait_for(lambda: ended_messages(harness.fcm, tablet), what="answered-elsewhere message")
        assert stop.message is not None and stop.message["data"]["status"] == "accepted"
        time.sleep(1.0)
        assert harness.apns.delivered(phone_regular) == []
        assert len(harness.apns.delivered(phone, "voip")) == len(harness.apns.delivered(pad, "voip")) == 1

    def test_dead_device_among_live_ones(self, harness: Harness) -> None:
        """One iPhone's token is dead: the others ring, pushSent is true, and only that device loses its token."""
        harness.iphone("bob", "phone", voip=apns_token(410))
        pad, _ = harness.iphone("bob", "pad")
        tablet = harness.android_device("bob", "tab")
        harness.watcher()
        doc = harness.push_result(harness.place_call())
        assert (doc["pushSent"], doc["pushError"]) == (True, None)
        assert harness.apns.delivered(pad, "voip") and harness.fcm.delivered(tablet)
        phone = wait_for(
            lambda: (d := harness.device("bob", "phone")).get("pushTokenInvalidAt") and d, what="token removal"
        )
        assert "voipToken" not in phone and "apnsToken" in phone
        assert "voipToken" in harness.device("bob", "pad")

    def test_legacy_tokens_ring_beside_devices(self, harness: Harness) -> None:
        """A v1 app's tokens on users/{uid} ring as one more device next to a v2 device."""
        legacy = harness.android_user("bob")
        voip, _ = harness.iphone("bob", "pad")
        harness.watcher()
        doc = harness.push_result(harness.place_call())
        assert doc["pushSent"] is True
        wait_for(lambda: harness.fcm.delivered(legacy) and harness.apns.delivered(voip, "voip"), what="both rings")


class TestTransportStatus:
    """The watcher's heartbeat reports each transport as configured, with its last error."""

    def test_heartbeat_carries_transport_status_and_last_error(self, harness: Harness) -> None:
        """After an APNs 500 the heartbeat shows apns configured with that last error, fcm configured without."""
        harness.ios_user("bob", voip=apns_token(500, times=1))
        watcher = harness.watcher()
        harness.push_result(harness.place_call())

        def status() -> dict[str, Any] | None:
            beat = harness.db.collection("workers").document(watcher.instance_id).get().to_dict() or {}
            push = (beat.get("status") or {}).get("push") or {}
            return push if (push.get("apns") or {}).get("sent") == 1 else None

        push = wait_for(status, what="heartbeat with push status")
        assert push["apns"]["configured"] is True
        assert push["apns"]["lastError"] == "apns:500:InternalServerError" and push["apns"]["lastErrorAt"]
        assert push["apns"]["providerTokensMinted"] == 1
        assert push["fcm"]["configured"] is True and push["fcm"]["lastError"] is None
