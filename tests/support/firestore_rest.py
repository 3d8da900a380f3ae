"""A small synchronous client for the Firestore emulator's REST API, acting as one user.

The emulator evaluates security rules as the user named by `Authorization: Bearer <unsigned JWT>`;
`Bearer owner` bypasses the rules (for seeding) and no header at all is an unauthenticated request.
Every client made from one `FirestoreRest` (with `as_user`, `as_owner`, `anonymous`) shares a single
persistent HTTP connection, so a test suite can make hundreds of requests quickly.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from memharbor.devtokens import emulator_id_token

OWNER = "owner"
_SIMPLE_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
_OPS = {
    "==": "EQUAL",
    "!=": "NOT_EQUAL",
    "<": "LESS_THAN",
    "<=": "LESS_THAN_OR_EQUAL",
    ">": "GREATER_THAN",
    ">=": "GREATER_THAN_OR_EQUAL",
    "in": "IN",
    "not-in": "NOT_IN",
    "array-contains": "ARRAY_CONTAINS",
    "array-contains-any": "ARRAY_CONTAINS_ANY",
}


# ---------------------------------------------------------------------------------------------------
# Values: Python <-> Firestore typed JSON
# ---------------------------------------------------------------------------------------------------


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds; a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from an RFC 3339 timestamp (nanoseconds are truncated to microseconds)."""
    match = _TIMESTAMP.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    whole, fraction, zone = match.groups()
    stamp = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    if fraction:
        stamp += timedelta(microseconds=int(fraction[:6].ljust(6, "0")))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        stamp -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return stamp


def encode_value(value: Any) -> dict[str, Any]:
    """One Python value as a Firestore `Value` (bool is checked before int, as bool is an int)."""
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):
        if math.isnan(value):
            return {"doubleValue": "NaN"}
        if math.isinf(value):
            return {"doubleValue": "Infinity" if value > 0 else "-Infinity"}
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return {"timestampValue": format_timestamp(value)}
    if isinstance(value, Mapping):
        return {"mapValue": {"fields": encode_fields(value)}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [encode_value(item) for item in value]}}
    raise TypeError(f"cannot encode {type(value).__name__} for Firestore")


def encode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping of field name to Python value as Firestore `fields`."""
    return {str(name): encode_value(value) for name, value in fields.items()}


def decode_value(value: Mapping[str, Any]) -> Any:
    """One Firestore `Value` as a Python value (timestamps become aware UTC datetimes)."""
    if not value:
        raise ValueError("empty Firestore value")
    kind, raw = next(iter(value.items()))
    if kind == "nullValue":
        return None
    if kind == "booleanValue":
        return bool(raw)
    if kind == "integerValue":
        return int(raw)
    if kind == "doubleValue":
        return float(raw)
    if kind in ("stringValue", "referenceValue"):
        return str(raw)
    if kind == "bytesValue":
        return base64.b64decode(raw)
    if kind == "timestampValue":
        return parse_timestamp(raw)
    if kind == "geoPointValue":
        return {"latitude": raw.get("latitude", 0.0), "longitude": raw.get("longitude", 0.0)}
    if kind == "mapValue":
        return decode_fields(raw.get("fields", {}))
    if kind == "arrayValue":
        return [decode_value(item) for item in raw.get("values", [])]
    raise ValueError(f"unknown Firestore value kind {kind!r}")


def decode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Firestore `fields` as a dict of Python values."""
    return {name: decode_value(value) for name, value in fields.items()}


def field_path(name: str) -> str:
    """A top-level field name as a field path, back-quoted when it is not a simple identifier."""
    if _SIMPLE_FIELD.match(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One HTTP exchange: status code, parsed JSON body (or None) and raw text."""

    status: int
    json: Any
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def denied(self) -> bool:
        """True when the rules refused the request (403 PERMISSION_DENIED)."""
        return self.status == 403 and self.error_status == "PERMISSION_DENIED"

    @property
    def error_status(self) -> str | None:
        """The gRPC status name of an error answer (e.g. PERMISSION_DENIED), or None."""
        body = self.json[0] if isinstance(self.json, list) and self.json else self.json
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            return body["error"].get("status")
        return None

    @property
    def commit_lag(self) -> float | None:
        """Seconds from the request time a commit stamped (its first server-time transform) to the
        commit's update time; None for any other answer. The emulator stamps on receipt, production at commit."""
        if not self.ok or not isinstance(self.json, Mapping):
            return None
        results = self.json.get("writeResults") or [{}]
        stamps = results[0].get("transformResults") or [{}]
        stamped, committed = stamps[0].get("timestampValue"), results[0].get("updateTime")
        if not isinstance(stamped, str) or not isinstance(committed, str):
            return None
        return (parse_timestamp(committed) - parse_timestamp(stamped)).total_seconds()

    @property
    def data(self) -> dict[str, Any]:
        """The decoded fields of a document answer (from get; a commit answer is not a document)."""
        if not self.ok or not isinstance(self.json, Mapping):
            raise AssertionError(f"no document in HTTP {self.status}: {self.text[:300]}")
        return decode_fields(self.json.get("fields", {}))

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The decoded documents of a runQuery or list answer, each with its `__name__`."""
        if not self.ok:
            raise AssertionError(f"no documents in HTTP {self.status}: {self.text[:300]}")
        if isinstance(self.json, list):
            raw = [item["document"] for item in self.json if "document" in item]
        else:
            raw = (self.json or {}).get("documents", [])
        return [{"__name__": doc["name"], **decode_fields(doc.get("fields", {}))} for doc in raw]

    def __repr__(self) -> str:
        return f"Result(status={self.status}, body={self.text[:300]!r})"


# ---------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Connection:
    """One keep-alive HTTP connection, reopened once if the server dropped it."""

    host: str
    port: int
    timeout: float
    conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def request(self, method: str, path: str, body: Any, headers: Mapping[str, str]) -> Result:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **headers} if payload is not None else dict(headers)
        reused = self.conn is not None
        try:
            response, raw = self._send(method, path, payload, all_headers)
        except (http.client.HTTPException, ConnectionError):
            self.close()
            if not reused:
                raise
            # A kept-alive connection the server had already closed: the request never arrived, send it again.
            response, raw = self._send(method, path, payload, all_headers)
        if response.will_close:
            self.close()
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = None
        return Result(response.status, parsed, text)

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.request(method, path, body=payload, headers=dict(headers))
        response = self.conn.getresponse()
        return response, response.read()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class FirestoreRest:
    """Firestore REST calls as one principal: a uid, the rule-bypassing owner, or nobody (uid=None).

    Document paths are relative to the database root, e.g. "calls/c1".
    """

    def __init__(
        self,
        address: str,
        project_id: str,
        uid: str | None = None,
        *,
        timeout: float = 30.0,
        _connection: _Connection | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.project_id = project_id
        self.uid = uid
        self._conn = _connection or _Connection(host, int(port), timeout)
        self.root = f"projects/{project_id}/databases/(default)/documents"

    # Principals sharing this client's connection -------------------------------------------------

    def as_user(self, uid: str) -> FirestoreRest:
        """A client acting as `uid` (evaluated against the rules)."""
        return FirestoreRest(self.address, self.project_id, uid, _connection=self._conn)

    def as_owner(self) -> FirestoreRest:
        """A client that bypasses the rules, for seeding and checking."""
        return FirestoreRest(self.address, self.project_id, OWNER, _connection=self._conn)

    def anonymous(self) -> FirestoreRest:
        """A client with no Authorization header at all."""
        return FirestoreRest(self.address, self.project_id, None, _connection=self._conn)

    def close(self) -> None:
        self._conn.close()

    def _headers(self) -> dict[str, str]:
        if self.uid is None:
            return {}
        if self.uid == OWNER:
            return {"Authorization": "Bearer owner"}
        return {"Authorization": "Bearer " + emulator_id_token(self.project_id, self.uid)}

    def name(self, path: str) -> str:
        """The full resource name of a document path."""
        return f"{self.root}/{path.strip('/')}"

    def request(self, method: str, suffix: str, body: Any = None, query: str = "") -> Result:
        """A raw request to `/v1/{suffix}` (percent-encoded here) with an optional query string."""
        url = "/v1/" + quote(suffix, safe="/():-_.~") + (f"?{query}" if query else "")
        return self._conn.request(method, url, body, self._headers())

    # Writes ---------------------------------------------------------------------------------------

    def commit(self, writes: Sequence[Mapping[str, Any]]) -> Result:
        """Commit raw `Write` objects atomically."""
        return self.request("POST", f"{self.root}:commit", {"writes": list(writes)})

    def _write(
        self,
        path: str,
        fields: Mapping[str, Any],
        server_time: Iterable[str],
        exists: bool | None,
        mask: Iterable[str] | None,
    ) -> dict[str, Any]:
        write: dict[str, Any] = {"update": {"name": self.name(path), "fields": encode_fields(fields)}}
        transforms = [{"fieldPath": field_path(f), "setToServerValue": "REQUEST_TIME"} for f in server_time]
        if transforms:
            write["updateTransforms"] = transforms
        if mask is not None:
            write["updateMask"] = {"fieldPaths": [field_path(f) for f in mask]}
        if exists is not None:
            write["currentDocument"] = {"exists": exists}
        return write

    def create(self, path: str, fields: Mapping[str, Any], server_time: Iterable[str] = ()) -> Result:
        """Create a document that must not exist; `server_time` fields are set to the request time."""
        return self.commit([self._write(path, fields, list(server_time), exists=False, mask=None)])

    def set(self, path: str, fields: Mapping[str, Any], server_time: Iterable[str] = ()) -> Result:
        """Create or overwrite a whole document."""
        return self.commit([self._write(path, fields, list(server_time), exists=None, mask=None)])

    def update(
        self,
        path: str,
        fields: Mapping[str, Any],
        server_time: Iterable[str] = (),
        delete: Iterable[str] = (),
    ) -> Result:
        """Change the given fields of an existing document, set `server_time` ones to the request time
        and remove the `delete` ones; every other field is kept.
        """
        stamped, removed = list(server_time), list(delete)
        mask = [*fields, *stamped, *removed]
        return self.commit([self._write(path, fields, stamped, exists=True, mask=mask)])

    def delete(self, path: str) -> Result:
        """Delete a document."""
        return self.request("DELETE", self.name(path))

    # Reads ----------------------------------------------------------------------------------------

    def get(self, path: str) -> Result:
        """Read one document."""
        return self.request("GET", self.name(path))

    def lock(self, path: str) -> str:
        """Begin a transaction and read `path` in it: the emulator holds other writes to the document
        (stamped on arrival, committed later) until `rollback`. Returns the transaction's id."""
        begun = self.request("POST", f"{self.root}:beginTransaction", {})
        if not begun.ok:
            raise AssertionError(f"beginTransaction: HTTP {begun.status}: {begun.text[:300]}")
        transaction = str(begun.json["transaction"])
        # The emulator never answers a GET with a transaction parameter; a batchGet in one works.
        body = {"documents": [self.name(path)], "transaction": transaction}
        read = self.request("POST", f"{self.root}:batchGet", body)
        if not read.ok:
            raise AssertionError(f"read in a transaction: HTTP {read.status}: {read.text[:300]}")
        return transaction

    def rollback(self, transaction: str) -> Result:
        """End a transaction without writing, releasing what it holds."""
        return self.request("POST", f"{self.root}:rollback", {"transaction": transaction})

    def list(self, collection: str, page_size: int = 100) -> Result:
        """List a collection (an unconstrained query, as far as the rules are concerned)."""
        return self.request("GET", self.name(collection), query=f"pageSize={page_size}")

    def query(
        self,
        collection: str,
        where: Sequence[tuple[str, str, Any]] = (),
        limit: int | None = None,
        parent: str = "",
    ) -> Result:
        """runQuery on `collection` (under `parent`, a document path, or the root) with AND-ed filters
        given as (field, op, value), e.g. ("callerId", "==", "u1").
        """
        filters = [
            {"fieldFilter": {"field": {"fieldPath": field_path(f)}, "op": _OPS[op], "value": encode_value(v)}}
            for f, op, v in where
        ]
        structured: dict[str, Any] = {"from": [{"collectionId": collection}]}
        if len(filters) == 1:
            structured["where"] = filters[0]
        elif filters:
            structured["where"] = {"compositeFilter": {"op": "AND", "filters": filters}}
        if limit is not None:
            structured["limit"] = limit
        base = self.name(parent) if parent else self.root
        return self.request("POST", f"{base}:runQuery", {"structuredQuery": structured})
