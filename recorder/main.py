"""`memharbor recorder`: compose the recorder from settings and run it until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from memharbor import firebase, logs, runtime
from memharbor.agora import Role, build_rtc_token
from memharbor.heartbeat import Heartbeat
from memharbor.metrics_server import serve_worker_metrics
from memharbor.repositories.client import close_async_client
from memharbor.repositories.recording_sessions import FirestoreRecordingSessions
from memharbor.repositories.timeline import FirestoreTimeline
from memharbor.settings import RecorderSettings, SettingsError
from recorder.audio import AudioSource
from recorder.clock import SessionClock
from recorder.files import RecordingDir
from recorder.listener import SessionListener
from recorder.metrics import RecorderMetrics, RecorderStateCollector
from recorder.session import SessionConfig, TokenMinter
from recorder.simulated import DEFAULT_SCRIPT, ScriptError, SimParticipant, SimulatedChannel, parse_script
from recorder.upload import Uploader
from recorder.worker import Recorder, RecorderConfig

log = logs.get_logger()


def token_minter(settings: RecorderSettings) -> TokenMinter:
    """Mints the bot's own subscriber tokens; without Agora credentials (simulation only) an empty token."""
    agora = settings.agora

    def mint(channel: str, uid: int, ttl_s: int) -> str:
        if agora is None:
            return ""
        return build_rtc_token(
            app_id=agora.app_id,
            app_certificate=agora.app_certificate.value,
            channel=channel,
            uid=uid,
            account=None,
            role=Role.SUBSCRIBER,
            expire_s=ttl_s,
            now=int(time.time()),
        )

    return mint


def simulation_script(settings: RecorderSettings) -> list[SimParticipant]:
    """The participants of MEMHARBOR_RECORDER_SIMULATION (JSON or a path to it), or two default tones."""
    raw = settings.simulation
    if raw is None:
        return list(DEFAULT_SCRIPT)
    text, base = raw, Path()
    if not raw.lstrip().startswith(("[", "{")):
        path = Path(raw)
        try:
            text, base = path.read_text(), path.parent
        except OSError as exc:
            raise SettingsError("MEMHARBOR_RECORDER_SIMULATION", f"cannot read {raw} ({exc.strerror})") from None
    try:
        return parse_script(text, base)
    except ScriptError as exc:
        raise SettingsError("MEMHARBOR_RECORDER_SIMULATION", str(exc)) from None


def source_factory(settings: RecorderSettings, clock: SessionClock) -> Callable[[], AudioSource]:
    """Makes one AudioSource per session, as MEMHARBOR_RECORDER_SOURCE says."""
    if settings.source == "simulated":
        script = simulation_script(settings)
        return lambda: SimulatedChannel(script, clock)
    from recorder.agora_channel import AgoraChannel, AgoraUnavailable, sdk

    agora = settings.require_agora()
    try:
        sdk()
    except AgoraUnavailable as exc:
        raise SettingsError("MEMHARBOR_RECORDER_SOURCE", f"agora: {exc}; use simulated for dev") from None
    return lambda: AgoraChannel(agora.app_id)


@contextlib.asynccontextmanager
async def bootstrap(settings: RecorderSettings) -> AsyncIterator[Recorder]:
    """The composition root: a Recorder on real adapters, closed when the block exits (call inside the loop)."""
    base_id = settings.worker.instance_id or f"recorder-{socket.gethostname()}-{os.getpid()}"
    # Claims name this process incarnation, so a restarted recorder never mistakes its predecessor's
    # sessions for its own; the heartbeat document keeps the configured instance id.
    worker_id = f"{base_id}-{uuid.uuid4().hex[:6]}"
    clock = SessionClock()
    make_source = source_factory(settings, clock)
    firebase.use_emulators(settings)
    async with contextlib.AsyncExitStack() as owned:
        db = firebase.firestore_async(settings)
        owned.push_async_callback(close_async_client, db)
        bucket = firebase.storage_bucket(settings)
        if bucket is None:
            log.warning("storage.unconfigured", detail="recordings stay in RECORDINGS_DIR; url/storagePath are null")
        recorder: Recorder
        listener = SessionListener(lambda: firebase.firestore_sync(settings), lambda events: recorder.on_events(events))
        heartbeat = Heartbeat(
            db, "recorder", base_id, settings.worker.heartbeat_interval_s, lambda: recorder.heartbeat_status()
        )
        metrics = RecorderMetrics()
        recorder = Recorder(
            FirestoreRecordingSessions(lambda: db, worker_id, settings.lease_s, settings.uid),
            listener,
            Uploader(bucket, metrics=metrics),
            make_source,
            RecordingDir(settings.recordings_dir.resolve()),
            heartbeat,
            clock,
            _config(settings, worker_id),
            token_minter(settings),
            metrics,
            timeline=FirestoreTimeline(lambda: db),
        )
        metrics.registry.register(RecorderStateCollector(recorder))
        await serve_worker_metrics(
            owned,
            metrics.registry,
            settings.worker.metrics_port,
            recorder.liveness_problems,
            recorder.readiness_problems,
        )
        yield recorder


def _config(settings: RecorderSettings, worker_id: str) -> RecorderConfig:
    return RecorderConfig(
        worker_id=worker_id,
        lease_s=settings.lease_s,
        sweep_s=settings.sweep_s,
        max_sessions=settings.max_sessions,
        drain_s=settings.drain_s,
        heartbeat_s=settings.worker.heartbeat_interval_s,
        session=SessionConfig(
            uid=settings.uid,
            idle_s=settings.idle_s,
            max_s=settings.max_s,
            header_every_s=settings.header_s,
            record_tracks=settings.record_tracks,
            token_ttl_s=settings.token_ttl_s,
        ),
    )


async def _run(settings: RecorderSettings) -> None:
    stop = runtime.stop_on_signals()
    async with bootstrap(settings) as recorder:
        await recorder.run(stop)


def main(settings: RecorderSettings) -> int:
    """Run the recorder; exits 0 after a clean drain."""
    log_settings = settings.logging
    logs.configure(log_settings.format, log_settings.level, log_settings.file)
    asyncio.run(_run(settings))
    return 0
