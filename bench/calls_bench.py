"""Benchmark the call watcher: a steady stream of unanswered calls, each pushed once and timed out once.

Run from the repository root:

    .venv/bin/python bench/calls_bench.py [--rate 20] [--duration 60] [--ring-timeout 5] [--json]
    .venv/bin/python bench/calls_bench.py --burst 500 --writers 1 --ring-timeout 30   # one commit
    .venv/bin/python bench/calls_bench.py --burst 500 --writers 8 --ring-timeout 30   # 8 parallel writers

Starts the Firestore and Storage emulators, seeds iOS receivers and their care groups, starts one
watcher (`python -m memharbor watcher`, pushes to a sink file), creates `pending` calls as apps would
and leaves every one unanswered: at a steady rate on an absolute schedule, or with `--burst N` all at
once (`--writers 1`: in one commit; `--writers K`: K threads creating calls one after another as fast
as they can). Then measures write-to-push latency, ring-timeout lateness, exactly-once pushes and
timeouts, the watcher's memory and its CPU per call against the emulator's. `--devices N` gives each
receiver N device documents (users/{uid}/devices; 2 iOS to 1 Android) instead of its legacy single token,
and "exactly once" then means once per device. Exit codes: 0 every
target met, 1 a target missed, 2 set-up failed (or the run was interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor import firebase
from memharbor.emulators import EmulatorError, EmulatorSet
from memharbor.groups import group_document
from memharbor.repositories.calls import new_call_document, new_call_id
from memharbor.repositories.paths import CALLS, GROUPS, USERS, WORKERS
from memharbor.settings import child_environment, watcher_settings
from watcher.push import read_sink

REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 10.0
STOP_GRACE_S = 15.0
READY_TIMEOUT_S = 60.0
SAMPLE_EVERY_S = 1.0
WINDOW_S = 10.0
TARGET_PUSH_P50_MS = 50.0
TARGET_PUSH_P99_MS = 250.0
TARGET_LATENESS_P99_MS = 1000.0
TARGET_MEMORY_DRIFT_PCT = 10.0
TARGET_BURST_PUSH_P99_MS = 1000.0  # parallel burst writes: arrivals at about the steady rate, in clumps
TARGET_BURST_MISSED_WITHIN_S = 15.0  # every burst call missed within its deadline + this
COMMIT_LIMIT = 500  # writes per Firestore commit


class SetupError(RuntimeError):
    """The emulators, the seed data or the watcher could not be brought up."""


@dataclass(frozen=True)
class Options:
    """What one run does."""

    rate: float
    duration: float
    ring_timeout: float
    margin: float
    pairs: int
    writers: int
    sweep_interval: float | None
    as_json: bool
    burst: int = 0  # calls created at once instead of at `rate` (0: steady mode)
    devices: int = 0  # device documents per receiver (2 of 3 iOS, 1 Android); 0: the legacy single token


@dataclass
class WriteRecord:
    """One call write: when it was due, sent and committed (unix seconds), or why it failed."""

    call_id: str
    index: int
    due_offset_s: float
    submit_lag_ms: float
    client_time: float = 0.0
    commit_time: float | None = None
    write_ms: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Sample:
    """One reading of the watcher's process: seconds since the load started, VmRSS and CPU time."""

    t: float
    rss_kb: int
    cpu_s: float
    emulator_cpu_s: float
    bench_cpu_s: float


@dataclass(frozen=True)
class Check:
    """One target and whether the run met it."""

    name: str
    figure: str
    target: str
    passed: bool


@dataclass
class Run:
    """Everything a finished run knows, before it is summarized."""

    options: Options
    load_1min: float
    writes: list[WriteRecord] = field(default_factory=list)
    max_submit_lag_ms: float = 0.0
    submit_wall_s: float = 0.0
    load_1min_at_end: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    sink: list[dict[str, Any]] = field(default_factory=list)
    watcher_alive_at_end: bool = True
    watcher_exit: int | None = None
    watcher_stop_s: float = 0.0
    heartbeat: dict[str, Any] = field(default_factory=dict)
    log_events: dict[str, int] = field(default_factory=dict)
    timed_out_by_sweep: int = 0
    sink_after_stop: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="calls created per second (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--ring-timeout", type=float, default=5.0, help="MEMHARBOR_RING_TIMEOUT_S (default 5)")
    parser.add_argument("--margin", type=float, default=5.0, help="seconds waited after the last deadline")
    parser.add_argument("--pairs", type=int, default=50, help="distinct caller/receiver pairs (default 50)")
    parser.add_argument(
        "--writers", type=int, default=8, help="threads that write calls (default 8); with --burst, 1 = one commit"
    )
    parser.add_argument("--burst", type=int, default=0, help="create N calls at once instead of at --rate")
    parser.add_argument("--sweep-interval", type=float, default=None, help="MEMHARBOR_SWEEP_INTERVAL_S")
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (table on stderr)")
    parser.add_argument(
        "--devices", type=int, default=0, help="devices per receiver, as users/{uid}/devices (2 iOS : 1 Android)"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.pairs < 1 or args.writers < 1 or args.burst < 0:
        parser.error("--rate and --duration must be positive, --pairs and --writers at least 1, --burst >= 0")
    return Options(
        rate=args.rate,
        duration=args.duration,
        ring_timeout=args.ring_timeout,
        margin=args.margin,
        pairs=args.pairs,
        writers=args.writers,
        sweep_interval=args.sweep_interval,
        as_json=args.json,
        burst=args.burst,
        devices=args.devices,
    )


def say(message: str) -> None:
    """One progress line on stderr."""
    print(f"[calls_bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Set-up: client, seed data, the watcher process
# ---------------------------------------------------------------------------------------------------


def make_client(env: dict[str, str]) -> firestore.Client:
    """A Firestore client on the emulators (admin: the emulator lets it past the rules)."""
    settings = watcher_settings(env)
    firebase.use_emulators(settings)
    return firebase.firestore_sync(settings)


def caller_id(pair: int) -> str:
    """The caller of pair `pair`."""
    return f"bench-caller-{pair:03d}"


def receiver_id(pair: int) -> str:
    """The receiver of pair `pair`."""
    return f"bench-receiver-{pair:03d}"


def device_document(pair: int, index: int) -> dict[str, Any]:
    """Device `index` of pair `pair`'s receiver: every third one Android, the others iOS."""
    if index % 3 == 2:
        return {"platform": "android", "fcmToken": f"bench-fcm-{pair:03d}-{index}-" + "ef" * 16}
    return {
        "platform": "ios",
        "voipToken": f"bench-voip-{pair:03d}-{index}-" + "ab" * 16,
        "apnsToken": f"bench-apns-{pair:03d}-{index}-" + "cd" * 16,
    }


def seed_users(client: firestore.Client, pairs: int, devices: int = 0) -> None:
    """Write `users/{uid}` for every caller and receiver; a receiver is one iOS device with a VoIP token
    on its user document, or (`devices` > 0) that many device documents and no legacy token."""
    batch = client.batch()
    for pair in range(pairs):
        batch.set(client.collection(USERS).document(caller_id(pair)), {"platform": "android"})
        receiver: dict[str, Any] = {
            "platform": "ios",
            "voipToken": f"bench-voip-{pair:03d}-" + "ab" * 16,
            "apnsToken": f"bench-apns-{pair:03d}-" + "cd" * 16,
        }
        user = client.collection(USERS).document(receiver_id(pair))
        batch.set(user, receiver if not devices else {"displayName": receiver_id(pair)})
        for index in range(devices):
            device = {**device_document(pair, index), "updatedAt": firestore.SERVER_TIMESTAMP}
            batch.set(user.collection("devices").document(f"device-{index}"), device)
    # Only members of a care group ring each other: pair p calls within group p % 10.
    for group in range(min(pairs, 10)):
        members = [uid for pair in range(group, pairs, 10) for uid in (caller_id(pair), receiver_id(pair))]
        batch.set(client.collection(GROUPS).document(f"bench-group-{group}"), group_document(members))
    batch.commit()


def watcher_env(emulators: EmulatorSet, tmp: Path, options: Options) -> dict[str, str]:
    """The watcher's environment: ours, the emulators', a push sink and a JSON log file in `tmp`."""
    overrides = {
        **emulators.env(),
        "MEMHARBOR_PUSH_SINK": str(tmp / "pushes.jsonl"),
        "MEMHARBOR_RING_TIMEOUT_S": f"{options.ring_timeout:g}",
        "MEMHARBOR_LOG_FORMAT": "json",
        "MEMHARBOR_LOG_FILE": str(tmp / "watcher.log.jsonl"),
        "MEMHARBOR_ENV_FILE": str(tmp / "no.env"),  # never pick up a developer's .env
    }
    if options.sweep_interval is not None:
        overrides["MEMHARBOR_SWEEP_INTERVAL_S"] = f"{options.sweep_interval:g}"
    return child_environment(overrides)


def dies_with_us(argv: list[str]) -> list[str]:
    """Run `argv` under `setpriv --pdeathsig KILL` when available (no preexec_fn: gRPC threads run here)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def start_watcher(env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    """Spawn one watcher in its own process group, dying with us, its output in files in `tmp`."""
    with (tmp / "watcher.stdout").open("wb") as out, (tmp / "watcher.stderr").open("wb") as err:
        return subprocess.Popen(
            dies_with_us([sys.executable, "-m", "memharbor", "watcher"]),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )


def stop_watcher(proc: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM the watcher's group, SIGKILL it after the grace; returns (exit code, seconds it took)."""
    started = time.monotonic()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            say(f"watcher still running {STOP_GRACE_S:.0f}s after SIGTERM: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, time.monotonic() - started


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a file, for error messages."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def watcher_heartbeats(client: firestore.Client) -> list[dict[str, Any]]:
    """Every `workers/*` document of kind watcher."""
    query = client.collection(WORKERS).where(filter=FieldFilter("kind", "==", "watcher"))
    return [snap.to_dict() or {} for snap in query.stream()]


def log_has_event(path: Path, event: str) -> bool:
    """True when the watcher's JSON log holds an event named `event`."""
    return path.exists() and f'"event":"{event}"' in path.read_text(errors="replace")


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, tmp: Path) -> None:
    """Poll `ready` until it holds; SetupError when the watcher exits or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"watcher exited ({proc.returncode}) before {what}:\n{tail(tmp / 'watcher.stderr')}")
        if ready():
            return
        time.sleep(0.2)
    raise SetupError(f"no {what} after {READY_TIMEOUT_S:.0f}s:\n{tail(tmp / 'watcher.stderr')}")


def wait_for_watcher(client: firestore.Client, proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """Block until the watcher's heartbeat exists and its listener is subscribed."""
    wait_until(lambda: bool(watcher_heartbeats(client)), proc, "watcher heartbeat in workers/*", tmp)
    # The first beat is written before the listener subscribes; calls made earlier would wait for it.
    log_path = tmp / "watcher.log.jsonl"
    wait_until(lambda: log_has_event(log_path, "watcher.started"), proc, "watcher.started log line", tmp)


# ---------------------------------------------------------------------------------------------------
# Measuring the watcher's process
# ---------------------------------------------------------------------------------------------------


def read_rss_kb(pid: int) -> int | None:
    """VmRSS of `pid` in kB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_cpu_s(pid: int) -> float:
    """User + system CPU seconds `pid` has used (0 when unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def own_cpu_s() -> float:
    """CPU seconds this process (the load generator) has used."""
    usage = os.times()
    return usage.user + usage.system


class Sampler:
    """Reads the watcher's RSS and CPU time (and the emulator's CPU) every second on a background thread."""

    def __init__(self, pid: int, emulator_pid: int | None, origin: float) -> None:
        self.pid = pid
        self.emulator_pid = emulator_pid
        self.origin = origin
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            rss = read_rss_kb(self.pid)
            if rss is not None:
                emulator_cpu = read_cpu_s(self.emulator_pid) if self.emulator_pid else 0.0
                t = time.monotonic() - self.origin
                self.samples.append(Sample(t, rss, read_cpu_s(self.pid), emulator_cpu, own_cpu_s()))
            tick += 1
            self._stop.wait(max(0.0, self.origin + tick * SAMPLE_EVERY_S - time.monotonic()))

    def start(self) -> None:
        """Begin sampling."""
        self._thread.start()

    def stop(self) -> list[Sample]:
        """Stop sampling and return the samples."""
        self._stop.set()
        self._thread.join(5.0)
        return self.samples


# ---------------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------------


def call_document(index: int, call_id: str, pairs: int) -> dict[str, Any]:
    """The document an app writes to place call number `index` (pending, server timestamps)."""
    pair = index % pairs
    optional = {"callerName": f"Caller {pair}", "receiverNameSnapshot": f"Receiver {pair}"}
    return new_call_document(call_id, f"bench-group-{pair % 10}", caller_id(pair), receiver_id(pair), optional)


def write_call(client: firestore.Client, record: WriteRecord, pairs: int) -> WriteRecord:
    """Create the call; stamp the client time just before the write and the commit time it got."""
    doc = call_document(record.index, record.call_id, pairs)
    ref = client.collection(CALLS).document(record.call_id)
    record.client_time = time.time()
    started = time.perf_counter()
    try:
        result = ref.create(doc)
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
    else:
        record.commit_time = result.update_time.timestamp() if result.update_time is not None else None
    record.write_ms = (time.perf_counter() - started) * 1000
    return record


def run_load(client: firestore.Client, options: Options, run: Run, origin: float) -> None:
    """Create `rate * duration` calls at times fixed in advance from `origin` (no drift), in a thread pool."""
    total = round(options.rate * options.duration)
    futures: list[Future[WriteRecord]] = []
    with ThreadPoolExecutor(max_workers=options.writers, thread_name_prefix="writer") as pool:
        for index in range(total):
            due = origin + index / options.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            lag_ms = (time.monotonic() - due) * 1000
            run.max_submit_lag_ms = max(run.max_submit_lag_ms, lag_ms)
            record = WriteRecord(new_call_id(), index, due - origin, lag_ms)
            futures.append(pool.submit(write_call, client, record, options.pairs))
        run.submit_wall_s = time.monotonic() - origin
    run.writes = [future.result() for future in futures]


def write_burst_commit(client: firestore.Client, records: list[WriteRecord], pairs: int) -> None:
    """Create every call of the burst in one commit (in commits of COMMIT_LIMIT beyond that)."""
    for start in range(0, len(records), COMMIT_LIMIT):
        chunk = records[start : start + COMMIT_LIMIT]
        batch = client.batch()
        for record in chunk:
            doc = call_document(record.index, record.call_id, pairs)
            batch.create(client.collection(CALLS).document(record.call_id), doc)
        sent = time.time()
        started = time.perf_counter()
        try:
            results = batch.commit()
        except Exception as exc:
            for record in chunk:
                record.error = f"{type(exc).__name__}: {exc}"[:200]
            continue
        took_ms = (time.perf_counter() - started) * 1000
        for record, result in zip(chunk, results, strict=True):
            record.client_time, record.write_ms = sent, took_ms
            record.commit_time = result.update_time.timestamp() if result.update_time is not None else None


def run_burst(client: firestore.Client, options: Options, run: Run, origin: float) -> None:
    """Create `burst` calls at once: in one commit (one writer) or by `writers` threads, each call its own write."""
    delay = origin - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    records = [WriteRecord(new_call_id(), index, 0.0, 0.0) for index in range(options.burst)]
    started = time.monotonic()
    if options.writers == 1:
        write_burst_commit(client, records, options.pairs)
    else:
        with ThreadPoolExecutor(max_workers=options.writers, thread_name_prefix="writer") as pool:
            list(pool.map(lambda record: write_call(client, record, options.pairs), records))
    run.submit_wall_s = time.monotonic() - started
    run.writes = records


def incoming_pushes(path: Path, kind: str) -> int:
    """How many calls the sink holds a push of `kind` for."""
    return len(pushes_by_call(read_sink(path), kind)) if path.exists() else 0


def wait_for_tail(proc: subprocess.Popen[bytes], run: Run, sink: Path) -> None:
    """Sleep until the last committed call's deadline plus the margin, watching the watcher stays up.

    A burst waits up to deadline + TARGET_BURST_MISSED_WITHIN_S + margin, or until every call's
    stop-ringing push is in the sink.
    """
    commits = [w.commit_time for w in run.writes if w.commit_time is not None]
    slack = run.options.margin + (TARGET_BURST_MISSED_WITHIN_S if run.options.burst else 0.0)
    end = (max(commits) if commits else time.time()) + run.options.ring_timeout + slack
    while time.time() < end:
        if proc.poll() is not None:
            run.watcher_alive_at_end = False
            say(f"watcher exited early with {proc.returncode}")
            return
        if run.options.burst and commits and incoming_pushes(sink, "call_ended") >= len(commits):
            time.sleep(1.0)  # a second more for duplicates to show
            return
        time.sleep(min(1.0 if run.options.burst else 0.5, max(0.0, end - time.time())))


# ---------------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------------


def collect_calls(client: firestore.Client) -> dict[str, dict[str, Any]]:
    """Every call document, by id."""
    return {snap.id: snap.to_dict() or {} for snap in client.collection(CALLS).stream()}


def log_event_counts(path: Path) -> tuple[dict[str, int], int]:
    """Counts of the watcher's warning-or-worse log events (by level:event) and calls the sweep timed out."""
    counts: Counter[str] = Counter()
    swept = 0
    if not path.exists():
        return {}, 0
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            level = str(event.get("level", ""))
            if level in {"warning", "error", "critical", "exception"}:
                counts[f"{level}:{event.get('event')}"] += 1
            if event.get("event") == "sweep.done":
                swept += int(event.get("overdue") or 0)
    return dict(counts), swept


def collect(client: firestore.Client, tmp: Path, run: Run) -> None:
    """Read the final call documents, the sink, the heartbeat and the log into `run`."""
    run.calls = collect_calls(client)
    run.sink = read_sink(tmp / "pushes.jsonl")
    beats = watcher_heartbeats(client)
    run.heartbeat = dict(beats[0].get("status") or {}) if beats else {}


# ---------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float], quantiles: Sequence[float] = (50, 95, 99)) -> dict[str, Any]:
    """n, the given percentiles and the max of `values` (milliseconds, rounded)."""
    out: dict[str, Any] = {"n": len(values)}
    for q in quantiles:
        value = percentile(values, q)
        out[f"p{q:g}"] = None if value is None else round(value, 1)
    out["max"] = round(max(values), 1) if values else None
    return out


def seconds(value: Any) -> float | None:
    """Unix seconds of a Firestore timestamp (or None)."""
    return value.timestamp() if isinstance(value, datetime) else None


def pushes_by_call(sink: list[dict[str, Any]], kind: str) -> dict[str, list[float]]:
    """The `sentAt` of every sink line of `kind`, grouped by payload callId."""
    grouped: dict[str, list[float]] = {}
    for line in sink:
        if line.get("kind") == kind:
            call_id = str((line.get("payload") or {}).get("callId", ""))
            grouped.setdefault(call_id, []).append(float(line.get("sentAt") or 0.0))
    return grouped


def push_latencies(run: Run) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """Write-to-push ms per pushed call: from the commit time, from the client time, and (due, ms) pairs."""
    first_push = {cid: min(times) for cid, times in pushes_by_call(run.sink, "incoming_call").items()}
    committed, client_side, timeline = [], [], []
    for write in run.writes:
        sent = first_push.get(write.call_id)
        if sent is None or write.commit_time is None:
            continue
        committed.append((sent - write.commit_time) * 1000)
        client_side.append((sent - write.client_time) * 1000)
        timeline.append((write.due_offset_s, committed[-1]))
    return committed, client_side, timeline


def lateness(run: Run) -> tuple[list[float], list[tuple[float, float]], list[float]]:
    """Per missed call: endedAt - ringDeadline (ms), (due, ms) pairs, and stop-ringing push delay (ms)."""
    due_of = {w.call_id: w.due_offset_s for w in run.writes}
    ended_push = {cid: min(times) for cid, times in pushes_by_call(run.sink, "call_ended").items()}
    late, timeline, stop_delay = [], [], []
    for call_id, call in run.calls.items():
        ended, deadline = seconds(call.get("endedAt")), seconds(call.get("ringDeadline"))
        if call.get("status") != "missed" or ended is None or deadline is None:
            continue
        late.append((ended - deadline) * 1000)
        timeline.append((due_of.get(call_id, 0.0), late[-1]))
        if call_id in ended_push:
            stop_delay.append((ended_push[call_id] - ended) * 1000)
    return late, timeline, stop_delay


def windows(timeline: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """p50 / max per WINDOW_S window of the load (by when the call was due)."""
    buckets: dict[int, list[float]] = {}
    for due, value in timeline:
        buckets.setdefault(int(due // WINDOW_S), []).append(value)
    return [{"from_s": k * WINDOW_S, **distribution(v, (50, 99))} for k, v in sorted(buckets.items())]


def exactly_once(run: Run) -> dict[str, int]:
    """Counts of calls pushed / timed out exactly once, never, or more than once."""
    written = [w.call_id for w in run.writes if w.commit_time is not None]
    incoming = pushes_by_call(run.sink, "incoming_call")
    ended = pushes_by_call(run.sink, "call_ended")
    status = {cid: run.calls.get(cid, {}).get("status") for cid in written}
    each = per_call(run)  # "once" means once per device of the receiver
    return {
        "calls_written": len(written),
        "writes_failed": sum(1 for w in run.writes if w.error is not None),
        "pushed_once": sum(1 for cid in written if len(incoming.get(cid, [])) == each),
        "not_pushed": sum(1 for cid in written if not incoming.get(cid)),
        "pushed_more_than_once": sum(1 for cid in written if len(incoming.get(cid, [])) > each),
        "push_not_recorded": sum(1 for cid in written if run.calls.get(cid, {}).get("pushSent") is not True),
        "missed_once": sum(1 for cid in written if status[cid] == "missed" and len(ended.get(cid, [])) == each),
        "not_timed_out": sum(1 for cid in written if status[cid] != "missed"),
        "stop_push_missing": sum(1 for cid in written if status[cid] == "missed" and not ended.get(cid)),
        "stop_push_more_than_once": sum(1 for cid in written if len(ended.get(cid, [])) > each),
    }


def per_call(run: Run) -> int:
    """Pushes of one kind a call should get: one per device of its receiver."""
    return max(1, run.options.devices)


def after_stop(run: Run) -> dict[str, int]:
    """Pushes in the sink once the watcher had drained and exited (late work included)."""
    incoming = pushes_by_call(run.sink_after_stop, "incoming_call")
    ended = pushes_by_call(run.sink_after_stop, "call_ended")
    each = per_call(run)
    return {
        "calls_pushed": len(incoming),
        "calls_pushed_more_than_once": sum(1 for v in incoming.values() if len(v) > each),
        "calls_stop_pushed": len(ended),
        "calls_stop_pushed_more_than_once": sum(1 for v in ended.values() if len(v) > each),
        "incoming_after_ring_deadline": sum(
            1 for line in run.sink_after_stop if line.get("kind") == "incoming_call" and expired(line)
        ),
    }


def expired(line: dict[str, Any]) -> bool:
    """True when a push was sent after its own expiry (for incoming calls: the ring deadline)."""
    return float(line.get("sentAt") or 0.0) > float(line.get("expiresAt") or float("inf"))


def memory(samples: list[Sample]) -> dict[str, Any]:
    """RSS at 10 s and at the end, the max, and drift between the first and last quarter after warm-up."""
    if not samples:
        return {"samples": 0}
    at_10 = min(samples, key=lambda s: abs(s.t - WARMUP_S))
    steady = [s.rss_kb for s in samples if s.t >= WARMUP_S]
    quarter = max(1, len(steady) // 4)
    first = statistics.fmean(steady[:quarter]) if steady else None
    last = statistics.fmean(steady[-quarter:]) if steady else None
    drift = None if not first or last is None else (last - first) / first * 100
    busy_s = samples[-1].t - samples[0].t

    def pct(used: float) -> float | None:
        return round(used / busy_s * 100, 1) if busy_s else None

    return {
        "samples": len(samples),
        "rss_at_10s_mb": round(at_10.rss_kb / 1024, 1),
        "rss_end_mb": round(samples[-1].rss_kb / 1024, 1),
        "rss_max_mb": round(max(s.rss_kb for s in samples) / 1024, 1),
        "rss_first_quarter_mb": None if first is None else round(first / 1024, 1),
        "rss_last_quarter_mb": None if last is None else round(last / 1024, 1),
        "drift_pct": None if drift is None else round(drift, 1),
        "watcher_cpu_pct_of_one_core": pct(samples[-1].cpu_s - samples[0].cpu_s),
        "emulator_cpu_pct_of_one_core": pct(samples[-1].emulator_cpu_s - samples[0].emulator_cpu_s),
        "bench_cpu_pct_of_one_core": pct(samples[-1].bench_cpu_s - samples[0].bench_cpu_s),
    }


def cpu_per_call(run: Run) -> dict[str, Any]:
    """The watcher's and the emulator's CPU milliseconds per call written, and their ratio, over the run."""
    calls = sum(1 for w in run.writes if w.commit_time is not None)
    if len(run.samples) < 2 or not calls:
        return {"watcher_ms_per_call": None, "emulator_ms_per_call": None, "watcher_to_emulator": None}
    first, last = run.samples[0], run.samples[-1]
    watcher, emulator = last.cpu_s - first.cpu_s, last.emulator_cpu_s - first.emulator_cpu_s
    return {
        "watcher_ms_per_call": round(watcher / calls * 1000, 2),
        "emulator_ms_per_call": round(emulator / calls * 1000, 2),
        "watcher_to_emulator": round(watcher / emulator, 2) if emulator > 0 else None,
    }


def burst_facts(run: Run) -> dict[str, Any]:
    """Per burst call: channel and push before its deadline, no ring_deadline_passed, missed in time."""
    incoming = {cid: min(times) for cid, times in pushes_by_call(run.sink, "incoming_call").items()}
    written = [w.call_id for w in run.writes if w.commit_time is not None]
    in_time = late_push = no_channel = deadline_passed = missed_in_time = 0
    channel_after_create: list[float] = []
    for call_id in written:
        call = run.calls.get(call_id, {})
        deadline, created, ended = seconds(call.get("ringDeadline")), seconds(call.get("createdAt")), None
        pushed = incoming.get(call_id)
        if not call.get("channelName"):
            no_channel += 1
        if call.get("pushError") == "ring_deadline_passed":
            deadline_passed += 1
        if pushed is not None and deadline is not None and pushed <= deadline and call.get("channelName"):
            in_time += 1
        elif pushed is not None:
            late_push += 1
        if pushed is not None and created is not None:
            channel_after_create.append((pushed - created) * 1000)
        ended = seconds(call.get("endedAt"))
        if call.get("status") == "missed" and ended is not None and deadline is not None:
            missed_in_time += ended - deadline <= TARGET_BURST_MISSED_WITHIN_S
    return {
        "calls": len(written),
        "channel_and_push_before_deadline": in_time,
        "pushed_after_deadline": late_push,
        "without_channel": no_channel,
        "ring_deadline_passed": deadline_passed,
        "missed_within_deadline_plus_15s": missed_in_time,
        "push_after_createdAt_ms": distribution(channel_after_create),
    }


def commit_rate(run: Run) -> float | None:
    """Calls committed per second, from the first to the last commit."""
    commits = sorted(w.commit_time for w in run.writes if w.commit_time is not None)
    span = commits[-1] - commits[0] if len(commits) > 1 else 0.0
    return round((len(commits) - 1) / span, 2) if span > 0 else None


def summarize(run: Run) -> dict[str, Any]:
    """The figures of a run as one JSON-able object."""
    committed, client_side, push_timeline = push_latencies(run)
    late, late_timeline, stop_delay = lateness(run)
    writes_ms = [w.write_ms for w in run.writes if w.error is None]
    errors = Counter(w.error for w in run.writes if w.error is not None)
    events, swept = run.log_events, run.timed_out_by_sweep
    return {
        "options": asdict(run.options),
        "load_avg_1min_at_start": run.load_1min,
        "load_avg_1min_at_end": run.load_1min_at_end,
        "load": {
            "calls_scheduled": len(run.writes),
            "submitted_rate": round(len(run.writes) / run.submit_wall_s, 2) if run.submit_wall_s else None,
            "submitted_wall_s": round(run.submit_wall_s, 2),
            "committed_rate": commit_rate(run),
            "max_submit_lag_ms": round(run.max_submit_lag_ms, 1),
            "write_ms": distribution(writes_ms),
            "write_errors": dict(errors.most_common(5)),
        },
        "push_latency_ms_from_commit": distribution(committed),
        "push_latency_ms_from_client": distribution(client_side),
        "push_latency_windows": windows(push_timeline),
        "timeout_lateness_ms": distribution(late, (50, 95, 99)),
        "lateness_windows": windows(late_timeline),
        "stop_push_after_endedAt_ms": distribution(stop_delay),
        "counts": exactly_once(run),
        "after_watcher_stopped": after_stop(run),
        "memory": memory(run.samples),
        "cpu_per_call": cpu_per_call(run),
        "burst": burst_facts(run) if run.options.burst else None,
        "watcher": {
            "alive_at_end": run.watcher_alive_at_end,
            "exit_code": run.watcher_exit,
            "stop_s": round(run.watcher_stop_s, 1),
            "heartbeat_status": run.heartbeat,
            "warning_events": events,
            "timed_out_by_sweep": swept,
        },
    }


def check(name: str, value: float | None, limit: float, unit: str, absolute: bool = False) -> Check:
    """A `value <= limit` target (|value| when `absolute`); a missing value fails."""
    shown = "n/a" if value is None else f"{value:g} {unit}"
    passed = value is not None and (abs(value) if absolute else value) <= limit
    return Check(name, shown, f"{'|x|' if absolute else ''}<= {limit:g} {unit}", passed)


def burst_checks(summary: dict[str, Any], all_once: bool) -> list[Check]:
    """The targets of a burst run."""
    burst, total = summary["burst"], summary["counts"]["calls_written"]
    parallel = summary["options"]["writers"] > 1
    results = [
        Check(
            "channel & push before deadline",
            f"{burst['channel_and_push_before_deadline']}/{total}",
            "all calls",
            total > 0 and burst["channel_and_push_before_deadline"] == total,
        ),
        Check("ring_deadline_passed", str(burst["ring_deadline_passed"]), "0", burst["ring_deadline_passed"] == 0),
        Check(
            "missed within deadline + 15 s",
            f"{burst['missed_within_deadline_plus_15s']}/{total}",
            "all calls",
            total > 0 and burst["missed_within_deadline_plus_15s"] == total,
        ),
        Check("pushed once & missed once", f"{summary['counts']['pushed_once']}/{total} pushed", "all calls", all_once),
    ]
    if parallel:
        p99 = summary["push_latency_ms_from_commit"]["p99"]
        results.append(check("write-to-push p99 (parallel)", p99, TARGET_BURST_PUSH_P99_MS, "ms"))
    alive = summary["watcher"]["alive_at_end"]
    return [*results, Check("watcher stayed up", str(alive), "True", alive)]


def checks(summary: dict[str, Any]) -> list[Check]:
    """Every target of the run, evaluated."""
    push, late, counts = summary["push_latency_ms_from_commit"], summary["timeout_lateness_ms"], summary["counts"]
    total = counts["calls_written"]
    all_once = (
        total > 0 and counts["writes_failed"] == 0 and counts["pushed_once"] == total and counts["missed_once"] == total
    )
    if summary["burst"] is not None:
        return burst_checks(summary, all_once)
    return [
        check("write-to-push p50", push["p50"], TARGET_PUSH_P50_MS, "ms"),
        check("write-to-push p99", push["p99"], TARGET_PUSH_P99_MS, "ms"),
        check("timeout lateness p99", late["p99"], TARGET_LATENESS_P99_MS, "ms"),
        check("memory drift", summary["memory"].get("drift_pct"), TARGET_MEMORY_DRIFT_PCT, "%", absolute=True),
        Check(
            "pushed once & missed once",
            f"{counts['pushed_once']}/{total} pushed, {counts['missed_once']}/{total} missed",
            "all calls, no write failed",
            all_once,
        ),
        Check("watcher stayed up", str(summary["watcher"]["alive_at_end"]), "True", summary["watcher"]["alive_at_end"]),
    ]


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------


def dist_row(label: str, dist: dict[str, Any]) -> str:
    """One table row for a distribution."""
    cells = "  ".join(f"{k}={'-' if v is None else v}" for k, v in dist.items())
    return f"  {label:<34} {cells}"


def render_windows(label: str, rows: list[dict[str, Any]]) -> list[str]:
    """Per-window p50/max lines."""
    parts = [f"{int(r['from_s']):>3}s p50={r['p50']} max={r['max']}" for r in rows]
    return [f"  {label}:"] + [f"    {' | '.join(parts[i : i + 3])}" for i in range(0, len(parts), 3)]


def render(summary: dict[str, Any], results: list[Check]) -> str:
    """The human-readable table."""
    o, load, mem, w = summary["options"], summary["load"], summary["memory"], summary["watcher"]
    if o["burst"]:
        how = "in one commit" if o["writers"] == 1 else f"by {o['writers']} parallel writers"
        mode = f"a burst of {o['burst']} calls {how} in {load['submitted_wall_s']}s"
    else:
        mode = f"rate {o['rate']:g}/s for {o['duration']:g}s"
    cpu = summary["cpu_per_call"]
    lines = [
        "calls_bench: one watcher, every call left unanswered",
        f"  {mode}, ring timeout {o['ring_timeout']:g}s, "
        f"1-min load average at start {summary['load_avg_1min_at_start']:.2f}, "
        f"at end {summary['load_avg_1min_at_end']:.2f} ({os.cpu_count()} cores)",
        f"  calls scheduled {load['calls_scheduled']}, submitted {load['submitted_rate']}/s, "
        f"committed {load['committed_rate']}/s, "
        f"max submit lag {load['max_submit_lag_ms']} ms, write errors {load['write_errors'] or 'none'}",
        "latency (ms)",
        dist_row("create() round trip", load["write_ms"]),
        dist_row("write-to-push (commit time)", summary["push_latency_ms_from_commit"]),
        dist_row("write-to-push (client time)", summary["push_latency_ms_from_client"]),
        dist_row("timeout lateness endedAt-deadline", summary["timeout_lateness_ms"]),
        dist_row("stop-ringing push after endedAt", summary["stop_push_after_endedAt_ms"]),
        *render_windows("write-to-push by 10 s window", summary["push_latency_windows"]),
        *render_windows("lateness by 10 s window", summary["lateness_windows"]),
        "counts (at collection: last deadline + margin)",
        *(f"  {k:<34} {v}" for k, v in summary["counts"].items()),
        "sink after the watcher drained and stopped",
        *(f"  {k:<34} {v}" for k, v in summary["after_watcher_stopped"].items()),
        "watcher memory / cpu",
        *(f"  {k:<34} {v}" for k, v in mem.items()),
        f"  CPU per call: watcher {cpu['watcher_ms_per_call']} ms, emulator {cpu['emulator_ms_per_call']} ms, "
        f"watcher/emulator {cpu['watcher_to_emulator']}",
        *(["burst", *(f"  {k:<34} {v}" for k, v in summary["burst"].items())] if summary["burst"] else []),
        "watcher",
        f"  alive at end {w['alive_at_end']}, exit code {w['exit_code']} after {w['stop_s']}s, "
        f"calls timed out by the sweep {w['timed_out_by_sweep']}",
        f"  last heartbeat status {w['heartbeat_status']}",
        f"  warning/error log events {w['warning_events'] or 'none'}",
        "targets",
        *(f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<28} {c.figure:<34} target {c.target}" for c in results),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def watcher_process(env: dict[str, str], tmp: Path, run: Run) -> Iterator[subprocess.Popen[bytes]]:
    """Start the watcher; always stop it (SIGTERM, SIGKILL after the grace) and record how it ended."""
    proc = start_watcher(env, tmp)
    try:
        yield proc
    finally:
        run.watcher_exit, run.watcher_stop_s = stop_watcher(proc)
        say(f"watcher stopped: exit {run.watcher_exit} after {run.watcher_stop_s:.1f}s")


def measure(
    client: firestore.Client, proc: subprocess.Popen[bytes], emulator_pid: int | None, tmp: Path, run: Run
) -> None:
    """Load the watcher, sample it, wait out the deadlines and collect the results."""
    origin = time.monotonic() + 0.5
    sampler = Sampler(proc.pid, emulator_pid, origin)
    sampler.start()
    try:
        if run.options.burst:
            how = "in one commit" if run.options.writers == 1 else f"by {run.options.writers} parallel writers"
            say(f"load: a burst of {run.options.burst} calls {how}")
            run_burst(client, run.options, run, origin)
            say(f"burst written in {run.submit_wall_s:.1f}s; waiting for every call to be missed")
        else:
            say(f"load: {run.options.rate:g} calls/s for {run.options.duration:g}s")
            run_load(client, run.options, run, origin)
            say(f"load done; waiting {run.options.ring_timeout + run.options.margin:g}s past the last deadline")
        wait_for_tail(proc, run, tmp / "pushes.jsonl")
    finally:
        run.samples = sampler.stop()
    run.load_1min_at_end = os.getloadavg()[0]
    collect(client, tmp, run)


def execute(options: Options, run: Run, tmp: Path) -> None:
    """Emulators, seed, watcher, load, collection; the watcher and emulators always stopped."""
    emulators = EmulatorSet.create()
    say("starting emulators")
    with emulators.running():
        client = make_client(emulators.env())
        try:
            try:
                seed_users(client, options.pairs, options.devices)
            except Exception as exc:
                raise SetupError(f"seeding users/* failed: {type(exc).__name__}: {exc}") from exc
            with watcher_process(watcher_env(emulators, tmp, options), tmp, run) as proc:
                wait_for_watcher(client, proc, tmp)
                say(f"watcher up (pid {proc.pid})")
                emulator = emulators.firestore.process
                measure(client, proc, emulator.pid if emulator else None, tmp, run)
        finally:
            client.close()
    run.log_events, run.timed_out_by_sweep = log_event_counts(tmp / "watcher.log.jsonl")
    run.sink_after_stop = read_sink(tmp / "pushes.jsonl")


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 all targets met, 1 one missed, 2 set-up failure or interruption."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    run = Run(options, os.getloadavg()[0])
    tmp = Path(tempfile.mkdtemp(prefix="calls-bench-"))
    say(f"files in {tmp}; 1-min load average {run.load_1min:.2f}")
    try:
        execute(options, run, tmp)
    except (SetupError, EmulatorError) as exc:
        say(f"set-up failed: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 2
    except Exception as exc:  # the bench itself broke: no figures to judge
        say(f"run failed: {type(exc).__name__}: {exc}")
        return 2
    summary = summarize(run)
    results = checks(summary)
    summary["targets"] = [asdict(c) for c in results]
    summary["files"] = str(tmp)
    table = render(summary, results)
    if options.as_json:
        print(table, file=sys.stderr)
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(table)
    return 0 if all(c.passed for c in results) else 1


if __name__ == "__main__":
    sys.exit(main())
