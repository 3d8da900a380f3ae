"""Old import path of the calls repository, kept for token_http/main.py (the composition root).

The port and its adapter live in `memharbor.repositories.calls`; an outage is `memharbor.errors.Unavailable`.
"""

from __future__ import annotations

from memharbor.errors import Unavailable
from memharbor.repositories.calls import CallRepository, FirestoreCallRepository

CallService = CallRepository
FirestoreCallService = FirestoreCallRepository
StoreUnavailable = Unavailable

__all__ = ["CallService", "FirestoreCallService", "StoreUnavailable"]
