"""Recording sessions on the Firestore emulator as the watcher or the REST shim writes them, for recorder tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.cloud import firestore

from tests.support.waiting import wait_for

# Two simulated participants, each a steady tone, so a test can find both in the mixed file.
TWO_TONES = [{"uid": "101", "tone_hz": 440}, {"uid": "202", "tone_hz": 1000}]


def request(db: firestore.Client, with_call: bool = True) -> tuple[str, str, str | None]:
    """A recording request as the watcher or the REST shim writes it: (sid, channel, callId)."""
    sid = uuid.uuid4().hex
    call_id = None
    if with_call:
        call_id = uuid.uuid4().hex
        channel = f"group1_alice_bob_{int(time.time() * 1000)}"
        db.collection("calls").document(call_id).set(
            {
                "callId": call_id,
                "groupId": "group1",
                "callerId": "alice",
                "receiverId": "bob",
                "status": "accepted",
                "channelName": channel,
                "createdAt": firestore.SERVER_TIMESTAMP,
                "updatedAt": firestore.SERVER_TIMESTAMP,
            }
        )
    else:
        channel = f"group{uuid.uuid4().hex[:6]}_carol_dave"
    doc: dict[str, Any] = {
        "channel": channel,
        "status": "requested",
        "requestedBy": "alice",
        "createdAt": firestore.SERVER_TIMESTAMP,
    }
    if call_id:
        doc["callId"] = call_id
    db.collection("recordings").document(sid).set(doc)
    return sid, channel, call_id


def session(db: firestore.Client, sid: str) -> dict[str, Any]:
    """The recording session document as stored (empty when it does not exist)."""
    return db.collection("recordings").document(sid).get().to_dict() or {}


def wait_status(db: firestore.Client, sid: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the session has `status`; returns its document."""
    return wait_for(lambda: (d := session(db, sid)).get("status") == status and d, timeout, what=f"{sid} {status}")


def stop(db: firestore.Client, sid: str) -> None:
    """Ask the recorder to stop the session, as the watcher does when the call ends."""
    db.collection("recordings").document(sid).update({"stopRequested": True})
