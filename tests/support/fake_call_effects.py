"""An in-memory CallEffectsStore (memharbor/repositories/call_effects.py) for the reactor's unit tests.

Documents are kept by path (`calls/x`, `callServer/x`, `users/u`, `groups/g`) with an update time that
moves on every write, so guarded commits fail exactly as Firestore's preconditions would.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from memharbor.errors import Conflict, NotFound
from memharbor.repositories.call_effects import CallRead, Written, applied, nest
from memharbor.repositories.paths import CALL_SERVER, CALLS, GROUPS, USERS
from memharbor.timeline import Event, event_fields


class FakeCallEffects:
    """Calls, server, user and group documents in memory; counts reads and records each round trip.

    Documents in `churn` change (their update time moves on) right after every read, as a call an app
    keeps writing to would: every write guarded by the read's update time then fails its precondition.
    """

    def __init__(self, now: datetime, churn: frozenset[str] = frozenset()) -> None:
        self.now = now
        self.churn = churn
        self.docs: dict[str, dict[str, Any]] = {}
        self.times: dict[str, int] = {}
        self.reads: dict[str, int] = {}
        self.round_trips: list[list[str]] = []  # the paths read by each read, in order
        self.events: dict[str, list[Event]] = {}  # each call's timeline, in the order written
        self._clock = itertools.count(1)

    async def read(self, call_id: str, user: str | None = None, group: str | None = None) -> CallRead:
        paths = [f"{CALLS}/{call_id}", f"{CALL_SERVER}/{call_id}"]
        paths += [f"{USERS}/{user}"] if user is not None else []
        paths += [f"{GROUPS}/{group}"] if group is not None else []
        self.round_trips.append(paths)
        versions = (self.times.get(paths[0], 0), self.times.get(paths[1]))
        found = [self._get(path) for path in paths]
        return CallRead(
            call_id,
            found[0],
            found[1],
            users={user: found[2]} if user is not None else {},
            groups={group: found[-1]} if group is not None else {},
            versions=versions,
        )

    async def user(self, uid: str) -> dict[str, Any] | None:
        return self._get_alone(f"{USERS}/{uid}")

    async def group(self, group_id: str) -> dict[str, Any] | None:
        return self._get_alone(f"{GROUPS}/{group_id}")

    async def status(self, call_id: str) -> Any:
        call = self._get_alone(f"{CALLS}/{call_id}")
        return None if call is None else call.get("status")

    async def commit(
        self, read: CallRead, call: Mapping[str, Any], server: Mapping[str, Any], events: Sequence[Event] = ()
    ) -> Written:
        call_path, server_path = f"{CALLS}/{read.call_id}", f"{CALL_SERVER}/{read.call_id}"
        if call and call_path not in self.docs:
            raise NotFound(call_path)
        if call and self.times.get(call_path) != read.versions[0]:
            raise Conflict(call_path)
        if server and read.server is None and server_path in self.docs:
            raise Conflict(server_path)
        if server and read.server is not None and self.times.get(server_path) != read.versions[1]:
            raise Conflict(server_path)
        if call:
            self.apply(call_path, call)
        if server and read.server is None:
            self.apply(server_path, nest(server), replace=True)
        elif server:
            self.apply(server_path, server)
        self._add(read.call_id, events)
        return self._written(read.call_id, bool(call), bool(server))

    async def update(
        self,
        call_id: str,
        call: Mapping[str, Any],
        server: Mapping[str, Any],
        events: Sequence[Event] = (),
        server_version: Any = None,
        call_version: Any = None,
    ) -> Written:
        for path, fields in ((f"{CALLS}/{call_id}", call), (f"{CALL_SERVER}/{call_id}", server)):
            if fields and path not in self.docs:
                raise NotFound(path)
        if server and server_version is not None and self.times.get(f"{CALL_SERVER}/{call_id}") != server_version:
            raise Conflict(f"{CALL_SERVER}/{call_id}")
        if call and call_version is not None and self.times.get(f"{CALLS}/{call_id}") != call_version:
            raise Conflict(f"{CALLS}/{call_id}")
        if call:
            self.apply(f"{CALLS}/{call_id}", call)
        if server:
            self.apply(f"{CALL_SERVER}/{call_id}", server)
        self._add(call_id, events)
        return self._written(call_id, bool(call), bool(server))

    def _written(self, call_id: str, call: bool, server: bool) -> Written:
        # Versions are the store's write counter; SERVER_TIME resolves to `now` (see `_resolve`).
        call_version = self.times[f"{CALLS}/{call_id}"] if call else None
        server_version = self.times[f"{CALL_SERVER}/{call_id}"] if server else None
        return Written(call_version, server_version, self.now)

    def kinds(self, call_id: str) -> list[str]:
        """The kinds of the call's timeline events, in the order written."""
        return [event.kind.value for event in self.events.get(call_id, [])]

    def _add(self, call_id: str, events: Sequence[Event]) -> None:
        for event in events:
            event_fields(event)  # what the repository would refuse, refused here too
            self.events.setdefault(call_id, []).append(event)

    def put(self, path: str, data: dict[str, Any]) -> None:
        """Store a whole document at `path`, as an app or an admin would write it."""
        self.apply(path, data, replace=True)

    def apply(self, path: str, fields: Mapping[str, Any], replace: bool = False) -> None:
        """Write `fields` (field paths unless `replace`) as Firestore does (`call_effects.applied`), with
        SERVER_TIME as `now`."""
        self.docs[path] = applied(None if replace else self.docs.get(path), fields, self.now, paths=not replace)
        self.times[path] = next(self._clock)

    def _get_alone(self, path: str) -> dict[str, Any] | None:
        self.round_trips.append([path])
        return self._get(path)

    def _get(self, path: str) -> dict[str, Any] | None:
        data = self.docs.get(path)
        self.reads[path] = self.reads.get(path, 0) + 1
        if path in self.churn:
            self.times[path] = next(self._clock)
        return None if data is None else dict(data)
