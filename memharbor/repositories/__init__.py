"""Firestore access, one repository per aggregate, each behind a small port.

- `calls`: `calls/{callId}` (create, read, state-machine transitions, lookups by channel);
- `recordings`: `recordings/{sid}` as the REST shim uses it (requests, reads, stops, lists), and the
  document of a request;
- `recording_sessions`: the same documents as the recorder uses them (claims, leases, results, the
  sweep), and the query of unfinished sessions its listener watches;
- `devices`: `users/{uid}/devices/{deviceId}` as the watcher reads, prunes and cleans them;
- `call_feed`: `calls` as the watcher follows them: the change feed on the newest calls (a watch kept
  by `listening`, the supervised `on_snapshot` the recorder's listener uses too), the catch-up of a gap
  in it, and the sweep's reads of calls and `callServer/{callId}`;
- `workers`: `workers/{id}` heartbeats, written by every worker (memharbor/heartbeat.py) and read by
  /api/health with its reachability probe;
- `timeline`: the per-call events under `callServer/{callId}/events` (written by the workers, alone or in
  their own batches) and the timeline read back from them for support (`memharbor inspect`, token_http);
- `guarded`: the one wrapper that bounds every Firestore operation in time and turns client failures
  into `memharbor.errors` (Unavailable, or the repository's Conflict / NotFound).
"""
