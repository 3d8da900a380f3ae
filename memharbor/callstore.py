"""Old import path of the call document builders, kept for the benchmarks and the watcher's tests.

They live in `memharbor.repositories.calls` with the rest of the calls aggregate.
"""

from __future__ import annotations

from memharbor.repositories.calls import new_call_document, new_call_id

__all__ = ["new_call_document", "new_call_id"]
