"""Keep Google's client libraries from cutting the `google` logger off the root logger in the test process.

The first Firestore (GAPIC) client and google-auth's first HTTP request each set `propagate = False` on
the `google` logger unless it is already configured (they check handlers, level and propagate). The
memharbor processes configure it first (memharbor.logs.configure sets its level); a test module that
creates those clients before any such call would silence `google.*` records for the rest of the pytest
session, and tests that read them (tests/unit/test_logs.py) would then fail depending on test order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def google_logger_configured() -> Iterator[None]:
    """Give the `google` logger a level while inside, then put back its level and propagation."""
    google = logging.getLogger("google")
    level, propagate = google.level, google.propagate
    if level == logging.NOTSET:
        google.setLevel(logging.WARNING)
    try:
        yield
    finally:
        google.setLevel(level)
        google.propagate = propagate
