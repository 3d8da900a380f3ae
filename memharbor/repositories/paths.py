"""The Firestore collections of the data contract (DESIGN.md, "Firestore data contract")."""

from __future__ import annotations

CALLS = "calls"
GROUPS = "groups"
USERS = "users"
RECORDINGS = "recordings"
WORKERS = "workers"
# Server-only: each call's claims, leases, last legal status and per-device push records (watcher).
CALL_SERVER = "callServer"
