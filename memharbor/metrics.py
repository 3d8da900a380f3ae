"""Prometheus metrics shared by every process: rendering a registry, and the multiprocess mode of token_http.

Each process keeps its metrics in a `CollectorRegistry` of its own (tests build as many as they like).
`memharbor http` with several workers uses prometheus-client's multiprocess mode instead: every worker
writes its values to memory-mapped files in one directory that the parent creates before forking, and
a scrape reaching any worker reads the whole directory (`MultiProcessCollector`), so it reports all
workers, the dead ones' counters included.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    values,
)

from memharbor import firebase

CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in Prometheus' text format."""
    return bytes(generate_latest(registry))


def worker_registry() -> CollectorRegistry:
    """A registry for one worker process (recorder, watcher), with the standard process, Python and GC metrics."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


# Workers write their values into memory-mapped files on every request. On a disk-backed file system the
# kernel writes dirty pages back and a write to a page under writeback waits for it: the request path
# must stay in memory, so the files go to tmpfs when the machine has one (Docker gives every container one).
MEMORY_FS = Path("/dev/shm")


def new_multiprocess_dir() -> Path:
    """A fresh, empty directory for one server start (values of an earlier start must not be read)."""
    base = MEMORY_FS if MEMORY_FS.is_dir() and os.access(MEMORY_FS, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="memharbor-metrics-", dir=base))


def use_multiprocess_dir(directory: Path) -> None:
    """Make every metric created from now on in this process (and its forks) write to `directory`.

    prometheus-client reads the directory from PROMETHEUS_MULTIPROC_DIR only, and picks its value class
    when it is first imported, long before settings are known: so the variable is written (by
    `firebase.use_metrics_directory`, the module that writes the environment) and the class picked again.
    """
    firebase.use_metrics_directory(directory)
    values.ValueClass = values.get_value_class()


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """A registry holding only the sum over every process's files in `directory` (one per scrape)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry


def process_exited(directory: Path, pid: int) -> None:
    """Forget a dead worker's live gauges (its counters and histograms stay in the sums)."""
    multiprocess.mark_process_dead(pid, str(directory))


def remove_multiprocess_dir(directory: Path) -> None:
    """Delete the directory once every worker has exited."""
    shutil.rmtree(directory, ignore_errors=True)
