"""Firestore writes built as protocol buffers directly: the watcher's write batches.

The client library builds every write through proto-plus wrappers (a Python object per value, field
path and transform); on the watcher's path that was most of the CPU of each commit (README, "Watcher").
`RawBatch` builds the same `Write` messages with the protobuf runtime and commits them through the
client's own API method, so retries, metadata and credentials are the library's. A write it cannot
build on its fast path (a transform other than a server timestamp, a sentinel inside a map, a
conflicting field path) is built by the library's own helpers instead, so every write means exactly
what `AsyncWriteBatch` would send: tests/unit/test_raw_writes.py holds the two equal, message for message.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud._helpers import _datetime_to_pb_timestamp  # type: ignore[attr-defined]
from google.cloud.firestore_v1 import _helpers, transforms
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.cloud.firestore_v1.types import write as write_types

_WRITE = write_types.Write.pb()
_COMMIT = firestore_types.CommitRequest.pb()
_REQUEST_TIME = int(write_types.DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME)
# A field name the API takes unquoted in a field path.
_SIMPLE = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")
# Values the library turns into transforms (or refuses in a value): never encoded as values here.
_TRANSFORMS = (transforms.Sentinel, transforms._ValueList, transforms._NumericValue)
# Document ids: 20 characters of [A-Za-z0-9], as the client library's automatic ids.
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ID_LENGTH = 20


class _Slow(Exception):
    """The write holds something the fast path does not build: the library builds it."""


def new_document_id() -> str:
    """A random document id like the library's automatic ones, from os.urandom (cheaper than `random`)."""
    # 248 is a multiple of 62: bytes below it map onto the alphabet without bias.
    picked = [b % 62 for b in os.urandom(_ID_LENGTH * 2) if b < 248][:_ID_LENGTH]
    while len(picked) < _ID_LENGTH:
        picked.extend(b % 62 for b in os.urandom(_ID_LENGTH) if b < 248)
    return "".join(_ID_ALPHABET[i] for i in picked[:_ID_LENGTH])


@functools.lru_cache(maxsize=4096)
def _field_path(key: str) -> tuple[tuple[str, ...], str]:
    """An update key's parts and its form in an update mask (dots split it, backquotes quote a part)."""
    parts = key.split(".")
    if "`" not in key and all(_SIMPLE.match(part) for part in parts):
        return tuple(parts), key
    path = FieldPath.from_string(key)
    return tuple(path.parts), path.to_api_repr()


def _timestamp(value: datetime) -> Any:
    if isinstance(value, DatetimeWithNanoseconds):
        return value.timestamp_pb()
    return _datetime_to_pb_timestamp(value)


def _encode(value: Any, target: Any) -> None:
    """Set the `Value` message `target` to `value`, as the library's `encode_value` would."""
    if value is None:
        target.null_value = 0
    elif isinstance(value, bool):
        target.boolean_value = value
    elif isinstance(value, int):
        target.integer_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, datetime):
        target.timestamp_value.CopyFrom(_timestamp(value))
    elif isinstance(value, dict):
        _encode_map(value, target.map_value)
    elif isinstance(value, (list, tuple)):
        array = target.array_value
        array.SetInParent()
        for element in value:
            if isinstance(element, _TRANSFORMS):
                raise _Slow
            _encode(element, array.values.add())
    elif isinstance(value, _TRANSFORMS):
        raise _Slow
    else:
        # Rare types (bytes, GeoPoint, references, vectors): the library's encoder, then copied.
        target.CopyFrom(_helpers.encode_value(value)._pb)


def _encode_map(fields: Mapping[str, Any], target: Any) -> None:
    target.SetInParent()
    for key, value in fields.items():
        _encode(value, target.fields[key])


def _document_name(client: Any, reference: Any) -> str:
    return f"{client._database_string}/documents/{reference.path}"


def update_write(name: str, fields: Mapping[str, Any], last_update_time: datetime | None = None) -> Any:
    """The `Write` of `update(fields)` on the document `name`, under a precondition on its update time
    (or, without one, that it exists)."""
    try:
        return _fast_update(name, fields, last_update_time)
    except _Slow:
        return _library_update(name, fields, last_update_time)


def _fast_update(name: str, fields: Mapping[str, Any], last_update_time: datetime | None) -> Any:
    if not fields:
        raise _Slow  # the library's error for an empty update
    paths = sorted((_field_path(key), key) for key in fields)
    for (earlier, _), (later, _) in itertools.pairwise(paths):
        if later[0][: len(earlier[0])] == earlier[0]:
            raise _Slow  # "a" and "a.b" together: the library's error
    write = _WRITE()
    write.update.name = name
    mask = write.update_mask.field_paths
    for (parts, api_path), key in paths:
        value = fields[key]
        if value is transforms.SERVER_TIMESTAMP:
            write.update_transforms.add(field_path=api_path, set_to_server_value=_REQUEST_TIME)
            continue
        mask.append(api_path)
        if value is transforms.DELETE_FIELD:
            continue
        if isinstance(value, dict) and _has_sentinel(value):
            raise _Slow
        target = write.update.fields
        for part in parts[:-1]:
            target = target[part].map_value.fields
        _encode(value, target[parts[-1]])
    write.update_mask.SetInParent()
    if last_update_time is not None:
        # Microseconds, as the library sends a precondition (update times carry no more).
        write.current_document.update_time.CopyFrom(_datetime_to_pb_timestamp(last_update_time))
    else:
        write.current_document.exists = True
    return write


def _has_sentinel(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_sentinel(v) for v in value.values())
    return isinstance(value, _TRANSFORMS)


def _library_update(name: str, fields: Mapping[str, Any], last_update_time: datetime | None) -> Any:
    option = _helpers.LastUpdateOption(last_update_time) if last_update_time is not None else None
    return _helpers.pbs_for_update(name, dict(fields), option)[0]._pb


def set_write(name: str, fields: Mapping[str, Any], must_not_exist: bool = False) -> Any:
    """The `Write` of `set(fields)` (a whole document, no merge) on `name`; `create` with `must_not_exist`."""
    try:
        return _fast_set(name, fields, must_not_exist)
    except _Slow:
        build = _helpers.pbs_for_create if must_not_exist else _helpers.pbs_for_set_no_merge
        return build(name, dict(fields))[0]._pb


def _fast_set(name: str, fields: Mapping[str, Any], must_not_exist: bool) -> Any:
    write = _WRITE()
    write.update.name = name
    write.update.SetInParent()
    for key in sorted(fields):
        value = fields[key]
        if value is transforms.SERVER_TIMESTAMP:
            write.update_transforms.add(field_path=_field_path_of_name(key), set_to_server_value=_REQUEST_TIME)
        elif _has_sentinel(value):
            raise _Slow
        else:
            _encode(value, write.update.fields[key])
    if must_not_exist:
        write.current_document.exists = False
    return write


def _field_path_of_name(name: str) -> str:
    """A top-level field name as a field path (quoted unless simple)."""
    return name if _SIMPLE.match(name) else FieldPath(name).to_api_repr()


class RawBatch:
    """A write batch of `client` (an asyncio Firestore client) whose writes are built as raw protobufs.

    Offers what the repositories use of `AsyncWriteBatch`: `create`, `set`, `update` (with
    `last_update_time` instead of a write option) and `commit`, which returns the write results.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._writes: list[Any] = []

    def __len__(self) -> int:
        return len(self._writes)

    def update(self, reference: Any, fields: Mapping[str, Any], last_update_time: datetime | None = None) -> None:
        """Update the fields of an existing document (the update fails if it changed since `last_update_time`)."""
        self._writes.append(update_write(_document_name(self._client, reference), fields, last_update_time))

    def set(self, reference: Any, document_data: Mapping[str, Any]) -> None:
        """Write the whole document."""
        self._writes.append(set_write(_document_name(self._client, reference), document_data))

    def create(self, reference: Any, document_data: Mapping[str, Any]) -> None:
        """Create the document (the commit fails if it exists)."""
        self._writes.append(set_write(_document_name(self._client, reference), document_data, must_not_exist=True))

    async def commit(self) -> Sequence[Any]:
        """Commit every write at once; the write results in the order of the writes."""
        client = self._client
        request = _COMMIT(database=client._database_string, writes=self._writes)
        response = await client._firestore_api.commit(
            request=firestore_types.CommitRequest.wrap(request), metadata=client._rpc_metadata
        )
        self._writes = []
        return list(response.write_results)
