"""The recorder's listener over unfinished recording sessions: what an event carries.

The query is the recordings repository's (memharbor/repositories/recording_sessions.py); supervision
(resubscribe with back-off, hand-off to the loop) is memharbor/repositories/listening.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memharbor.recording_requests import STOP_FIELD
from memharbor.repositories.listening import SupervisedListener
from memharbor.repositories.recording_sessions import SyncClient, unfinished_sessions


@dataclass(frozen=True)
class SessionEvent:
    """One change of one recording session, as the listener saw it."""

    sid: str
    change: str  # ADDED | MODIFIED | REMOVED (REMOVED: it left the unfinished set)
    status: str | None
    stop_requested: bool
    worker_id: str | None
    lease_until: datetime | None


def _event(change: Any) -> SessionEvent:
    doc = change.document
    data = (doc.to_dict() or {}) if doc.exists else {}
    lease = data.get("leaseUntil")
    worker = data.get("workerId")
    return SessionEvent(
        sid=doc.id,
        change=change.type.name,
        status=data.get("status") if isinstance(data.get("status"), str) else None,
        stop_requested=data.get(STOP_FIELD) is True,
        worker_id=worker if isinstance(worker, str) else None,
        lease_until=lease if isinstance(lease, datetime) else None,
    )


class SessionListener(SupervisedListener[SessionEvent]):
    """The supervised watch on `recordings where status in [requested, recording, stopping]`."""

    def __init__(
        self,
        make_client: Callable[[], SyncClient],
        deliver: Callable[[list[SessionEvent]], None],
        max_backoff_s: float = 30.0,
    ) -> None:
        super().__init__("recordings", make_client, unfinished_sessions, _event, deliver, max_backoff_s)
