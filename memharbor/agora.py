"""Agora: channel-name and account rules, and RTC token issuing over Agora's own token libraries.

Two token formats are supported. "006" (AccessToken) carries absolute privilege expiry timestamps and
only CRC32s of the channel and uid; "007" (AccessToken2) carries the channel and uid in clear and
relative expiries. Both are signed with the app certificate, which never appears in an error message.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final

from agora_token_builder import RtcTokenBuilder as _Builder006  # type: ignore[import-untyped]
from agoraiotools.RtcTokenBuilder2 import RtcTokenBuilder as _Builder007  # type: ignore[import-untyped]

MAX_EXPIRE_S: Final = 86400
MAX_ACCOUNT_BYTES: Final = 255
MAX_UID: Final = 2**32 - 1
MAX_CHANNEL_BYTES: Final = 63

# Agora documents the same 89-character set for channel names and user accounts. Every character in it
# is ASCII, so a match's length in characters is also its length in UTF-8 bytes; the length bound can
# therefore live in the pattern. Use with fullmatch: `$` would let a trailing newline through.
_AGORA_CHAR_CLASS = r"[a-zA-Z0-9 !#$%&()+\-:;<=.>?@\[\]^_{}|~,]"
CHANNEL_NAME_RE: Final = re.compile(_AGORA_CHAR_CLASS + f"{{1,{MAX_CHANNEL_BYTES}}}")
ACCOUNT_RE: Final = re.compile(_AGORA_CHAR_CLASS + f"{{1,{MAX_ACCOUNT_BYTES}}}")

# Agora app ids and certificates are 32 hex characters; agoraiotools silently returns "" otherwise,
# and the 006 decoder relies on the app id being exactly 32 characters long.
_CREDENTIAL_RE: Final = re.compile(r"[0-9a-fA-F]{32}")

# The 006 format stores privilege expiries as unsigned 32-bit seconds since the epoch.
_MAX_TIMESTAMP: Final = 2**32 - 1


class Role(StrEnum):
    """What a token lets its holder do in the channel."""

    PUBLISHER = "publisher"
    SUBSCRIBER = "subscriber"


class TokenVersion(StrEnum):
    """Agora token format: "006" (AccessToken) or "007" (AccessToken2)."""

    V006 = "006"
    V007 = "007"


# Both libraries number roles the same way: 1 adds the publish privileges, 2 is join-only.
_LIBRARY_ROLE: Final = {Role.PUBLISHER: 1, Role.SUBSCRIBER: 2}


def _agora_string_error(value: object, what: str, max_bytes: int, pattern: re.Pattern[str]) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be a string"
    if not value:
        return f"{what} must not be empty"
    if len(value.encode("utf-8")) > max_bytes:
        return f"{what} must be at most {max_bytes} bytes"
    if pattern.fullmatch(value) is None:
        return f"{what} may only use a-z, A-Z, 0-9, space and !#$%&()+-:;<=.>?@[]^_{{}}|~,"
    return None


def channel_name_error(name: object) -> str | None:
    """Return why `name` is not a valid Agora channel name, or None when it is."""
    return _agora_string_error(name, "channel name", MAX_CHANNEL_BYTES, CHANNEL_NAME_RE)


def account_error(account: object) -> str | None:
    """Return why `account` is not a valid Agora user account, or None when it is."""
    return _agora_string_error(account, "account", MAX_ACCOUNT_BYTES, ACCOUNT_RE)


def _uid_error(uid: object) -> str | None:
    # bool is an int subclass; True would silently become uid "True".
    if isinstance(uid, bool) or not isinstance(uid, int):
        return "uid must be an integer"
    # Both libraries turn uid 0 into an empty uid, which Agora accepts from *any* user: a wildcard
    # token. Issuing one would unbind the token from the caller, so 0 is refused here.
    if not 1 <= uid <= MAX_UID:
        return f"uid must be between 1 and {MAX_UID}"
    return None


def _identity(uid: int | None, account: str | None) -> int | str:
    if uid is not None and account is None:
        error = _uid_error(uid)
        if error:
            raise ValueError(error)
        return uid
    if account is not None and uid is None:
        error = account_error(account)
        if error:
            raise ValueError(error)
        return account
    raise ValueError("exactly one of uid and account must be given")


def _check_arguments(app_id: str, app_certificate: str, channel: str, expire_s: int, now: int) -> None:
    # Messages name the argument only: a mistyped certificate is still close to a real one.
    if not isinstance(app_id, str) or _CREDENTIAL_RE.fullmatch(app_id) is None:
        raise ValueError("app_id must be 32 hex characters")
    if not isinstance(app_certificate, str) or _CREDENTIAL_RE.fullmatch(app_certificate) is None:
        raise ValueError("app_certificate must be 32 hex characters")
    error = channel_name_error(channel)
    if error:
        raise ValueError(error)
    if isinstance(expire_s, bool) or not isinstance(expire_s, int) or not 1 <= expire_s <= MAX_EXPIRE_S:
        raise ValueError(f"expire_s must be an integer between 1 and {MAX_EXPIRE_S}")
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise ValueError("now must be a non-negative integer (seconds since the epoch)")
    if now + expire_s > _MAX_TIMESTAMP:
        raise ValueError("now + expire_s does not fit Agora's 32-bit timestamps")


def build_rtc_token(
    *,
    app_id: str,
    app_certificate: str,
    channel: str,
    uid: int | None,
    account: str | None,
    role: Role,
    expire_s: int,
    now: int,
    version: str = "006",
) -> str:
    """Issue an Agora RTC token for one uid or account in one channel; raise ValueError on bad input."""
    try:
        token_version = TokenVersion(version)
    except ValueError:
        raise ValueError('version must be "006" or "007"') from None
    try:
        library_role = _LIBRARY_ROLE[Role(role)]
    except ValueError:
        raise ValueError('role must be "publisher" or "subscriber"') from None
    _check_arguments(app_id, app_certificate, channel, expire_s, now)
    identity = _identity(uid, account)

    if token_version is TokenVersion.V006:
        # 006 expiries are absolute. The library picks its own salt and sets the token's `ts` field to
        # its clock + 24 h; only the privilege expiries come from `now`.
        expire_at = now + expire_s
        if isinstance(identity, int):
            token = _Builder006.buildTokenWithUid(app_id, app_certificate, channel, identity, library_role, expire_at)
        else:
            token = _Builder006.buildTokenWithAccount(
                app_id, app_certificate, channel, identity, library_role, expire_at
            )
    else:
        # 007 expiries are relative to the issue time, which the library stamps from its own clock;
        # `now` has already been validated but is not otherwise part of a 007 token.
        if isinstance(identity, int):
            token = _Builder007.build_token_with_uid(
                app_id, app_certificate, channel, identity, library_role, expire_s, expire_s
            )
        else:
            token = _Builder007.build_token_with_user_account(
                app_id, app_certificate, channel, identity, library_role, expire_s, expire_s
            )

    # agoraiotools signals failure with "" rather than an exception; never hand that out as a token.
    if not isinstance(token, str) or not token.startswith(token_version.value):
        raise RuntimeError(f"Agora {token_version.value} token builder returned no token")
    return token
