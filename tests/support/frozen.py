"""A repository whose first write is frozen after its reads, as a worker frozen (SIGSTOP) or killed there
would be: to show that no document stays locked by it (tests/integration: recorder, recording hooks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from google.cloud import firestore

R = TypeVar("R")


class PausingClient:
    """The asyncio client, freezing its event loop at the first batch (an operation's reads done, its write not
    sent) until `release`."""

    def __init__(self, client: firestore.AsyncClient, inside: threading.Event, release: threading.Event) -> None:
        self.client, self.inside, self.release = client, inside, release

    def collection(self, name: str, /) -> Any:
        return self.client.collection(name)

    def get_all(self, references: Any, /) -> Any:
        return self.client.get_all(references)

    def transaction(self) -> Any:
        return self.client.transaction()

    def write_option(self, **kwargs: Any) -> Any:
        return self.client.write_option(**kwargs)

    def batch(self) -> Any:
        if not self.inside.is_set():
            self.inside.set()
            # Blocks the event loop on purpose: nothing of this operation moves until the test releases it.
            self.release.wait(timeout=10)
        return self.client.batch()


class Frozen(Generic[R]):
    """A repository (made by `make` over a pausing client) whose first write freezes, run on its own thread."""

    def __init__(self, project_id: str, make: Callable[[Callable[[], Any]], R]) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        paused = PausingClient(firestore.AsyncClient(project=project_id), self.inside, self.release)
        self.repository = make(lambda: paused)
        self.result: Any = None
        self.thread: threading.Thread | None = None

    def start(self, operation: Callable[[R], Coroutine[Any, Any, Any]]) -> None:
        """Run `operation` on the repository until it freezes (or ends)."""

        def run() -> None:
            self.result = asyncio.run(operation(self.repository))

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.inside.wait(timeout=10), "the operation never reached its write"

    def finish(self) -> Any:
        """Let the operation go on; its result."""
        self.release.set()
        assert self.thread is not None
        self.thread.join(timeout=30)
        return self.result
