"""Emulator-format Firebase ID tokens: unsigned JWTs, as the Auth emulator issues them.

Firebase Admin accepts them only while FIREBASE_AUTH_EMULATOR_HOST is set, and the Firestore emulator
evaluates security rules as the user they name. Used by `memharbor dev` and the tests.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def emulator_id_token(project_id: str, uid: str, lifetime_s: int = 3600, **claims: Any) -> str:
    """An unsigned ID token for `uid` in `project_id`, with extra custom claims (e.g. admin=True)."""
    now = int(time.time())
    payload = {
        "iss": f"https://securetoken.google.com/{project_id}",
        "aud": project_id,
        "auth_time": now,
        "user_id": uid,
        "sub": uid,
        "iat": now,
        "exp": now + lifetime_s,
        "firebase": {"identities": {}, "sign_in_provider": "custom"},
        **claims,
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."
