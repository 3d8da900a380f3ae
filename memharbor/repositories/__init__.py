"""Firestore access of token_http, one repository per aggregate, each behind a small port.

- `calls`: `calls/{callId}` (create, read, state-machine transitions, lookups by channel);
- `recordings`: `recordings/{sid}` requests of the REST shim;
- `workers`: `workers/{id}` heartbeats and the reachability probe of /api/health;
- `guarded`: the one wrapper that bounds every Firestore operation in time and turns client failures
  into `memharbor.errors` (Unavailable, or the repository's Conflict / NotFound).
"""
