"""Recorder benchmark: many simulated sessions at real-time rate in one recorder process.

Each session is the production RecordingSession (mixer, streaming WAV writer, sidecar) over a
SimulatedChannel whose participants talk continuously; Firestore and Storage are left out (their cost
is per session start/stop, not per frame). Reports, for the steady state:

- CPU per session (share of one core) and the sessions one core sustains at that rate;
- resident memory added per session (RSS after start minus RSS before, divided by the sessions);
- frames lost (inbox overflow), shifted (arrived after their slot was written) and missing from the
  files (expected from the talk time vs written), and the event loop's worst lateness.

Usage: .venv/bin/python bench/recorder_bench.py --sessions 200 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from memharbor import logs, wav
from recorder.clock import SessionClock
from recorder.files import RecordingDir
from recorder.mixer import slot_of
from recorder.session import RecordingSession, Segment, SessionConfig, SessionPlan
from recorder.simulated import SimParticipant, SimulatedChannel

TONES = (440.0, 1000.0, 660.0, 1500.0)


class Hooks:
    async def started(self, plan: SessionPlan, filename: str, started_at: datetime) -> bool:
        return True

    async def stopping(self, plan: SessionPlan, reason: str) -> None:
        return None


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sound_ms(pcm: bytes) -> int:
    """Milliseconds from the first to the last non-silent 10 ms slot."""
    loud = [k for k in range(len(pcm) // 320) if pcm[k * 320 : (k + 1) * 320].strip(b"\x00")]
    return (loud[-1] + 1 - loud[0]) * 10 if loud else 0


async def lag_monitor(samples: list[float], stop: asyncio.Event, period: float = 0.01) -> None:
    """How late the loop wakes up a 10 ms sleeper: the lateness every session tick suffers too."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(period)
        samples.append(time.perf_counter() - started - period)


async def run(sessions: int, seconds: float, participants: int, root: Path) -> dict[str, float]:
    clock = SessionClock()
    config = SessionConfig(idle_s=3600.0, max_s=3600.0)
    files = RecordingDir(root)
    files.ensure()
    gc.collect()
    base_rss = rss_kb()
    runs: list[RecordingSession] = []
    talk_s = 2.0 + seconds  # everyone talks through the warm-up and the measured window, then is quiet
    for i in range(sessions):
        people = [
            SimParticipant(str(100 + p), TONES[p % len(TONES)], talk=((0.0, talk_s),)) for p in range(participants)
        ]
        source = SimulatedChannel(people, clock)
        plan = SessionPlan(f"s{i}", f"bench{i}_alice_bob", "bench")
        runs.append(RecordingSession(plan, source, files, clock, config, lambda c, u, t: "", Hooks()))
    tasks = []
    for session in runs:
        tasks.append(asyncio.create_task(session.run()))
        await asyncio.sleep(1.0 / sessions)  # stagger starts over one second, as real calls would be
    lag: list[float] = []
    stop_lag = asyncio.Event()
    monitor = asyncio.create_task(lag_monitor(lag, stop_lag))
    await asyncio.sleep(2.0)  # warm-up: files open, rings allocated
    rss_running = rss_kb()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    rss_peak = max(rss_running, rss_kb())
    stop_lag.set()
    await monitor
    await asyncio.sleep(1.5)  # every session's talk has ended (the last one started ~1 s after the first)
    for session in runs:
        session.request_stop("requested")
    segments: list[Segment] = await asyncio.gather(*tasks)
    missing = 0
    duration_errors = []
    talk_errors = []
    expected = participants * slot_of(talk_s)
    for session, segment in zip(runs, segments, strict=True):
        missing += max(0, expected - segment.frames)
        info, pcm = wav.read_pcm(root / segment.mix.filename)
        duration_errors.append(abs(info.duration_ms - slot_of(session.stop_at) * 10))
        talk_errors.append(abs(_sound_ms(pcm) - talk_s * 1000))
    cpu_share = (cpu1 - cpu0) / (wall1 - wall0)
    lag_sorted = sorted(lag)
    return {
        "sessions": sessions,
        "participants": participants,
        "seconds": round(wall1 - wall0, 1),
        "cpu_core_share_total": round(cpu_share, 3),
        "cpu_per_session_pct": round(100 * cpu_share / sessions, 3),
        "sessions_per_core": round(sessions / cpu_share, 0) if cpu_share else float("inf"),
        "rss_base_mb": round(base_rss / 1024, 1),
        "rss_per_session_kb": round((rss_peak - base_rss) / sessions, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "frames_written": sum(s.frames for s in segments),
        "frames_dropped": sum(s.dropped_frames for s in segments),
        "frames_late": sum(s.late_frames for s in segments),
        "frames_missing": missing,
        "max_duration_error_ms": max(duration_errors),
        "max_talk_time_error_ms": max(talk_errors),
        "loop_lag_p50_ms": round(1000 * statistics.median(lag_sorted), 2),
        "loop_lag_p99_ms": round(1000 * lag_sorted[int(0.99 * (len(lag_sorted) - 1))], 2),
        "loop_lag_max_ms": round(1000 * lag_sorted[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--participants", type=int, default=2)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    parser.add_argument("--keep", action="store_true", help="keep the WAV files (printed folder)")
    args = parser.parse_args()
    logs.configure("json", "warning", None)
    root = Path(tempfile.mkdtemp(prefix="recorder-bench-"))
    try:
        coro = run(args.sessions, args.seconds, args.participants, root)
        if args.uvloop:
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.keep:
        print(f"files in {root}")


if __name__ == "__main__":
    main()
