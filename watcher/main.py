"""`memharbor watcher`: compose the watcher from settings and run it until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from memharbor import firebase, logs, runtime
from memharbor.clock import SystemClock
from memharbor.heartbeat import Heartbeat
from memharbor.metrics_server import serve_worker_metrics
from memharbor.repositories.call_effects import CallEffectsStore, FirestoreCallEffects
from memharbor.repositories.call_feed import FeedSnapshot, FirestoreCallFeed, FirestoreCallSweeps, FirestoreCatchUp
from memharbor.repositories.client import close_async_client
from memharbor.repositories.devices import DeviceStore, FirestoreDevices
from memharbor.repositories.recordings import CallRecordings, FirestoreRecordingRepository
from memharbor.settings import WatcherSettings
from watcher.metrics import WatcherMetrics, WatcherStateCollector
from watcher.push import Notifier, RoutingNotifier, SinkNotifier, Transport, push_status
from watcher.reactor import CallReactor, ReactorConfig
from watcher.recording import FirestoreRecordingHooks
from watcher.tracking import CallTracker
from watcher.worker import Watcher, WatcherConfig

log = logs.get_logger()


def build_notifier(settings: WatcherSettings) -> Notifier:
    """The push transports these settings call for: the local sink when MEMHARBOR_PUSH_SINK is set, else
    APNs for iOS and FCM for Android, each where configured (a platform without one gets push_not_configured).
    """
    if settings.push_sink is not None:
        return SinkNotifier(settings.push_sink)
    from watcher.apns import ApnsTransport  # imported here: the sink-only dev setup needs neither client
    from watcher.fcm import FcmTransport

    transports: dict[str, Transport] = {}
    if settings.apns is not None:
        transports["ios"] = ApnsTransport(settings.apns)
    if settings.fcm is not None:
        transports["android"] = FcmTransport(settings.fcm)
    for platform, name in (("ios", "apns"), ("android", "fcm")):
        if platform not in transports:
            log.warning("push.unconfigured", transport=name, detail=f"{platform} devices will not ring")
    return RoutingNotifier(transports)


@dataclass(frozen=True)
class Composition:
    """The watcher and what runs beside it."""

    watcher: Watcher
    heartbeat: Heartbeat

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop`, then drain; the first beat precedes the listener, the beat is removed after the drain."""
        await self.heartbeat.try_beat()  # a failure is retried by the loop below
        beating = asyncio.create_task(self.heartbeat.run())
        try:
            await self.watcher.run(stop)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await self.heartbeat.retire()


@contextlib.asynccontextmanager
async def bootstrap(settings: WatcherSettings) -> AsyncIterator[Composition]:
    """The composition root: real adapters wired into a Watcher, closed when the block exits (call inside the loop).

    Each object is made before anything refers to it: the call tracker first (the reactor arms its
    timers), the watcher next (it makes its listener from its own snapshot method), the heartbeat last.
    """
    worker = settings.worker
    instance_id = worker.instance_id or f"watcher-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    firebase.use_emulators(settings)
    async with contextlib.AsyncExitStack() as owned:
        notifier = build_notifier(settings)
        if isinstance(notifier, RoutingNotifier):  # the one notifier holding connections (its transports')
            owned.push_async_callback(notifier.close)
        db = firebase.firestore_async(settings)
        owned.push_async_callback(close_async_client, db)
        clock = SystemClock()
        calls = CallTracker()
        metrics = WatcherMetrics()
        devices = FirestoreDevices(lambda: db)
        repositories = _Repositories(
            FirestoreCallEffects(lambda: db), devices, FirestoreRecordingRepository(lambda: db)
        )
        reactor = _reactor(settings, instance_id, repositories, notifier, clock, calls, metrics)

        def listen(deliver: Callable[[FeedSnapshot], None]) -> FirestoreCallFeed:
            return FirestoreCallFeed(lambda: firebase.firestore_sync(settings), deliver, settings.listen_window)

        device_ttl = timedelta(days=settings.device_ttl_days)

        async def prune_devices() -> int:
            return await devices.delete_stale(datetime.fromtimestamp(clock.time(), UTC) - device_ttl)

        watcher = Watcher(
            FirestoreCallSweeps(lambda: db),
            reactor,
            calls,
            clock,
            WatcherConfig(sweep_interval_s=settings.sweep_interval_s, settle_s=settings.settle_s),
            listen=listen,
            catch_up=FirestoreCatchUp(lambda: db),
            prune_devices=prune_devices,
            metrics=metrics,
        )
        await _serve_metrics(owned, settings, watcher)
        heartbeat = Heartbeat(
            db,
            "watcher",
            instance_id,
            worker.heartbeat_interval_s,
            lambda: {**watcher.status(), "push": push_status(notifier)},
        )
        yield Composition(watcher, heartbeat)


@dataclass(frozen=True)
class _Repositories:
    """The reactor's ports over Firestore."""

    calls: CallEffectsStore
    devices: DeviceStore
    recordings: CallRecordings


def _reactor(
    settings: WatcherSettings,
    instance_id: str,
    repositories: _Repositories,
    notifier: Notifier,
    clock: SystemClock,
    calls: CallTracker,
    metrics: WatcherMetrics,
) -> CallReactor:
    """The reactor over Firestore's repositories, arming its ring timers in `calls`."""
    return CallReactor(
        repositories.calls,
        repositories.devices,
        notifier,
        clock,
        ReactorConfig(
            instance_id=instance_id,
            ring_timeout_s=settings.ring_timeout_s,
            device_ttl_s=settings.device_ttl_days * 86400.0,
            max_devices=settings.max_devices_per_user,
        ),
        schedule_timeout=calls.schedule_timeout,
        cancel_timeout=calls.cancel_timeout,
        # Always wired: a call's own `record: true` asks for a recording even when MEMHARBOR_RECORD_CALLS is
        # off, and an ended call's recordings are stopped whoever asked for them.
        recording_hooks=FirestoreRecordingHooks(repositories.recordings, record_all_calls=settings.record_calls),
        metrics=metrics,
    )


async def _serve_metrics(owned: contextlib.AsyncExitStack, settings: WatcherSettings, watcher: Watcher) -> None:
    """Serve /metrics, /livez and /readyz on MEMHARBOR_METRICS_PORT (if set) until the block exits."""
    watcher.metrics.registry.register(WatcherStateCollector(watcher))
    await serve_worker_metrics(
        owned,
        watcher.metrics.registry,
        settings.worker.metrics_port,
        watcher.liveness_problems,
        watcher.readiness_problems,
    )


async def _run(settings: WatcherSettings) -> None:
    stop = runtime.stop_on_signals()
    async with bootstrap(settings) as parts:
        await parts.run(stop)


def main(settings: WatcherSettings) -> int:
    """Run the watcher; exits 0 after a clean drain."""
    log_settings = settings.logging
    logs.configure(log_settings.format, log_settings.level, log_settings.file)
    runtime.run(_run(settings))
    return 0
