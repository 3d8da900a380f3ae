"""The control server of `token_bench.py --minimal`: POST /api/token doing only the work it requires.

aiohttp on uvloop with two SO_REUSEPORT workers (as ours runs in the benchmark) and one handler that
parses the body with orjson, checks the fields with token_http's `TokenRequest`, builds the token with
`memharbor.agora.build_rtc_token` (the library and version ours uses), sets an `X-Request-ID` from a
counter and appends one JSON access line to an in-memory batch that is written to stderr and a file at
most every 0.2 s. No middleware, no structlog, no router breadth, authentication or settings: what
ours does beyond this is what the benchmark's "within 10 % of minimal" bounds.

Run by the benchmark: `python bench/minimal_app.py PORT LOG_FILE`, with AGORA_APP_ID and
AGORA_APP_CERT in the environment. Not part of the service.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import secrets
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from memharbor import agora, runtime
from token_http.errors import ApiError
from token_http.token_route import TokenRequest

WORKERS = 2
FLUSH_INTERVAL_S = 0.2


class AccessLines:
    """Access lines batched in memory; the event loop writes them to stderr and a file every interval."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._lines: list[bytes] = []
        self._second = -1
        self._prefix = ""

    def add(self, fields: dict[str, Any]) -> None:
        """Stamp the line like ours (level, timestamp) and queue it."""
        second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            # Only the fraction changes within a second; formatting the rest once keeps this path cheap.
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        fields["level"] = "info"
        fields["timestamp"] = f"{self._prefix}.{fraction:06d}Z"
        self._lines.append(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        """Write the batch to both sinks in one call each."""
        if self._lines:
            data = b"".join(self._lines)
            self._lines.clear()
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
            self._file.write(data)
            self._file.flush()

    def flush_every(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush now and again after FLUSH_INTERVAL_S, for as long as the loop runs."""
        self.flush()
        loop.call_later(FLUSH_INTERVAL_S, self.flush_every, loop)


def make_app(app_id: str, app_certificate: str, lines: AccessLines) -> web.Application:
    """An application with the one route, issuing tokens for these credentials."""
    prefix, counter = secrets.token_hex(8), itertools.count(1)

    async def post_token(request: web.Request) -> web.Response:
        started = time.perf_counter()
        request_id = f"{prefix}{next(counter):016x}"
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ApiError(400, "expected a JSON object", field="body")
            req = TokenRequest.parse(body)
            now = int(time.time())
            token = agora.build_rtc_token(
                app_id=app_id,
                app_certificate=app_certificate,
                channel=req.channel,
                uid=req.uid,
                account=req.account,
                role=req.role,
                expire_s=req.expire_s,
                now=now,
                version=req.version,
            )
            answer = {"token": token, "expire_at": now + req.expire_s, "expire_in": req.expire_s}
            response = web.Response(body=orjson.dumps(answer), content_type="application/json")
        except (ApiError, orjson.JSONDecodeError) as exc:
            error = exc if isinstance(exc, ApiError) else ApiError(400, "invalid JSON", field="body")
            data = orjson.dumps(error.body())
            response = web.Response(body=data, status=error.status, content_type="application/json")
        response.headers["X-Request-ID"] = request_id
        lines.add(
            {
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": request.remote,
                "event": "http.request",
                "request_id": request_id,
            }
        )
        return response

    app = web.Application()
    app.router.add_post("/api/token", post_token)
    return app


def main() -> None:
    """Serve on 127.0.0.1:PORT with WORKERS processes until SIGTERM."""
    port, log_file = int(sys.argv[1]), Path(sys.argv[2])
    app_id, app_certificate = os.environ["AGORA_APP_ID"], os.environ["AGORA_APP_CERT"]
    for _ in range(WORKERS - 1):
        if os.fork() == 0:
            break  # the child serves; the parent forks the rest and serves too
    with log_file.open("ab") as file:
        lines = AccessLines(file)
        loop = runtime.new_event_loop()
        loop.call_soon(lines.flush_every, loop)
        app = make_app(app_id, app_certificate, lines)
        # The same collector settings as ours, so the comparison is about per-request work.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            web.run_app(app, loop=loop, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)
        finally:
            lines.flush()


if __name__ == "__main__":
    main()
