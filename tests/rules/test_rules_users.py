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

    def test_owner_reads_updates_and_deletes(self, world: World) -> None:
        """The owner may read, change and delete their document."""
        user = world.client("caller")
        assert user.create(USER_PATH, PROFILE).ok
        assert user.get(USER_PATH).data["voipToken"] == "voip-abc"
        assert user.update(USER_PATH, {"platform": "android", "fcmToken": "fcm-1"}, delete=["voipToken"]).ok
        assert user.set(USER_PATH, {"platform": "ios", "voipToken": "voip-2"}).ok
        assert user.delete(USER_PATH).ok
        assert world.stored(USER_PATH) is None

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
