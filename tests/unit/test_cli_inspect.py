"""Unit tests of `memharbor inspect`: its arguments, and what it prints and returns over an in-memory timeline."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from google.auth.exceptions import DefaultCredentialsError

from memharbor import cli
from memharbor.errors import Unavailable
from memharbor.timeline import Event, EventKind, render_table, to_json
from tests.support.fake_timeline import FakeTimeline

T0 = datetime(2026, 2, 3, 12, 0, 0, tzinfo=UTC)
CALL = {
    "callId": "c1",
    "groupId": "family",
    "callerId": "alice",
    "receiverId": "mom",
    "status": "missed",
    "createdAt": T0,
    "updatedAt": T0,
}


@pytest.fixture
def store() -> FakeTimeline:
    """A timeline store holding call c1 with one event."""
    fake = FakeTimeline(now=lambda: T0)
    fake.calls["c1"] = dict(CALL)
    fake.events["c1"] = [("e1", {"kind": "call.seen", "worker": "w1", "t": T0.timestamp(), "detail": {}, "at": T0})]
    return fake


async def inspect(store: FakeTimeline, call_id: str = "c1", as_json: bool = False) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one inspect_call."""
    out, err = io.StringIO(), io.StringIO()
    status = await cli.inspect_call(store, call_id, as_json, out, err)
    return status, out.getvalue(), err.getvalue()


class TestInspectCall:
    """inspect_call: the command's work once its adapters are composed."""

    async def test_table(self, store: FakeTimeline) -> None:
        """A found call prints render_table's text and returns 0, with nothing on stderr."""
        status, out, err = await inspect(store)
        assert (status, err) == (0, "")
        assert out == render_table(await store.read("c1"))

    async def test_json(self, store: FakeTimeline) -> None:
        """--json prints to_json of the timeline as one JSON document."""
        await store.append("c1", [Event(EventKind.RING_TIMEOUT, {"lateMs": 5}, "w1", T0.timestamp() + 60)])
        status, out, _ = await inspect(store, as_json=True)
        assert status == 0
        assert json.loads(out) == json.loads(json.dumps(to_json(await store.read("c1"))))
        assert [e["kind"] for e in json.loads(out)["events"]] == ["call.seen", "ring.timeout"]

    async def test_missing_call(self, store: FakeTimeline) -> None:
        """An unknown call prints one line on stderr, nothing on stdout, and returns EXIT_NO_CALL."""
        status, out, err = await inspect(store, "nope")
        assert (status, out) == (cli.EXIT_NO_CALL, "")
        assert err == "memharbor inspect: no call nope (calls/nope does not exist)\n"

    @pytest.mark.parametrize("failure", [Unavailable("TimeoutError"), DefaultCredentialsError("no credentials\nmore")])
    async def test_firestore_unreachable(self, store: FakeTimeline, failure: Exception) -> None:
        """An outage or missing credentials is one line on stderr (no traceback) and EXIT_UNAVAILABLE."""
        store.failure = failure
        status, out, err = await inspect(store)
        assert (status, out) == (cli.EXIT_UNAVAILABLE, "")
        assert err.startswith("memharbor inspect: Firestore did not answer (")
        assert err.count("\n") == 1


class TestInspectArguments:
    """The inspect subcommand's arguments: refusals are usage errors (exit 2)."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["inspect"],
            ["inspect", "a/b"],
            ["inspect", "__x__"],
            ["inspect", "c1", "--timeout", "0"],
            ["inspect", "c1", "--timeout", "x"],
        ],
    )
    def test_usage_errors(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """A missing or malformed call id, or a bad timeout, exits 2 with argparse's message."""
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 2
        assert "usage: memharbor inspect" in capsys.readouterr().err

    def test_inspect_is_a_subcommand(self) -> None:
        """inspect is one of the CLI's runners."""
        assert "inspect" in cli.RUNNERS

    def test_missing_project_is_a_settings_error(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a Firebase project id inspect names the setting on one line and exits 2."""
        for name in ("FIREBASE_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MEMHARBOR_ENV_FILE", "/nonexistent/memharbor-test.env")
        assert cli.main(["inspect", "c1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("memharbor inspect: setting FIREBASE_PROJECT_ID")
        assert err.count("\n") == 1
