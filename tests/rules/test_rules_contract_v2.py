"""Contract v2 (docs/firestore-contract.md) against the rules on the emulator: listeners attached before a
call or a recording exists, the history queries of the doc, and the writes of its JavaScript snippets.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from memharbor import calls
from memharbor.calls import Status
from memharbor.emulators import EmulatorSet
from tests.rules import contract_doc
from tests.rules.listen_support import DocumentListener, ListenState
from tests.rules.rules_support import (
    CALL_ID,
    CALL_PATH,
    CALLER,
    CHANNEL,
    OPTIONAL_SAMPLES,
    RECEIVER,
    STRANGER,
    T0,
    World,
    new_call,
)
from tests.support.firestore_rest import Result, encode_value, field_path

UIDS = {"caller": CALLER, "receiver": RECEIVER, "stranger": STRANGER, "anonymous": None}
REC_PATH = f"recordings/call-{CALL_ID}"
SERVER_STAMPS = ("createdAt", "updatedAt")


def listener(emulators: EmulatorSet, principal: str, path: str) -> DocumentListener:
    return DocumentListener(emulators.firestore.address, emulators.project_id, UIDS[principal], path)


def answered(state: ListenState) -> bool:
    """The server has either confirmed a snapshot or refused the listener."""
    return state.error is not None or bool(state.snapshots)


def create_call_as_documented(world: World) -> Result:
    """The caller's setDoc (no precondition, as the SDK sends it) with exactly the fields of the doc's snippet."""
    fields = contract_doc.js_write("setDoc", "calls")
    values = new_call() | OPTIONAL_SAMPLES
    return world.client("caller").set(
        CALL_PATH,
        {name: values[name] for name in fields - set(SERVER_STAMPS)},
        server_time=[name for name in SERVER_STAMPS if name in fields],
    )


def request_recording_as_documented(world: World, principal: str) -> Result:
    """A participant's setDoc of a recording request with exactly the fields of the doc's snippet."""
    fields = contract_doc.js_write("setDoc", "recordings")
    values: dict[str, Any] = {"channel": CHANNEL, "callId": CALL_ID, "status": "requested"}
    values["requestedBy"] = UIDS[principal]
    return world.client(principal).set(
        REC_PATH,
        {name: values[name] for name in fields - {"createdAt"}},
        server_time=["createdAt"] if "createdAt" in fields else [],
    )


class TestListenBeforeCallExists:
    """A listener attached before the create: participants get the call, anyone else an error, never the data."""

    @pytest.mark.parametrize("principal", ["caller", "receiver"])
    def test_participant_receives_the_call(self, world: World, clean_emulators: EmulatorSet, principal: str) -> None:
        """The caller's or receiver's early listener sees "missing", then the call once it is created."""
        with listener(clean_emulators, principal, CALL_PATH) as early:
            first = early.wait(answered)
            assert first.error is None and first.snapshots == [None]
            assert create_call_as_documented(world).ok
            state = early.wait(lambda s: s.exists)
            assert state.data["status"] == Status.PENDING and state.data["callerId"] == CALLER
            world.owner.update(CALL_PATH, {"channelName": CHANNEL})
            assert early.wait(lambda s: s.data.get("channelName") == CHANNEL).error is None

    def test_stranger_is_cut_off_without_the_call(self, world: World, clean_emulators: EmulatorSet) -> None:
        """A stranger's early listener sees "missing", then PERMISSION_DENIED on the create, and no document."""
        with listener(clean_emulators, "stranger", CALL_PATH) as early:
            assert early.wait(answered).snapshots == [None]
            assert create_call_as_documented(world).ok
            state = early.wait(lambda s: s.error is not None)
            assert state.denied
            world.owner.update(CALL_PATH, {"channelName": CHANNEL})
            after = early.settle()
            assert after.documents_received == 0 and after.snapshots == [None]

    def test_anonymous_is_refused_at_once(self, world: World, clean_emulators: EmulatorSet) -> None:
        """Without sign-in the listener on a missing call is refused before anything is created."""
        with listener(clean_emulators, "anonymous", CALL_PATH) as early:
            state = early.wait(answered)
            assert state.denied and state.snapshots == []

    def test_stranger_on_existing_call_refused(self, world: World, clean_emulators: EmulatorSet) -> None:
        """Once the call exists a stranger's listener is refused at once and receives nothing."""
        world.seed_call(Status.PENDING)
        with listener(clean_emulators, "stranger", CALL_PATH) as late:
            state = late.wait(answered)
            assert state.denied and state.documents_received == 0

    @pytest.mark.parametrize("principal", ["caller", "stranger"])
    def test_get_of_missing_call_reads_as_missing(self, world: World, principal: str) -> None:
        """getDoc on a call id not yet used is "not found" for a signed-in user, not permission-denied."""
        assert world.client(principal).get(CALL_PATH).status == 404
        assert world.client("anonymous").get(CALL_PATH).denied


class TestListenBeforeRecordingExists:
    """recordings/call-{callId} may be listened to before anyone requests it, like a call."""

    def test_receiver_sees_the_callers_request(self, world: World, clean_emulators: EmulatorSet) -> None:
        """The receiver's early listener gets the caller's request (the doc's snippet) when it is made."""
        world.seed_call(Status.ACCEPTED)
        with listener(clean_emulators, "receiver", REC_PATH) as early:
            assert early.wait(answered).snapshots == [None]
            assert request_recording_as_documented(world, "caller").ok
            state = early.wait(lambda s: s.exists)
            assert state.data["status"] == "requested" and state.data["requestedBy"] == CALLER

    def test_stranger_is_cut_off(self, world: World, clean_emulators: EmulatorSet) -> None:
        """A stranger's early listener on the recording is refused when it is requested, without the data."""
        world.seed_call(Status.ACCEPTED)
        with listener(clean_emulators, "stranger", REC_PATH) as early:
            assert early.wait(answered).snapshots == [None]
            assert request_recording_as_documented(world, "receiver").ok
            state = early.wait(lambda s: s.error is not None)
            assert state.denied and state.documents_received == 0

    def test_get_of_missing_recording(self, world: World) -> None:
        """A recording not yet requested reads as missing for a signed-in user and is refused without sign-in."""
        assert world.client("stranger").get(REC_PATH).status == 404
        assert world.client("anonymous").get(REC_PATH).denied


class TestDocumentedRecordingWrites:
    """The doc's JavaScript recording snippets make writes the rules accept, and only the documented ones."""

    @pytest.mark.parametrize("principal", ["caller", "receiver"])
    def test_request_snippet(self, world: World, principal: str) -> None:
        """The request snippet's write is accepted for either participant of an accepted call."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording_as_documented(world, principal).ok
        stored = world.stored(REC_PATH)
        assert stored is not None and set(stored) == calls.RECORDING_REQUEST_FIELDS

    def test_second_request_is_denied(self, world: World) -> None:
        """A request finding the session already there is refused, as the doc says (listen to it instead)."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording_as_documented(world, "caller").ok
        assert request_recording_as_documented(world, "receiver").denied

    def test_stop_snippet(self, world: World) -> None:
        """The stop snippet's write is accepted and sets exactly stopRequested."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording_as_documented(world, "caller").ok
        fields = contract_doc.js_write("updateDoc", "recordings")
        assert world.client("receiver").update(REC_PATH, dict.fromkeys(fields, True)).ok
        stored = world.stored(REC_PATH)
        assert stored is not None and stored[calls.RECORDING_STOP_FIELD] is True


def run_query(world: World, principal: str, query: contract_doc.HistoryQuery, uid: str) -> Result:
    """The doc's query as runQuery, with the snippet's `uid` bound to `uid`."""
    filters = [
        {"fieldFilter": {"field": {"fieldPath": field_path(name)}, "op": "EQUAL", "value": encode_value(uid)}}
        for name in query.equalities
    ]
    where = filters[0] if len(filters) == 1 else {"compositeFilter": {"op": "OR", "filters": filters}}
    direction = "DESCENDING" if query.descending else "ASCENDING"
    structured = {
        "from": [{"collectionId": query.collection}],
        "where": where,
        "orderBy": [{"field": {"fieldPath": query.order_field}, "direction": direction}],
    }
    client = world.client(principal)
    return client.request("POST", f"{client.root}:runQuery", {"structuredQuery": structured})


HISTORY = contract_doc.history_queries()


class TestHistoryQueries:
    """The doc's history queries run under the rules for a participant and return their calls, newest first."""

    def _seed_history(self, world: World) -> None:
        # Alice called Bob, Bob called Alice, Mallory called Dave: created a minute apart.
        for minute, (call_id, caller, receiver) in enumerate(
            [("c-old", CALLER, RECEIVER), ("c-mid", RECEIVER, CALLER), ("c-new", STRANGER, "dave-uid")]
        ):
            moment = T0 + timedelta(minutes=minute)
            world.seed_call(Status.ENDED, call_id=call_id, callerId=caller, receiverId=receiver, createdAt=moment)

    @pytest.mark.parametrize("query", HISTORY, ids=lambda q: "-or-".join(q.equalities))
    def test_own_history(self, world: World, query: contract_doc.HistoryQuery) -> None:
        """Each query, as the caller, returns exactly the caller's matching calls in the documented order."""
        self._seed_history(world)
        result = run_query(world, "caller", query, CALLER)
        assert result.ok, result
        roles = {"c-old": "callerId", "c-mid": "receiverId"}
        expected = [cid for cid in ("c-mid", "c-old") if roles[cid] in query.equalities]
        assert [doc["callId"] for doc in result.documents] == expected

    @pytest.mark.parametrize("query", HISTORY, ids=lambda q: "-or-".join(q.equalities))
    def test_someone_elses_history_denied(self, world: World, query: contract_doc.HistoryQuery) -> None:
        """The same query for another user's uid is refused as a whole."""
        self._seed_history(world)
        assert run_query(world, "stranger", query, CALLER).denied

    def test_doc_has_the_three_queries(self) -> None:
        """The doc shows the caller's, the receiver's and the combined history, newest first."""
        assert sorted(q.equalities for q in HISTORY) == [("callerId",), ("callerId", "receiverId"), ("receiverId",)]
        assert {(q.collection, q.order_field, q.descending) for q in HISTORY} == {("calls", "createdAt", True)}
