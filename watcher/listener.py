"""The watcher's change feed as it reasons about it: the events a call change gives, the facts of one
snapshot of the window of most recently updated calls, and the mark that says when calls may have gone
past that window unseen. Reading Firestore is memharbor/repositories/call_feed.py's (with why a window).

What a window cannot show: more app changes between two snapshots than it holds. `FeedMark` notices
when that may have happened (the window is full and even its oldest call is new in this snapshot) and
the watcher then reads the calls updated since the mark, oldest first (the catch-up). A document
leaving the window is not a change: REMOVED events are ignored.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

from memharbor.repositories.call_feed import FeedSnapshot, Gap

# The emulator stamps `updatedAt` when it receives a write and commits it up to a few hundred ms later
# (production stamps the commit time), so a call may appear with a stamp older than a snapshot already
# seen. The mark trails each snapshot's read time by twice the longest such delay seen lately (each
# call's `createdAt` against its document's create time), and never by less than this:
MIN_COMMIT_LAG_S = 0.05
COMMIT_LAG_MEMORY_S = 60.0


class FeedMark:
    """The feed's high-water mark: every call whose `updatedAt` is older than `mark` reached the watcher.

    A full window shows only the calls stamped at or above its floor (its oldest `updatedAt`). So a
    snapshot vouches for everything up to its read time, less the commit lag, when its window is not
    full, or when its floor is at or below the mark (what lies below the floor is below the mark, and
    was seen). A full window whose floor is above the mark cannot tell what happened in [mark, floor):
    calls stamped there may have been pushed through the window between two snapshots, or committed
    late with a stamp older than calls committed before them (seen in parallel bursts: such a call
    never appears in any window). That opens a gap from the mark to the snapshot's read time, which a
    catch-up closes. The first snapshot only sets the mark: the start-up sweep covers what came before.
    """

    def __init__(self, min_lag_s: float = MIN_COMMIT_LAG_S, lag_memory_s: float = COMMIT_LAG_MEMORY_S) -> None:
        self._min_lag_s = min_lag_s
        self._lag_memory = timedelta(seconds=lag_memory_s)
        self._lags: deque[tuple[datetime, float]] = deque()  # (read time, longest lag seen in that snapshot)
        self.mark: datetime | None = None
        self._pending: tuple[datetime, datetime] | None = None  # (until, floor) of the newest gap

    @property
    def lag(self) -> timedelta:
        """How far the mark trails a read time: twice the longest recent commit lag, at least the minimum."""
        longest = max((lag for _, lag in self._lags), default=0.0)
        return timedelta(seconds=max(self._min_lag_s, 2 * longest))

    def _remember_lag(self, read_time: datetime, lag_s: float) -> None:
        while self._lags and self._lags[0][0] < read_time - self._lag_memory:
            self._lags.popleft()
        while self._lags and self._lags[-1][1] <= lag_s:
            self._lags.pop()  # a smaller lag seen earlier never matters again
        self._lags.append((read_time, lag_s))

    def observe(self, snapshot: FeedSnapshot) -> bool:
        """Take one snapshot's facts; True when a catch-up is needed."""
        if snapshot.read_time is None:
            return False
        self._remember_lag(snapshot.read_time, snapshot.commit_lag_s)
        settled = snapshot.read_time - self.lag
        if not snapshot.full or self.mark is None:
            self.mark = settled if self.mark is None else max(self.mark, settled)
            if not snapshot.full:
                self._pending = None
            return False
        if snapshot.floor is not None and snapshot.floor > self.mark:
            if self._pending is None or snapshot.read_time > self._pending[0]:
                self._pending = (snapshot.read_time, snapshot.floor)
            return True
        if self._pending is None:
            # A gap still open keeps the mark where it is: this snapshot vouches only for the newest changes.
            self.mark = max(self.mark, settled)
        return False

    def gap(self) -> Gap | None:
        """The gap to read now, if any."""
        if self._pending is None or self.mark is None:
            return None
        return Gap(self.mark, *self._pending)

    def closed(self, gap: Gap) -> None:
        """Record that every call of `gap` has been read."""
        settled = gap.until - self.lag
        self.mark = settled if self.mark is None else max(self.mark, settled)
        if self._pending is not None and self._pending[0] <= gap.until:
            self._pending = None
