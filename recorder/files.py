"""Recording files in RECORDINGS_DIR: names, and the sidecar that says which session a file belongs to.

Every recording segment is `{channel}_{timestamp}.wav` (the seed's name; characters other than
`A-Z a-z 0-9 _ -` in the channel become `-`, and `-2`, `-3`... is appended should the name exist).
Next to it, `{stem}.json` holds the session id, channel, call, worker and track files while the
segment is not yet handed over; it is removed once the recording document has its result. A sidecar
left behind therefore marks a segment that a restarted recorder must finalize, upload and report.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RECORDING = "recording"  # the writer may still be appending (or died doing so)
FINALIZED = "finalized"  # the file is complete; the upload or the document write is still due

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def timestamp(at: datetime) -> str:
    """The seed's filename timestamp, `2026-02-03T12-00-00` (UTC)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%S")


def safe(text: str) -> str:
    return _UNSAFE.sub("-", text)


@dataclass
class Sidecar:
    """What a restarted recorder needs to know about a segment it finds on disk."""

    sid: str
    channel: str
    filename: str
    worker_id: str
    started_at: float  # wall-clock seconds
    call_id: str | None = None
    state: str = RECORDING
    stop_reason: str | None = None
    tracks: dict[str, str] = field(default_factory=dict)  # uid -> filename

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sidecar:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class RecordingDir:
    """The recorder's working directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def new_name(self, channel: str, at: datetime, suffix: str = "") -> str:
        """A fresh `{channel}_{timestamp}{suffix}.wav` that no file uses yet."""
        stem = f"{safe(channel)}_{timestamp(at)}{suffix}"
        name, n = f"{stem}.wav", 1
        while (self.root / name).exists() or (self.root / f"{Path(name).stem}.json").exists():
            n += 1
            name = f"{stem}-{n}.wav"
        return name

    def path(self, filename: str) -> Path:
        return self.root / filename

    def sidecar_path(self, filename: str) -> Path:
        return self.root / f"{Path(filename).stem}.json"

    def write_sidecar(self, sidecar: Sidecar) -> None:
        """Write atomically (a crash leaves the old or the new version, never half of one)."""
        target = self.sidecar_path(sidecar.filename)
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(sidecar), sort_keys=True))
        os.replace(tmp, target)

    def remove_sidecar(self, filename: str) -> None:
        self.sidecar_path(filename).unlink(missing_ok=True)

    def sidecars(self) -> list[Sidecar]:
        """Every readable sidecar (oldest first); unreadable ones are skipped."""
        found: list[Sidecar] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                found.append(Sidecar.from_json(data))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda s: s.started_at)
