"""The recorder's lifecycle: listen, claim, record, deliver; renew leases, sweep, recover; drain on stop.

Delivery of a finished segment: upload the mix (and tracks) to Storage, then write the result to the
recording document in one guarded commit (and `recordingId` on the call), then drop the sidecar. Anything
that fails on the way leaves the sidecar, so the segment is delivered by a later sweep or restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from memharbor import wav
from memharbor.logs import get_logger
from memharbor.recording_requests import RecordingStatus
from memharbor.repositories.recording_sessions import Claim, RecordingSessions, SegmentReport
from memharbor.repositories.timeline import TimelineWriter
from memharbor.timeline import Event, EventKind, Scalar
from recorder.audio import AudioSource, JoinError
from recorder.clock import Clock
from recorder.files import RECORDING, RecordingDir, Sidecar
from recorder.listener import SessionEvent
from recorder.metrics import RecorderMetrics
from recorder.session import (
    LEASE_LOST,
    REQUESTED,
    SHUTDOWN,
    FileResult,
    RecordingSession,
    Segment,
    SessionConfig,
    SessionPlan,
    TokenMinter,
)
from recorder.upload import UploadError

log = get_logger()
CRASHED = "crashed"


@dataclass(frozen=True)
class RecorderConfig:
    """Timing and capacity of one recorder process."""

    worker_id: str
    lease_s: float = 20.0
    sweep_s: float = 5.0
    max_sessions: int = 100
    drain_s: float = 60.0
    # The heartbeat's period: liveness fails when no beat was attempted for 3 of them.
    heartbeat_s: float = 5.0
    session: SessionConfig = field(default_factory=SessionConfig)


class SessionWatch(Protocol):
    """The supervised listener on unfinished sessions, as the worker drives it (recorder/listener.py)."""

    restarts: int

    @property
    def active(self) -> bool: ...

    async def start(self) -> None: ...

    async def supervise(self) -> None: ...

    async def stop(self) -> None: ...


class HeartbeatLoop(Protocol):
    """The worker's heartbeat, as the worker drives it (memharbor/heartbeat.py)."""

    async def try_beat(self) -> bool: ...

    async def run(self) -> None: ...

    async def retire(self) -> None: ...


class Uploads(Protocol):
    """Where finished files go (recorder/upload.py's Uploader)."""

    async def upload(self, path: Path) -> tuple[str, str] | None:
        """(url, storagePath) of the uploaded file, None when there is no Storage; UploadError when it failed."""
        ...


def _lapsed(lease: datetime | None) -> bool:
    return lease is None or lease <= datetime.now(UTC)


class Recorder:
    """Records every session it can claim, up to `max_sessions` at once."""

    def __init__(
        self,
        store: RecordingSessions,
        listener: SessionWatch,
        uploader: Uploads,
        make_source: Callable[[], AudioSource],
        files: RecordingDir,
        heartbeat: HeartbeatLoop,
        clock: Clock,
        config: RecorderConfig,
        mint_token: TokenMinter,
        metrics: RecorderMetrics | None = None,
        timeline: TimelineWriter | None = None,
    ) -> None:
        self.store = store
        self.listener = listener
        self.uploader = uploader
        self.make_source = make_source
        self.files = files
        self.heartbeat = heartbeat
        self.clock = clock
        self.config = config
        self.mint_token = mint_token
        self.worker_id = config.worker_id
        self.sessions: dict[str, RecordingSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._lock_fd: int | None = None
        self.stats = {"recorded": 0, "recovered": 0, "failed": 0, "frames": 0, "late": 0, "dropped": 0}
        self.metrics = metrics if metrics is not None else RecorderMetrics()
        self.timeline = timeline
        self._delivering: set[str] = set()
        # For the probes: listening yet, first claim sweep done, monotonic time of the latest heartbeat.
        self._listening = False
        self._swept = False
        self._beat_at: float | None = None

    # -- events and claims ------------------------------------------------------------------------
    def on_events(self, events: list[SessionEvent]) -> None:
        """Take a batch from the listener (on the loop's thread)."""
        for event in events:
            session = self.sessions.get(event.sid)
            if session is not None:
                if event.stop_requested:
                    session.request_stop(REQUESTED)
                if event.change == "REMOVED" or (event.worker_id not in (None, self.worker_id)):
                    session.request_stop(LEASE_LOST)
                continue
            if event.change != "REMOVED" and self._claimable(event.status, event.worker_id, event.lease_until):
                self.claim_soon(event.sid)

    def _claimable(self, status: Any, worker_id: str | None, lease: datetime | None) -> bool:
        if status == RecordingStatus.REQUESTED:
            return worker_id is None or worker_id == self.worker_id or _lapsed(lease)
        return status in (RecordingStatus.RECORDING, RecordingStatus.STOPPING) and _lapsed(lease)

    def claim_soon(self, sid: str) -> None:
        """Try to claim and record the session in the background (if there is room)."""
        if self._stopping or sid in self._tasks or len(self._tasks) >= self.config.max_sessions:
            return
        self._tasks[sid] = asyncio.create_task(self._own(sid))

    async def _own(self, sid: str) -> None:
        try:
            result = await self.store.claim(sid)
            self.metrics.claims.labels(result.claim.value).inc()
            if result.claim is Claim.FAILED:
                log.info("recording.refused", sid=sid, error=result.error)
            if result.channel is None or result.claim not in (Claim.NEW, Claim.TAKEOVER):
                return
            if self._stopping and result.claim is Claim.NEW:
                await self.store.release(sid)
                return
            log.info("recording.claimed", sid=sid, claim=result.claim.value, channel=result.channel)
            await self._note(
                result.call_id, EventKind.RECORDING_CLAIMED, sid=sid, takeover=result.claim is Claim.TAKEOVER
            )
            await self._record(SessionPlan(sid, result.channel, self.worker_id, result.call_id))
        except Exception:
            log.exception("recording.task_failed", sid=sid)
        finally:
            self._tasks.pop(sid, None)
            self.sessions.pop(sid, None)

    async def _record(self, plan: SessionPlan) -> None:
        session = RecordingSession(
            plan, self.make_source(), self.files, self.clock, self.config.session, self.mint_token, self
        )
        self.sessions[plan.sid] = session
        if self._stopping:
            session.request_stop(SHUTDOWN)
        try:
            segment = await session.run()
        except JoinError as exc:
            self.stats["failed"] += 1
            log.warning("recording.join_failed", sid=plan.sid, error=str(exc))
            await self.store.fail(plan.sid, f"join failed: {exc}")
            await self._note(plan.call_id, EventKind.RECORDING_STOPPED, sid=plan.sid, reason="join_failed")
            return
        except Exception as exc:
            self.stats["failed"] += 1
            log.exception("recording.failed", sid=plan.sid)
            session.close_files()
            await self.store.fail(plan.sid, f"recording failed: {type(exc).__name__}: {exc}")
            await self._note(plan.call_id, EventKind.RECORDING_STOPPED, sid=plan.sid, reason="failed")
            return
        finally:
            self.sessions.pop(plan.sid, None)
            self._tally_frames(session)
        if segment.stop_reason in (LEASE_LOST, SHUTDOWN):
            self.metrics.interrupted.labels(segment.stop_reason).inc()
        await self._deliver_segment(segment)

    def _tally_frames(self, session: RecordingSession) -> None:
        # Once the session leaves `sessions`, its counts move here (a failed one's too), so the frame
        # counters that frame_counts() reports never go down.
        mixer = session.mixer
        if mixer is not None:
            self.stats["frames"] += mixer.frames
            self.stats["late"] += mixer.late
        self.stats["dropped"] += session.source.inbox.dropped

    # -- session hooks ----------------------------------------------------------------------------
    async def started(self, plan: SessionPlan, filename: str, started_at: datetime) -> bool:
        held = await self.store.mark_recording(plan.sid, filename, started_at)
        log.info("recording.started", sid=plan.sid, filename=filename, held=held)
        if held:
            await self._note(plan.call_id, EventKind.RECORDING_STARTED, sid=plan.sid)
        return held

    async def stopping(self, plan: SessionPlan, reason: str) -> None:
        try:
            await self.store.mark_stopping(plan.sid, reason)
        except Exception as exc:  # the final write still follows; a missed `stopping` is cosmetic
            log.warning("recording.stopping_write_failed", sid=plan.sid, error=type(exc).__name__)

    # -- the call's timeline ------------------------------------------------------------------------
    def _event(self, kind: EventKind, **detail: Scalar | None) -> Event:
        return Event(kind, detail, self.worker_id, time.time())

    async def _note(self, call_id: str | None, kind: EventKind, **detail: Scalar | None) -> None:
        """Add one step to the call's timeline (sessions of no call have none)."""
        await self._note_all(call_id, [self._event(kind, **detail)])

    async def _note_all(self, call_id: str | None, events: list[Event]) -> None:
        if self.timeline is None or call_id is None:
            return
        try:
            await self.timeline.append(call_id, events)
        except Exception as exc:  # the timeline explains a recording; it must never fail one
            log.warning("timeline.write_failed", call_id=call_id, kinds=[e.kind.value for e in events], error=repr(exc))

    # -- delivery ---------------------------------------------------------------------------------
    async def _upload_files(
        self, mix: FileResult, tracks: list[FileResult]
    ) -> tuple[tuple[str, str] | None, list[dict[str, Any]]]:
        uploaded = await self.uploader.upload(self.files.path(mix.filename))
        entries = []
        for track in tracks:
            done = await self.uploader.upload(self.files.path(track.filename))
            entries.append(
                {
                    "uid": track.uid,
                    "filename": track.filename,
                    "url": done[0] if done else None,
                    "storagePath": done[1] if done else None,
                    "duration": track.duration_ms,
                    "fileSize": track.file_size,
                }
            )
        return uploaded, entries

    async def _deliver(
        self,
        sid: str,
        owner: str,
        call_id: str | None,
        mix: FileResult,
        tracks: list[FileResult],
        *,
        started_at: datetime,
        reason: str | None,
        interrupted: bool,
    ) -> str:
        uploaded, track_entries = await self._upload_files(mix, tracks)
        report = SegmentReport(
            filename=mix.filename,
            url=uploaded[0] if uploaded else None,
            storage_path=uploaded[1] if uploaded else None,
            duration_ms=mix.duration_ms,
            file_size=mix.file_size,
            recorded_at=started_at,
            worker_id=owner,
            stop_reason=reason,
            interrupted=interrupted,
            tracks=track_entries,
        )
        outcome = await self.store.complete(sid, owner, report, call_id)
        self.files.remove_sidecar(mix.filename)
        log.info("recording.delivered", sid=sid, filename=mix.filename, outcome=outcome, uploaded=bool(uploaded))
        stopped = self._event(
            EventKind.RECORDING_STOPPED, sid=sid, reason=reason, durationMs=mix.duration_ms, interrupted=interrupted
        )
        if uploaded:
            await self._note_all(
                call_id, [self._event(EventKind.RECORDING_UPLOADED, sid=sid, fileSize=mix.file_size), stopped]
            )
        else:
            await self._note_all(call_id, [stopped])
        return outcome

    async def _deliver_segment(self, segment: Segment) -> None:
        plan = segment.plan
        self._delivering.add(plan.sid)
        try:
            await self._deliver(
                plan.sid,
                plan.worker_id,
                plan.call_id,
                segment.mix,
                segment.tracks,
                started_at=segment.started_at,
                reason=segment.stop_reason,
                interrupted=False,
            )
            self.stats["recorded"] += 1
        except UploadError as exc:
            # The sidecar stays: a later sweep (or restart) uploads the file and upgrades the session.
            self.stats["failed"] += 1
            await self.store.fail(plan.sid, f"{exc}; the local file is kept and retried")
            await self._note(plan.call_id, EventKind.RECORDING_UPLOAD_FAILED, sid=plan.sid, reason=str(exc))
        finally:
            self._delivering.discard(plan.sid)

    # -- recovery ---------------------------------------------------------------------------------
    def _worker_alive(self, worker_id: str) -> bool:
        """True when a recorder process on this host still holds that worker's lock file."""
        if worker_id == self.worker_id:
            return True
        path = self.files.root / f".{worker_id}.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    async def recover(self) -> int:
        """Deliver every segment left behind by a dead recorder (or an earlier failed delivery of ours)."""
        delivered = 0
        for sidecar in self.files.sidecars():
            if sidecar.sid in self._tasks:
                continue
            if sidecar.worker_id != self.worker_id and self._worker_alive(sidecar.worker_id):
                continue
            try:
                if await self._recover_one(sidecar):
                    delivered += 1
            except Exception as exc:
                log.warning("recovery.failed", sid=sidecar.sid, filename=sidecar.filename, error=repr(exc))
        return delivered

    async def _recover_one(self, sidecar: Sidecar) -> bool:
        path = self.files.path(sidecar.filename)
        if not path.exists():
            log.warning("recovery.file_missing", sid=sidecar.sid, filename=sidecar.filename)
            self.files.remove_sidecar(sidecar.filename)
            return False
        fd = wav.try_lock(path)
        if fd is None:
            return False  # a live writer holds it
        try:
            crashed = sidecar.state == RECORDING
            mix = self._final_file(path, crashed)
            tracks = [
                FileResult(name, *self._sizes(self.files.path(name), crashed), uid=uid)
                for uid, name in sidecar.tracks.items()
                if self.files.path(name).exists()
            ]
            outcome = await self._deliver(
                sidecar.sid,
                sidecar.worker_id,
                sidecar.call_id,
                mix,
                tracks,
                started_at=datetime.fromtimestamp(sidecar.started_at, UTC),
                reason=sidecar.stop_reason or CRASHED,
                interrupted=crashed,
            )
        finally:
            wav.unlock(fd)
        self.stats["recovered"] += 1
        if crashed:
            self.metrics.interrupted.labels(CRASHED).inc()
        log.info("recovery.delivered", sid=sidecar.sid, filename=sidecar.filename, crashed=crashed, outcome=outcome)
        return True

    def _final_file(self, path: Path, crashed: bool) -> FileResult:
        duration, size = self._sizes(path, crashed)
        return FileResult(path.name, duration, size)

    @staticmethod
    def _sizes(path: Path, crashed: bool) -> tuple[int, int]:
        info = wav.repair(path) if crashed else wav.read_info(path)
        return info.duration_ms, path.stat().st_size

    # -- loops ------------------------------------------------------------------------------------
    async def renew_leases(self) -> None:
        """Extend the lease of every session held, through recording and delivery alike; stop the
        recording of the ones another worker holds now.
        """
        for sid in list(self._tasks):
            try:
                held = await self.store.renew(sid)
            except Exception as exc:
                log.warning("lease.renew_failed", sid=sid, error=type(exc).__name__)
                continue
            session = self.sessions.get(sid)
            if not held and session is not None:
                session.request_stop(LEASE_LOST)

    async def _lease_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            await self.renew_leases()

    async def sweep_once(self) -> None:
        """Claim what the listener may have missed (new requests, lapsed leases); recover files."""
        for sid, doc in await self.store.in_progress():
            lease = doc.get("leaseUntil") if isinstance(doc.get("leaseUntil"), datetime) else None
            worker = doc.get("workerId") if isinstance(doc.get("workerId"), str) else None
            if sid not in self._tasks and self._claimable(doc.get("status"), worker, lease):
                self.claim_soon(sid)
        await self.recover()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_s)
            try:
                await self.sweep_once()
                self._swept = True
            except Exception as exc:
                log.warning("recorder.sweep_failed", error=type(exc).__name__)

    def status(self) -> dict[str, Any]:
        """What the heartbeat reports about this instance."""
        return {
            "workerId": self.worker_id,
            "listenerActive": self.listener.active,
            "listenerRestarts": self.listener.restarts,
            "sessions": len(self.sessions),
            "capacity": self.config.max_sessions,
            **self.stats,
        }

    def heartbeat_status(self) -> dict[str, Any]:
        """`status()`, for the heartbeat to call at each beat: it also tells the liveness probe the beat ran."""
        self._beat_at = time.monotonic()
        return self.status()

    # -- metrics and probes -----------------------------------------------------------------------
    def session_states(self) -> dict[str, int]:
        """Sessions held now: being claimed (or starting), recording, being delivered."""
        recording, delivering = len(self.sessions), len(self._delivering)
        claiming = max(0, len(self._tasks) - recording - delivering)
        return {"claiming": claiming, "recording": recording, "delivering": delivering}

    def frame_counts(self) -> dict[str, int]:
        """Frames mixed, late and dropped: finished sessions' totals plus what live sessions counted so far."""
        counts = {key: self.stats[key] for key in ("frames", "late", "dropped")}
        for session in self.sessions.values():
            if session.mixer is not None:
                counts["frames"] += session.mixer.frames
                counts["late"] += session.mixer.late
            counts["dropped"] += session.source.inbox.dropped
        return counts

    def liveness_problems(self) -> list[str]:
        """Why this recorder should be restarted: its session listener is down or its heartbeat stalled.

        None while it starts (recovering files can take long) or drains: readiness covers those.
        """
        if not self._listening or self._stopping:
            return []
        problems = []
        if not self.listener.active:
            problems.append("session listener not subscribed")
        if self._beat_at is None or time.monotonic() - self._beat_at > 3 * self.config.heartbeat_s:
            problems.append(f"no heartbeat for over {3 * self.config.heartbeat_s:g} s")
        return problems

    def readiness_problems(self) -> list[str]:
        """Why this recorder takes no sessions now: before its first claim sweep, while draining, or not live."""
        if self._stopping:
            return ["draining: taking no new sessions"]
        if not self._swept:
            return ["starting: no claim sweep yet"]
        return self.liveness_problems()

    def _take_worker_lock(self) -> None:
        self.files.ensure()
        fd = os.open(self.files.root / f".{self.worker_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def _release_worker_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.files.root / f".{self.worker_id}.lock").unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then stop every session, deliver them (up to `drain_s`) and exit."""
        self._take_worker_lock()
        await self.heartbeat.try_beat()  # a failure is retried by the heartbeat loop
        recovered = await self.recover()
        if recovered:
            log.info("recorder.recovered", segments=recovered)
        await self.listener.start()
        self._listening = True
        loops = [
            asyncio.create_task(self.listener.supervise()),
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self._lease_forever()),
            asyncio.create_task(self.heartbeat.run()),
        ]
        log.info("recorder.started", worker_id=self.worker_id, recordings_dir=str(self.files.root))
        await stop.wait()
        log.info("recorder.stopping", sessions=len(self.sessions), tasks=len(self._tasks))
        self._stopping = True
        await self.listener.stop()
        for session in self.sessions.values():
            session.request_stop(SHUTDOWN)
        # Leases keep being renewed while sessions finish; sweeps stop.
        loops[1].cancel()
        pending = list(self._tasks.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.drain_s)
            for task in late:
                task.cancel()
            log.info("recorder.drained", finished=len(pending) - len(late), abandoned=len(late))
        for task in loops:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*loops, return_exceptions=True)
        await self.heartbeat.retire()
        self._release_worker_lock()
        log.info("recorder.stopped")
