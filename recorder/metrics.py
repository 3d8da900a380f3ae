"""The recorder's Prometheus metrics: counters of claims, uploads and interruptions, and what it holds now.

What the recorder already counts for its heartbeat (sessions delivered, recovered and failed, audio
frames mixed, late and dropped) is read at scrape time by `RecorderStateCollector`, live sessions'
frames included, rather than counted twice; frames are counted per 10 ms of audio per participant, far
too often for a metric call each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from memharbor.metrics import worker_registry

# Claim results (memharbor/repositories/recording_sessions.py's Claim): `takeover` is a session taken from a
# recorder whose lease lapsed.
CLAIM_RESULTS = ("new", "takeover", "busy", "done", "gone", "failed")
# Why a recording stopped before its call did: its recorder died (`crashed`, delivered by recovery),
# another recorder holds the session now (`lease_lost`), or this one is shutting down (`shutdown`).
INTERRUPTIONS = ("crashed", "lease_lost", "shutdown")
UPLOAD_RESULTS = ("uploaded", "failed")
SESSION_STATES = ("claiming", "recording", "delivering")


class RecorderMetrics:
    """The recorder's counters, in one registry (a worker registry of its own unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else worker_registry()
        self.claims = Counter(
            "memharbor_recorder_claims",
            "Attempts to claim a recording session, by result (takeover: from a recorder whose lease lapsed)",
            ("result",),
            registry=self.registry,
        )
        self.interrupted = Counter(
            "memharbor_recorder_sessions_interrupted",
            "Recordings cut short by their recorder, by reason (crashed, lease_lost, shutdown)",
            ("reason",),
            registry=self.registry,
        )
        self.uploads = Counter(
            "memharbor_recorder_uploads",
            "Files put to Storage, by result (failed: every attempt failed; the file is kept and retried later)",
            ("result",),
            registry=self.registry,
        )
        self.upload_retries = Counter(
            "memharbor_recorder_upload_retries",
            "Upload attempts repeated after a failed one",
            registry=self.registry,
        )
        # Every series exists from the start at 0, so a rate over the first increase is right.
        for labels, values in ((self.claims, CLAIM_RESULTS), (self.interrupted, INTERRUPTIONS)):
            for value in values:
                labels.labels(value)
        for value in UPLOAD_RESULTS:
            self.uploads.labels(value)


class RecorderState(Protocol):
    """What the collector reads from the recorder at scrape time."""

    stats: dict[str, int]

    def session_states(self) -> dict[str, int]:
        """How many sessions this recorder holds, by SESSION_STATES."""
        ...

    def frame_counts(self) -> dict[str, int]:
        """Frames mixed, late and dropped so far, finished and live sessions together."""
        ...


class RecorderStateCollector:
    """Reports, at each scrape, the sessions held by state and the recorder's own running totals."""

    def __init__(self, recorder: RecorderState) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        sessions = GaugeMetricFamily(
            "memharbor_recorder_sessions", "Recording sessions this recorder holds now, by state", labels=["state"]
        )
        for state, count in self._recorder.session_states().items():
            sessions.add_metric([state], count)
        yield sessions
        stats = self._recorder.stats
        ended = CounterMetricFamily(
            "memharbor_recorder_sessions_ended",
            "Recording sessions ended, by outcome (recovered: a left-behind segment delivered by recovery)",
            labels=["outcome"],
        )
        for outcome, key in (("delivered", "recorded"), ("recovered", "recovered"), ("failed", "failed")):
            ended.add_metric([outcome], stats[key])
        yield ended
        frames = self._recorder.frame_counts()
        yield CounterMetricFamily(
            "memharbor_recorder_frames", "Audio frames (10 ms of one participant) mixed", value=frames["frames"]
        )
        yield CounterMetricFamily(
            "memharbor_recorder_frames_late",
            "Frames that arrived after their slot was written, put in the oldest open slot instead",
            value=frames["late"],
        )
        yield CounterMetricFamily(
            "memharbor_recorder_frames_dropped",
            "Frames discarded because a session's inbox was full",
            value=frames["dropped"],
        )
