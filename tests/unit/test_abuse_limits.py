"""Unit tests for token_http's abuse limits: the per-user rate of work-creating routes, the cap of live
recording requests per user, and what /api/health tells callers who are not admins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.api_core import exceptions as gexc

from memharbor.recording_requests import LiveCapReached
from memharbor.repositories.recordings import FirestoreRecordingRepository, new_request
from memharbor.settings import SettingsError
from tests.support.api_worlds import AS_ADMIN, AS_ALICE, AS_BOB, CHANNEL, INVITE, LimitedWorld, TokenWorld, beat
from tests.support.api_worlds import make_settings as call_settings
from tests.support.json_client import Client, get
from token_http import main as main_mod
from token_http.app import create_app
from token_http.keys import DEPS
from token_http.ratelimit import MemoryRateLimiter, RateLimiter

# Invite and start wait briefly here too.
pytestmark = pytest.mark.usefixtures("short_push_wait", "short_recording_waits")

START = "/api/recording/start"
# Legacy channels {groupId}_{user1}_{user2} naming alice: one per group, none of them a call's.
ALICE_LEGACY = [f"g{n}_alice_bob" for n in range(1, 8)]

World = LimitedWorld


@pytest.fixture
def world() -> World:
    return World()


async def _client(world: World, limiter: RateLimiter | None, open_access: bool = False, **env: str) -> Client:
    settings = call_settings(**({"MEMHARBOR_AUTH": "none"} if open_access else {}), **env)
    client: Client = TestClient(TestServer(create_app(settings, world.limited_deps(limiter, open_access))))
    await client.start_server()
    return client


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    """The app with a budget of 20 work-creating requests a minute per user and the default cap of 3."""
    test_client = await _client(world, MemoryRateLimiter("20/minute"))
    yield test_client
    await test_client.close()


@pytest.fixture
async def uncapped(world: World) -> AsyncIterator[Client]:
    """The app without a rate limiter, so only the cap of live requests limits starts."""
    test_client = await _client(world, None)
    yield test_client
    await test_client.close()


async def start(client: Client, channel: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    response = await client.post(START, json={"channel": channel}, headers=headers)
    return response.status, await response.json(), dict(response.headers)


# ---------------------------------------------------------------------------------------------- settings


class TestSettings:
    """MEMHARBOR_RATE_LIMIT and MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER are read, defaulted and checked."""

    def test_defaults(self) -> None:
        """Without the variables a user gets 30 requests a minute and 3 live recording requests."""
        settings = call_settings()
        assert settings.rate_limit == "30/minute"
        assert settings.max_live_recordings_per_user == 3

    def test_values_are_read(self) -> None:
        """Both variables are taken as given when valid."""
        settings = call_settings(MEMHARBOR_RATE_LIMIT="5 per second", MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER="7")
        assert settings.rate_limit == "5 per second"
        assert settings.max_live_recordings_per_user == 7

    @pytest.mark.parametrize("value", ["lots", "0/minute", "30/fortnight", "20/minute;100/hour", "-1/minute"])
    def test_bad_rate_stops_start_up_naming_it(self, value: str) -> None:
        """A rate limits cannot parse, of zero, or of several rates is one SettingsError naming the variable."""
        with pytest.raises(SettingsError) as caught:
            call_settings(MEMHARBOR_RATE_LIMIT=value)
        assert caught.value.name == "MEMHARBOR_RATE_LIMIT" and "30/minute" in str(caught.value)

    @pytest.mark.parametrize("value", ["0", "three", "1001"])
    def test_bad_cap_stops_start_up_naming_it(self, value: str) -> None:
        """A cap that is not an integer from 1 to 1000 is one SettingsError naming the variable."""
        with pytest.raises(SettingsError) as caught:
            call_settings(MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER=value)
        assert caught.value.name == "MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER"

    def test_bootstrap_limits_at_the_configured_rate(self) -> None:
        """The composition root gives the app an in-memory limiter at MEMHARBOR_RATE_LIMIT."""
        app = main_mod.bootstrap(call_settings(MEMHARBOR_AUTH="none", MEMHARBOR_RATE_LIMIT="4/hour"))
        limiter = app[DEPS].rate_limiter
        assert isinstance(limiter, MemoryRateLimiter)
        assert (limiter.item.amount, limiter.item.get_expiry()) == (4, 3600)


# ---------------------------------------------------------------------------------------------- limiter


class TestMemoryRateLimiter:
    """The limits-backed limiter: a moving window per key, and how long a refused key must wait."""

    async def test_refuses_beyond_the_rate_with_the_wait(self) -> None:
        """Two hits a minute pass; the third is refused with a wait of at most a minute."""
        limiter = MemoryRateLimiter("2/minute")
        assert await limiter.hit("uid:alice") is None
        assert await limiter.hit("uid:alice") is None
        wait = await limiter.hit("uid:alice")
        assert wait is not None and 55 <= wait <= 60

    async def test_keys_have_their_own_budgets(self) -> None:
        """One key's spent budget leaves another's untouched."""
        limiter = MemoryRateLimiter("1/minute")
        assert await limiter.hit("uid:alice") is None
        assert await limiter.hit("uid:alice") is not None
        assert await limiter.hit("uid:bob") is None

    async def test_budget_returns_after_the_window(self) -> None:
        """Once the window has moved past the first hit, the key may go on."""
        limiter = MemoryRateLimiter("1/second")
        assert await limiter.hit("k") is None
        assert await limiter.hit("k") == 1
        await asyncio.sleep(1.05)
        assert await limiter.hit("k") is None


# ---------------------------------------------------------------------------------------------- routes


class TestRateLimitedRoutes:
    """POST /api/recording/start and /api/call/invite spend one per-user budget; POST /api/token does not."""

    async def test_21st_start_in_a_window_is_429_with_retry_after(self, client: Client, world: World) -> None:
        """Twenty starts of a live call's recording pass; the 21st is a JSON 429 with Retry-After in seconds."""
        world.service.add_call()
        for _ in range(20):
            status, data, _ = await start(client, CHANNEL, AS_ALICE)
            assert status == 200, data
        status, data, headers = await start(client, CHANNEL, AS_ALICE)
        assert status == 429
        assert "try again" in data["error"]
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert headers["Content-Type"].startswith("application/json")

    async def test_refused_start_creates_nothing(self, client: Client, world: World) -> None:
        """A start over the budget writes no recording request."""
        for _ in range(20):
            await client.post(START, json={}, headers=AS_ALICE)  # even a bad body spends the budget
        status, _, _ = await start(client, "g1_alice_bob", AS_ALICE)
        assert status == 429 and world.service.created == []

    async def test_invite_shares_the_budget(self, client: Client, world: World) -> None:
        """After twenty starts an invite of the same user is 429 too; before them it was not."""
        first = await client.post("/api/call/invite", json=INVITE, headers=AS_ALICE)
        assert first.status != 429
        world.service.add_call()
        for _ in range(19):
            await start(client, CHANNEL, AS_ALICE)
        response = await client.post("/api/call/invite", json=INVITE, headers=AS_ALICE)
        assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
        assert len(world.calls.docs) <= 1

    async def test_other_users_keep_their_budget(self, client: Client, world: World) -> None:
        """Alice spending her budget leaves Bob's starts alone."""
        world.service.add_call()
        for _ in range(21):
            await start(client, CHANNEL, AS_ALICE)
        assert (await start(client, CHANNEL, AS_ALICE))[0] == 429
        assert (await start(client, CHANNEL, AS_BOB))[0] == 200

    async def test_admins_are_limited_by_their_uid(self, client: Client, world: World) -> None:
        """An admin's starts count against the admin's own budget too."""
        for n in range(20):
            assert (await start(client, f"lobby{n}", AS_ADMIN))[0] == 200
        assert (await start(client, "lobby-more", AS_ADMIN))[0] == 429

    async def test_open_mode_is_limited_by_address(self, world: World) -> None:
        """With MEMHARBOR_AUTH=none the budget is the client address's: the 3rd start from it is 429."""
        test_client = await _client(world, MemoryRateLimiter("2/minute"), open_access=True)
        try:
            statuses = [(await start(test_client, f"lobby{n}", {}))[0] for n in range(3)]
        finally:
            await test_client.close()
        assert statuses == [200, 200, 429]

    async def test_token_route_is_not_limited(self, client: Client) -> None:
        """POST /api/token creates no work: thirty tokens leave the admin's whole budget of twenty starts."""
        for _ in range(30):
            response = await client.post("/api/token", json={"channel": "c1", "uid": 5}, headers=AS_ADMIN)
            assert response.status == 200
        statuses = [(await start(client, f"lobby{n}", AS_ADMIN))[0] for n in range(21)]
        assert statuses == [200] * 20 + [429]


class TestLiveRecordingCap:
    """A user may have at most MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER requests in progress."""

    async def test_fourth_live_legacy_request_is_429_and_bob_is_unaffected(
        self, uncapped: Client, world: World
    ) -> None:
        """Three legacy starts of Alice pass, the 4th is 429 naming the channel; Bob may still start."""
        for channel in ALICE_LEGACY[:3]:
            assert (await start(uncapped, channel, AS_ALICE))[0] == 200
        status, data, headers = await start(uncapped, ALICE_LEGACY[3], AS_ALICE)
        assert status == 429
        assert data["field"] == "channel" and "3 recordings" in data["error"]
        assert int(headers["Retry-After"]) >= 1
        assert len(world.service.created) == 3
        status, _, _ = await start(uncapped, "g9_bob_carol", AS_BOB)
        assert status == 200 and len(world.service.created) == 4

    async def test_queued_requests_count(self, uncapped: Client, world: World) -> None:
        """Requests no recorder picked up are live: three queued ones (answered 503) block a fourth."""
        world.service.recorder.begins = False
        for channel in ALICE_LEGACY[:3]:
            assert (await start(uncapped, channel, AS_ALICE))[0] == 503
        assert (await start(uncapped, ALICE_LEGACY[3], AS_ALICE))[0] == 429

    async def test_a_finished_session_frees_a_place(self, uncapped: Client, world: World) -> None:
        """Once one of the three is stopped, the user may start another."""
        for channel in ALICE_LEGACY[:3]:
            await start(uncapped, channel, AS_ALICE)
        assert (await start(uncapped, ALICE_LEGACY[3], AS_ALICE))[0] == 429
        world.service.sessions[world.service.created[0][0]]["status"] = "stopped"
        assert (await start(uncapped, ALICE_LEGACY[3], AS_ALICE))[0] == 200

    async def test_joining_a_session_is_not_capped(self, uncapped: Client, world: World) -> None:
        """At the cap a new channel is refused, but a start on a channel already being recorded joins it."""
        sids = [(await start(uncapped, channel, AS_ALICE))[1]["sid"] for channel in ALICE_LEGACY[:3]]
        assert (await start(uncapped, ALICE_LEGACY[3], AS_ALICE))[0] == 429
        status, data, _ = await start(uncapped, ALICE_LEGACY[0], AS_BOB)
        assert status == 200 and data["sid"] == sids[0]
        status, data, _ = await start(uncapped, ALICE_LEGACY[1], AS_ALICE)
        assert status == 200 and data["sid"] == sids[1]

    async def test_the_watchers_requests_do_not_count(self, uncapped: Client, world: World) -> None:
        """Sessions the server asked for (requestedBy server) are not the user's: she still gets her own three."""
        for n in range(3):
            world.service.add_session(f"w{n}", "recording", channel=f"g{n}_alice_carol", requestedBy="server")
        statuses = [(await start(uncapped, channel, AS_ALICE))[0] for channel in ALICE_LEGACY[:4]]
        assert statuses == [200, 200, 200, 429]

    async def test_admins_and_open_mode_are_not_capped(self, uncapped: Client, world: World) -> None:
        """A user's 4th live request is refused; an admin, and anyone in open mode, may have five."""
        for channel in ALICE_LEGACY[:3]:
            await start(uncapped, channel, AS_ALICE)
        assert (await start(uncapped, ALICE_LEGACY[3], AS_ALICE))[0] == 429
        for n in range(5):
            assert (await start(uncapped, f"lobby{n}", AS_ADMIN))[0] == 200
        open_client = await _client(world, None, open_access=True)
        try:
            for n in range(5):
                assert (await start(open_client, f"open{n}", {}))[0] == 200
        finally:
            await open_client.close()

    async def test_the_cap_is_the_setting(self, world: World) -> None:
        """With MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER=1 the second live request is refused."""
        test_client = await _client(world, None, MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER="1")
        try:
            assert (await start(test_client, ALICE_LEGACY[0], AS_ALICE))[0] == 200
            assert (await start(test_client, ALICE_LEGACY[1], AS_ALICE))[0] == 429
        finally:
            await test_client.close()


# ---------------------------------------------------------------------------------------------- adapter


class _Recordings:
    """Just enough of a Firestore AsyncClient for capped creates: one collection, every call yields."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def collection(self, _: str, /) -> _Query:
        return _Query(self, [])

    def get_all(self, _: Any, /) -> Any:
        raise AssertionError("not used here")

    def transaction(self) -> Any:
        raise AssertionError("not used here")

    async def yield_(self) -> None:
        for _ in range(3):  # long enough for every other start in flight to reach the same point
            await asyncio.sleep(0)


class _Query:
    def __init__(self, db: _Recordings, filters: list[Any], limit: int | None = None) -> None:
        self.db, self.filters, self._limit = db, filters, limit

    def where(self, *, filter: Any) -> _Query:
        return _Query(self.db, [*self.filters, filter], self._limit)

    def limit(self, count: int) -> _Query:
        return _Query(self.db, self.filters, count)

    def _matches(self, doc: dict[str, Any]) -> bool:
        return all(
            doc.get(f.field_path) in f.value if f.op_string == "in" else doc.get(f.field_path) == f.value
            for f in self.filters
        )

    async def stream(self) -> AsyncIterator[Any]:
        await self.db.yield_()
        found = [doc for doc in self.db.docs.values() if self._matches(doc)]
        for doc in found[: self._limit]:
            yield doc

    def document(self, sid: str) -> _Document:
        return _Document(self.db, sid)


class _Document:
    def __init__(self, db: _Recordings, sid: str) -> None:
        self.db, self.sid = db, sid

    async def create(self, doc: dict[str, Any]) -> None:
        await self.db.yield_()
        if self.sid in self.db.docs:
            raise gexc.AlreadyExists("exists")
        self.db.docs[self.sid] = dict(doc, status="requested")


class TestFirestoreRecordingRepositoryCap:
    """FirestoreRecordingRepository.create with a cap counts and creates one requester's requests one at a time."""

    async def test_parallel_capped_creates_leave_at_most_the_cap(self) -> None:
        """Twenty simultaneous creates by one user: three succeed, seventeen are LiveCapReached."""
        db = _Recordings()
        service = FirestoreRecordingRepository(lambda: db)
        results = await asyncio.gather(
            *(service.create(f"s{n}", new_request(f"g{n}_alice_bob", "alice"), 3) for n in range(20)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 3
        assert sum(isinstance(r, LiveCapReached) for r in results) == 17
        assert len(db.docs) == 3

    async def test_each_requester_has_a_cap_of_their_own(self) -> None:
        """Another requester's sessions are counted apart: Bob gets his three while Alice is at her cap."""
        db = _Recordings()
        service = FirestoreRecordingRepository(lambda: db)
        for who in ("alice", "bob"):
            await asyncio.gather(*(service.create(f"{who}{n}", new_request("c", who), 3) for n in range(3)))
        assert len(db.docs) == 6

    async def test_uncapped_create_does_not_count(self) -> None:
        """Without a cap (admins, open mode) creates always write; a capped one then sees all five."""
        db = _Recordings()
        service = FirestoreRecordingRepository(lambda: db)
        for n in range(5):
            await service.create(f"s{n}", new_request("c", "anonymous"))
        assert len(db.docs) == 5
        with pytest.raises(LiveCapReached):
            await service.create("s5", new_request("c", "anonymous"), 5)


# ---------------------------------------------------------------------------------------------- health


@pytest.fixture
def health_world() -> TokenWorld:
    world = TokenWorld()
    apns_error = {"configured": True, "lastError": "apns:500:InternalServerError", "lastErrorAt": "2027-01-01T00:00"}
    watcher = {**beat("watcher", 10), "status": {"push": {"apns": apns_error}}}
    world.health.beats = [watcher, beat("recorder", 10)]
    return world


async def _health(
    world: TokenWorld, headers: dict[str, str], open_access: bool = False, env: dict[str, str] | None = None
) -> Any:
    settings = call_settings(**({"MEMHARBOR_AUTH": "none"} if open_access else {}), **(env or {}))
    async with TestClient(TestServer(create_app(settings, world.deps(open_access=open_access)))) as test_client:
        return await get(test_client, "/api/health", headers)


PUBLIC = {
    "status": "ok",
    "problems": [],
    "firestore": {"ok": True},
    "workers": {"watcher": {"alive": 1}, "recorder": {"alive": 1}},
    "push": {"apns": {"configured": True}, "fcm": {"configured": False}},
    "auth": "firebase",
}


class TestHealthVisibility:
    """GET /api/health: states and counts for anyone; instance ids and errors for admins and the open mode."""

    async def test_no_token_sees_states_and_counts_an_admin_everything(self, health_world: TokenWorld) -> None:
        """No token: no instance ids, push lastError/lastErrorAt or latency; an admin's token: all of them."""
        status, body = await _health(health_world, {})
        assert status == 200 and body == PUBLIC
        status, body = await _health(health_world, {"Authorization": "Bearer tok-admin"})
        assert status == 200
        assert body["workers"]["watcher"] == {"alive": 1, "instances": ["watcher-1"]}
        assert body["push"]["apns"]["lastError"] == "apns:500:InternalServerError"
        assert body["push"]["apns"]["lastErrorAt"] == "2027-01-01T00:00"
        assert "latency_ms" in body["firestore"]

    @pytest.mark.parametrize("token", ["tok-alice", "not-a-token"])
    async def test_users_and_bad_tokens_see_the_public_view(self, health_world: TokenWorld, token: str) -> None:
        """A user who is no admin, or an invalid token, gets the public view with 200, never a 401."""
        status, body = await _health(health_world, {"Authorization": f"Bearer {token}"})
        assert status == 200 and body == PUBLIC

    async def test_open_mode_sees_everything(self, health_world: TokenWorld) -> None:
        """MEMHARBOR_AUTH=none trusts everyone like an admin: instance ids without a token, unlike firebase mode."""
        _, body = await _health(health_world, {}, open_access=True)
        assert body["workers"]["recorder"]["instances"] == ["recorder-1"] and body["auth"] == "none"
        _, body = await _health(health_world, {})
        assert "instances" not in body["workers"]["recorder"]

    async def test_firestore_error_class_is_for_admins_only(self, health_world: TokenWorld) -> None:
        """When Firestore fails, anyone sees ok false with 503; only an admin sees the error's class."""
        health_world.health.failure = ConnectionError("down")
        status, body = await _health(health_world, {})
        assert status == 503 and body["firestore"] == {"ok": False}
        assert body["problems"] == ["firestore unreachable"]
        _, full = await _health(health_world, {"Authorization": "Bearer tok-admin"})
        assert full["firestore"]["error"] == "ConnectionError"

    async def test_one_cached_check_serves_both_views(self, health_world: TokenWorld) -> None:
        """A public and an admin request within the cache window share one Firestore check."""
        settings = call_settings()
        async with TestClient(TestServer(create_app(settings, health_world.deps()))) as test_client:
            _, public = await get(test_client, "/api/health")
            _, full = await get(test_client, "/api/health", {"Authorization": "Bearer tok-admin"})
        assert health_world.health.pings == 1
        assert "instances" not in public["workers"]["watcher"] and "instances" in full["workers"]["watcher"]

    async def test_reports_firebase_emulator_auth(self, health_world: TokenWorld) -> None:
        """With the Auth emulator accepting unsigned tokens, health says firebase-emulator."""
        env = {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
        _, body = await _health(health_world, {}, env=env)
        assert body["auth"] == "firebase-emulator"
