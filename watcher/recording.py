"""The watcher's recording hooks: request a call's recording when it is accepted, stop it when it ends.

Each hook runs once per transition inside the reactor's claimed side effect; a failure propagates, so
the claim's lease lapses and the sweep runs the hook again. Both are idempotent: the request has a
deterministic id (`call-{callId}`) and is created only when absent, and a stop only sets a flag.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.async_transaction import AsyncTransaction
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.calls import Status
from memharbor.logs import get_logger
from memharbor.recording_requests import (
    FINISHED,
    IN_PROGRESS,
    SERVER_REQUESTER,
    STOP_FIELD,
    call_session_id,
    new_request,
    status_of,
)
from memharbor.repositories.paths import CALLS, RECORDINGS

log = get_logger()

# Sessions of one call (normally one; a participant may have asked for another); a stop reads at most this.
MAX_SESSIONS_PER_CALL = 50


class _Outcome(enum.Enum):
    CREATED = "created"
    EXISTS = "exists"  # requested before (a repeat of this side effect)
    NOT_ACCEPTED = "not_accepted"  # the call moved on before the request could be made
    GONE = "gone"


class FirestoreRecordingHooks:
    """RecordingHooks that write recording requests and stops to `recordings/{sid}` for the recorder."""

    def __init__(self, db: firestore.AsyncClient, record_all_calls: bool) -> None:
        self._db = db
        self._record_all = record_all_calls

    def wants_recording(self, call: Mapping[str, Any]) -> bool:
        """True when the call asked to be recorded or every call is (MEMHARBOR_RECORD_CALLS)."""
        return self._record_all or call.get("record") is True

    async def on_accepted(self, call_id: str, call: Mapping[str, Any]) -> None:
        """Request the call's recording, unless it is not wanted or one is already under way."""
        if not self.wants_recording(call):
            log.debug("recording.not_wanted", call_id=call_id)
            return
        channel = call.get("channelName")
        if not isinstance(channel, str) or not channel:
            log.warning("recording.not_requested", call_id=call_id, reason="call_has_no_channel")
            return
        others = await self._sessions_of(call_id)
        if any(sid != call_session_id(call_id) and status_of(doc) in IN_PROGRESS for sid, doc in others):
            # A participant asked already (through the app or the REST shim): one recording per call.
            log.info("recording.already_requested", call_id=call_id)
            return
        outcome = await self._request(call_id, channel)
        log.info(
            "recording.requested" if outcome is _Outcome.CREATED else "recording.not_requested",
            call_id=call_id,
            sid=call_session_id(call_id),
            outcome=outcome.value,
        )

    async def _request(self, call_id: str, channel: str) -> _Outcome:
        """Create the request in a transaction that also sees the call still accepted.

        If the call ended before this commits, nothing is requested; if it ends after, the ended hook,
        which runs after that change, finds the request and stops it.
        """
        call_ref = self._db.collection(CALLS).document(call_id)
        rec_ref = self._db.collection(RECORDINGS).document(call_session_id(call_id))

        @firestore.async_transactional  # type: ignore[misc]
        async def run(tx: AsyncTransaction) -> _Outcome:
            call_snap = await call_ref.get(transaction=tx)
            rec_snap = await rec_ref.get(transaction=tx)
            if rec_snap.exists:
                return _Outcome.EXISTS
            if not call_snap.exists:
                return _Outcome.GONE
            if (call_snap.to_dict() or {}).get("status") != Status.ACCEPTED.value:
                return _Outcome.NOT_ACCEPTED
            tx.create(rec_ref, new_request(channel, SERVER_REQUESTER, call_id))
            return _Outcome.CREATED

        outcome: _Outcome = await run(self._db.transaction())
        return outcome

    async def on_ended(self, call_id: str, call: Mapping[str, Any]) -> None:
        """Ask the recorder to stop every unfinished session of the call (the server's and participants')."""
        stopped = []
        for sid, doc in await self._sessions_of(call_id):
            if status_of(doc) in FINISHED or doc.get(STOP_FIELD) is True:
                continue
            await self._db.collection(RECORDINGS).document(sid).update({STOP_FIELD: True})
            stopped.append(sid)
        if stopped:
            log.info("recording.stop_requested", call_id=call_id, sids=stopped)

    async def _sessions_of(self, call_id: str) -> list[tuple[str, dict[str, Any]]]:
        query = (
            self._db.collection(RECORDINGS)
            .where(filter=FieldFilter("callId", "==", call_id))
            .limit(MAX_SESSIONS_PER_CALL)
        )
        return [(snap.id, snap.to_dict() or {}) async for snap in query.stream()]
