"""`memharbor http`: compose the service from settings and run it (optionally several workers)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from memharbor import firebase, logs, metrics, runtime
from memharbor.clock import SystemClock
from memharbor.repositories.calls import FirestoreCallRepository
from memharbor.repositories.client import LazyClient
from memharbor.repositories.console import FirestoreConsole, StoredAudio
from memharbor.repositories.recordings import FirestoreRecordingRepository
from memharbor.repositories.timeline import FirestoreTimeline
from memharbor.repositories.workers import FirestoreWorkers
from memharbor.settings import HttpSettings
from token_http.app import create_app
from token_http.auth import Authenticator, FirebaseIdTokens, OpenAccess
from token_http.keys import Deps
from token_http.metrics import HttpMetrics
from token_http.ratelimit import MemoryRateLimiter

log = logs.get_logger()


def bootstrap(settings: HttpSettings, metrics_dir: Path | None = None) -> web.Application:
    """The composition root: real adapters for these settings, wired into the app.

    The app's cleanup context owns the Firestore client: opened (and pinged) at start-up, closed at shutdown.
    `metrics_dir` is the workers' shared multiprocess metrics directory (None: one process, its own metrics).
    """
    settings.require_agora()
    firebase.use_emulators(settings)
    client = LazyClient(lambda: firebase.firestore_async(settings))
    calls = FirestoreCallRepository(client)
    workers = FirestoreWorkers(client)
    authenticator: Authenticator
    authenticator = OpenAccess() if settings.auth_mode == "none" else FirebaseIdTokens(firebase.admin_app(settings))

    async def firestore_ctx(_: web.Application) -> AsyncIterator[None]:
        # Open the gRPC channel now, so the first /api/health does not pay for it within its 2 s budget.
        try:
            async with asyncio.timeout(10):
                await workers.ping()
        except Exception as exc:
            log.warning("firestore.unreachable_at_start", error=type(exc).__name__)
        yield
        await client.aclose()

    deps = Deps(
        authenticator=authenticator,
        calls=calls,
        health=workers,
        clock=SystemClock(),
        call_repository=calls,
        recording_repository=FirestoreRecordingRepository(client),
        rate_limiter=MemoryRateLimiter(settings.rate_limit),
        timeline=FirestoreTimeline(client),
        console=FirestoreConsole(client),
        audio=StoredAudio(firebase.storage_bucket(settings), settings.recordings_dir),
    )
    return create_app(settings, deps, cleanup_ctx=[firestore_ctx], metrics=HttpMetrics(metrics_dir))


# Access lines wait at most this long in memory; under load one write per interval replaces two per request.
LOG_FLUSH_INTERVAL_S = 0.2


def _configure_logs(settings: HttpSettings, flush_interval_s: float = 0.0) -> None:
    log_settings = settings.logging
    logs.configure(log_settings.format, log_settings.level, log_settings.file, flush_interval_s=flush_interval_s)


def _serve(settings: HttpSettings, reuse_port: bool, metrics_dir: Path | None = None) -> None:
    _configure_logs(settings, flush_interval_s=LOG_FLUSH_INTERVAL_S)
    try:
        _run_app(settings, reuse_port, metrics_dir)
    finally:
        logs.flush()  # a forked worker leaves through os._exit, which skips atexit


def _run_app(settings: HttpSettings, reuse_port: bool, metrics_dir: Path | None) -> None:
    app = bootstrap(settings, metrics_dir)
    # Start-up objects never die: keep them out of every collection, and collect young objects less
    # often (each request makes a few hundred short-lived ones); this trims the latency tail.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    log.info("http.listening", host=settings.host, port=settings.port, pid=os.getpid())
    web.run_app(
        app,
        loop=runtime.new_event_loop(),
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        access_log=None,
        print=None,
        shutdown_timeout=10.0,
        handle_signals=True,
    )


def main(settings: HttpSettings) -> int:
    """Run token_http until SIGINT/SIGTERM; with MEMHARBOR_HTTP_WORKERS > 1, one process per worker."""
    _configure_logs(settings)
    settings.require_agora()
    if settings.auth_mode == "none":
        log.warning("auth.disabled", detail="MEMHARBOR_AUTH=none: anyone can get a token for any channel")
    elif settings.auth_label == "firebase-emulator":
        log.warning("auth.emulator", detail="emulator mode: unsigned (emulator-format) ID tokens are accepted")
    else:
        log.info("auth.mode", auth=settings.auth_label)
    if settings.workers == 1:
        _serve(settings, reuse_port=False)
        return 0
    return _run_workers(settings)


def _run_workers(settings: HttpSettings) -> int:
    # Each scrape reaches one worker, which must report them all: every worker writes its metrics to
    # files in one directory, fresh for this start, made before the first fork and removed after the last.
    metrics_dir = metrics.new_multiprocess_dir()
    metrics.use_multiprocess_dir(metrics_dir)
    try:
        return _fork_workers(settings, metrics_dir)
    finally:
        metrics.remove_multiprocess_dir(metrics_dir)


def _fork_workers(settings: HttpSettings, metrics_dir: Path) -> int:
    # Workers share the port through SO_REUSEPORT; the parent only relays signals and reaps them.
    ctx = multiprocessing.get_context("fork")
    workers = [
        ctx.Process(target=_serve, args=(settings, True, metrics_dir), daemon=False) for _ in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def relay(signum: int, _: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    for worker in workers:
        worker.join()
        if worker.pid is not None:
            metrics.process_exited(metrics_dir, worker.pid)
    return max((w.exitcode or 0) for w in workers)
