"""The fakes behind one token_http app, per family of routes, and the settings the route tests use.

Each world holds the fakes a test reaches into and builds the `Deps` of an app over them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from memharbor.access import Principal
from memharbor.settings import HttpSettings, http_settings
from tests.support.fake_calls import FakeCallRepository
from tests.support.fake_recordings import FakeRecordingRepository
from tests.support.http_fakes import FakeAuthenticator, FakeCallLookup, FakeClock, FakeHealth, Unused
from token_http.auth import OpenAccess
from token_http.keys import Deps
from token_http.ratelimit import RateLimiter

APP_ID = "0123456789abcdef0123456789abcdef"
APP_CERT = "fedcba9876543210fedcba9876543210"

# The shim's worlds: users, their bearer tokens, and a call between alice and bob on CHANNEL.
ALICE, BOB, CAROL, MALLORY, ADMIN = "alice", "bob", "carol", "mallory", "admin-1"
TOKENS = {
    "tok-alice": Principal(uid=ALICE),
    "tok-bob": Principal(uid=BOB),
    "tok-carol": Principal(uid=CAROL),
    "tok-mallory": Principal(uid=MALLORY),
    "tok-admin": Principal(uid=ADMIN, admin=True),
}
AS_ALICE = {"Authorization": "Bearer tok-alice"}
AS_BOB = {"Authorization": "Bearer tok-bob"}
AS_CAROL = {"Authorization": "Bearer tok-carol"}
AS_MALLORY = {"Authorization": "Bearer tok-mallory"}
AS_ADMIN = {"Authorization": "Bearer tok-admin"}
NOW = 1_770_000_000.0
CHANNEL = "g1_alice_bob_1770000000000"
# The body of POST /api/call/invite for a call from alice to bob in group g1.
INVITE = {"group_id": "g1", "caller_id": ALICE, "receiver_id": BOB}


def make_settings(project: str = "demo-routes", **extra: str) -> HttpSettings:
    """Settings of an app under test (Agora credentials set), with `extra` environment values."""
    return http_settings({"FIREBASE_PROJECT_ID": project, "AGORA_APP_ID": APP_ID, "AGORA_APP_CERT": APP_CERT, **extra})


class TokenWorld:
    """The fakes of /api/token and /api/health: its own users and channel, call lookups, health, clock."""

    NOW = 1_750_000_000
    CHANNEL = "group1_alice_bob_1750000000000"
    ALICE, BOB, MALLORY, ADMIN = "alice-uid", "bob-uid", "mallory-uid", "admin-uid"
    TOKENS: ClassVar[dict[str, Principal]] = {
        "tok-alice": Principal(uid=ALICE),
        "tok-bob": Principal(uid=BOB),
        "tok-mallory": Principal(uid=MALLORY),
        "tok-admin": Principal(uid=ADMIN, admin=True),
    }

    def __init__(self) -> None:
        self.auth = FakeAuthenticator(self.TOKENS)
        self.calls = FakeCallLookup(self.CHANNEL, self.ALICE, self.BOB)
        self.health = FakeHealth()
        self.clock = FakeClock(self.NOW)

    def deps(self, open_access: bool = False) -> Deps:
        authenticator = OpenAccess() if open_access else self.auth
        return Deps(authenticator=authenticator, calls=self.calls, health=self.health, clock=self.clock)


def beat(kind: str, expires_in: float, now: float = TokenWorld.NOW) -> dict[str, Any]:
    """A worker heartbeat of `kind` that expires `expires_in` seconds after `now`."""
    return {"kind": kind, "instanceId": f"{kind}-1", "expiresAt": datetime.fromtimestamp(now + expires_in, UTC)}


class CallWorld:
    """The fakes of the /api/call/* routes: an in-memory calls repository and a clock."""

    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.service = FakeCallRepository(self.clock, ALICE, BOB, CHANNEL)

    def deps(self, open_access: bool = False, with_service: bool = True) -> Deps:
        return Deps(
            authenticator=OpenAccess() if open_access else FakeAuthenticator(TOKENS),
            calls=Unused(),
            health=Unused(),
            clock=self.clock,
            call_repository=self.service if with_service else None,
        )


class RecordingWorld:
    """The fakes of the /api/recording/* routes: recordings (and the calls they look up), a recorder, a clock."""

    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.service = FakeRecordingRepository(self.clock, ALICE, BOB, CHANNEL)

    def deps(self, open_access: bool = False, with_service: bool = True) -> Deps:
        return Deps(
            authenticator=OpenAccess() if open_access else FakeAuthenticator(TOKENS),
            calls=self.service,
            health=Unused(),
            clock=self.clock,
            recording_repository=self.service if with_service else None,
        )


class LimitedWorld(RecordingWorld):
    """The recording routes' fakes plus the call routes' repository, with a rate limiter chosen by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = FakeCallRepository(self.clock, ALICE, BOB, CHANNEL)

    def limited_deps(self, limiter: RateLimiter | None, open_access: bool = False) -> Deps:
        return Deps(
            authenticator=OpenAccess() if open_access else FakeAuthenticator(TOKENS),
            calls=self.service,
            health=FakeHealth(),
            clock=self.clock,
            call_repository=self.calls,
            recording_repository=self.service,
            rate_limiter=limiter,
        )
