"""Documents read by path with the protobuf runtime directly: the watcher's per-change read.

The client library's `get_all` wraps each response in proto-plus, decodes every field through those
wrappers, builds a snapshot and copies its data again on `to_dict()`; on the watcher's path that was
about a tenth of its CPU (README, "Watcher"). `get_documents` sends the same BatchGetDocuments request
through the client's own API method (its retries, metadata and credentials) and decodes the raw
messages with the library's own value decoder, so a document reads exactly as `get_all` gives it:
tests/integration/test_raw_reads.py holds the two equal against the emulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import firestore as firestore_types

_BATCH_GET = firestore_types.BatchGetDocumentsRequest.pb()
_RESPONSE = firestore_types.BatchGetDocumentsResponse


@dataclass(frozen=True)
class StoredDocument:
    """A document as read: its fields (None when it does not exist) and its update time (None then too)."""

    data: dict[str, Any] | None
    update_time: datetime | None

    @property
    def exists(self) -> bool:
        """True when the document was there."""
        return self.data is not None


async def get_documents(client: Any, references: Sequence[Any]) -> dict[str, StoredDocument]:
    """The documents at `references` (of the asyncio `client`), by their path relative to the database."""
    prefix = f"{client._database_string}/documents/"
    request = _BATCH_GET(database=client._database_string, documents=[prefix + ref.path for ref in references])
    responses = await client._firestore_api.batch_get_documents(
        request=firestore_types.BatchGetDocumentsRequest.wrap(request), metadata=client._rpc_metadata
    )
    found: dict[str, StoredDocument] = {}
    async for response in responses:
        message = _RESPONSE.pb(response)
        if message.WhichOneof("result") == "found":
            document = message.found
            # Field by field, as the library's decode_dict without its special maps (reserved at the top).
            data = {key: _helpers.decode_value(value, client) for key, value in document.fields.items()}
            stamp = DatetimeWithNanoseconds.from_timestamp_pb(document.update_time)
            found[document.name.removeprefix(prefix)] = StoredDocument(data, stamp)
        else:
            found[message.missing.removeprefix(prefix)] = StoredDocument(None, None)
    missing = [ref.path for ref in references if ref.path not in found]
    if missing:
        raise ValueError(f"BatchGetDocuments answered without {missing}")
    return found
