"""`memharbor watcher`: compose the watcher from settings and run it until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from memharbor import firebase, logs, runtime
from memharbor.clock import SystemClock
from memharbor.heartbeat import Heartbeat
from memharbor.settings import Settings
from watcher.listener import CallListener, FeedSnapshot, FirestoreCatchUp
from watcher.push import Notifier, RoutingNotifier, SinkNotifier, Transport, push_status
from watcher.reactor import CallReactor, ReactorConfig
from watcher.recording import FirestoreRecordingHooks
from watcher.tracking import CallTracker
from watcher.worker import Watcher, WatcherConfig

log = logs.get_logger()


def build_notifier(settings: Settings) -> Notifier:
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


def bootstrap(settings: Settings, notifier: Notifier | None = None) -> Composition:
    """The composition root: real adapters wired into a Watcher (call inside the running loop).

    Each object is made before anything refers to it: the call tracker first (the reactor arms its
    timers), the watcher next (it makes its listener from its own snapshot method), the heartbeat last.
    """
    instance_id = settings.instance_id or f"watcher-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    db = firebase.firestore_async(settings)
    clock = SystemClock()
    notifier = notifier or build_notifier(settings)
    calls = CallTracker()
    reactor = CallReactor(
        db,
        notifier,
        clock,
        ReactorConfig(instance_id=instance_id, ring_timeout_s=settings.ring_timeout_s),
        schedule_timeout=calls.schedule_timeout,
        cancel_timeout=calls.cancel_timeout,
        # Always wired: a call's own `record: true` asks for a recording even when MEMHARBOR_RECORD_CALLS is off,
        # and an ended call's recordings are stopped whoever asked for them.
        recording_hooks=FirestoreRecordingHooks(db, record_all_calls=settings.record_calls),
    )

    def listen(deliver: Callable[[FeedSnapshot], None]) -> CallListener:
        return CallListener(lambda: firebase.firestore_sync(settings), deliver, settings.listen_window)

    watcher = Watcher(
        db,
        reactor,
        calls,
        clock,
        WatcherConfig(sweep_interval_s=settings.sweep_interval_s),
        listen=listen,
        catch_up=FirestoreCatchUp(db),
    )
    heartbeat = Heartbeat(
        db,
        "watcher",
        instance_id,
        settings.heartbeat_interval_s,
        lambda: {**watcher.status(), "push": push_status(notifier)},
    )
    return Composition(watcher, heartbeat)


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier = build_notifier(settings)
    parts = bootstrap(settings, notifier)
    try:
        # The first beat is written before the listener subscribes; the last is removed after the drain.
        await parts.heartbeat.beat()
        beating = asyncio.create_task(parts.heartbeat.run())
        try:
            await parts.watcher.run(stop)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await parts.heartbeat.retire()
    finally:
        parts.watcher.db.close()
        close = getattr(notifier, "close", None)
        if close is not None:
            await close()


def main(settings: Settings) -> int:
    """Run the watcher; exits 0 after a clean drain."""
    logs.configure(settings.log_format, settings.log_level, settings.log_file)
    runtime.run(_run(settings))
    return 0
