"""The control server of `token_bench.py --floor`: only the work the issue requires of POST /api/token.

It answers the benchmark's request with what every token answer must cost: aiohttp on uvloop, two
SO_REUSEPORT workers, the same middleware as token_http (request id, `X-Request-ID`, one structlog
access line to stderr and a file), the body parsed and checked by token_http's own `TokenRequest`,
and a 006 token from agora-token-builder. It has no router breadth, authentication, settings or
dependencies. Its p99 is the lowest ours could reach with this stack on the machine at hand.

Run by the benchmark: `python bench/floor_app.py PORT LOG_FILE`, with AGORA_APP_ID and AGORA_APP_CERT
in the environment. Not part of the service.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

from agora_token_builder import RtcTokenBuilder  # type: ignore[import-untyped]
from aiohttp import web

from memharbor import logs, runtime
from token_http.access_log import request_context
from token_http.body import json_object
from token_http.errors import json_response
from token_http.token_route import TokenRequest

WORKERS = 2
_LIBRARY_ROLE = {"publisher": 1, "subscriber": 2}


def make_app(app_id: str, app_certificate: str) -> web.Application:
    """An application with the one route, issuing tokens for these credentials."""

    async def post_token(request: web.Request) -> web.Response:
        req = TokenRequest.parse(await json_object(request))
        now = int(time.time())
        identity = req.uid if req.uid is not None else req.account
        token = RtcTokenBuilder.buildTokenWithAccount(
            app_id, app_certificate, req.channel, identity, _LIBRARY_ROLE[req.role], now + req.expire_s
        )
        return json_response({"token": token, "expire_at": now + req.expire_s, "expire_in": req.expire_s})

    app = web.Application(middlewares=[request_context])
    app.router.add_post("/api/token", post_token)
    return app


def main() -> None:
    """Serve on 127.0.0.1:PORT with WORKERS processes until SIGTERM."""
    port, log_file = int(sys.argv[1]), Path(sys.argv[2])
    app_id, app_certificate = os.environ["AGORA_APP_ID"], os.environ["AGORA_APP_CERT"]
    for _ in range(WORKERS - 1):
        if os.fork() == 0:
            break  # the child serves; the parent forks the rest and serves too
    logs.configure("json", "info", log_file, flush_interval_s=0.2)
    app = make_app(app_id, app_certificate)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        web.run_app(
            app,
            loop=runtime.new_event_loop(),
            host="127.0.0.1",
            port=port,
            reuse_port=True,
            access_log=None,
            print=None,
        )
    finally:
        logs.flush()


if __name__ == "__main__":
    main()
