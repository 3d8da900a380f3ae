"""A document listener as the Firebase SDKs open one: Firestore's `Listen` stream, acting as one user.

`onSnapshot` / `addSnapshotListener` / `snapshots()` open a `Listen` stream and add a documents target;
the server answers with target changes and document changes, and when the rules refuse the target it
removes it with a cause (PERMISSION_DENIED), which the SDKs report as the listener's error, after which
the listener is dead. The emulator evaluates the stream as the user named by the unsigned ID token.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.firestore_v1.types import Target, document
from google.cloud.firestore_v1.types import firestore as fs
from google.protobuf.json_format import MessageToDict

from memharbor.devtokens import emulator_id_token
from tests.support.firestore_rest import decode_value

_LISTEN = "/google.firestore.v1.Firestore/Listen"
_TARGET_ID = 1
_PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


@dataclass
class ListenState:
    """What one listener has received so far, as an SDK would present it."""

    current: bool = False  # the server confirmed a consistent snapshot of the target
    exists: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    documents_received: int = 0  # document changes for the target, whatever happened to them later
    error: int | None = None  # the gRPC status code of the cause that removed the target
    snapshots: list[dict[str, Any] | None] = field(default_factory=list)  # each confirmed state, None = missing

    @property
    def denied(self) -> bool:
        return self.error == _PERMISSION_DENIED


class DocumentListener:
    """A live `Listen` stream on one document, as `uid` (None for an unauthenticated client).

    Use as a context manager; `wait(predicate)` blocks until the received state satisfies it.
    """

    def __init__(self, address: str, project_id: str, uid: str | None, path: str) -> None:
        self._database = f"projects/{project_id}/databases/(default)"
        self._name = f"{self._database}/documents/{path}"
        self._metadata = [("google-cloud-resource-prefix", self._database)]
        if uid is not None:
            self._metadata.append(("authorization", "Bearer " + emulator_id_token(project_id, uid)))
        self._channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[fs.ListenRequest | None] = queue.Queue()
        self._state = ListenState()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._stream: Any = None

    def __enter__(self) -> DocumentListener:
        listen = self._channel.stream_stream(
            _LISTEN,
            request_serializer=fs.ListenRequest.serialize,
            response_deserializer=fs.ListenResponse.deserialize,
        )
        self._stream = listen(self._outgoing(), metadata=self._metadata)
        target = Target(documents=Target.DocumentsTarget(documents=[self._name]), target_id=_TARGET_ID)
        self._requests.put(fs.ListenRequest(database=self._database, add_target=target))
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._requests.put(None)
        self._stream.cancel()
        self._reader.join(timeout=5)
        self._channel.close()

    def _outgoing(self) -> Iterator[fs.ListenRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self._stream:
                with self._changed:
                    self._apply(response)
                    self._changed.notify_all()
        except grpc.RpcError:
            # Cancelled by __exit__, or the emulator went away; waiters time out on what they have.
            return

    def _apply(self, response: fs.ListenResponse) -> None:
        state = self._state
        kind = fs.ListenResponse.pb(response).WhichOneof("response_type")
        if kind == "target_change":
            change = response.target_change
            if change.target_change_type == fs.TargetChange.TargetChangeType.REMOVE and change.cause.code:
                state.error = change.cause.code
            elif change.target_change_type == fs.TargetChange.TargetChangeType.CURRENT:
                state.current = True
            elif (
                change.target_change_type == fs.TargetChange.TargetChangeType.NO_CHANGE
                and not change.target_ids
                and state.current
            ):
                # A global consistent point: the SDKs raise a snapshot here.
                state.snapshots.append(dict(state.data) if state.exists else None)
        elif kind == "document_change":
            doc = response.document_change.document
            if _TARGET_ID in response.document_change.target_ids:
                state.documents_received += 1
                state.exists = True
                state.data = {name: decode_value(_value_json(value)) for name, value in doc.fields.items()}
            if _TARGET_ID in response.document_change.removed_target_ids:
                state.exists, state.data = False, {}
        elif kind in ("document_delete", "document_remove"):
            state.exists, state.data = False, {}

    def wait(self, predicate: Any, timeout: float = 10.0) -> ListenState:
        """The state once `predicate(state)` holds; AssertionError with the state after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self._state):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"listener state never matched: {self._state}")
                self._changed.wait(left)
            return self._state

    def settle(self, seconds: float = 0.5) -> ListenState:
        """The state after `seconds` more of listening (to show that nothing else arrives)."""
        time.sleep(seconds)
        with self._changed:
            return self._state


def _value_json(value: Any) -> dict[str, Any]:
    """A proto-plus Firestore Value as the REST API's typed JSON, for tests.support.firestore_rest."""
    return MessageToDict(document.Value.pb(value), preserving_proto_field_name=False)
