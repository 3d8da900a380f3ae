"""A tiny in-memory stand-in for the part of the asyncio Firestore client the guarded repositories use.

Documents are plain dicts keyed by "collection/id"; queries ignore their filters (each test seeds only
the documents it means to read). Every call can be made to fail with a given exception or to hang, to
exercise the Guard's translation and time bound without an emulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Snapshot:
    """What a document read returns."""

    id: str
    data: dict[str, Any] | None

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
        return Snapshot(self.path.rsplit("/", 1)[-1], self.db.docs.get(self.path))

    async def set(self, doc: dict[str, Any]) -> None:
        await self.db.touch()
        self.db.docs[self.path] = dict(doc)

    async def delete(self) -> None:
        await self.db.touch()
        self.db.docs.pop(self.path, None)
