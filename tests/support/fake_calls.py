"""An in-memory calls repository with FirestoreCallRepository's semantics, the real state machine included."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from memharbor import calls
from memharbor.calls import Actor, Status
from memharbor.errors import Conflict, InvalidInput, NotFound, Unavailable
from tests.support.http_fakes import FakeClock


class FakeCallRepository:
    """An in-memory calls collection (CallRepository); `failure` makes every operation raise it."""

    def __init__(self, clock: FakeClock, caller: str, receiver: str, channel: str) -> None:
        self.clock = clock
        self.caller, self.receiver, self.channel = caller, receiver, channel
        self.docs: dict[str, dict[str, Any]] = {}
        self.failure: Exception | None = None
        self.gets = 0
        # Plays the watcher: after this many reads of a call, the push result is merged into it.
        self.push_after_gets: int | None = None
        self.push_result = {"channelName": channel, "pushSent": True, "pushPlatform": "ios"}
        # Runs right after stale_pending listed its ids, to change calls between the scan and the writes.
        self.after_scan: Callable[[], None] | None = None
        # Makes Firestore fail right after the next transition commits.
        self.fail_after_transition = False

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    def add(self, call_id: str, status: str = "pending", age_s: float = 0.0, **fields: Any) -> dict[str, Any]:
        """Store a call between the default caller and receiver, created `age_s` ago."""
        created = self.now() - timedelta(seconds=age_s)
        doc = {
            "callId": call_id,
            "groupId": "g1",
            "callerId": self.caller,
            "receiverId": self.receiver,
            "status": status,
            "createdAt": created,
            "updatedAt": created,
            "channelName": self.channel,
            **fields,
        }
        self.docs[call_id] = doc
        return doc

    async def create(self, doc: dict[str, Any]) -> None:
        self._fail()
        errors = calls.field_errors(doc)
        if errors:
            raise InvalidInput(errors[0], field=errors[0].split(" ", 1)[0])
        if doc["callId"] in self.docs:
            raise Conflict("a call with this id already exists", field="callId")
        self.docs[doc["callId"]] = {k: self.now() if v is firestore.SERVER_TIMESTAMP else v for k, v in doc.items()}

    async def get(self, call_id: str) -> dict[str, Any] | None:
        self._fail()
        self.gets += 1
        doc = self.docs.get(call_id)
        if doc is None:
            return None
        if self.push_after_gets is not None and self.gets >= self.push_after_gets:
            doc.update(self.push_result)
        return dict(doc)

    async def transition(self, call_id: str, target: Status, actor: Actor) -> dict[str, Any]:
        self._fail()
        doc = self.docs.get(call_id)
        if doc is None:
            raise NotFound(f"unknown call {call_id}", field="call_id")
        before = dict(doc)
        move = calls.check_transition(doc, target.value, actor)
        doc.update({"status": target.value, move.stamp: self.now(), "updatedAt": self.now()})
        if self.fail_after_transition:
            self.failure = Unavailable("down after commit")
        return before

    async def stale_pending(self, created_before: datetime) -> list[str]:
        self._fail()
        ids = [k for k, d in self.docs.items() if d["status"] == "pending" and d["createdAt"] < created_before]
        if self.after_scan is not None:
            self.after_scan()
        return ids

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        self._fail()
        return [dict(d) for d in self.docs.values() if d.get("channelName") == channel]

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        self._fail()
        return {i: dict(self.docs[i]) for i in set(call_ids) if i in self.docs}
