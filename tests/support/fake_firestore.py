"""A tiny in-memory stand-in for the part of the asyncio Firestore client the guarded repositories use.

Documents are plain dicts keyed by "collection/id"; queries ignore their filters (each test seeds only
the documents it means to read). Every call can be made to fail with a given exception or to hang, to
exercise the Guard's translation and time bound without an emulator. Batches honour an update-time
precondition (each write bumps a document's version), and `interleave` runs another writer's change just
before a commit, to lose a race on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore


@dataclass
class Snapshot:
    """What a document read returns."""

    id: str
    data: dict[str, Any] | None
    update_time: int | None = None

    @property
    def exists(self) -> bool:
        """True when the document was there."""
        return self.data is not None

    def to_dict(self) -> dict[str, Any] | None:
        """A copy of the document's fields, or None."""
        return dict(self.data) if self.data is not None else None


@dataclass
class FakeFirestore:
    """Documents by path; `fail_with` is raised by every operation, `hang` makes every operation wait forever."""

    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_with: Exception | None = None
    hang: bool = False
    interleave: list[Callable[[FakeFirestore], None]] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    commits: int = 0

    def write(self, path: str, fields: dict[str, Any]) -> None:
        """Another writer's (or a batch's) update of an existing document: DELETE_FIELD removes a field."""
        doc = self.docs[path]
        for key, value in fields.items():
            if value is firestore.DELETE_FIELD:
                doc.pop(key, None)
            else:
                doc[key] = value
        self.versions[path] = self.versions.get(path, 0) + 1

    async def touch(self) -> None:
        """One round trip: fails or hangs as configured."""
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_with is not None:
            raise self.fail_with

    def collection(self, name: str, /) -> _Collection:
        return _Collection(self, name)

    def get_all(self, references: Any, /) -> Any:
        raise AssertionError("get_all is not used by the code under test")

    def transaction(self) -> Any:
        raise AssertionError("transactions are not used by the code under test")

    def batch(self) -> _Batch:
        return _Batch(self)

    def write_option(self, last_update_time: int | None) -> int | None:
        return last_update_time


@dataclass
class _Batch:
    db: FakeFirestore
    writes: list[tuple[str, dict[str, Any], int | None]] = field(default_factory=list)

    def update(self, ref: _Document, fields: dict[str, Any], option: int | None = None) -> None:
        self.writes.append((ref.path, dict(fields), option))

    async def commit(self) -> None:
        await self.db.touch()
        if self.db.interleave:
            self.db.interleave.pop(0)(self.db)
        for path, _, version in self.writes:
            if path not in self.db.docs:
                raise gexc.NotFound(path)
            if version is not None and self.db.versions.get(path, 0) != version:
                raise gexc.FailedPrecondition(f"{path} changed")
        self.db.commits += 1
        for path, fields, _ in self.writes:
            self.db.write(path, fields)


@dataclass
class _Collection:
    db: FakeFirestore
    name: str
    count: int | None = None

    def document(self, doc_id: str) -> _Document:
        return _Document(self.db, f"{self.name}/{doc_id}")

    def where(self, filter: Any) -> _Collection:
        return self

    def limit(self, count: int) -> _Collection:
        return _Collection(self.db, self.name, count)

    async def stream(self) -> AsyncIterator[Snapshot]:
        await self.db.touch()
        prefix = f"{self.name}/"
        found = [(path, doc) for path, doc in self.db.docs.items() if path.startswith(prefix)]
        for path, doc in found[: self.count]:
            yield Snapshot(path.removeprefix(prefix), dict(doc))


@dataclass
class _Document:
    db: FakeFirestore
    path: str

    async def get(self) -> Snapshot:
        await self.db.touch()
        doc = self.db.docs.get(self.path)
        return Snapshot(
            self.path.rsplit("/", 1)[-1], doc, self.db.versions.get(self.path, 0) if doc is not None else None
        )

    async def set(self, doc: dict[str, Any]) -> None:
        await self.db.touch()
        self.db.docs[self.path] = dict(doc)

    async def delete(self) -> None:
        await self.db.touch()
        self.db.docs.pop(self.path, None)
