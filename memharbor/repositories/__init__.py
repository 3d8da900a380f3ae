"""Firestore access, one repository per aggregate, each behind a small port.

- `calls`: `calls/{callId}` (create, read, state-machine transitions, lookups by channel);
- `recordings`: `recordings/{sid}` requests of the REST shim (the recorder's own claims and leases are
  recorder/store.py, on the same guard);
- `devices`: `users/{uid}/devices/{deviceId}` as the watcher reads, prunes and cleans them;
- `workers`: `workers/{id}` heartbeats, written by every worker (memharbor/heartbeat.py) and read by
  /api/health with its reachability probe;
- `guarded`: the one wrapper that bounds every Firestore operation in time and turns client failures
  into `memharbor.errors` (Unavailable, or the repository's Conflict / NotFound).
"""
