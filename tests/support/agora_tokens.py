"""Test-only decoder for Agora RTC tokens ("006" AccessToken and "007" AccessToken2).

Written from the published wire formats so tests can check what an issued token really contains
without trusting the library that built it. All integers are little-endian; a "string" is a uint16
length followed by that many bytes; a "map" is a uint16 count of (uint16 key, uint32 value) pairs.

006: "006" + app_id (32 chars) + base64(string signature, uint32 crc32(channel), uint32 crc32(uid),
     string message), message = uint32 salt, uint32 ts, map privileges. The signature is
     HMAC-SHA256(key=certificate, app_id + channel + uid + message); channel and uid themselves are
     not in the token, so checking them needs the expected values.
007: "007" + base64(zlib(string signature, signed)), signed = string app_id, uint32 issue_ts,
     uint32 expire, uint32 salt, uint16 service count, services. An RTC service is uint16 type (1),
     map privileges, string channel, string uid. The signing key is
     HMAC(key=uint32 salt, HMAC(key=uint32 issue_ts, certificate)); signature = HMAC(key, signed).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
import zlib
from dataclasses import dataclass
from hashlib import sha256

PRIVILEGE_JOIN_CHANNEL = 1
PRIVILEGE_PUBLISH_AUDIO = 2
PRIVILEGE_PUBLISH_VIDEO = 3
PRIVILEGE_PUBLISH_DATA = 4
SUBSCRIBER_PRIVILEGES = frozenset({PRIVILEGE_JOIN_CHANNEL})
PUBLISHER_PRIVILEGES = frozenset(
    {PRIVILEGE_JOIN_CHANNEL, PRIVILEGE_PUBLISH_AUDIO, PRIVILEGE_PUBLISH_VIDEO, PRIVILEGE_PUBLISH_DATA}
)

SERVICE_RTC = 1
_APP_ID_LENGTH = 32


class _Reader:
    """Bounds-checked cursor over a token's bytes; a short or overlong token raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise ValueError("token is truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u16(self) -> int:
        value: int = struct.unpack("<H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        return self.string().decode("utf-8")

    def privileges(self) -> dict[int, int]:
        count = self.u16()
        result: dict[int, int] = {}
        for _ in range(count):
            key = self.u16()
            if key in result:
                raise ValueError(f"privilege {key} appears twice")
            result[key] = self.u32()
        return result

    def done(self) -> None:
        if self._pos != len(self._data):
            raise ValueError("token has trailing bytes")


@dataclass(frozen=True)
class Token006:
    """The fields of a decoded "006" token."""

    app_id: str
    signature: bytes
    channel_crc: int
    uid_crc: int
    salt: int
    ts: int
    privileges: dict[int, int]
    message: bytes

    def names(self, channel: str, uid: str) -> bool:
        """Whether the token's CRC32s match this channel and uid string ("" for uid 0)."""
        return self.channel_crc == crc32_of(channel) and self.uid_crc == crc32_of(uid)


@dataclass(frozen=True)
class RtcService007:
    """The RTC service inside a "007" token."""

    channel: str
    uid: str
    privileges: dict[int, int]


@dataclass(frozen=True)
class Token007:
    """The fields of a decoded "007" token."""

    app_id: str
    issue_ts: int
    expire: int
    salt: int
    services: dict[int, RtcService007]
    signature: bytes
    signed: bytes

    @property
    def rtc(self) -> RtcService007:
        """The token's RTC service; KeyError when it has none."""
        return self.services[SERVICE_RTC]


def crc32_of(text: str) -> int:
    """CRC32 of a string's UTF-8 bytes, as 006 stores it."""
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def _b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ValueError("token body is not base64") from exc


def decode_006(token: str) -> Token006:
    """Decode a "006" token; raise ValueError if it is not one."""
    if not token.startswith("006"):
        raise ValueError("not a 006 token")
    app_id = token[3 : 3 + _APP_ID_LENGTH]
    if len(app_id) != _APP_ID_LENGTH:
        raise ValueError("token is truncated")
    outer = _Reader(_b64(token[3 + _APP_ID_LENGTH :]))
    signature = outer.string()
    channel_crc = outer.u32()
    uid_crc = outer.u32()
    message = outer.string()
    outer.done()
    inner = _Reader(message)
    salt = inner.u32()
    ts = inner.u32()
    privileges = inner.privileges()
    inner.done()
    return Token006(app_id, signature, channel_crc, uid_crc, salt, ts, privileges, message)


def decode_007(token: str) -> Token007:
    """Decode a "007" token holding only RTC services; raise ValueError if it is not one."""
    if not token.startswith("007"):
        raise ValueError("not a 007 token")
    try:
        payload = zlib.decompress(_b64(token[3:]))
    except zlib.error as exc:
        raise ValueError("token body is not zlib data") from exc
    outer = _Reader(payload)
    signature = outer.string()
    signed = payload[2 + len(signature) :]
    app_id = outer.text()
    issue_ts = outer.u32()
    expire = outer.u32()
    salt = outer.u32()
    services: dict[int, RtcService007] = {}
    for _ in range(outer.u16()):
        service_type = outer.u16()
        # Each service type has its own trailing fields; only RTC's layout is needed here.
        if service_type != SERVICE_RTC:
            raise ValueError(f"unsupported service type {service_type}")
        if service_type in services:
            raise ValueError(f"service {service_type} appears twice")
        privileges = outer.privileges()
        services[service_type] = RtcService007(outer.text(), outer.text(), privileges)
    outer.done()
    return Token007(app_id, issue_ts, expire, salt, services, signature, signed)


def verify_006(token: Token006, *, app_certificate: str, channel: str, uid: str) -> bool:
    """Whether the token names this channel and uid and was signed with this certificate."""
    if not token.names(channel, uid):
        return False
    signed = (token.app_id + channel + uid).encode("utf-8") + token.message
    expected = hmac.new(app_certificate.encode("utf-8"), signed, sha256).digest()
    return hmac.compare_digest(expected, token.signature)


def signing_key_007(app_certificate: str, issue_ts: int, salt: int) -> bytes:
    """The per-token 007 signing key derived from the certificate, issue time and salt."""
    key = hmac.new(struct.pack("<I", issue_ts), app_certificate.encode("utf-8"), sha256).digest()
    return hmac.new(struct.pack("<I", salt), key, sha256).digest()


def verify_007(token: Token007, *, app_certificate: str) -> bool:
    """Whether the token's signed bytes carry a valid signature for this certificate."""
    key = signing_key_007(app_certificate, token.issue_ts, token.salt)
    expected = hmac.new(key, token.signed, sha256).digest()
    return hmac.compare_digest(expected, token.signature)
