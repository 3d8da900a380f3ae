"""The rule files themselves: their mirrored tables equal memharbor.calls', Storage is closed, indexes exist.

These checks need no emulator; they pin the literal lists in rules/firestore.rules to calls.py so a change
on either side fails here with a message naming the list, besides failing the behavioural tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memharbor import calls
from memharbor.calls import Actor

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
FIRESTORE_RULES = (RULES_DIR / "firestore.rules").read_text()
STORAGE_RULES = (RULES_DIR / "storage.rules").read_text()
# Rules source without // comments, so commented-out code cannot satisfy a check.
CODE = re.sub(r"//[^\n]*", "", FIRESTORE_RULES)


def rules_list(function: str) -> list[str]:
    """The string list a zero-argument rules function returns, e.g. callCreateRequired()."""
    match = re.search(rf"function {function}\(\)\s*\{{\s*return\s*\[([^\]]*)\];\s*\}}", CODE)
    assert match, f"function {function}() returning a list literal not found in firestore.rules"
    return re.findall(r"'([^']*)'", match.group(1))


class TestFirestoreRulesSource:
    """The literal tables in firestore.rules mirror memharbor.calls."""

    @pytest.mark.parametrize(
        ("function", "expected"),
        [
            ("callCreateRequired", calls.CREATE_REQUIRED),
            ("callCreateOptional", calls.CREATE_OPTIONAL),
            ("callReviewFields", calls.REVIEW_FIELDS),
            ("callActiveStatuses", {s.value for s in calls.ACTIVE}),
            ("recordingRequestFields", calls.RECORDING_REQUEST_FIELDS),
            ("userPlatforms", calls.USER_PLATFORMS),
            ("userServerFields", calls.USER_SERVER_FIELDS),
            ("userFields", calls.USER_FIELDS),
        ],
    )
    def test_field_lists(self, function: str, expected: frozenset[str]) -> None:
        """Each mirrored list holds exactly the members of its calls.py table, once each."""
        found = rules_list(function)
        assert sorted(found) == sorted(expected), function

    def test_one_update_rule_per_client_transition(self) -> None:
        """The transition() rules are exactly the rows of calls.TRANSITIONS with a client actor."""
        found = {
            (frozenset(re.findall(r"'(\w+)'", actors)), source, target, stamp)
            for actors, source, target, stamp in re.findall(
                r"allow update: if transition\(\[([^\]]*)\], '(\w+)', '(\w+)', '(\w+)'\);", CODE
            )
        }
        expected = {
            (
                frozenset(a.value for a in move.actors if a != Actor.SERVER),
                move.source.value,
                move.target.value,
                move.stamp,
            )
            for move in calls.TRANSITIONS
            if move.actors - {Actor.SERVER}
        }
        assert found == expected
        assert CODE.count("allow update: if transition(") == len(expected)

    def test_id_patterns(self) -> None:
        """The rules use calls.ID_RULE, GROUP_ID_RULE and RESERVED_ID_RULE verbatim, as the patterns do."""
        assert f"value.matches('{calls.ID_RULE}') && !value.matches('{calls.RESERVED_ID_RULE}')" in CODE
        assert f"value.matches('{calls.GROUP_ID_RULE}') && !value.matches('{calls.RESERVED_ID_RULE}')" in CODE
        assert calls.ID_PATTERN.pattern == "^(?!__.*__$)" + calls.ID_RULE[1:]
        assert calls.GROUP_ID_PATTERN.pattern == "^(?!__.*__$)" + calls.GROUP_ID_RULE[1:]
        assert CODE.count(f"'{calls.PUSH_TOKEN_PATTERN.pattern}'") == 1

    def test_limits(self) -> None:
        """The name, summary and keyword limits of calls.py appear where the rules check them."""
        assert CODE.count(f"', {calls.MAX_NAME_CHARS})") == 5  # four call names and displayName
        assert CODE.count(f"', {calls.MAX_SUMMARY_CHARS})") == 2
        assert f"size() <= {calls.MAX_KEYWORDS}" in CODE
        assert CODE.count(f"{{0,{calls.MAX_KEYWORD_CHARS}}}") == 2
        # The unrolled element type checks cover exactly MAX_KEYWORDS positions, on a list padded that far.
        indexes = [int(i) for i in re.findall(r"p\[(\d+)\] is string", CODE)]
        assert indexes == list(range(calls.MAX_KEYWORDS))
        pad = re.search(r"let p = k\.concat\(\[([^\]]*)\]\);", CODE)
        assert pad is not None and pad.group(1).count("''") == calls.MAX_KEYWORDS

    def test_no_delete_is_allowed(self) -> None:
        """Every delete rule is `if false` (groups deny deletes in their combined rule), but a user's own devices."""
        deletes = re.findall(r"allow delete: if ([^;]*);", CODE)
        assert deletes == ["false", "false", "signedIn() && request.auth.uid == uid", "false"]
        assert "allow list, create, update, delete: if false;" in CODE

    def test_one_membership_function(self) -> None:
        """Call creation and group reads both go through areGroupMembers, the one membership test."""
        assert CODE.count("function areGroupMembers(") == 1
        assert "areGroupMembers(data.groupId, [data.callerId, data.receiverId])" in CODE
        assert CODE.count("memberIds") == 2  # both inside areGroupMembers

    def test_no_catch_all_match(self) -> None:
        """There is no recursive wildcard that could open other collections (workers, ...)."""
        assert "=**" not in CODE
        matches = re.findall(r"match (/[^\s{]+)/\{\w+\}\s*\{", CODE)
        assert sorted(matches) == ["/calls", "/groups", "/recordings", "/users"]
        assert "match /users/{uid}/devices/{deviceId} {" in CODE
        assert CODE.count("match ") == 6  # those four and users' devices inside /databases/{database}/documents


class TestStorageRules:
    """Cloud Storage is closed to clients; the server uploads with admin credentials."""

    def test_deny_all(self) -> None:
        """The only rule denies every read and write of every object."""
        code = re.sub(r"//[^\n]*", "", STORAGE_RULES)
        assert "service firebase.storage" in code
        assert re.findall(r"allow [^;]*;", code) == ["allow read, write: if false;"]
        assert "match /{allPaths=**}" in code


class TestIndexes:
    """rules/firestore.indexes.json declares the composite indexes the server's queries need."""

    def _indexes(self) -> dict[str, object]:
        return json.loads((RULES_DIR / "firestore.indexes.json").read_text())

    def test_format(self) -> None:
        """The file has the Firebase CLI's shape: indexes and fieldOverrides."""
        data = self._indexes()
        assert set(data) == {"indexes", "fieldOverrides"}
        assert isinstance(data["indexes"], list)
        # The one override: the watcher's periodic prune of stale devices is a collection-group range query.
        [override] = data["fieldOverrides"]
        assert (override["collectionGroup"], override["fieldPath"]) == ("devices", "updatedAt")
        assert {"order": "ASCENDING", "queryScope": "COLLECTION_GROUP"} in override["indexes"]

    @pytest.mark.parametrize(
        ("collection", "fields"),
        [
            ("calls", ["status", "ringDeadline"]),
            ("recordings", ["status", "leaseUntil"]),
            ("recordings", ["requestedBy", "status"]),  # the live-recording cap per user
        ],
    )
    def test_composite_index(self, collection: str, fields: list[str]) -> None:
        """An equality on status combined with a range on a time field has its composite index."""
        indexes = self._indexes()["indexes"]
        assert isinstance(indexes, list)
        matching = [
            ix
            for ix in indexes
            if ix["collectionGroup"] == collection
            and ix["queryScope"] == "COLLECTION"
            and [f["fieldPath"] for f in ix["fields"]] == fields
            and all(f.get("order") == "ASCENDING" for f in ix["fields"])
        ]
        assert len(matching) == 1
