"""Unit tests for memharbor.agora: channel/account rules and RTC token issuing in both formats."""

from __future__ import annotations

import importlib
import time
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from memharbor.agora import (
    ACCOUNT_RE,
    CHANNEL_NAME_RE,
    MAX_ACCOUNT_BYTES,
    MAX_EXPIRE_S,
    MAX_UID,
    Role,
    TokenVersion,
    account_error,
    build_rtc_token,
    channel_name_error,
)
from tests.support.agora_tokens import (
    PRIVILEGE_JOIN_CHANNEL,
    PUBLISHER_PRIVILEGES,
    SUBSCRIBER_PRIVILEGES,
    crc32_of,
    decode_006,
    decode_007,
    verify_006,
    verify_007,
)

# Test data from Agora's published vectors (AgoraIO/Tools, DynamicKey/AgoraDynamicKey/python3/test).
VEC_APP_ID = "970CA35de60c44645bbae8a215061b33"
VEC_CERT = "5CFd2fd1755d40ecb72977518be15d3b"
VEC_CHANNEL = "7d72365eb983485397e3e3f9d460bdda"
VEC_UID = 2882341273
VEC_SALT = 1
VEC_TS = 1111111
# AccessTokenTest.py (006)
VEC_006_EXPIRE_TS = 1446455471
VEC_006_TOKEN = (
    "006970CA35de60c44645bbae8a215061b33IACV0fZUBw+72cVoL9eyGGh3Q6Poi8bgjwVLnyKSJyOXR7dIfRBXoFHlE"
    "AABAAAAR/QQAAEAAQCvKDdW"
)
VEC_006_TOKEN_UID_0 = (
    "006970CA35de60c44645bbae8a215061b33IACw1o7htY6ISdNRtku3p9tjTPi0jCKf9t49UHJhzCmL6bdIfRAAAAAAE"
    "AABAAAAR/QQAAEAAQCvKDdW"
)
# AccessToken2Test.py (007)
VEC_007_EXPIRE = 600
VEC_007_TOKEN = (
    "007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcw"
    "Mk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj"
)
VEC_007_TOKEN_UID_0 = (
    "007eJxTYLhzZP08Lxa1Pg57+TcXb/3cZ3wi4V6kbpbOog0G2dOYk20UGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcw"
    "Mk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiQwMADacImo="
)

# Credentials for the non-vector tests: valid shape, clearly not anyone's real project.
APP_ID = "0123456789abcdef0123456789abcdef"
CERT = "fedcba9876543210fedcba9876543210"
OTHER_CERT = "00000000000000000000000000000000"
SEED_CHANNEL = "group1_user123_user456_1234567890123"
AGORA_SYMBOLS = "!#$%&()+-:;<=.>?@[]^_{}|~,"

# agoraiotools' package __init__ rebinds `AccessToken2` to the class, so fetch the modules themselves.
LIB_006: ModuleType = importlib.import_module("agora_token_builder.AccessToken")
LIB_007: ModuleType = importlib.import_module("agoraiotools.AccessToken2")


def _issue(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "app_id": APP_ID,
        "app_certificate": CERT,
        "channel": SEED_CHANNEL,
        "uid": 42,
        "account": None,
        "role": Role.SUBSCRIBER,
        "expire_s": 600,
        "now": int(time.time()),
        "version": "006",
    }
    arguments.update(overrides)
    return build_rtc_token(**arguments)


def _pin_library_clock(monkeypatch: pytest.MonkeyPatch, module: ModuleType, clock: int, salt: int) -> None:
    """Make a token library's constructor see a fixed clock and salt, as its own tests pin them."""
    monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: float(clock)))
    fixed_random = SimpleNamespace(randint=lambda low, high: salt)
    monkeypatch.setattr(module, "secrets", SimpleNamespace(SystemRandom=lambda: fixed_random))


class TestChannelNameError:
    """channel_name_error and CHANNEL_NAME_RE encode Agora's channel-name rule."""

    def test_accepts_seed_channel_form(self) -> None:
        """The seed data's `group<id>_user<a>_user<b>_<ms>` form is a valid name."""
        assert channel_name_error(SEED_CHANNEL) is None

    def test_accepts_exactly_63_bytes(self) -> None:
        """A 63-byte name is the longest that is still under 64 bytes."""
        assert channel_name_error("a" * 63) is None

    def test_rejects_64_bytes(self) -> None:
        """A 64-byte name is too long."""
        assert channel_name_error("a" * 64) is not None

    def test_rejects_empty(self) -> None:
        """An empty name is refused."""
        assert channel_name_error("") is not None

    @pytest.mark.parametrize("value", [None, 123, b"group1", ["group1"]])
    def test_rejects_non_strings(self, value: object) -> None:
        """Anything that is not a str is refused, bytes included."""
        assert channel_name_error(value) is not None

    @pytest.mark.parametrize(
        "name", ["a/b", "a*b", 'a"b', "a'b", "a`b", "a\\b", "a\nb", "abc\n", "\tabc", "통화방", "café"]
    )
    def test_rejects_characters_outside_agoras_set(self, name: str) -> None:
        """Slashes, stars, quotes, backslashes, control characters and non-ASCII letters are refused."""
        assert channel_name_error(name) is not None

    @pytest.mark.parametrize("symbol", [*AGORA_SYMBOLS, " "])
    def test_accepts_each_documented_symbol(self, symbol: str) -> None:
        """Every punctuation character and the space from Agora's list is allowed."""
        assert channel_name_error(f"a{symbol}b") is None

    def test_multibyte_name_is_measured_in_bytes(self) -> None:
        """A name under 64 characters but over 64 UTF-8 bytes is refused for length, not only charset."""
        error = channel_name_error("가" * 30)
        assert error is not None and "bytes" in error

    def test_regex_agrees_with_the_function(self) -> None:
        """The exported regex, used with fullmatch, accepts and rejects the same boundary cases."""
        assert CHANNEL_NAME_RE.fullmatch("a" * 63)
        assert not CHANNEL_NAME_RE.fullmatch("a" * 64)
        assert not CHANNEL_NAME_RE.fullmatch("")
        assert not CHANNEL_NAME_RE.fullmatch("abc\n")

    def test_message_does_not_echo_the_name(self) -> None:
        """The message describes the rule without repeating the offending value."""
        error = channel_name_error("s3cr3t-value/with-slash")
        assert error is not None and "s3cr3t" not in error


class TestAccountError:
    """account_error applies Agora's user-account rule: 1-255 bytes from the channel character set."""

    def test_accepts_max_length(self) -> None:
        """A 255-byte account is allowed."""
        assert account_error("u" * MAX_ACCOUNT_BYTES) is None
        assert ACCOUNT_RE.fullmatch("u" * MAX_ACCOUNT_BYTES)

    def test_rejects_over_max_length(self) -> None:
        """A 256-byte account is refused."""
        assert account_error("u" * (MAX_ACCOUNT_BYTES + 1)) is not None

    @pytest.mark.parametrize("value", ["", None, 7, "user/1", "사용자"])
    def test_rejects_invalid(self, value: object) -> None:
        """Empty, non-string, slash and non-ASCII accounts are refused."""
        assert account_error(value) is not None


class TestEnumsAndConstants:
    """Role, TokenVersion and the limits have the values other modules and clients rely on."""

    def test_role_values(self) -> None:
        """Roles serialise as lower-case words and compare equal to them."""
        assert Role.PUBLISHER == "publisher"
        assert Role.SUBSCRIBER == "subscriber"
        assert Role("publisher") is Role.PUBLISHER

    def test_token_versions(self) -> None:
        """Exactly the two token formats exist."""
        assert {v.value for v in TokenVersion} == {"006", "007"}

    def test_limits(self) -> None:
        """The limits are a day of expiry, 255-byte accounts and unsigned 32-bit uids."""
        assert (MAX_EXPIRE_S, MAX_ACCOUNT_BYTES, MAX_UID) == (86400, 255, 4294967295)


class TestAgoraVectors006:
    """The 006 library and build_rtc_token reproduce Agora's AccessTokenTest vectors."""

    def test_library_reproduces_uid_vector(self) -> None:
        """AccessToken with salt/ts pinned the way Agora's test_token does yields the expected token."""
        key = LIB_006.AccessToken(VEC_APP_ID, VEC_CERT, VEC_CHANNEL, VEC_UID)
        key.salt, key.ts = VEC_SALT, VEC_TS
        key.messages[LIB_006.kJoinChannel] = VEC_006_EXPIRE_TS
        assert key.build() == VEC_006_TOKEN

    def test_library_reproduces_uid_0_vector(self) -> None:
        """Uid 0 yields Agora's test_token_uid_0 token, whose uid slot is empty."""
        key = LIB_006.AccessToken(VEC_APP_ID, VEC_CERT, VEC_CHANNEL, 0)
        key.salt, key.ts = VEC_SALT, VEC_TS
        key.messages[LIB_006.kJoinChannel] = VEC_006_EXPIRE_TS
        assert key.build() == VEC_006_TOKEN_UID_0
        assert decode_006(VEC_006_TOKEN_UID_0).uid_crc == crc32_of("") == 0

    def test_decoder_reads_vector(self) -> None:
        """The test decoder recovers the vector's fields and verifies its signature independently."""
        token = decode_006(VEC_006_TOKEN)
        assert (token.app_id, token.salt, token.ts) == (VEC_APP_ID, VEC_SALT, VEC_TS)
        assert token.privileges == {PRIVILEGE_JOIN_CHANNEL: VEC_006_EXPIRE_TS}
        assert verify_006(token, app_certificate=VEC_CERT, channel=VEC_CHANNEL, uid=str(VEC_UID))

    @pytest.mark.parametrize(
        ("uid", "account"), [(VEC_UID, None), (None, str(VEC_UID))], ids=["uid", "numeric-account"]
    )
    def test_build_rtc_token_reproduces_vector(
        self, monkeypatch: pytest.MonkeyPatch, uid: int | None, account: str | None
    ) -> None:
        """With the library's clock and salt pinned, a subscriber token is byte-identical to the vector."""
        # The 006 library sets ts = clock + 24 h, so this clock gives the vector's ts.
        _pin_library_clock(monkeypatch, LIB_006, VEC_TS - 24 * 3600, VEC_SALT)
        token = build_rtc_token(
            app_id=VEC_APP_ID,
            app_certificate=VEC_CERT,
            channel=VEC_CHANNEL,
            uid=uid,
            account=account,
            role=Role.SUBSCRIBER,
            expire_s=600,
            now=VEC_006_EXPIRE_TS - 600,
        )
        assert token == VEC_006_TOKEN


class TestAgoraVectors007:
    """The 007 library and build_rtc_token reproduce Agora's AccessToken2Test vectors."""

    @pytest.mark.parametrize(
        ("identity", "expected"),
        [(VEC_UID, VEC_007_TOKEN), (str(VEC_UID), VEC_007_TOKEN), (0, VEC_007_TOKEN_UID_0)],
        ids=["test_service_rtc", "test_service_rtc_account", "test_service_rtc_uid_0"],
    )
    def test_library_reproduces_vectors(self, identity: int | str, expected: str) -> None:
        """AccessToken with issue_ts and salt pinned the way Agora's tests do yields the expected tokens."""
        key = LIB_007.AccessToken(VEC_APP_ID, VEC_CERT, issue_ts=VEC_TS, expire=VEC_007_EXPIRE)
        key._AccessToken__salt = VEC_SALT
        service = LIB_007.ServiceRtc(VEC_CHANNEL, identity)
        service.add_privilege(LIB_007.ServiceRtc.kPrivilegeJoinChannel, VEC_007_EXPIRE)
        key.add_service(service)
        assert key.build() == expected

    def test_decoder_reads_vector(self) -> None:
        """The test decoder recovers the vector's fields and verifies its signature independently."""
        token = decode_007(VEC_007_TOKEN)
        assert (token.app_id, token.issue_ts, token.expire, token.salt) == (
            VEC_APP_ID,
            VEC_TS,
            VEC_007_EXPIRE,
            VEC_SALT,
        )
        assert (token.rtc.channel, token.rtc.uid) == (VEC_CHANNEL, str(VEC_UID))
        assert token.rtc.privileges == {PRIVILEGE_JOIN_CHANNEL: VEC_007_EXPIRE}
        assert verify_007(token, app_certificate=VEC_CERT)

    def test_decoder_reads_uid_0_vector_as_empty_uid(self) -> None:
        """Uid 0 is carried as an empty uid, Agora's wildcard that any user may join with."""
        assert decode_007(VEC_007_TOKEN_UID_0).rtc.uid == ""

    @pytest.mark.parametrize(
        ("uid", "account"), [(VEC_UID, None), (None, str(VEC_UID))], ids=["uid", "numeric-account"]
    )
    def test_build_rtc_token_reproduces_vector(
        self, monkeypatch: pytest.MonkeyPatch, uid: int | None, account: str | None
    ) -> None:
        """With the library's clock and salt pinned, a subscriber token is byte-identical to the vector."""
        _pin_library_clock(monkeypatch, LIB_007, VEC_TS, VEC_SALT)
        token = build_rtc_token(
            app_id=VEC_APP_ID,
            app_certificate=VEC_CERT,
            channel=VEC_CHANNEL,
            uid=uid,
            account=account,
            role=Role.SUBSCRIBER,
            expire_s=VEC_007_EXPIRE,
            now=VEC_TS,
            version="007",
        )
        assert token == VEC_007_TOKEN


ROLE_PRIVILEGES = [(Role.SUBSCRIBER, SUBSCRIBER_PRIVILEGES), (Role.PUBLISHER, PUBLISHER_PRIVILEGES)]
IDENTITIES = [(4242, None, "4242"), (MAX_UID, None, str(MAX_UID)), (None, "user_7:care", "user_7:care")]


class TestBuildRtcToken006:
    """build_rtc_token's 006 tokens carry the right channel, identity, privileges and expiry."""

    @pytest.mark.parametrize(("role", "privileges"), ROLE_PRIVILEGES)
    @pytest.mark.parametrize(("uid", "account", "uid_str"), IDENTITIES)
    def test_contents(
        self,
        role: Role,
        privileges: frozenset[int],
        uid: int | None,
        account: str | None,
        uid_str: str,
    ) -> None:
        """Every privilege the role grants, and only those, expires at now + expire_s."""
        now = 1_750_000_000
        token = decode_006(_issue(uid=uid, account=account, role=role, expire_s=3600, now=now))
        assert token.app_id == APP_ID
        assert token.names(SEED_CHANNEL, uid_str)
        assert token.privileges == dict.fromkeys(privileges, now + 3600)

    def test_signature_checks(self) -> None:
        """The signature verifies with the issuing certificate and fails with another, or another name."""
        token = decode_006(_issue(uid=4242))
        assert verify_006(token, app_certificate=CERT, channel=SEED_CHANNEL, uid="4242")
        assert not verify_006(token, app_certificate=OTHER_CERT, channel=SEED_CHANNEL, uid="4242")
        assert not verify_006(token, app_certificate=CERT, channel=SEED_CHANNEL, uid="4243")
        assert not verify_006(token, app_certificate=CERT, channel="group2", uid="4242")

    def test_library_picks_salt_and_ts(self) -> None:
        """Salt is random per token and ts is the library's clock + 24 h, independent of `now`."""
        before = int(time.time())
        first, second = decode_006(_issue(now=1000)), decode_006(_issue(now=1000))
        after = int(time.time())
        assert first.salt != second.salt
        assert 1 <= first.salt <= 99_999_999
        assert before + 86400 <= first.ts <= after + 86400
        assert first.privileges == {PRIVILEGE_JOIN_CHANNEL: 1600}

    def test_max_expiry_is_accepted(self) -> None:
        """expire_s of a full day is within bounds and lands in the token."""
        token = decode_006(_issue(expire_s=MAX_EXPIRE_S, now=2_000_000_000))
        assert token.privileges == {PRIVILEGE_JOIN_CHANNEL: 2_000_000_000 + MAX_EXPIRE_S}


class TestBuildRtcToken007:
    """build_rtc_token's 007 tokens carry the right channel, identity, privileges and expiry."""

    @pytest.mark.parametrize(("role", "privileges"), ROLE_PRIVILEGES)
    @pytest.mark.parametrize(("uid", "account", "uid_str"), IDENTITIES)
    def test_contents(
        self,
        role: Role,
        privileges: frozenset[int],
        uid: int | None,
        account: str | None,
        uid_str: str,
    ) -> None:
        """The RTC service names the channel and identity; token and privileges last expire_s from issue."""
        before = int(time.time())
        raw = _issue(uid=uid, account=account, role=role, expire_s=3600, now=before, version="007")
        after = int(time.time())
        token = decode_007(raw)
        assert token.app_id == APP_ID
        assert set(token.services) == {1}
        assert (token.rtc.channel, token.rtc.uid) == (SEED_CHANNEL, uid_str)
        assert token.rtc.privileges == dict.fromkeys(privileges, 3600)
        assert token.expire == 3600
        assert before + 3600 <= token.issue_ts + token.expire <= after + 3600

    def test_signature_checks(self) -> None:
        """The signature verifies with the issuing certificate and fails with another."""
        token = decode_007(_issue(version="007"))
        assert verify_007(token, app_certificate=CERT)
        assert not verify_007(token, app_certificate=OTHER_CERT)

    def test_version_accepts_enum_member(self) -> None:
        """TokenVersion members work wherever the version string does."""
        assert _issue(version=TokenVersion.V007).startswith("007")


class TestBuildRtcTokenArguments:
    """build_rtc_token refuses arguments Agora would reject or that would weaken the token."""

    def test_default_version_is_006(self) -> None:
        """Without a version the 006 format is issued."""
        arguments: dict[str, Any] = {
            "app_id": APP_ID,
            "app_certificate": CERT,
            "channel": SEED_CHANNEL,
            "uid": 1,
            "account": None,
            "role": Role.PUBLISHER,
            "expire_s": 60,
            "now": 0,
        }
        assert build_rtc_token(**arguments).startswith("006")

    @pytest.mark.parametrize(("uid", "account"), [(None, None), (5, "user5")])
    @pytest.mark.parametrize("version", ["006", "007"])
    def test_exactly_one_identity(self, uid: int | None, account: str | None, version: str) -> None:
        """Giving neither or both of uid and account raises ValueError."""
        with pytest.raises(ValueError, match="exactly one"):
            _issue(uid=uid, account=account, version=version)

    @pytest.mark.parametrize("version", ["006", "007"])
    def test_uid_0_is_refused(self, version: str) -> None:
        """Uid 0 would make the library issue a wildcard token, so it is refused."""
        with pytest.raises(ValueError, match="uid"):
            _issue(uid=0, version=version)

    @pytest.mark.parametrize("uid", [-1, MAX_UID + 1, True, 1.0, "42"])
    def test_bad_uids(self, uid: object) -> None:
        """Negative, over-32-bit, bool, float and string uids are refused."""
        with pytest.raises(ValueError, match="uid"):
            _issue(uid=uid)

    @pytest.mark.parametrize("account", ["", "a" * (MAX_ACCOUNT_BYTES + 1), "user/1", "사용자"])
    def test_bad_accounts(self, account: str) -> None:
        """Empty (another wildcard), overlong and off-charset accounts are refused."""
        with pytest.raises(ValueError, match="account"):
            _issue(uid=None, account=account)

    def test_max_length_account_is_accepted(self) -> None:
        """A 255-byte account is issued and carried whole in a 007 token."""
        account = "a" * MAX_ACCOUNT_BYTES
        assert decode_007(_issue(uid=None, account=account, version="007")).rtc.uid == account

    @pytest.mark.parametrize("channel", ["", "a" * 64, "a/b", "통화"])
    def test_bad_channels(self, channel: str) -> None:
        """Channels failing channel_name_error are refused."""
        with pytest.raises(ValueError, match="channel name"):
            _issue(channel=channel)

    @pytest.mark.parametrize("expire_s", [0, -1, MAX_EXPIRE_S + 1, True, 60.0])
    def test_bad_expiry(self, expire_s: object) -> None:
        """Expiry must be a whole number of seconds from 1 to a day."""
        with pytest.raises(ValueError, match="expire_s"):
            _issue(expire_s=expire_s)

    @pytest.mark.parametrize("now", [-1, 1.5, None])
    def test_bad_now(self, now: object) -> None:
        """`now` must be a non-negative integer timestamp."""
        with pytest.raises(ValueError, match="now"):
            _issue(now=now)

    def test_expiry_must_fit_32_bits(self) -> None:
        """A privilege expiry past 2106 does not fit the token's uint32 field and is refused."""
        with pytest.raises(ValueError, match="32-bit"):
            _issue(now=2**32 - 10, expire_s=60)

    @pytest.mark.parametrize("version", ["005", "7", "", "008"])
    def test_bad_version(self, version: str) -> None:
        """Only "006" and "007" are issued."""
        with pytest.raises(ValueError, match="version"):
            _issue(version=version)

    def test_bad_role(self) -> None:
        """A role outside Role is refused rather than defaulting to some privilege set."""
        with pytest.raises(ValueError, match="role"):
            _issue(role="admin")

    def test_role_accepts_plain_string(self) -> None:
        """The role's string value is accepted and means the same as the member."""
        assert set(decode_007(_issue(role="publisher", version="007")).rtc.privileges) == PUBLISHER_PRIVILEGES

    @pytest.mark.parametrize("field", ["app_id", "app_certificate"])
    @pytest.mark.parametrize("value", ["", "0123456789abcdef", "0123456789abcdef0123456789abcdeZ", "s3cr3t-" * 5])
    @pytest.mark.parametrize("version", ["006", "007"])
    def test_bad_credentials_are_refused_without_echo(self, field: str, value: str, version: str) -> None:
        """Malformed app id or certificate raise ValueError naming the field but never the value."""
        with pytest.raises(ValueError, match=field) as caught:
            _issue(**{field: value}, version=version)
        if value:
            assert value not in str(caught.value)
        assert "s3cr3t" not in str(caught.value)
