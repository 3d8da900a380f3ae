"""`firebase.json`, typed: where the rules and indexes live and which ports the local emulators use.

The one source of truth for `firebase deploy --only firestore,storage`, the Firebase CLI's emulators,
`memharbor dev` and the test harness's rules. Nothing is read at import: call `load()`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memharbor.settings import SettingsError

FIREBASE_JSON = Path(__file__).resolve().parents[1] / "firebase.json"


class FirebaseProjectError(SettingsError):
    """firebase.json is missing, malformed, or names a file that does not exist; the message says which."""

    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(key, f"{problem} (in {path})")
        self.path = path


@dataclass(frozen=True)
class EmulatorAddress:
    """Where one local emulator listens, as `emulators.<name>.host/port` in firebase.json say."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FirebaseProject:
    """What firebase.json declares: rule and index files (absolute paths) and the emulators' addresses."""

    path: Path
    firestore_rules: Path
    firestore_indexes: Path
    storage_rules: Path
    firestore: EmulatorAddress
    storage: EmulatorAddress
    auth: EmulatorAddress

    def relative(self, file: Path) -> str:
        """`file` as firebase.json names it (relative to the folder holding firebase.json)."""
        return str(file.relative_to(self.path.parent))


def _section(data: Mapping[str, Any], path: Path, *keys: str) -> Mapping[str, Any]:
    node: Any = data
    for depth, key in enumerate(keys):
        node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            raise FirebaseProjectError(path, ".".join(keys[: depth + 1]), "expected an object")
    return node  # type: ignore[no-any-return]


def _file(data: Mapping[str, Any], path: Path, section: str, key: str) -> Path:
    value = _section(data, path, section).get(key)
    if not isinstance(value, str) or not value:
        raise FirebaseProjectError(path, f"{section}.{key}", "expected a file path relative to firebase.json")
    file = (path.parent / value).resolve()
    if not file.is_file():
        raise FirebaseProjectError(path, f"{section}.{key}", f"names {value}, which does not exist")
    return file


def _emulator(data: Mapping[str, Any], path: Path, name: str) -> EmulatorAddress:
    section = _section(data, path, "emulators", name)
    host, port = section.get("host", "127.0.0.1"), section.get("port")
    # bool is an int subclass: `true` is no port.
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise FirebaseProjectError(path, f"emulators.{name}.port", "expected a port number (1..65535)")
    if not isinstance(host, str) or not host:
        raise FirebaseProjectError(path, f"emulators.{name}.host", "expected a host name or address")
    return EmulatorAddress(host, port)


def parse(data: Any, path: Path) -> FirebaseProject:
    """Check and type the decoded content of the firebase.json at `path` (relative paths start there)."""
    if not isinstance(data, Mapping):
        raise FirebaseProjectError(path, "firebase.json", "expected a JSON object")
    return FirebaseProject(
        path=path,
        firestore_rules=_file(data, path, "firestore", "rules"),
        firestore_indexes=_file(data, path, "firestore", "indexes"),
        storage_rules=_file(data, path, "storage", "rules"),
        firestore=_emulator(data, path, "firestore"),
        storage=_emulator(data, path, "storage"),
        auth=_emulator(data, path, "auth"),
    )


def load(path: Path = FIREBASE_JSON) -> FirebaseProject:
    """Read and check firebase.json (the repository's by default)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise FirebaseProjectError(path, "firebase.json", f"cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise FirebaseProjectError(path, "firebase.json", f"is not JSON ({exc})") from None
    return parse(data, path.resolve())
