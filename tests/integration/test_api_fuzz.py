"""Schemathesis over every operation of /api/openapi.json, against token_http on the Firestore emulator.

token_http runs in this process (its real composition root, `token_http.main.bootstrap`) on loopback ports,
on a thread of its own, so the waits for the watcher and the recorder (which do not run here) can be cut
from seconds to a fiftieth: a request that waits answers with its documented 503 or null push result. Each
operation is fuzzed three ways: MEMHARBOR_AUTH=none, and with emulator-format ID tokens of an admin and of
a participant of the seeded calls. Cases are schema-conforming and schema-violating (Schemathesis' positive
and negative modes); most are aimed at seeded data (a care group and its calls: ringing, live, ended, and one
an admin wrote outside the data contract), so the routes reach Firestore documents and not only their 404s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from memharbor.devtokens import emulator_id_token
from memharbor.emulators import EmulatorSet, free_port
from memharbor.settings import http_settings
from tests.support.firestore_rest import FirestoreRest
from tests.support.loop_thread import LoopThread
from token_http import call_routes, openapi, recording_routes
from token_http.main import bootstrap

# Cases per operation (each sent three ways): generating one costs tens of milliseconds, sending it a few.
EXAMPLES = 20
USER, OTHER = "fuzz-user-0000000000000000001", "fuzz-peer-0000000000000000002"
GROUP = "fuzz-group"
PENDING, LIVE, ENDED, MALFORMED = "fuzz-pending", "fuzz-live", "fuzz-ended", "fuzz-malformed"
SEEDED = (PENDING, LIVE, ENDED, MALFORMED)
CHANNELS = {PENDING: f"{GROUP}_pending", LIVE: f"{GROUP}_live", ENDED: f"{GROUP}_ended"}
# Responses must pass these; a 5xx is allowed only as a 503 the operation documents (see `_server_error`).
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [
    (method.upper(), path)
    for path, item in openapi.document()["paths"].items()
    for method in item
    if method in {"get", "post", "put", "patch", "delete"}
]


# ---------------------------------------------------------------------------------------------- harness


@dataclass(frozen=True)
class Pass:
    """One way of calling the service: which server, and as whom."""

    name: str
    base: str
    authorization: str | None


@dataclass
class Harness:
    """The servers and the schema they serve."""

    passes: dict[str, Pass]
    schema: Any


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _app(emulators: EmulatorSet, auth: str) -> web.Application:
    settings = http_settings(
        {
            **emulators.env(),
            "AGORA_APP_ID": "0123456789abcdef0123456789abcdef",
            "AGORA_APP_CERT": "fedcba9876543210fedcba9876543210",
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
            "MEMHARBOR_AUTH": auth,
            # The fuzzer is one user sending hundreds of requests: the per-user budgets would answer most
            # of them 429 and leave the routes behind them unexplored.
            "MEMHARBOR_RATE_LIMIT": "1000000/minute",
            "MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER": "1000",
        }
    )
    return bootstrap(settings)


def _seed(emulators: EmulatorSet) -> None:
    """Their care group and four calls: ringing, live, ended, and one an admin wrote outside the contract."""
    db = FirestoreRest(emulators.firestore.address, emulators.project_id).as_owner()
    now = datetime.now(UTC)
    base = {"groupId": GROUP, "callerId": OTHER, "receiverId": USER, "updatedAt": now}
    docs: dict[str, dict[str, Any]] = {
        f"groups/{GROUP}": {"memberIds": [USER, OTHER]},
        f"calls/{PENDING}": {
            **base,
            "callId": PENDING,
            "status": "pending",
            "createdAt": now,
            "channelName": CHANNELS[PENDING],
        },
        f"calls/{LIVE}": {
            **base,
            "callId": LIVE,
            "status": "accepted",
            "createdAt": now,
            "answeredAt": now,
            "channelName": CHANNELS[LIVE],
        },
        f"calls/{ENDED}": {
            **base,
            "callId": ENDED,
            "status": "ended",
            "createdAt": now - timedelta(minutes=5),
            "answeredAt": now - timedelta(minutes=4),
            "endedAt": now,
            "channelName": CHANNELS[ENDED],
        },
        f"calls/{MALFORMED}": {
            "callId": MALFORMED,
            "receiverId": USER,
            "status": 5,
            "groupId": {"id": GROUP},
            "createdAt": "yesterday",
            "durationSec": "10",
            "humanKeywords": ["ok", 3],
            "reviewCount": "2",
        },
    }
    try:
        for path, fields in docs.items():
            result = db.set(path, fields)
            assert result.ok, result
    finally:
        db.close()


@pytest.fixture(scope="module")
def harness(emulators: EmulatorSet) -> Iterator[Harness]:
    """token_http twice (open, and Firebase ID tokens) on loopback ports, with short waits, and seeded calls."""
    emulators.wipe()
    _seed(emulators)
    loop = LoopThread("fuzz-token-http")
    runners: list[web.AppRunner] = []
    with pytest.MonkeyPatch.context() as patch:
        # bootstrap exports the Auth emulator's address to the environment, where Firebase Admin reads it.
        patch.setenv("FIREBASE_AUTH_EMULATOR_HOST", os.environ.get("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099"))
        patch.setattr(call_routes, "PUSH_WAIT_S", 0.02)
        patch.setattr(recording_routes, "START_WAIT_S", 0.02)
        patch.setattr(recording_routes, "STOP_WAIT_S", 0.02)
        try:
            ports = {}
            for auth in ("none", "firebase"):
                ports[auth] = free_port()
                runners.append(loop.run(_serve(_app(emulators, auth), ports[auth]), timeout=30))
            open_base, firebase_base = (f"http://127.0.0.1:{ports[a]}" for a in ("none", "firebase"))
            project = emulators.project_id
            passes = {
                "open": Pass("open", open_base, None),
                "admin": Pass("admin", firebase_base, "Bearer " + emulator_id_token(project, "fuzz-admin", admin=True)),
                "user": Pass("user", firebase_base, "Bearer " + emulator_id_token(project, USER)),
            }
            # from_dict, not from_url: from_url leaves out the operation that serves the document itself.
            served = requests.get(f"{open_base}/api/openapi.json", timeout=10)
            served.raise_for_status()
            schema = schemathesis.openapi.from_dict(served.json())
            yield Harness(passes, schema)
        finally:
            for runner in runners:
                loop.run(runner.cleanup(), timeout=30)
            loop.stop()
            emulators.wipe()  # hundreds of fuzzed calls and recording requests are no other module's business


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One keep-alive session for every request of the module."""
    with requests.Session() as session:
        yield session


# ---------------------------------------------------------------------------------------------- cases


def _cases(operation: Any) -> st.SearchStrategy[Any]:
    """Schema-conforming cases, and schema-violating ones where the operation has an input to violate."""
    modes = [operation.as_strategy(GenerationMode.POSITIVE)]
    if operation.path_parameters or operation.query or operation.body:
        modes.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(modes)


def _aim(case: Any, call_id: str | None) -> None:
    """Point a generated case at a seeded call: its id, its channel, its group and people, where the case has them."""
    if call_id is None:
        return
    if "call_id" in (case.path_parameters or {}):
        case.path_parameters["call_id"] = call_id
    if not isinstance(case.body, dict):
        return
    seeded = {
        "call_id": call_id,
        "channel": CHANNELS.get(call_id),
        "group_id": GROUP,
        "caller_id": USER,
        "receiver_id": OTHER,
    }
    for field in seeded.keys() & case.body.keys():
        if seeded[field] is not None:
            case.body[field] = seeded[field]


def _server_error(case: Any, status: int) -> None:
    """A 5xx is a failure unless it is a 503 the operation documents (an unavailable dependency)."""
    if status >= 500:
        documented = case.operation.definition.raw.get("responses", {})
        assert status == 503 and "503" in documented, f"{case.operation.label}: {status}"


# ---------------------------------------------------------------------------------------------- tests


class TestSchemaCoverage:
    """The fuzzer covers what the service serves."""

    def test_every_served_operation_is_fuzzed(self, harness: Harness) -> None:
        """The operations of the served document are exactly those parametrized below."""
        served = {(op.ok().method.upper(), op.ok().path) for op in harness.schema.get_all_operations()}
        assert served == set(OPERATIONS)
        assert len(OPERATIONS) >= 14


class TestFuzzEveryOperation:
    """Schemathesis cases for one operation: no undocumented status, no 5xx but a documented 503, bodies fit."""

    @pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
    def test_operation(self, harness: Harness, http: requests.Session, method: str, path: str) -> None:
        """Every generated request, sent open, as an admin and as a user, gets a documented answer, never a 500."""
        operation = harness.schema[path][method]
        seen: dict[str, dict[int, int]] = {name: {} for name in harness.passes}

        # Generating a case costs more than sending it: each one goes to all three passes.
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,  # the same cases every run: `make test` passes or fails for a reason
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        # A third of the cases keep what was generated; the rest name a seeded call (and its channel and people).
        @given(case=_cases(operation), aim=st.sampled_from([None, None, *SEEDED]))
        def run(case: Any, aim: str | None) -> None:
            _aim(case, aim)
            for chosen in harness.passes.values():
                headers = {"Authorization": chosen.authorization} if chosen.authorization else {}
                response = case.call(base_url=chosen.base, session=http, headers=headers, timeout=15)
                counts = seen[chosen.name]
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
                _server_error(case, response.status_code)
                checks = CHECKS if response.status_code == 503 else [not_a_server_error, *CHECKS]
                case.validate_response(response, checks=checks, headers=headers)

        run()
        # Hypothesis stops early once it has tried every distinct case (an operation without inputs has few).
        assert all(seen.values()), seen
