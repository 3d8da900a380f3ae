"""Chaos soak: calls and recordings under steady traffic while workers, Firestore, Storage and push fail.

Run from the repository root (`make soak` runs the defaults):

    .venv/bin/python bench/soak.py [--rate 5] [--duration 600] [--ring-timeout 4] [--seed 1] [--json FILE]

Cast: the Firestore and Storage emulators, two watchers and two recorders (simulated participants playing
two tones) reaching both emulators through TCP proxies the soak can cut, token_http, and the local APNs
and FCM servers of tests/support (the watchers' real transports). Traffic: calls at `--rate`, half
written as apps write them (Firestore REST under the security rules, as the caller and the receiver),
half through the REST shim (/api/call/*); outcomes accepted-and-ended (some with `record: true`, some
reviewed), declined, cancelled, missed by the server's timeout and by the caller's timer; half the
receivers have three device documents (2 iOS, 1 Android), the others the legacy single token. Faults on
a seeded schedule, printed first: SIGKILL (with a restart) and SIGSTOP (longer than the lease) of a
watcher and of a recorder, the Firestore connection of the workers cut, APNs/FCM answering 503 or
hanging past the client's timeout, Storage cut during uploads. After the traffic and a settle period
the auditor (bench/soak_audit.py) checks every call, push and recording; the table shows each
invariant's violations. Exit codes: 0 none, 1 a violation, 2 set-up failed or interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import wave
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the local servers and process helpers live in tests/support

# google-cloud-storage ships no py.typed: mypy takes this module import as Any, but reports
# `from google.cloud import storage` as a missing attribute of the (typed) google.cloud namespace.
import google.cloud.storage as storage  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import firestore  # noqa: E402
from google.cloud.firestore_v1.base_query import FieldFilter  # noqa: E402

from bench.calls_bench import read_cpu_s, read_rss_kb  # noqa: E402
from bench.soak_audit import (  # noqa: E402
    INVARIANTS,
    Evidence,
    FaultWindow,
    PushSeen,
    Violation,
    WavSeen,
    audit,
)
from memharbor import wav  # noqa: E402
from memharbor.devices import LEGACY_KEY, Device  # noqa: E402
from memharbor.emulators import EmulatorError, EmulatorSet, free_port  # noqa: E402
from memharbor.groups import group_document  # noqa: E402
from memharbor.repositories.calls import new_call_id  # noqa: E402
from tests.support import apns_server, fcm_server  # noqa: E402
from tests.support.firestore_rest import FirestoreRest, Result  # noqa: E402
from tests.support.http_process import Api, start_http  # noqa: E402
from tests.support.push_fixtures import BUNDLE  # noqa: E402
from tests.support.push_keys import make_apns_key, make_service_account, make_tls  # noqa: E402
from tests.support.recorders import RecorderProcess  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402
from tests.support.watchers import WatcherProcess  # noqa: E402

PROJECT = "demo-memharbor-soak"
FCM_PROJECT = "demo-memharbor-fcm"
TWO_TONES = [{"uid": "101", "tone_hz": 440}, {"uid": "202", "tone_hz": 1000}]
WATCHER_LEASE_S = 15.0  # watcher/decisions.py ReactorConfig.lease_s (not a setting)
RECORDER_LEASE_S = 6.0  # MEMHARBOR_RECORDER_LEASE_S for the soak: a freeze outlasts it in seconds
PUSH_TIMEOUT_S = 5.0  # the transports' request timeout (watcher/apns.py, watcher/fcm.py)
HANG_S = PUSH_TIMEOUT_S + 2  # a hung push service answers after the client gave up
FREEZE_MARGIN_S = 5.0
OUTCOMES = (("ended", 0.35), ("declined", 0.15), ("cancelled", 0.15), ("timeout", 0.25), ("caller_missed", 0.10))
FAULT_KINDS = (
    "watcher_kill",
    "watcher_stop",
    "recorder_kill",
    "recorder_stop",
    "firestore_cut",
    "storage_cut",
    "apns_5xx",
    "apns_hang",
    "fcm_5xx",
    "fcm_hang",
)
FAULT_LENGTH_S = {
    "watcher_kill": 2.0,  # down before the restart
    "watcher_stop": WATCHER_LEASE_S + FREEZE_MARGIN_S,
    "recorder_kill": 2.0,
    "recorder_stop": RECORDER_LEASE_S + FREEZE_MARGIN_S,
    "firestore_cut": 5.0,
    "storage_cut": 10.0,
    "apns_5xx": 6.0,
    "apns_hang": 6.0,
    "fcm_5xx": 6.0,
    "fcm_hang": 6.0,
}
FAULT_SPACING_S = 12.0  # one fault every this many seconds on average (at least one of each kind)
SETTLE_QUIET_S = 3.0  # after everything is final, for pushes still in flight
RSS_EVERY_S = 2.0
RAMP_S = 20.0


def say(message: str) -> None:
    """One progress line on stderr."""
    print(f"[soak] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    """What one run does."""

    rate: float
    duration: float
    ring_timeout: float
    seed: int
    pairs: int
    settle: float
    json_path: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=5.0, help="calls placed per second (default 5)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic and faults (default 600)")
    parser.add_argument("--ring-timeout", type=float, default=4.0, help="MEMHARBOR_RING_TIMEOUT_S (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the traffic mix and the fault schedule")
    parser.add_argument("--pairs", type=int, default=40, help="caller/receiver pairs (default 40)")
    parser.add_argument("--settle", type=float, default=90.0, help="at most this long for everything to finish")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration < 30 or args.ring_timeout < 3 or args.pairs < 2:
        parser.error("--rate > 0, --duration >= 30, --ring-timeout >= 3 and --pairs >= 2")
    return Options(args.rate, args.duration, args.ring_timeout, args.seed, args.pairs, args.settle, args.json)


# ---------------------------------------------------------------------------------------------------
# Push services that fail on command: 503 for everyone, or answers held back past the client's timeout
# ---------------------------------------------------------------------------------------------------


class ChaosApns(apns_server.ApnsServer):
    """The local APNs; while `outage` is set every request that passes Apple's checks gets 503."""

    outage = False

    def _scripted(self, token: str) -> apns_server._Verdict:
        if self.outage:
            return apns_server._Verdict(503, apns_server.REASONS[503])
        return super()._scripted(token)


class ChaosFcm(fcm_server.FcmServer):
    """The local FCM; while `outage` is set every valid send gets 503 UNAVAILABLE."""

    outage = False

    def _outcome(self, token: str) -> None:
        if self.outage:
            raise fcm_server._Reject(503, "The service is unavailable.", "UNAVAILABLE")
        super()._outcome(token)


# ---------------------------------------------------------------------------------------------------
# Workers: a slot is one watcher or recorder, killed and restarted, frozen and thawed
# ---------------------------------------------------------------------------------------------------


class Slot:
    """One worker position; a restart makes a new process (a new instance id, as a rescheduled pod)."""

    def __init__(
        self,
        name: str,
        make: Callable[[], WatcherProcess | RecorderProcess],
        db: firestore.Client,
        spawner: ThreadPoolExecutor,
    ) -> None:
        self.name = name
        self._make = make
        self._db = db
        # Workers run under `setpriv --pdeathsig KILL`, which fires when the *thread* that started them ends:
        # restarts are started on one long-lived thread, never on a fault's own short-lived thread.
        self._spawner = spawner
        self.current = self._start()
        self.retired: list[WatcherProcess | RecorderProcess] = []

    def _start(self) -> WatcherProcess | RecorderProcess:
        return self._spawner.submit(lambda: self._make().start(self._db, timeout=90)).result()

    def pid(self) -> int | None:
        """The live process's pid, None while it is down."""
        proc = self.current.process.process
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill_and_restart(self, down_s: float) -> None:
        """SIGKILL, stay down `down_s`, start a fresh process and wait for its heartbeat."""
        self.current.kill()
        self.retired.append(self.current)
        time.sleep(down_s)
        self.current = self._start()

    def freeze(self, seconds: float) -> None:
        """SIGSTOP for `seconds`, then SIGCONT."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the live process and every retired one's remains."""
        for proc in [*self.retired, self.current]:
            with contextlib.suppress(Exception):
                proc.stop()


def _proxied(emulators: EmulatorSet, firestore_port: int, storage_port: int) -> EmulatorSet:
    """The same emulators as the workers see them: both addresses replaced by the proxies'."""
    return dataclasses.replace(
        emulators,
        firestore=dataclasses.replace(emulators.firestore, port=firestore_port, process=None),
        storage=dataclasses.replace(emulators.storage, port=storage_port, process=None),
    )


@dataclass
class Cast:
    """Everything the soak runs, up and reachable."""

    emulators: EmulatorSet
    db: firestore.Client
    api: Api
    apns: ChaosApns
    fcm: ChaosFcm
    firestore_proxy: TcpProxy
    storage_proxy: TcpProxy
    watchers: list[Slot]
    recorders: list[Slot]
    http_pid: int | None
    tmp: Path


def _push_env(apns: ChaosApns, fcm: ChaosFcm, tmp: Path) -> dict[str, str]:
    """The watchers' settings for the local APNs (through its CONNECT proxy, trusting the test CA) and FCM."""
    ca_file, _, _ = apns.tls.write(tmp / "apns-tls")
    key = apns.key
    account = make_service_account(FCM_PROJECT, fcm.token_uri)
    fcm.trust(account)
    return {
        **key.env(BUNDLE),
        "MEMHARBOR_APNS_PROXY": f"127.0.0.1:{apns.port}",
        "MEMHARBOR_APNS_CA_FILE": str(ca_file),
        "FCM_SERVICE_ACCOUNT_JSON": account.json,
        "FCM_PROJECT_ID": FCM_PROJECT,
        "MEMHARBOR_FCM_ENDPOINT": fcm.endpoint,
    }


def _child_pid(words: tuple[str, ...]) -> int | None:
    """The pid of our child process whose command line holds all `words` (token_http hides its process)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if ppid == me and all(w.encode() in argv for w in words):
                return int(entry.name)
    return None


@contextlib.contextmanager
def cast_running(options: Options, tmp: Path) -> Iterator[Cast]:
    """Start the whole cast, yield it, and stop every process and server it started."""
    emulators = EmulatorSet.create(PROJECT)
    with contextlib.ExitStack() as stack:
        say("starting the Firestore and Storage emulators")
        stack.enter_context(emulators.running())
        os.environ.update(emulators.env())  # this process's clients talk to the emulators directly
        db = firestore.Client(project=PROJECT)
        stack.callback(db.close)
        firestore_proxy = TcpProxy(emulators.firestore.address, free_port())
        storage_proxy = TcpProxy(emulators.storage.address, free_port())
        for proxy in (firestore_proxy, storage_proxy):
            proxy.start()
            stack.callback(proxy.stop)
        apns = stack.enter_context(ChaosApns(make_apns_key(), BUNDLE, make_tls()))
        fcm = stack.enter_context(ChaosFcm(FCM_PROJECT))
        workers = _proxied(emulators, firestore_proxy.port, storage_proxy.port)
        env = {
            **_push_env(apns, fcm, tmp),
            "MEMHARBOR_PUSH_SINK": "",
            "MEMHARBOR_RING_TIMEOUT_S": f"{options.ring_timeout:g}",
            "MEMHARBOR_SWEEP_INTERVAL_S": "2",
            "MEMHARBOR_ENV_FILE": str(tmp / "absent.env"),
        }
        say("starting token_http, two watchers and two recorders")
        api = stack.enter_context(contextlib.contextmanager(start_http)(emulators, "firebase"))
        logs, recordings = tmp / "logs", tmp / "recordings"
        logs.mkdir()

        def watcher() -> WatcherProcess:
            return WatcherProcess(workers, tmp / "unused-sink.jsonl", logs, **env)

        def recorder() -> RecorderProcess:
            return RecorderProcess(
                workers, recordings, logs, TWO_TONES, MEMHARBOR_RECORDER_LEASE_S=f"{RECORDER_LEASE_S:g}"
            )

        slots: list[Slot] = []
        spawner = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner"))

        def stop_slots() -> None:
            for slot in slots:
                slot.stop()

        stack.callback(stop_slots)
        slots += [Slot(f"watcher-{i}", watcher, db, spawner) for i in (1, 2)]
        slots += [Slot(f"recorder-{i}", recorder, db, spawner) for i in (1, 2)]
        http_pid = _child_pid(("memharbor", "http"))
        yield Cast(emulators, db, api, apns, fcm, firestore_proxy, storage_proxy, slots[:2], slots[2:], http_pid, tmp)


# ---------------------------------------------------------------------------------------------------
# Seed: care groups, callers, receivers and their devices
# ---------------------------------------------------------------------------------------------------


@dataclass
class People:
    """The seeded users: pair p is caller_ids[p] calling receiver_ids[p] in group groups[p]."""

    callers: list[str] = field(default_factory=list)
    receivers: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    devices: dict[str, list[Device]] = field(default_factory=dict)
    token_owner: dict[str, tuple[str, str]] = field(default_factory=dict)


def _ios_tokens(apns: ChaosApns) -> dict[str, str]:
    voip, regular = apns_server.apns_token(), apns_server.apns_token()
    apns.register(voip, f"{BUNDLE}.voip")  # as Apple does: a token belongs to one topic
    apns.register(regular, BUNDLE)
    return {"voipToken": voip, "apnsToken": regular}


def _device(key: str, platform: str, apns: ChaosApns) -> Device:
    tokens = _ios_tokens(apns) if platform == "ios" else {"fcmToken": fcm_server.fcm_token()}
    return Device(key, platform, tokens)


def seed_people(db: firestore.Client, apns: ChaosApns, pairs: int, rng: random.Random) -> People:
    """Write users, devices and groups: every other receiver has 3 device documents (2 iOS, 1 Android),
    the rest one legacy device on users/{uid} (iOS or Android)."""
    people = People()
    batch = db.batch()
    for pair in range(pairs):
        caller, receiver, group = f"soak-caller-{pair:03d}", f"soak-receiver-{pair:03d}", f"soak-group-{pair:03d}"
        people.callers.append(caller)
        people.receivers.append(receiver)
        people.groups.append(group)
        batch.set(db.collection("groups").document(group), group_document([caller, receiver]))
        batch.set(db.collection("users").document(caller), {"platform": "android"})
        if pair % 2 == 0:
            devices = [_device(f"dev-{i}", "android" if i == 2 else "ios", apns) for i in range(3)]
            batch.set(db.collection("users").document(receiver), {"displayName": receiver})
            for device in devices:
                doc = {"platform": device.platform, **device.tokens, "updatedAt": firestore.SERVER_TIMESTAMP}
                batch.set(db.collection("users").document(receiver).collection("devices").document(device.key), doc)
        else:
            devices = [_device(LEGACY_KEY, rng.choice(("ios", "android")), apns)]
            batch.set(db.collection("users").document(receiver), {"platform": devices[0].platform, **devices[0].tokens})
        people.devices[receiver] = devices
        people.token_owner.update({tok: (receiver, d.key) for d in devices for tok in d.tokens.values()})
    batch.commit()
    return people


# ---------------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------------


@dataclass
class CallPlan:
    """One call's script, drawn from the seed, and what happened when it was played."""

    index: int
    at: float  # seconds after the traffic's start
    pair: int
    path: str  # "app" (Firestore writes under the rules) or "rest" (/api/call/*)
    outcome: str  # a key of OUTCOMES
    record: bool
    review: bool
    answer_after: float
    talk: float
    give_up_after: float  # cancel, or the caller's own ring timer
    answered_on: str | None
    call_id: str | None = None
    steps: list[str] = field(default_factory=list)
    reviewed: bool = False


def arrivals(options: Options) -> list[float]:
    """Call start times: the rate ramps up from a quarter over the first RAMP_S (cold transports, cold
    emulator), then holds."""
    times, t = [], 0.0
    while t < options.duration:
        times.append(t)
        t += 1.0 / (options.rate * min(1.0, 0.25 + 0.75 * t / RAMP_S))
    return times


def plan_calls(options: Options, people: People, rng: random.Random) -> list[CallPlan]:
    """Every call of the run, at `rate` per second, each outcome drawn by its weight."""
    plans = []
    names = [name for name, _ in OUTCOMES]
    weights = [weight for _, weight in OUTCOMES]
    for index, at in enumerate(arrivals(options)):
        pair = rng.randrange(len(people.receivers))
        path = rng.choice(("app", "rest"))
        outcome = rng.choices(names, weights)[0]
        devices = people.devices[people.receivers[pair]]
        on_device = path == "app" and devices[0].key != LEGACY_KEY
        plans.append(
            CallPlan(
                index=index,
                at=at,
                pair=pair,
                path=path,
                outcome=outcome,
                record=outcome == "ended" and rng.random() < 0.4,
                review=outcome == "ended" and path == "app" and rng.random() < 0.3,
                answer_after=rng.uniform(0.6, min(2.2, options.ring_timeout - 1.5)),
                # Longer than the recording's start latency (request, claim, join: up to ~3 s here).
                talk=rng.uniform(4.0, 8.0),
                give_up_after=(
                    rng.uniform(0.5, 2.5) if outcome == "cancelled" else options.ring_timeout - rng.uniform(0.2, 1.0)
                ),
                answered_on=rng.choice(devices).key if on_device else None,
            )
        )
    return plans


class Traffic:
    """Plays call plans as the apps (or the seed's REST clients) would, from a pool of threads."""

    STATUS_STAMPS = {  # noqa: RUF012 - a constant table
        "accepted": ("answeredAt", "updatedAt"),
        "declined": ("answeredAt", "updatedAt"),
        "cancelled": ("endedAt", "updatedAt"),
        "missed": ("endedAt", "updatedAt"),
        "ended": ("endedAt", "updatedAt"),
    }
    REST_ROUTES = {"cancelled": "/api/call/cancel", "missed": "/api/call/missed", "ended": "/api/call/end"}  # noqa: RUF012

    def __init__(self, cast: Cast, people: People) -> None:
        self.cast = cast
        self.people = people
        self._local = threading.local()
        self._lag_lock = threading.Lock()
        self.errors: Counter[str] = Counter()
        # The longest seen, per kind of app write, from the server time stamped into `updatedAt` to the
        # commit: the emulator stamps on receipt and may commit much later (production stamps the commit).
        self.commit_lags: dict[str, float] = {}
        self.review_lags: dict[str, float] = {}  # call id -> its review write's commit lag

    def _note_lag(self, kind: str, result: Result) -> float | None:
        lag = result.commit_lag
        if lag is not None:
            with self._lag_lock:
                self.commit_lags[kind] = max(lag, self.commit_lags.get(kind, 0.0))
        return lag

    def _rest(self) -> FirestoreRest:
        # One keep-alive connection per thread: FirestoreRest's connection is not shared safely.
        if not hasattr(self._local, "rest"):
            self._local.rest = FirestoreRest(self.cast.emulators.firestore.address, PROJECT)
        rest: FirestoreRest = self._local.rest
        return rest

    def _retry(self, attempt: Callable[[], tuple[bool, bool, str]]) -> str:
        """Run a write until it lands or is refused, as an app retries (about 30 s at most): "ok", "denied"
        (the call moved on), or the last error. Every failed attempt is counted."""
        error, pause = "error", 0.5
        for _ in range(10):
            try:
                ok, denied, error = attempt()
            except OSError as exc:
                ok, denied, error = False, False, f"{type(exc).__name__}"
            if ok or denied:
                return "ok" if ok else "denied"
            self.errors[error] += 1
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
        return error

    def _app_move(self, uid: str, call_id: str, status: str, extra: dict[str, Any] | None = None) -> str:
        def attempt() -> tuple[bool, bool, str]:
            stamps = self.STATUS_STAMPS[status]
            result = self._rest().as_user(uid).update(f"calls/{call_id}", {"status": status, **(extra or {})}, stamps)
            self._note_lag(status, result)
            return result.ok, result.denied, f"app {status} HTTP {result.status}"

        outcome = self._retry(attempt)
        if outcome == "denied" and self._status(call_id) == status:
            # An earlier attempt landed though its answer was lost (a client timeout): as an app sees
            # from its listener, the call is where this write would have put it.
            return "ok"
        return outcome

    def _status(self, call_id: str) -> Any:
        found = self._rest().as_owner().get(f"calls/{call_id}")
        return found.data.get("status") if found.ok else None

    def _rest_post(self, route: str, body: dict[str, Any], uid: str) -> str:
        def attempt() -> tuple[bool, bool, str]:
            status, _ = self.cast.api.post(route, body, uid)
            return status == 200, status in (403, 409), f"{route} HTTP {status}"

        return self._retry(attempt)

    def create(self, plan: CallPlan) -> str | None:
        """Place the call; its id, or None when that failed."""
        caller, receiver = self.people.callers[plan.pair], self.people.receivers[plan.pair]
        group = self.people.groups[plan.pair]
        if plan.path == "rest":
            body = {"group_id": group, "caller_id": caller, "receiver_id": receiver, "record": plan.record}
            status, answer = self.cast.api.post("/api/call/invite", body, caller)
            if status != 200:
                self.errors[f"invite HTTP {status}"] += 1
                return None
            return str(answer["callId"])
        call_id = new_call_id()
        fields: dict[str, Any] = {"callId": call_id, "groupId": group, "callerId": caller, "receiverId": receiver}
        fields |= {"status": "pending", "callerName": caller, **({"record": True} if plan.record else {})}
        result = self._rest().as_user(caller).create(f"calls/{call_id}", fields, ("createdAt", "updatedAt"))
        self._note_lag("pending", result)
        if not result.ok:
            self.errors[f"create HTTP {result.status}"] += 1
            return None
        return call_id

    def move(self, plan: CallPlan, status: str) -> None:
        """One transition by whoever makes it in this plan, on the plan's path."""
        assert plan.call_id is not None
        caller, receiver = self.people.callers[plan.pair], self.people.receivers[plan.pair]
        uid = receiver if status in ("accepted", "declined") else caller
        if plan.path == "rest":
            if status in ("accepted", "declined"):
                action = "accept" if status == "accepted" else "decline"
                body = {"call_id": plan.call_id, "action": action}
                outcome = self._rest_post("/api/call/answer", body, uid)
            else:
                outcome = self._rest_post(self.REST_ROUTES[status], {"call_id": plan.call_id}, uid)
        else:
            answered = (
                {"answeredOn": plan.answered_on} if plan.answered_on and status in ("accepted", "declined") else {}
            )
            outcome = self._app_move(uid, plan.call_id, status, answered)
        plan.steps.append(f"{status}:{outcome}")

    def review(self, plan: CallPlan) -> None:
        """The caller writes a human summary once the call ended (app path only: the shim has no route)."""
        assert plan.call_id is not None
        caller = self.people.callers[plan.pair]

        def attempt() -> tuple[bool, bool, str]:
            fields = {"humanSummary": f"soak call {plan.index}"}
            result = self._rest().as_user(caller).update(f"calls/{plan.call_id}", fields, ("updatedAt",))
            lag = self._note_lag("review", result)
            if lag is not None and plan.call_id is not None:
                self.review_lags[plan.call_id] = lag
            return result.ok, result.denied, f"review HTTP {result.status}"

        plan.reviewed = self._retry(attempt) == "ok"

    def play(self, plan: CallPlan) -> None:
        """The call's whole script, its steps timed from its creation."""
        start = time.monotonic()
        plan.call_id = self.create(plan)
        if plan.call_id is None:
            return

        def at(offset: float) -> None:
            time.sleep(max(0.0, start + offset - time.monotonic()))

        if plan.outcome in ("ended", "declined"):
            at(plan.answer_after)
            self.move(plan, "accepted" if plan.outcome == "ended" else "declined")
            if plan.outcome == "ended" and plan.steps[-1] == "accepted:ok":
                at(plan.answer_after + plan.talk)
                self.move(plan, "ended")
                if plan.review:
                    time.sleep(0.5)
                    self.review(plan)
        elif plan.outcome in ("cancelled", "caller_missed"):
            at(plan.give_up_after)
            self.move(plan, "cancelled" if plan.outcome == "cancelled" else "missed")


def run_traffic(traffic: Traffic, plans: list[CallPlan], origin: float) -> None:
    """Start each plan at its time (absolute schedule) and wait for all to finish."""
    with ThreadPoolExecutor(max_workers=96, thread_name_prefix="call") as pool:
        for plan in plans:
            time.sleep(max(0.0, origin + plan.at - time.monotonic()))
            pool.submit(traffic.play, plan)


# ---------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: when (seconds after the traffic's start), what, on which target, how long."""

    at: float
    kind: str
    target: str
    length: float


def schedule_faults(options: Options, rng: random.Random) -> list[Fault]:
    """Every kind at least once, about one fault per FAULT_SPACING_S, shuffled and jittered by the seed;
    the last one starts early enough to be over before the traffic stops."""
    count = max(len(FAULT_KINDS), int(options.duration / FAULT_SPACING_S))
    kinds = [FAULT_KINDS[i % len(FAULT_KINDS)] for i in range(count)]
    rng.shuffle(kinds)
    first, last = 5.0, options.duration - max(FAULT_LENGTH_S.values()) - 5.0
    spacing = (last - first) / count
    faults = []
    for i, kind in enumerate(kinds):
        target = f"{kind.split('_')[0]}-{rng.choice((1, 2))}" if kind.startswith(("watcher", "recorder")) else ""
        faults.append(Fault(first + i * spacing + rng.uniform(0, spacing * 0.5), kind, target, FAULT_LENGTH_S[kind]))
    return faults


class FaultInjector:
    """Carries out the schedule on threads and records every fault's real window."""

    def __init__(self, cast: Cast) -> None:
        self.cast = cast
        self.windows: list[FaultWindow] = []
        self.hangs: list[tuple[str, float, float]] = []  # (service, start, end) of hang windows
        self._lock = threading.Lock()
        self._slots = {slot.name: slot for slot in [*cast.watchers, *cast.recorders]}
        # One fault at a time per worker type: the other watcher (recorder) is there to take over.
        self._tier_locks = {"watcher": threading.Lock(), "recorder": threading.Lock()}

    def _toggle(self, server: ChaosApns | ChaosFcm, attribute: str, on: Any, off: Any, seconds: float) -> None:
        setattr(server, attribute, on)
        try:
            time.sleep(seconds)
        finally:
            setattr(server, attribute, off)

    def _cut(self, proxy: TcpProxy, seconds: float) -> None:
        proxy.cut()
        try:
            time.sleep(seconds)
        finally:
            self._restore(proxy)

    @staticmethod
    def _restore(proxy: TcpProxy) -> None:
        """Listen again; a port still held for a moment is retried rather than left cut for the run."""
        for _ in range(40):
            try:
                proxy.start()
                return
            except OSError:
                time.sleep(0.25)
        proxy.start()

    def _apply(self, fault: Fault) -> None:
        cast, n = self.cast, fault.length
        actions: dict[str, Callable[[], None]] = {
            "firestore_cut": lambda: self._cut(cast.firestore_proxy, n),
            "storage_cut": lambda: self._cut(cast.storage_proxy, n),
            "apns_5xx": lambda: self._toggle(cast.apns, "outage", True, False, n),
            "fcm_5xx": lambda: self._toggle(cast.fcm, "outage", True, False, n),
            "apns_hang": lambda: self._toggle(cast.apns, "delay_s", HANG_S, 0.0, n),
            "fcm_hang": lambda: self._toggle(cast.fcm, "delay_s", HANG_S, 0.0, n),
        }
        if fault.target:
            slot = self._slots[fault.target]
            with self._tier_locks[fault.kind.split("_")[0]]:  # waits for the previous fault on this tier
                self._timed(fault, lambda: slot.freeze(n) if fault.kind.endswith("stop") else slot.kill_and_restart(n))
        else:
            self._timed(fault, actions[fault.kind])

    def _timed(self, fault: Fault, action: Callable[[], None]) -> None:
        start = time.time()
        try:
            action()
        except Exception as exc:  # a restart that failed is reported, and the run goes on
            say(f"fault {fault.kind} {fault.target} failed: {type(exc).__name__}: {exc}")
        end = time.time()
        with self._lock:
            self.windows.append(FaultWindow(fault.kind, fault.target, start, end))
            if fault.kind.endswith("_hang"):
                self.hangs.append((fault.kind.split("_")[0], start, end))
        say(f"fault {fault.kind} {fault.target} done after {end - start:.1f}s")

    def run(self, faults: list[Fault], origin: float) -> list[threading.Thread]:
        """Start a thread per fault, each waiting for its time; returns them (to join)."""
        threads = []
        for fault in faults:

            def due(fault: Fault = fault) -> None:
                time.sleep(max(0.0, origin + fault.at - time.monotonic()))
                self._apply(fault)

            thread = threading.Thread(target=due, name=f"fault-{fault.kind}", daemon=True)
            thread.start()
            threads.append(thread)
        return threads


# ---------------------------------------------------------------------------------------------------
# Memory, settle, collection
# ---------------------------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples the RSS of token_http and of every watcher and recorder incarnation every RSS_EVERY_S."""

    def __init__(self, cast: Cast) -> None:
        super().__init__(name="rss", daemon=True)
        self.cast = cast
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self.cpu_s: dict[str, float] = {}  # "role pid" -> the last CPU seconds read
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop_event.wait(RSS_EVERY_S):
            pids = {f"token_http {self.cast.http_pid}": self.cast.http_pid}
            pids |= {f"{s.name} {s.pid()}": s.pid() for s in [*self.cast.watchers, *self.cast.recorders]}
            for name, pid in pids.items():
                rss = read_rss_kb(pid) if pid is not None else None
                if rss is not None and pid is not None:
                    self.samples.setdefault(name, []).append((time.time(), rss))
                    self.cpu_s[name] = read_cpu_s(pid)
            for emulator in (self.cast.emulators.firestore, self.cast.emulators.storage):
                if emulator.process is not None:
                    self.cpu_s[f"{emulator.name}-emulator {emulator.process.pid}"] = read_cpu_s(emulator.process.pid)

    def stop(self) -> dict[str, list[tuple[float, int]]]:
        """Stop sampling; every incarnation's (unix time, RSS kB) samples."""
        self._stop_event.set()
        self.join(10)
        return self.samples


def unsettled(db: firestore.Client) -> int:
    """Calls still pending or accepted, claims still open and recordings not finished (0: all settled)."""
    queries = [
        db.collection("calls").where(filter=FieldFilter("status", "in", ["pending", "accepted"])),
        db.collection("callServer").where(filter=FieldFilter("effectOpen", "==", True)),
        db.collection("recordings").where(filter=FieldFilter("status", "in", ["requested", "recording", "stopping"])),
    ]
    return sum(len(list(q.select([]).stream())) for q in queries)


def settle(db: firestore.Client, limit_s: float) -> float:
    """Wait until nothing is in flight (or `limit_s`), then SETTLE_QUIET_S more; the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        with contextlib.suppress(Exception):
            if unsettled(db) == 0:
                break
        time.sleep(1.0)
    time.sleep(SETTLE_QUIET_S)
    return time.monotonic() - start


def _arrival(at: float, service: str, hangs: list[tuple[str, float, float]]) -> tuple[float, bool]:
    """When a push reached the service, and whether it hung: an answer held back by HANG_S was received
    that much earlier."""
    for hung_service, start, end in hangs:
        if hung_service == service and start <= at - HANG_S <= end + 0.5:
            return at - HANG_S, True
    return at, False


def collect_pushes(cast: Cast, hangs: list[tuple[str, float, float]]) -> list[PushSeen]:
    """Every push the local APNs and FCM accepted, with its call, kind and arrival."""
    seen = []
    for record in cast.apns.delivered():
        payload = record.payload if isinstance(record.payload, dict) else {}
        arrived, hung = _arrival(record.at, "apns", hangs)
        kind = "incoming_call" if record.push_type == "voip" else str(payload.get("type"))
        call_id, status = str(payload.get("callId")), payload.get("status")
        seen.append(PushSeen(call_id, record.token, kind, status, arrived, hung))
    for fcm_record in cast.fcm.delivered():
        data = (fcm_record.message or {}).get("data", {})
        arrived, hung = _arrival(fcm_record.at, "fcm", hangs)
        token = fcm_record.token or ""
        seen.append(PushSeen(str(data.get("callId")), token, str(data.get("type")), data.get("status"), arrived, hung))
    return seen


def fetch_wav(bucket: storage.Bucket, path: str) -> WavSeen:
    """Download a recording and play it with the stdlib: its duration, or why not."""
    try:
        blob = bucket.get_blob(path)
        if blob is None:
            return WavSeen(None, "no such object")
        data = blob.download_as_bytes()
        with wave.open(io.BytesIO(data)) as reader:
            if (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) != (16000, 1, 2):
                return WavSeen(None, "not 16 kHz mono 16-bit")
        return WavSeen(wav.parse(data[:4096], len(data)).duration_ms)
    except Exception as exc:  # anything unplayable is a finding, not a crash of the soak
        return WavSeen(None, f"{type(exc).__name__}: {exc}")


def collect(cast: Cast, people: People, plans: list[CallPlan], faults: FaultInjector, options: Options) -> Evidence:
    """Read back everything the auditor judges."""
    db = cast.db

    def documents(collection: str) -> dict[str, dict[str, Any]]:
        return {snap.id: snap.to_dict() or {} for snap in db.collection(collection).stream()}

    recordings = documents("recordings")
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    bucket = client.bucket(cast.emulators.bucket)
    paths = {str(r["storagePath"]) for r in recordings.values() if r.get("storagePath")}
    return Evidence(
        ring_timeout_s=options.ring_timeout,
        calls=documents("calls"),
        server=documents("callServer"),
        recordings=recordings,
        wavs={path: fetch_wav(bucket, path) for path in sorted(paths)},
        pushes=collect_pushes(cast, faults.hangs),
        devices=people.devices,
        token_owner=people.token_owner,
        reviews={p.call_id: 1 for p in plans if p.reviewed and p.call_id},
        record_requested={p.call_id for p in plans if p.record and p.call_id},
        faults=list(faults.windows),
    )


# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------


def summarize(
    options: Options, ev: Evidence, counts: Counter[str], violations: list[Violation], extra: dict[str, Any]
) -> dict[str, Any]:
    """The run's figures as one JSON-ready object."""
    statuses = Counter(str(c.get("status")) for c in ev.calls.values())
    recs = ev.recordings.values()
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()},
        **extra,
        "calls": {"total": len(ev.calls), "by_status": dict(sorted(statuses.items()))},
        "recordings": {
            "requested": len(ev.recordings),
            "stopped": sum(1 for r in recs if r.get("status") == "stopped"),
            "interrupted": sum(1 for r in recs if r.get("interrupted")),
            "wavs_checked": sum(1 for w in ev.wavs.values() if w.duration_ms is not None),
        },
        "pushes_accepted": len(ev.pushes),
        "faults": dict(sorted(Counter(f.kind for f in ev.faults).items())),
        "fault_windows": [dataclasses.asdict(f) for f in sorted(ev.faults, key=lambda f: f.start)],
        "invariants": {name: counts[name] for name in INVARIANTS},
        "violations": [dataclasses.asdict(v) for v in violations if not v.excused],
        "excused_findings": [dataclasses.asdict(v) for v in violations if v.excused],
    }


def render(summary: dict[str, Any]) -> str:
    """The one table."""
    o, rec = summary["options"], summary["recordings"]
    rows = [
        (
            "calls",
            f"{summary['calls']['total']} ({', '.join(f'{k} {v}' for k, v in summary['calls']['by_status'].items())})",
        ),
        ("calls by path", ", ".join(f"{k} {v}" for k, v in summary["paths"].items())),
        (
            "recordings",
            f"{rec['requested']} requested, {rec['stopped']} stopped, {rec['interrupted']} interrupted, "
            f"{rec['wavs_checked']} WAVs played",
        ),
        ("pushes accepted by APNs/FCM", str(summary["pushes_accepted"])),
        ("CPU seconds", ", ".join(f"{k} {v:g}" for k, v in summary["cpu_s"].items())),
        ("longest commit lag of app writes (s)", ", ".join(f"{k} {v}" for k, v in summary["commit_lag_s"].items())),
        ("traffic write errors", ", ".join(f"{k} x{v}" for k, v in summary["write_errors"].items()) or "none"),
        *((f"fault: {k}", str(v)) for k, v in summary["faults"].items()),
        *(
            (
                f"invariant: {k}",
                f"{v} violations" + (f" ({n} explained by a fault)" if (n := summary["excused"][k]) else ""),
            )
            for k, v in summary["invariants"].items()
        ),
    ]
    head = (
        f"soak: {o['rate']:g} calls/s for {o['duration']:g}s, ring timeout {o['ring_timeout']:g}s, seed {o['seed']}, "
        f"load average {summary['load_at_start']:.2f} at start / {summary['load_at_end']:.2f} at end "
        f"({os.cpu_count()} cores), settled in {summary['settle_s']:.0f}s, wall {summary['wall_s']:.0f}s"
    )
    width = max(len(name) for name, _ in rows)
    lines = [head, *(f"  {name:<{width}}  {value}" for name, value in rows)]
    shown = summary["violations"][:30]
    lines += [f"  ! {v['invariant']}: {v['subject']}: {v['detail']}" for v in shown]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def print_schedule(faults: list[Fault]) -> None:
    """The fault schedule, before anything runs (the seed reproduces it)."""
    say(f"fault schedule ({len(faults)} faults):")
    for fault in faults:
        say(f"  t={fault.at:6.1f}s  {fault.kind:<14} {fault.target or '-':<11} {fault.length:.0f}s")


def execute(options: Options, tmp: Path) -> dict[str, Any]:
    """Start the cast, play traffic and faults, settle, collect and audit; the summary."""
    rng = random.Random(options.seed)
    faults = schedule_faults(options, rng)
    print_schedule(faults)
    load_at_start, wall_start = os.getloadavg()[0], time.monotonic()
    with cast_running(options, tmp) as cast:
        people = seed_people(cast.db, cast.apns, options.pairs, rng)
        plans = plan_calls(options, people, rng)
        traffic, injector, sampler = Traffic(cast, people), FaultInjector(cast), RssSampler(cast)
        sampler.start()
        origin = time.monotonic() + 1.0
        say(f"traffic: {len(plans)} calls over {options.duration:g}s; files in {tmp}")
        threads = injector.run(faults, origin)
        run_traffic(traffic, plans, origin)
        for thread in threads:
            thread.join()
        say("traffic and faults done; settling")
        settle_s = settle(cast.db, options.settle)
        evidence = collect(cast, people, plans, injector, options)
        evidence.rss = sampler.stop()
        dump_calls(tmp / "calls.jsonl", evidence, plans, cast)
    counts, excused, violations = audit(evidence)
    extra = {
        "load_at_start": load_at_start,
        "load_at_end": os.getloadavg()[0],
        "settle_s": settle_s,
        "wall_s": time.monotonic() - wall_start,
        "paths": dict(Counter(p.path for p in plans if p.call_id)),
        "write_errors": dict(traffic.errors),
        "commit_lag_s": {kind: round(lag, 3) for kind, lag in sorted(traffic.commit_lags.items())},
        "review_lag_s": {cid: round(lag, 3) for cid, lag in traffic.review_lags.items()},
        "cpu_s": cpu_by_role(sampler.cpu_s),
        "files": str(tmp),
    }
    extra["excused"] = {name: excused[name] for name in INVARIANTS}
    return summarize(options, evidence, counts, violations, extra)


def dump_calls(path: Path, ev: Evidence, plans: list[CallPlan], cast: Cast) -> None:
    """Everything known about each call, one JSON line per call, for reading a violation's story."""
    sent: dict[str, list[dict[str, Any]]] = {}
    for record in cast.apns.records():
        payload = record.payload if isinstance(record.payload, dict) else {}
        entry = {
            "svc": "apns",
            "type": record.push_type,
            "status": record.status,
            "at": record.at,
            "token": record.token,
        }
        sent.setdefault(str(payload.get("callId")), []).append(entry | {"callStatus": payload.get("status")})
    for fcm_record in cast.fcm.records():
        data = (fcm_record.message or {}).get("data", {})
        entry = {"svc": "fcm", "type": data.get("type"), "status": fcm_record.status, "at": fcm_record.at}
        sent.setdefault(str(data.get("callId")), []).append(
            entry | {"token": fcm_record.token, "callStatus": data.get("status")}
        )
    with path.open("w") as out:
        for plan in plans:
            cid = plan.call_id or ""
            line = {
                "plan": dataclasses.asdict(plan),
                "call": ev.calls.get(cid),
                "server": ev.server.get(cid),
                "recording": ev.recordings.get(f"call-{cid}"),
                "pushes": sent.get(cid, []),
            }
            out.write(json.dumps(line, default=str) + "\n")


def cpu_by_role(cpu_s: dict[str, float]) -> dict[str, float]:
    """CPU seconds by role (every incarnation of a worker summed), and this process's (driver, APNs, FCM)."""
    roles: dict[str, float] = {}
    for name, seconds in cpu_s.items():
        role = name.split()[0].rstrip("-12")
        roles[role] = roles.get(role, 0.0) + seconds
    usage = os.times()
    roles["soak (driver, APNs, FCM)"] = usage.user + usage.system
    return {role: round(seconds, 1) for role, seconds in sorted(roles.items())}


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 no invariant violated, 1 some violated, 2 set-up failure or interruption."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        summary = execute(options, tmp)
    except (EmulatorError, AssertionError) as exc:
        say(f"set-up failed: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 2
    print(render(summary), flush=True)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(summary, indent=2, default=str))
    return 0 if not summary["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
