"""Security rules: users/{uid} is the owner's alone, minus the server's fields (calls.USER_*)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from memharbor import calls
from tests.rules.rules_support import CALLER, World

USER_PATH = f"users/{CALLER}"
PROFILE: dict[str, Any] = {"platform": "ios", "voipToken": "voip-abc", "displayName": "Alice"}
INVALID_AT = datetime(2025, 1, 1, tzinfo=UTC)
OTHERS = ["receiver", "stranger", "anonymous"]


class TestUsers:
    """Only the owner reads and writes their user document."""

    @pytest.mark.parametrize("platform", sorted(calls.USER_PLATFORMS))
    def test_owner_creates_with_each_platform(self, world: World, platform: str) -> None:
        """The owner may register each supported platform."""
        result = world.client("caller").create(USER_PATH, {**PROFILE, "platform": platform})
        assert result.ok, result
        stored = world.stored(USER_PATH)
        assert stored is not None and stored["platform"] == platform

    def test_owner_creates_without_platform(self, world: World) -> None:
        """platform is optional."""
        assert world.client("caller").create(USER_PATH, {"displayName": "Alice"}).ok

    @pytest.mark.parametrize("platform", ["web", "IOS", "", 1, None])
    def test_unknown_platform_denied(self, world: World, platform: Any) -> None:
        """A platform outside calls.USER_PLATFORMS is refused on create and on update."""
        assert platform not in calls.USER_PLATFORMS
        user = world.client("caller")
        assert user.create(USER_PATH, {**PROFILE, "platform": platform}).denied
        world.seed(USER_PATH, PROFILE)
        assert user.update(USER_PATH, {"platform": platform}).denied

    def test_owner_reads_and_updates(self, world: World) -> None:
        """The owner may read and change their document, and remove a token by deleting its field."""
        user = world.client("caller")
        assert user.create(USER_PATH, PROFILE).ok
        assert user.get(USER_PATH).data["voipToken"] == "voip-abc"
        assert user.update(USER_PATH, {"platform": "android", "fcmToken": "fcm-1"}, delete=["voipToken"]).ok
        assert user.set(USER_PATH, {"platform": "ios", "voipToken": "voip-2"}).ok
        assert user.update(USER_PATH, {"voipToken": None}).ok
        assert world.stored(USER_PATH) == {"platform": "ios", "voipToken": None}

    def test_owner_may_not_delete(self, world: World) -> None:
        """Deleting (then re-creating) the document would drop the server's pushTokenInvalidAt: refused."""
        world.seed(USER_PATH, {**PROFILE, "pushTokenInvalidAt": INVALID_AT})
        assert world.client("caller").delete(USER_PATH).denied
        stored = world.stored(USER_PATH)
        assert stored is not None and stored["pushTokenInvalidAt"] == INVALID_AT

    @pytest.mark.parametrize("principal", OTHERS)
    def test_others_denied(self, world: World, principal: str) -> None:
        """Nobody else may read, create, change or delete a user's document."""
        other = world.client(principal)
        assert other.create(USER_PATH, PROFILE).denied
        world.seed(USER_PATH, PROFILE)
        assert other.get(USER_PATH).denied
        assert other.update(USER_PATH, {"voipToken": "hijacked"}).denied
        assert other.set(USER_PATH, PROFILE).denied
        assert other.delete(USER_PATH).denied
        assert world.stored(USER_PATH) == PROFILE

    @pytest.mark.parametrize("principal", ["caller", "stranger"])
    def test_listing_users_denied(self, world: World, principal: str) -> None:
        """The users collection cannot be listed or queried."""
        world.seed(USER_PATH, PROFILE)
        assert world.client(principal).list("users").denied
        assert world.client(principal).query("users", [("platform", "==", "ios")]).denied

    @pytest.mark.parametrize("name", sorted(calls.USER_SERVER_FIELDS))
    def test_server_field_on_create_denied(self, world: World, name: str) -> None:
        """The owner may not write a server-owned field when creating the document."""
        assert world.client("caller").create(USER_PATH, {**PROFILE, name: INVALID_AT}).denied
        assert world.client("caller").create(USER_PATH, {**PROFILE, name: None}).denied

    @pytest.mark.parametrize("name", sorted(calls.USER_SERVER_FIELDS))
    def test_server_field_on_update_denied(self, world: World, name: str) -> None:
        """The owner may not set, change or remove a server-owned field."""
        user = world.client("caller")
        world.seed(USER_PATH, PROFILE)
        assert user.update(USER_PATH, {name: INVALID_AT}).denied
        assert user.update(USER_PATH, {}, server_time=[name]).denied
        world.seed(USER_PATH, {**PROFILE, name: INVALID_AT})
        assert user.update(USER_PATH, {name: datetime(2026, 1, 1, tzinfo=UTC)}).denied
        assert user.update(USER_PATH, {}, delete=[name]).denied

    @pytest.mark.parametrize("name", sorted(calls.USER_SERVER_FIELDS))
    def test_other_fields_beside_server_field_allowed(self, world: World, name: str) -> None:
        """The owner may register a new token while the server's field stays as it was."""
        world.seed(USER_PATH, {**PROFILE, name: INVALID_AT})
        assert world.client("caller").update(USER_PATH, {"voipToken": "voip-new"}).ok
        stored = world.stored(USER_PATH)
        assert stored is not None and stored[name] == INVALID_AT and stored["voipToken"] == "voip-new"


HUGE = "x" * 900_000
BAD_USER_FIELDS = [
    pytest.param({"fcmToken": {"token": "abc"}}, id="fcmToken-map"),
    pytest.param({"voipToken": 12345}, id="voipToken-number"),
    pytest.param({"apnsToken": ""}, id="apnsToken-empty"),
    pytest.param({"apnsToken": "a" * 1001}, id="apnsToken-too-long"),
    pytest.param({"voipToken": "../../3/device/other"}, id="voipToken-path"),
    pytest.param({"fcmToken": "abc?x=1"}, id="fcmToken-query"),
    pytest.param({"isAdmin": True}, id="unknown-isAdmin"),
    pytest.param({"notes": HUGE}, id="unknown-900KB"),
    pytest.param({"displayName": HUGE}, id="displayName-900KB"),
    pytest.param({"displayName": "n" * (calls.MAX_NAME_CHARS + 1)}, id="displayName-201"),
    pytest.param({"displayName": ["Alice"]}, id="displayName-list"),
    pytest.param({"updatedAt": "yesterday"}, id="updatedAt-string"),
]


class TestUserFields:
    """users/{uid} holds only calls.USER_FIELDS, typed and bounded: the watcher reads it on every ring."""

    @pytest.mark.parametrize("fields", BAD_USER_FIELDS)
    def test_bad_field_denied_on_create_and_update(self, world: World, fields: dict[str, Any]) -> None:
        """A field outside the allow-list, of the wrong type or too long is refused either way."""
        user = world.client("caller")
        assert user.create(USER_PATH, {**PROFILE, **fields}).denied
        world.seed(USER_PATH, PROFILE)
        assert user.update(USER_PATH, fields).denied
        assert world.stored(USER_PATH) == PROFILE

    def test_every_allowed_field_accepted(self, world: World) -> None:
        """A document with each field of calls.USER_FIELDS at its limits is accepted."""
        fields = {
            "platform": "android",
            "voipToken": "a" * 1000,
            "apnsToken": "0123abcdef",
            "fcmToken": "dGVzdA:APA91b-x_y",
            "displayName": "n" * calls.MAX_NAME_CHARS,
        }
        assert set(fields) | {"updatedAt"} == calls.USER_FIELDS
        result = world.client("caller").create(USER_PATH, fields, server_time=["updatedAt"])
        assert result.ok, result

    def test_token_pattern_matches_python(self) -> None:
        """The token pattern the rules use accepts real-looking tokens and refuses path characters."""
        assert calls.PUSH_TOKEN_PATTERN.fullmatch("dGVzdA:APA91b-x_y")
        assert not calls.PUSH_TOKEN_PATTERN.fullmatch("a/b")
        assert not calls.PUSH_TOKEN_PATTERN.fullmatch("a.b")
