"""One recording session: join the channel, mix to a WAV as the audio comes, stop, finalize.

The session knows nothing of Firestore: it reports `started` and `stopping` through hooks and returns
the finished segment; the worker claims, uploads and writes documents around it. Stop conditions
checked here: a stop request (`request_stop`: stopRequested, SIGTERM, a lost lease), every remote
participant gone for `idle_s`, and `max_s` of recording. The file runs from the join to the stop
moment, except after an idle stop: then it ends where the last audio ended, without the wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from memharbor.logs import get_logger
from memharbor.wav import WavWriter
from recorder.audio import CONNECTION_FAILED, JOINED, LEFT, TOKEN_WILL_EXPIRE, AudioSource, Event
from recorder.clock import Clock
from recorder.files import FINALIZED, RecordingDir, Sidecar, safe
from recorder.mixer import TimelineMixer

log = get_logger()

REQUESTED = "requested"
IDLE = "idle"
MAX_DURATION = "max_duration"
SHUTDOWN = "shutdown"
LEASE_LOST = "lease_lost"


@dataclass(frozen=True)
class SessionConfig:
    """How a session records (from MEMHARBOR_RECORDER_* settings)."""

    uid: int = 999999
    idle_s: float = 30.0
    max_s: float = 7200.0
    tick_s: float = 0.05
    header_every_s: float = 2.0
    record_tracks: bool = False
    token_ttl_s: int = 3600
    latency_slots: int = 25


@dataclass(frozen=True)
class SessionPlan:
    """Which session to record, as the claim established it."""

    sid: str
    channel: str
    worker_id: str
    call_id: str | None = None


@dataclass(frozen=True)
class FileResult:
    """One finished WAV file of a segment."""

    filename: str
    duration_ms: int
    file_size: int
    uid: str | None = None  # the participant of a per-participant track


@dataclass
class Segment:
    """What one session run produced."""

    plan: SessionPlan
    mix: FileResult
    started_at: datetime
    stop_reason: str
    tracks: list[FileResult] = field(default_factory=list)
    frames: int = 0
    late_frames: int = 0
    dropped_frames: int = 0


class SessionHooks(Protocol):
    """What the worker does when a session starts and stops recording."""

    async def started(self, plan: SessionPlan, filename: str, started_at: datetime) -> bool:
        """Record that the session is recording; False when the session is no longer ours."""
        ...

    async def stopping(self, plan: SessionPlan, reason: str) -> None: ...


TokenMinter = Callable[[str, int, int], str]


class RecordingSession:
    """Records one channel into one segment."""

    def __init__(
        self,
        plan: SessionPlan,
        source: AudioSource,
        files: RecordingDir,
        clock: Clock,
        config: SessionConfig,
        mint_token: TokenMinter,
        hooks: SessionHooks,
    ) -> None:
        self.plan = plan
        self.source = source
        self.files = files
        self.clock = clock
        self.config = config
        self.mint_token = mint_token
        self.hooks = hooks
        self.stop_reason: str | None = None
        self.present: set[str] = set()
        self.mixer: TimelineMixer | None = None
        self._absent_since: float | None = 0.0
        self._left_at: dict[str, float] = {}
        self._t0 = 0.0
        self._stop_at = 0.0
        self._token_due = 0.0
        self._renew_now = False
        self._sidecar: Sidecar | None = None
        self._writers: list[WavWriter] = []

    def request_stop(self, reason: str, at: float | None = None) -> None:
        """End the recording now (or at `at` seconds into it); the first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop_at = at if at is not None else (self.now() if self.mixer is not None else 0.0)

    def _token(self) -> str:
        ttl = self.config.token_ttl_s
        token = self.mint_token(self.plan.channel, self.config.uid, ttl)
        # Renew when 80% of the lifetime is used (Agora also warns 30 s before expiry).
        self._token_due = self.clock.time() + ttl * 0.8
        return token

    @property
    def stop_at(self) -> float:
        """Where the recording ends (seconds into it), once a stop was requested."""
        return self._stop_at

    def now(self) -> float:
        """Seconds since the recording began."""
        return self.clock.monotonic() - self._t0

    async def run(self) -> Segment:
        """Join, record until a stop condition, leave, finalize; returns the segment."""
        await self.source.join(self.plan.channel, self.config.uid, self._token())
        try:
            self._t0 = self.clock.monotonic()
            started_at = datetime.fromtimestamp(self.clock.time(), UTC)
            mixer = self._open(started_at)
            self.mixer = mixer
            if not await self.hooks.started(self.plan, mixer.out.path.name, started_at):
                self.request_stop(LEASE_LOST)
            while self.stop_reason is None:
                await self.clock.sleep(self.config.tick_s)
                await self._tick(mixer)
            reason = self.stop_reason
            end_s = self._stop_at
            log.info("session.stopping", sid=self.plan.sid, reason=reason, seconds=round(end_s, 2))
            await self.hooks.stopping(self.plan, reason)
        finally:
            await self.source.leave()
            if self.mixer is not None:
                self._pump(self.mixer)
        return self._finish(mixer, end_s, started_at, reason)

    def _open(self, started_at: datetime) -> TimelineMixer:
        self.files.ensure()
        filename = self.files.new_name(self.plan.channel, started_at)
        writer = WavWriter(self.files.path(filename), header_every_s=self.config.header_every_s)
        self._writers.append(writer)
        self._sidecar = Sidecar(
            sid=self.plan.sid,
            channel=self.plan.channel,
            filename=filename,
            worker_id=self.plan.worker_id,
            started_at=started_at.timestamp(),
            call_id=self.plan.call_id,
        )
        self.files.write_sidecar(self._sidecar)
        return TimelineMixer(
            writer,
            latency_slots=self.config.latency_slots,
            track_writer=self._open_track if self.config.record_tracks else None,
        )

    def _open_track(self, uid: str) -> WavWriter:
        assert self._sidecar is not None
        stem = self._sidecar.filename.removesuffix(".wav")
        filename = f"{stem}_uid{safe(uid)}.wav"
        writer = WavWriter(self.files.path(filename), header_every_s=self.config.header_every_s)
        self._writers.append(writer)
        self._sidecar.tracks[uid] = filename
        self.files.write_sidecar(self._sidecar)
        return writer

    async def _tick(self, mixer: TimelineMixer) -> None:
        now = self._pump(mixer)
        mixer.advance(now)
        if self._absent_since is not None and now - self._absent_since >= self.config.idle_s:
            self.request_stop(IDLE, at=self._absent_since + self.config.idle_s)
        if now >= self.config.max_s:
            self.request_stop(MAX_DURATION, at=self.config.max_s)
        if self._renew_now or self.clock.time() >= self._token_due:
            self._renew_now = False
            await self.source.renew_token(self._token())
            log.info("session.token_renewed", sid=self.plan.sid)

    def _pump(self, mixer: TimelineMixer) -> float:
        """Move everything from the inbox into the mixer; returns the present time."""
        t0 = self._t0
        own = str(self.config.uid)
        for item in self.source.inbox.drain():
            if isinstance(item, Event):
                self._event(item, t0)
                continue
            uid, at, pcm = item
            if uid == own or (self.stop_reason is not None and at - t0 > self._stop_at):
                continue  # the bot itself, or audio that arrived after the recording's end
            if uid not in self.present and at > self._left_at.get(uid, -1.0):
                self.present.add(uid)  # audio from someone whose join we did not see
                self._absent_since = None
            mixer.add(uid, at - t0, pcm)
        return self.now()

    def _event(self, event: Event, t0: float) -> None:
        if event.uid == str(self.config.uid):
            return
        if event.kind == JOINED:
            self.present.add(event.uid)
            self._absent_since = None
        elif event.kind == LEFT:
            self.present.discard(event.uid)
            self._left_at[event.uid] = event.at
            if not self.present:
                self._absent_since = max(0.0, event.at - t0)
        elif event.kind == TOKEN_WILL_EXPIRE:
            self._renew_now = True
        elif event.kind == CONNECTION_FAILED:
            log.warning("session.connection_problem", sid=self.plan.sid, detail=event.detail)

    def _finish(self, mixer: TimelineMixer, end_s: float, started_at: datetime, reason: str) -> Segment:
        # After an idle stop the tail is `idle_s` of nothing (30 s by default): a listener, or a summary
        # model, gets the call without it, and the stored duration is that of the trimmed file.
        mixer.finish(end_s, trim_silence=reason == IDLE)
        results = []
        for writer in self._writers:
            info = writer.close()
            results.append(FileResult(writer.path.name, info.duration_ms, writer.path.stat().st_size))
        mix, tracks = results[0], results[1:]
        uids = {name: uid for uid, name in (self._sidecar.tracks.items() if self._sidecar else [])}
        tracks = [FileResult(t.filename, t.duration_ms, t.file_size, uids.get(t.filename)) for t in tracks]
        if self._sidecar is not None:
            self._sidecar.state = FINALIZED
            self._sidecar.stop_reason = reason
            self.files.write_sidecar(self._sidecar)
        log.info(
            "session.finalized",
            sid=self.plan.sid,
            filename=mix.filename,
            duration_ms=mix.duration_ms,
            frames=mixer.frames,
            late=mixer.late,
            dropped=self.source.inbox.dropped,
        )
        return Segment(
            plan=self.plan,
            mix=mix,
            started_at=started_at,
            stop_reason=reason,
            tracks=tracks,
            frames=mixer.frames,
            late_frames=mixer.late,
            dropped_frames=self.source.inbox.dropped,
        )

    def close_files(self) -> None:
        """After a failure: close whatever is open so the files are at least consistent."""
        for writer in self._writers:
            if not writer.closed:
                try:
                    writer.close()
                except OSError as exc:
                    log.warning("session.close_failed", file=writer.path.name, error=str(exc))
