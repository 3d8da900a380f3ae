"""Benchmark the push transports: pushes per second and latency through ApnsTransport and FcmTransport.

Run from the repository root:

    .venv/bin/python bench/push_bench.py [--pushes 5000] [--concurrency 64] [--rate 500] [--paced-s 5] [--json]

The local APNs (HTTP/2 over TLS behind its CONNECT proxy) and the local FCM + OAuth endpoint (aiohttp)
run in a child process, so the measured side is what one watcher has: one process, one event loop,
the transport objects used directly. For each transport:

1. warm-up: a few hundred pushes (connection, TLS, provider/access token);
2. throughput: `--pushes` pushes with `--concurrency` in flight (closed loop) -> pushes/s, p50/p99;
3. latency at the target rate: pushes started on a fixed schedule of `--rate` per second for `--paced-s`
   seconds (open loop, at most `--concurrency` in flight) -> p50/p99 from each push's scheduled start.

A third case, `fanout`, rings a user with 3 devices (2 iOS, 1 Android) as the watcher does: the three
pushes at once through the RoutingNotifier, one ring done when its slowest device answered; its rates
are rings per second (--rate / 3, so the same pushes per second) and its target is 500 / 3 rings/s.

Targets: >= 500 pushes/s per transport, p99 < 50 ms at 500 pushes/s, one HTTP/2 connection for APNs
(reuse) and no more TCP connections than pushes in flight for FCM (keep-alive). Exit codes: 0 every
target met, 1 a target missed, 2 set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the local servers live in tests/support

from memharbor import logs  # noqa: E402
from memharbor.settings import ApnsSettings, FcmSettings, Secret  # noqa: E402
from tests.support.push_keys import ApnsKey, Tls, make_apns_key, make_service_account, make_tls  # noqa: E402
from watcher.apns import ApnsTransport  # noqa: E402
from watcher.fcm import FcmTransport  # noqa: E402
from watcher.push import PushTarget, RoutingNotifier  # noqa: E402

BUNDLE = "com.memharbor.bench"
PROJECT = "demo-bench"
TARGET_RATE = 500.0
TARGET_P99_MS = 50.0
WARMUP = 300


# ------------------------------------------------------------------------------------ server process


def serve(conn: Connection, key: ApnsKey, tls: Tls) -> None:
    """The child: run both local servers until told to stop, then report what they saw."""
    from tests.support.apns_server import ApnsServer
    from tests.support.fcm_server import FcmServer

    apns = ApnsServer(key, BUNDLE, tls).start()
    fcm = FcmServer(PROJECT).start()
    account = make_service_account(PROJECT, fcm.token_uri)
    fcm.trust(account)
    conn.send({"apns_port": apns.port, "fcm_endpoint": fcm.endpoint, "account": account.json})
    conn.recv()
    conn.send(
        {
            "apns_connections": apns.connections_opened,
            "apns_delivered": len(apns.delivered()),
            "apns_provider_tokens": len(apns.provider_tokens()),
            "fcm_connections": len(fcm.connections_seen),
            "fcm_delivered": len(fcm.delivered()),
            "fcm_grants": len(fcm.grants),
        }
    )
    apns.stop()
    fcm.stop()


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Figures:
    """One transport's results."""

    transport: str
    pushes: int
    concurrency: int
    throughput_per_s: float
    closed_p50_ms: float
    closed_p99_ms: float
    paced_rate_per_s: float
    paced_pushes: int
    paced_p50_ms: float
    paced_p99_ms: float
    failures: int
    devices: int = 1  # pushes per unit measured (the fan-out rings 3 devices per unit)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] * 1000.0


Send = Callable[[int], Awaitable[bool]]


async def closed_loop(send: Send, pushes: int, concurrency: int) -> tuple[float, list[float], int]:
    """`pushes` sends with `concurrency` workers: (elapsed seconds, latencies, failures)."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(pushes))

    async def worker() -> None:
        nonlocal failures
        for i in counter:
            started = time.perf_counter()
            ok = await send(i)
            latencies.append(time.perf_counter() - started)
            failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, failures


async def paced(send: Send, rate: float, seconds: float, concurrency: int) -> tuple[list[float], int]:
    """Sends started on a fixed schedule; latency from each push's scheduled start."""
    latencies: list[float] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)
    tasks = []

    async def one(i: int, due: float) -> None:
        nonlocal failures
        async with gate:
            ok = await send(i)
        latencies.append(time.perf_counter() - due)
        failures += not ok

    start = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return latencies, failures


async def measure(name: str, send: Send, args: argparse.Namespace, devices: int = 1) -> Figures:
    await closed_loop(send, WARMUP, args.concurrency)
    elapsed, closed, failures = await closed_loop(send, args.pushes, args.concurrency)
    paced_latencies, paced_failures = await paced(send, args.rate, args.paced_s, args.concurrency)
    return Figures(
        transport=name,
        pushes=args.pushes,
        concurrency=args.concurrency,
        throughput_per_s=round(args.pushes / elapsed, 1),
        closed_p50_ms=round(percentile(closed, 0.50), 2),
        closed_p99_ms=round(percentile(closed, 0.99), 2),
        paced_rate_per_s=args.rate,
        paced_pushes=len(paced_latencies),
        paced_p50_ms=round(percentile(paced_latencies, 0.50), 2),
        paced_p99_ms=round(percentile(paced_latencies, 0.99), 2),
        failures=failures + paced_failures,
        devices=devices,
    )


async def run(args: argparse.Namespace, info: dict[str, Any], key: ApnsKey, ca_file: Path) -> list[Figures]:
    payload = {
        "type": "incoming_call",
        "callId": "bench",
        "channelName": "group1_alice_bob_1700000000000",
        "callerName": "Alice Kim",
        "callerID": "alice",
        "groupId": "group1",
        "receiverId": "bob",
    }
    apns = ApnsTransport(
        ApnsSettings(
            team_id=key.team_id,
            key_id=key.key_id,
            bundle_id=BUNDLE,
            key=Secret(key.p8),
            use_sandbox=False,
            proxy=f"127.0.0.1:{info['apns_port']}",
            ca_file=ca_file,
        )
    )
    fcm = FcmTransport(FcmSettings(PROJECT, Secret(info["account"]), info["fcm_endpoint"], None))
    apns_token = "ab" * 32
    fcm_token = "bench-device:APA91b" + "x" * 140

    async def send_apns(i: int) -> bool:
        target = PushTarget("bob", "ios", apns_token)
        return (await apns.send(target, "incoming_call", {**payload, "callId": f"c{i}"}, time.time() + 60)).sent

    async def send_fcm(i: int) -> bool:
        target = PushTarget("bob", "android", fcm_token)
        return (await fcm.send(target, "incoming_call", {**payload, "callId": f"c{i}"}, time.time() + 60)).sent

    notifier = RoutingNotifier({"ios": apns, "android": fcm})
    devices = [
        PushTarget("bob", "ios", "cd" * 32, "voipToken", "phone"),
        PushTarget("bob", "ios", "ef" * 32, "voipToken", "pad"),
        PushTarget("bob", "android", fcm_token, "fcmToken", "tablet"),
    ]

    async def send_fanout(i: int) -> bool:
        message = {**payload, "callId": f"f{i}"}
        sends = [notifier.send(t, "incoming_call", message, time.time() + 60) for t in devices]
        return all(result.sent for result in await asyncio.gather(*sends))

    per_ring = copy.copy(args)
    per_ring.pushes, per_ring.rate = max(1, args.pushes // len(devices)), args.rate / len(devices)
    try:
        return [
            await measure("apns", send_apns, args),
            await measure("fcm", send_fcm, args),
            await measure("fanout", send_fanout, per_ring, len(devices)),
        ]
    finally:
        await apns.close()
        await fcm.close()


def checks(figures: list[Figures], seen: dict[str, Any], concurrency: int) -> list[tuple[bool, str]]:
    results = []
    for f in figures:
        rate, p99, need = f"{f.throughput_per_s}/s", f"{f.paced_p99_ms} ms", TARGET_RATE / f.devices
        results += [
            (f.throughput_per_s >= need, f"{f.transport} throughput {rate} >= {need:.0f}/s"),
            (f.paced_p99_ms < TARGET_P99_MS, f"{f.transport} p99 at {f.paced_rate_per_s:.0f}/s {p99} < 50 ms"),
            (f.failures == 0, f"{f.transport} failures {f.failures} == 0"),
        ]
    results += [
        (seen["apns_connections"] == 1, f"apns HTTP/2 connections {seen['apns_connections']} == 1 (reuse)"),
        (seen["apns_provider_tokens"] == 1, f"apns provider tokens {seen['apns_provider_tokens']} == 1"),
        (
            seen["fcm_connections"] <= concurrency,
            f"fcm TCP connections {seen['fcm_connections']} <= {concurrency} (keep-alive)",
        ),
        (seen["fcm_grants"] == 1, f"fcm OAuth grants {seen['fcm_grants']} == 1"),
    ]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=TARGET_RATE)
    parser.add_argument("--paced-s", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    logs.configure("console", "warning")

    key, tls = make_apns_key(), make_tls()
    ca_dir = Path(tempfile.mkdtemp(prefix="push-bench-"))
    ca_file, _, _ = tls.write(ca_dir)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child, key, tls), daemon=True)
    server.start()
    try:
        if not parent.poll(60):
            print("set-up failed: the local servers did not start", file=sys.stderr)
            return 2
        info = parent.recv()
        figures = asyncio.run(run(args, info, key, ca_file))
        parent.send("stop")
        seen = parent.recv() if parent.poll(30) else {}
    finally:
        server.join(10)
        if server.is_alive():
            server.terminate()

    print(f"push transports, one process, concurrency {args.concurrency}, {args.pushes} pushes each")
    print(f"{'transport':<10}{'pushes/s':>10}{'p50 ms':>9}{'p99 ms':>9}   {'at':>5}/s {'p50 ms':>8}{'p99 ms':>9}")
    for f in figures:
        print(
            f"{f.transport:<10}{f.throughput_per_s:>10}{f.closed_p50_ms:>9}{f.closed_p99_ms:>9}   "
            f"{f.paced_rate_per_s:>5.0f}/s {f.paced_p50_ms:>8}{f.paced_p99_ms:>9}"
        )
    print("server side:", ", ".join(f"{k}={v}" for k, v in seen.items()))
    results = checks(figures, seen, args.concurrency) if seen else [(False, "server report missing")]
    for passed, text in results:
        print(f"  {'PASS' if passed else 'FAIL'}  {text}")
    if args.json:
        print(json.dumps({"figures": [asdict(f) for f in figures], "server": seen}))
    return 0 if all(passed for passed, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
