"""How the watcher's sweep queries cost more as the Firestore emulator fills up.

Run from the repository root:

    .venv/bin/python bench/sweep_cost.py [--sizes 200,1200,4000] [--events 8] [--repeat 5]

Starts a Firestore emulator, then grows `calls` (with a server document and `--events` timeline events
per call, as the soak leaves them) to each size in turn and times one sweep's queries there: the
sweep's own (`FirestoreCallSweeps`) and the settled re-read of the last 2 seconds (`FirestoreCatchUp`).
The emulator has no indexes and scans a collection for each query, so the figures grow with the
collection; production answers these queries from indexes. It explains the long soak's slowdown
(README, Soak) and has no target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.cloud import firestore

from memharbor.emulators import EmulatorSet
from memharbor.repositories.call_feed import FirestoreCallSweeps, FirestoreCatchUp, Gap

PROJECT = "demo-memharbor-sweep-cost"
BATCH = 400  # writes per commit while seeding (Firestore allows 500)


def seed(db: firestore.Client, count: int, events: int) -> None:
    """Add `count` missed calls, stamped over the last count/2 seconds, with their server documents and events."""
    now = datetime.now(UTC)
    batch, pending = db.batch(), 0
    for index in range(count):
        call_id = uuid.uuid4().hex
        stamp = now - timedelta(seconds=(count - index) * 0.5)
        call = {"callId": call_id, "status": "missed", "callerId": "a", "receiverId": "b", "groupId": "g"}
        batch.set(db.collection("calls").document(call_id), {**call, "createdAt": stamp, "updatedAt": stamp})
        server = db.collection("callServer").document(call_id)
        batch.set(server, {"callId": call_id, "status": "missed", "effectOpen": False})
        for _ in range(events):
            batch.set(server.collection("events").document(), {"kind": "push.sent", "t": stamp.timestamp()})
        pending += 2 + events
        if pending >= BATCH:
            batch.commit()
            batch, pending = db.batch(), 0
    if pending:
        batch.commit()


async def drain(results: AsyncIterator[Any]) -> None:
    async for _ in results:
        pass


async def time_sweep(repeat: int) -> dict[str, float]:
    """Milliseconds per run of each sweep query, averaged over `repeat` runs."""
    client = firestore.AsyncClient(project=PROJECT)
    sweeps, catch_up = FirestoreCallSweeps(lambda: client), FirestoreCatchUp(lambda: client)
    now = datetime.now(UTC)
    recent = Gap(now - timedelta(seconds=4), now - timedelta(seconds=2), now - timedelta(seconds=2))
    queries: dict[str, Callable[[], AsyncIterator[Any]]] = {
        "active": sweeps.active,
        "overdue": lambda: sweeps.overdue(now),
        "open_effects": sweeps.open_effects,
        "tracked_active": sweeps.tracked_active,
        "malformed (3 queries)": lambda: sweeps.malformed_stamps(now + timedelta(seconds=60)),
        "settled re-read": lambda: catch_up.pages(recent),
    }
    took = {}
    for name, query in queries.items():
        started = time.perf_counter()
        for _ in range(repeat):
            await drain(query())
        took[name] = (time.perf_counter() - started) / repeat * 1000
    client.close()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,1200,4000", help="calls in the collection at each measurement")
    parser.add_argument("--events", type=int, default=8, help="timeline events per call (default 8)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each query per measurement (default 5)")
    options = parser.parse_args()
    sizes = sorted(int(size) for size in options.sizes.split(","))
    emulators = EmulatorSet.create(PROJECT)
    with emulators.running():
        os.environ.update(emulators.env())
        db = firestore.Client(project=PROJECT)
        held = 0
        print(f"load average {os.getloadavg()[0]:.2f} at start; ms per query, mean of {options.repeat} runs")
        for size in sizes:
            seed(db, size - held, options.events)
            held = size
            took = asyncio.run(time_sweep(options.repeat))
            figures = ", ".join(f"{name} {ms:.1f}" for name, ms in took.items())
            print(f"{size:>6} calls: one sweep {sum(took.values()):.0f} ms ({figures})")
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
