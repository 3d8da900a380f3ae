"""Security rules: everything outside calls, users and recordings is closed to clients."""

from __future__ import annotations

import pytest

from memharbor.calls import Status
from tests.rules.rules_support import CALL_PATH, World

SERVER_DOCS = ["workers/worker-1", "workers/_ping", "claims/c1", "anything/else"]


class TestOtherCollections:
    """Server collections and unknown paths deny every client request."""

    @pytest.mark.parametrize("path", SERVER_DOCS)
    @pytest.mark.parametrize("principal", ["caller", "anonymous"])
    def test_server_documents_closed(self, world: World, principal: str, path: str) -> None:
        """A client can neither read, query, create, change nor delete a server document."""
        world.seed(path, {"heartbeat": 1})
        client = world.client(principal)
        collection = path.split("/")[0]
        assert client.get(path).denied
        assert client.query(collection).denied
        assert client.update(path, {"heartbeat": 2}).denied
        assert client.delete(path).denied
        assert client.create(f"{collection}/new-doc", {"heartbeat": 1}).denied
        assert world.stored(path) == {"heartbeat": 1}

    def test_subcollection_of_a_call_closed(self, world: World) -> None:
        """A participant cannot hang documents under their call, nor read any there."""
        world.seed_call(Status.ACCEPTED)
        world.seed(f"{CALL_PATH}/notes/n1", {"text": "server note"})
        caller = world.client("caller")
        assert caller.create(f"{CALL_PATH}/notes/n2", {"text": "hi"}).denied
        assert caller.get(f"{CALL_PATH}/notes/n1").denied
        assert caller.query("notes", parent=CALL_PATH).denied
