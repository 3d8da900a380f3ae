"""The watcher's Prometheus metrics: what it decided and sent, and what it holds now.

Counters are bumped where the work happens (a decision, a push, a timeout, a violation, a failed
handler); what the watcher already counts for its heartbeat (listener resubscribes, stalls, catch-ups,
timers, handlers in flight) is read at scrape time by `WatcherStateCollector` rather than counted twice.
Label values come from small fixed sets, never from documents: a violation's free-text reason is
reduced to its kind, so an admin script writing odd calls cannot add series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from memharbor.metrics import worker_registry

# Where a change that needed handling came from: the change feed, its catch-up query, or the sweep
# (a call the feed did not deliver in time: a malformed stamp, a stalled stream, a lapsed claim).
SOURCES = {"ADDED": "feed", "MODIFIED": "feed", "CAUGHT_UP": "catch_up", "SWEPT": "sweep"}
# From a push answered at once (the sink, a warm HTTP/2 stream) to one retried until its deadline.
PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# How long after its ring deadline a call was moved to missed: 0.1 s is the timer, 15 s the sweep.
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
PLATFORMS = frozenset({"ios", "android"})


class WatcherMetrics:
    """The watcher's counters and histograms, in one registry (a worker registry of its own unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else worker_registry()
        self._changes = Counter(
            "memharbor_watcher_changes",
            "Call changes handed to a handler (echoes of our own writes excluded), by source: feed, catch_up, sweep",
            ("source",),
            registry=self.registry,
        )
        self._decisions = Counter(
            "memharbor_watcher_decisions",
            "Handler runs by outcome (run: this instance did the status's effects; done: nothing left to do)",
            ("outcome",),
            registry=self.registry,
        )
        self._pushes = Counter(
            "memharbor_watcher_pushes",
            "Pushes to devices by kind, platform and result (sent, failed, dead_token)",
            ("kind", "platform", "result"),
            registry=self.registry,
        )
        self._push_seconds = Histogram(
            "memharbor_watcher_push_duration_seconds",
            "Time to push one device, retries included, by kind and platform",
            ("kind", "platform"),
            buckets=PUSH_BUCKETS,
            registry=self.registry,
        )
        self._timeouts = Histogram(
            "memharbor_watcher_ring_timeout_lateness_seconds",
            "Calls this watcher moved to missed, by how long after their ring deadline",
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self._violations = Counter(
            "memharbor_watcher_violations",
            "Calls marked with a violation, by kind (not_group_members, invalid, reverted)",
            ("reason",),
            registry=self.registry,
        )
        self._failures = Counter(
            "memharbor_watcher_handler_failures",
            "Handler runs that raised, by kind (claim_race: the call kept changing under every claim attempt)",
            ("kind",),
            registry=self.registry,
        )

    def change(self, change: str) -> None:
        """Count one change handed to a handler (`change` as in CallEvent.change)."""
        self._changes.labels(SOURCES.get(change, "other")).inc()

    def decision(self, outcome: str) -> None:
        """Count one handler run's claim outcome (watcher.reactor.Claim's value)."""
        self._decisions.labels(outcome).inc()

    def push(self, kind: str, platform: str, result: str, seconds: float) -> None:
        """Count one device's push and its duration."""
        platform = platform if platform in PLATFORMS else "other"
        self._pushes.labels(kind, platform, result).inc()
        self._push_seconds.labels(kind, platform).observe(seconds)

    def timed_out(self, lateness_s: float) -> None:
        """Count one call this watcher moved to missed, `lateness_s` after its ring deadline."""
        self._timeouts.observe(max(0.0, lateness_s))

    def violation(self, reason: str) -> None:
        """Count one violation by its kind."""
        self._violations.labels(reason).inc()

    def failure(self, kind: str) -> None:
        """Count one handler run that raised."""
        self._failures.labels(kind).inc()


class WatcherState(Protocol):
    """What the collector reads from the watcher at scrape time."""

    def status(self) -> dict[str, Any]:
        """The heartbeat's view of the watcher."""
        ...


class WatcherStateCollector:
    """Reports, at each scrape, the watcher's own running totals and what it holds now."""

    def __init__(self, watcher: WatcherState) -> None:
        self._watcher = watcher

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        status = self._watcher.status()
        counters = (
            ("memharbor_watcher_listener_restarts", "Change-feed resubscriptions", "listenerRestarts"),
            ("memharbor_watcher_stalls", "Change feeds found silent though an app changed a call", "stalls"),
            ("memharbor_watcher_catch_ups", "Catch-up reads of calls that may have passed the feed", "catchUps"),
            ("memharbor_watcher_caught_up_calls", "Calls read by catch-ups", "caughtUpCalls"),
            ("memharbor_watcher_late_changes", "Changes only the settled re-read found (late commits)", "lateChanges"),
        )
        for name, help_text, key in counters:
            yield CounterMetricFamily(name, help_text, value=int(status.get(key, 0)))
        gauges = (
            ("memharbor_watcher_listener_active", "1 while the change feed is subscribed", "listenerActive"),
            ("memharbor_watcher_ring_timers", "Ring timers armed", "timers"),
            ("memharbor_watcher_handlers_in_flight", "Call handlers running", "inFlight"),
        )
        for name, help_text, key in gauges:
            yield GaugeMetricFamily(name, help_text, value=float(status.get(key, 0)))
