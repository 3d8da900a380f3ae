"""The watcher's recording hooks: request a call's recording when it is accepted, stop it when it ends.

Each hook runs once per transition inside the reactor's claimed side effect; a failure propagates, so
the claim's lease lapses and the sweep runs the hook again. Both are idempotent: the request has a
deterministic id (`call-{callId}`) and is created only when absent, and a stop only sets a flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memharbor.logs import get_logger
from memharbor.recording_requests import FINISHED, IN_PROGRESS, SERVER_REQUESTER, STOP_FIELD, call_session_id, status_of
from memharbor.repositories.recordings import CallRecordings, RequestOutcome, new_request

log = get_logger()


class FirestoreRecordingHooks:
    """RecordingHooks that write recording requests and stops to `recordings/{sid}` for the recorder."""

    def __init__(self, recordings: CallRecordings, record_all_calls: bool) -> None:
        self._recordings = recordings
        self._record_all = record_all_calls

    def wants_recording(self, call: Mapping[str, Any]) -> bool:
        """True when the call asked to be recorded or every call is (MEMHARBOR_RECORD_CALLS)."""
        return self._record_all or call.get("record") is True

    async def on_accepted(self, call_id: str, call: Mapping[str, Any]) -> str | None:
        """Request the call's recording, unless it is not wanted or one is already under way; the session's
        id when this request created it."""
        if not self.wants_recording(call):
            log.debug("recording.not_wanted", call_id=call_id)
            return None
        channel = call.get("channelName")
        if not isinstance(channel, str) or not channel:
            log.warning("recording.not_requested", call_id=call_id, reason="call_has_no_channel")
            return None
        sid = call_session_id(call_id)
        others = await self._recordings.sessions_of_call(call_id)
        if any(other != sid and status_of(doc) in IN_PROGRESS for other, doc in others):
            # A participant asked already (through the app or the REST shim): one recording per call.
            log.info("recording.already_requested", call_id=call_id)
            return None
        outcome = await self._recordings.request_while_accepted(
            call_id, sid, new_request(channel, SERVER_REQUESTER, call_id)
        )
        log.info(
            "recording.requested" if outcome is RequestOutcome.CREATED else "recording.not_requested",
            call_id=call_id,
            sid=sid,
            outcome=outcome.value,
        )
        return sid if outcome is RequestOutcome.CREATED else None

    async def on_ended(self, call_id: str, call: Mapping[str, Any]) -> None:
        """Ask the recorder to stop every unfinished session of the call (the server's and participants')."""
        stopped = []
        for sid, doc in await self._recordings.sessions_of_call(call_id):
            if status_of(doc) in FINISHED or doc.get(STOP_FIELD) is True:
                continue
            await self._recordings.request_stop(sid)
            stopped.append(sid)
        if stopped:
            log.info("recording.stop_requested", call_id=call_id, sids=stopped)
