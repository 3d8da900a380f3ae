"""The one wrapper around Firestore operations: a time bound, and client failures as domain errors; and the
one read-decide-write loop that changes a document without a transaction (`optimistic`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from google.api_core import exceptions as gexc

from memharbor.errors import DomainError, Unavailable

T = TypeVar("T")
# The client a guard hands its operations: FirestoreClient, or a wider protocol a repository needs.
C = TypeVar("C")

DEFAULT_TIMEOUT_S = 10.0
# How many times `optimistic` reads again and decides anew after losing a race to another writer.
WRITE_ATTEMPTS = 5
_RETRY_BASE_S = 0.05


class FirestoreClient(Protocol):
    """The part of `google.cloud.firestore.AsyncClient` the repositories use (tests pass stand-ins)."""

    def collection(self, name: str, /) -> Any: ...

    def get_all(self, references: Any, /) -> Any: ...

    def transaction(self) -> Any: ...


# A Google API error class, and the refusal a repository reports it as (e.g. AlreadyExists -> Conflict).
Refusals = Mapping[type[gexc.GoogleAPIError], Callable[[], DomainError]]


class Guard(Generic[C]):
    """Runs Firestore operations within `timeout_s`; an outage becomes Unavailable, a refusal a DomainError.

    The client is asked for on each run, not at construction: it is made on first use by its owner,
    because its gRPC channel binds to the event loop running then.
    """

    def __init__(
        self,
        client: Callable[[], C],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        refusals: Refusals | None = None,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._refusals = dict(refusals or {})

    async def run(self, operation: Callable[[C], Awaitable[T]]) -> T:
        """The operation's result; DomainError as raised or translated, Unavailable for any outage."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await operation(self._client())
        except DomainError:
            raise
        except gexc.GoogleAPIError as exc:
            for kind, refusal in self._refusals.items():
                if isinstance(exc, kind):
                    raise refusal() from None
            raise Unavailable(type(exc).__name__) from exc
        except (OSError, TimeoutError) as exc:
            raise Unavailable(type(exc).__name__) from exc
        except ValueError as exc:
            # A transaction that could not commit in its attempts (contention) ends as a ValueError.
            if isinstance(exc.__cause__, gexc.GoogleAPIError):
                raise Unavailable("transaction not committed") from exc
            raise


class WritingClient(FirestoreClient, Protocol):
    """The client as `optimistic` uses it: reads, and write batches with preconditions."""

    def batch(self) -> Any: ...

    def write_option(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Decided(Generic[T]):
    """A decision about a document as read: the result to return, the document's update (None: no write),
    updates of other documents (reference, fields) committed with it, and documents it creates (reference,
    document: the commit fails with AlreadyExists, to the caller, if one exists by then)."""

    result: T
    update: Mapping[str, Any] | None = None
    also: Sequence[tuple[Any, Mapping[str, Any]]] = ()
    creates: Sequence[tuple[Any, Mapping[str, Any]]] = ()


# Decides what to write from the document as read (None: there is none); may read more on the client.
Decide = Callable[[WritingClient, dict[str, Any] | None], Awaitable[Decided[T]]]


async def optimistic(db: WritingClient, ref: Any, decide: Decide[T], what: str) -> T:
    """Read `ref`, decide, and commit the decision only if the document is still as read; else repeat.

    No transaction: a transaction's reads lock their documents until it commits, and a process killed or
    frozen inside one leaves them locked (every other writer waits, then fails) until the database
    expires the lock. A lost race (the document written, or a document of `also` deleted, since the read)
    reads again after a jittered back-off, at most WRITE_ATTEMPTS times; then Unavailable.
    """
    for attempt in range(WRITE_ATTEMPTS):
        snap = await ref.get()
        decided = await decide(db, snap.to_dict() if snap.exists else None)
        if decided.update is None:
            return decided.result
        batch = db.batch()
        batch.update(ref, dict(decided.update), option=db.write_option(last_update_time=snap.update_time))
        for other, fields in decided.also:
            batch.update(other, dict(fields))
        for created, document in decided.creates:
            batch.create(created, dict(document))
        try:
            await batch.commit()
        except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
            await asyncio.sleep(random.uniform(0, _RETRY_BASE_S * 2**attempt))
            continue
        return decided.result
    raise Unavailable(f"{what} kept changing ({WRITE_ATTEMPTS} attempts)")
