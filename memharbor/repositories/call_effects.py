"""The calls aggregate as the watcher works on it: `calls/{callId}` with its server-only `callServer/{callId}`.

The watcher reads a call together with its server document (and, in the same round trip, the receiver's
user document and the care group when it knows their ids), decides, and writes both documents in one
batch guarded by the update times it read: optimistic concurrency, so an app's write in between makes the
commit fail (`Conflict`) and the watcher reads again, and no app write ever waits on a lock.

Field names in the maps written are field paths: `a.b` updates the key `b` of the map `a`, and a name
holding dots or other special characters is quoted with backticks. `SERVER_TIME` and `DELETE` are the
values that stamp the commit time and remove a field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor.errors import Conflict, NotFound
from memharbor.repositories.guarded import DEFAULT_TIMEOUT_S, Guard, Refusals
from memharbor.repositories.paths import CALL_SERVER, CALLS, GROUPS, USERS
from memharbor.repositories.timeline import add_events
from memharbor.timeline import Event

SERVER_TIME: Any = firestore.SERVER_TIMESTAMP
DELETE: Any = firestore.DELETE_FIELD

# A guarded write fails these ways when a document changed (or appeared) after it was read.
_RACES: Refusals = {
    gexc.FailedPrecondition: lambda: Conflict("the call changed since it was read"),
    gexc.AlreadyExists: lambda: Conflict("the server document was created since it was read"),
    gexc.Aborted: lambda: Conflict("the write was aborted by a concurrent one"),
    gexc.Conflict: lambda: Conflict("the write conflicted with a concurrent one"),
    gexc.NotFound: lambda: NotFound("the call no longer exists"),
}


@dataclass(frozen=True)
class CallRead:
    """A call and its server document as of one read, with the user and group documents read alongside.

    `users` and `groups` hold what was read by id (None for a missing document); an id not among them
    was not read. `versions` is what a guarded write checks: opaque outside the repository.
    """

    call_id: str
    call: dict[str, Any] | None
    server: dict[str, Any] | None
    users: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    groups: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    versions: tuple[Any, Any] = (None, None)


@dataclass(frozen=True)
class Written:
    """What one write left: each document's version after it (None when it was not written) and the
    value `SERVER_TIME` took in it (None when no field took it)."""

    call: Any = None
    server: Any = None
    server_time: datetime | None = None


class CallEffectsStore(Protocol):
    """Reads and writes of a call and its server document, for the watcher."""

    async def read(self, call_id: str, user: str | None = None, group: str | None = None) -> CallRead:
        """The call and its server document, and the given user and group documents, in one round trip."""
        ...

    async def user(self, uid: str) -> dict[str, Any] | None:
        """`users/{uid}`, or None when it does not exist."""
        ...

    async def group(self, group_id: str) -> dict[str, Any] | None:
        """`groups/{groupId}`, or None when it does not exist."""
        ...

    async def status(self, call_id: str) -> Any:
        """The call's `status` as stored now (None when the call does not exist)."""
        ...

    async def commit(
        self, read: CallRead, call: Mapping[str, Any], server: Mapping[str, Any], events: Sequence[Event] = ()
    ) -> Written:
        """Update the call and write the server document (created if it was missing) unless either
        changed since `read`: then Conflict (NotFound if the call was deleted). `events` join the timeline."""
        ...

    async def update(
        self,
        call_id: str,
        call: Mapping[str, Any],
        server: Mapping[str, Any],
        events: Sequence[Event] = (),
        server_version: Any = None,
        call_version: Any = None,
    ) -> Written:
        """Update the call and its existing server document in one write, whatever changed since (with
        `server_version` or `call_version`: only if that document is still at that version, else
        Conflict); `events` join the call's timeline in the same write."""
        ...


class FirestoreCallEffects:
    """CallEffectsStore over an asyncio Firestore client; guarded (time bound, Conflict, Unavailable)."""

    def __init__(self, client: Callable[[], firestore.AsyncClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._guard = Guard(client, timeout_s, _RACES)

    async def read(self, call_id: str, user: str | None = None, group: str | None = None) -> CallRead:
        async def get(client: firestore.AsyncClient) -> CallRead:
            refs = [client.collection(CALLS).document(call_id), client.collection(CALL_SERVER).document(call_id)]
            if user is not None:
                refs.append(client.collection(USERS).document(user))
            if group is not None:
                refs.append(client.collection(GROUPS).document(group))
            snaps = {snap.reference.path: snap async for snap in client.get_all(refs)}
            call_snap, server_snap = (snaps[ref.path] for ref in refs[:2])
            related = [(ref, snaps[ref.path]) for ref in refs[2:]]
            return CallRead(
                call_id,
                _data(call_snap),
                _data(server_snap),
                users={r.id: _data(s) for r, s in related if r.parent.id == USERS},
                groups={r.id: _data(s) for r, s in related if r.parent.id == GROUPS},
                versions=(call_snap.update_time, server_snap.update_time if server_snap.exists else None),
            )

        return await self._guard.run(get)

    async def user(self, uid: str) -> dict[str, Any] | None:
        return await self._document(USERS, uid)

    async def group(self, group_id: str) -> dict[str, Any] | None:
        return await self._document(GROUPS, group_id)

    async def status(self, call_id: str) -> Any:
        call = await self._document(CALLS, call_id)
        return None if call is None else call.get("status")

    async def _document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        async def get(client: firestore.AsyncClient) -> dict[str, Any] | None:
            return _data(await client.collection(collection).document(doc_id).get())

        return await self._guard.run(get)

    async def commit(
        self, read: CallRead, call: Mapping[str, Any], server: Mapping[str, Any], events: Sequence[Event] = ()
    ) -> Written:
        call_version, server_version = read.versions

        async def write(client: firestore.AsyncClient) -> Written:
            batch = client.batch()
            if call:
                guard = client.write_option(last_update_time=call_version)
                batch.update(client.collection(CALLS).document(read.call_id), dict(call), option=guard)
            server_ref = client.collection(CALL_SERVER).document(read.call_id)
            if server and read.server is not None:
                guard = client.write_option(last_update_time=server_version)
                batch.update(server_ref, dict(server), option=guard)
            elif server:
                batch.create(server_ref, nest(server))
            if events:
                add_events(batch, client, read.call_id, events)
            results = await batch.commit() if call or server or events else []
            return _written(results, bool(call), bool(server))

        return await self._guard.run(write)

    async def update(
        self,
        call_id: str,
        call: Mapping[str, Any],
        server: Mapping[str, Any],
        events: Sequence[Event] = (),
        server_version: Any = None,
        call_version: Any = None,
    ) -> Written:
        async def write(client: firestore.AsyncClient) -> Written:
            batch = client.batch()
            if call:
                guard = client.write_option(last_update_time=call_version) if call_version is not None else None
                batch.update(client.collection(CALLS).document(call_id), dict(call), option=guard)
            if server:
                guard = client.write_option(last_update_time=server_version) if server_version is not None else None
                batch.update(client.collection(CALL_SERVER).document(call_id), dict(server), option=guard)
            if events:
                add_events(batch, client, call_id, events)
            results = await batch.commit() if call or server or events else []
            return _written(results, bool(call), bool(server))

        return await self._guard.run(write)


def _written(results: Sequence[Any], call: bool, server: bool) -> Written:
    """Read a batch's write results: they follow its writes, the call's first (when written), then the
    server document's. Every `SERVER_TIME` of one commit takes the same value (the request's time, in
    milliseconds: not the commit time), so the first transform result is the value of all of them."""
    stamps = (value.timestamp_value for result in results for value in result.transform_results)
    server_time = next((stamp for stamp in stamps if stamp is not None), None)
    return Written(
        results[0].update_time if call else None,
        results[1 if call else 0].update_time if server else None,
        server_time,
    )


def after(read: CallRead, call: Mapping[str, Any], server: Mapping[str, Any], written: Written) -> CallRead | None:
    """The call and its server document as a write of `call` and `server` over `read` left them, at the
    versions the write returned (the server document created when `read` had none); None when that
    cannot be told: a document missing, a field path it cannot follow, a server time not returned.

    Lets a writer decide its next step from what it wrote, guarded by these versions, without reading.
    """
    if read.call is None and call:
        return None
    try:
        call_doc = applied(read.call, call, written.server_time) if call else read.call
        if not server:
            server_doc = read.server
        elif read.server is None:
            server_doc = applied({}, nest(server), written.server_time, paths=False)
        else:
            server_doc = applied(read.server, server, written.server_time)
    except _Untold:
        return None
    versions = (written.call if call else read.versions[0], written.server if server else read.versions[1])
    return replace(read, call=call_doc, server=server_doc, users={}, groups={}, versions=versions)


class _Untold(Exception):
    """What a write left cannot be told from the write alone."""


def applied(
    doc: Mapping[str, Any] | None, fields: Mapping[str, Any], server_time: datetime | None, paths: bool = True
) -> dict[str, Any]:
    """A copy of `doc` with `fields` written as Firestore writes them: keys are field paths (plain names
    when not `paths`), `SERVER_TIME` becomes `server_time` and `DELETE` removes the field."""
    result = _copied(dict(doc or {}))
    for key, value in fields.items():
        *parents, leaf = field_parts(key) if paths else [key]
        target = result
        for part in parents:
            inner = target.get(part)
            if not isinstance(inner, dict):
                # Writing `a.b` makes `a` a map, whatever it held.
                inner = target[part] = {}
            target = inner
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = _resolved(value, server_time)
    return result


def field_parts(path: str) -> list[str]:
    """The names of a field path: `a.`b.c`` is ["a", "b.c"]. Escapes within backticks are not followed."""
    if "\\" in path:
        raise _Untold(path)
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in path:
        if char == "`":
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _resolved(value: Any, server_time: datetime | None) -> Any:
    if value is SERVER_TIME:
        if server_time is None:
            raise _Untold("SERVER_TIME")
        return server_time
    if value is DELETE:
        raise _Untold("DELETE inside a value")
    if isinstance(value, Mapping):
        return {key: _resolved(inner, server_time) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_resolved(inner, server_time) for inner in value]
    return value


def _copied(value: Any) -> Any:
    # Maps and arrays are copied so the result shares nothing mutable with the read it came from.
    if isinstance(value, dict):
        return {key: _copied(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_copied(inner) for inner in value]
    return value


def nest(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Turn `a.`b`` field paths into nested maps, for a create (which takes no field paths)."""
    nested: dict[str, Any] = {}
    for key, value in fields.items():
        if "." in key:
            parent, child = key.split(".", 1)
            nested.setdefault(parent, {})[child.strip("`")] = value
        else:
            nested[key] = value
    return nested


def _data(snapshot: Any) -> dict[str, Any] | None:
    return (snapshot.to_dict() or {}) if snapshot.exists else None
