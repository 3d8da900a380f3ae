"""The one wrapper around Firestore operations: a time bound, and client failures as domain errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from google.api_core import exceptions as gexc

from memharbor.errors import DomainError, Unavailable

T = TypeVar("T")
# The client a guard hands its operations: FirestoreClient, or a wider protocol a repository needs.
C = TypeVar("C")

DEFAULT_TIMEOUT_S = 10.0


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
