"""Benchmark POST /api/token: the seed-style Django/gunicorn server against memharbor's aiohttp one.

Run from the repository root:

    python bench/token_bench.py [--duration 15] [--connections 64] [--workers 2] [--only seed|ours] [--minimal] [--json]

The servers run on free loopback ports, one after the other, each loaded by `wrk` with the same Lua
script (bench/token_post.lua). `--minimal` (alias `--floor`) adds a third, bench/minimal_app.py: the
endpoint's required work only, no middleware or structlog, so its figures are what this machine gives
with the stack. Exit codes: 0 all good, 1 a server failed to start or wrk failed, 2 wrk is not
installed, 3 a run had non-2xx answers or socket errors. PASS/FAIL lines compare ours with the targets:
at least 3x the seed's requests/s, and within 10 % of the minimal server's requests/s and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SEED_DIR = BENCH_DIR / "seed_django"
LUA_PATH = BENCH_DIR / "token_post.lua"

REQUEST_BODY = {"channel": "group1_alice_bob", "uid": 12345, "role": "publisher"}
BODY_JSON = json.dumps(REQUEST_BODY, separators=(",", ":"))
LUA_SCRIPT = f"""-- Written by bench/token_bench.py: every wrk request is the seed's token POST.
wrk.method = "POST"
wrk.body = '{BODY_JSON}'
wrk.headers["Content-Type"] = "application/json"
"""

WRK_THREADS = 2
# The targets: ours at least 3x the seed's requests/s, and within 10 % of the minimal server in
# requests/s and p99 measured in the same run (a third of the seed's p99 was below what the machine allows).
TARGET_RATIO = 3.0
MINIMAL_RPS_SHARE = 0.9
MINIMAL_P99_SLACK = 1.1
WARMUP_SECONDS = 3
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
STDERR_TAIL_LINES = 40
UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class BenchError(Exception):
    """A server or wrk failed; the message says which and why."""


@dataclass
class Server:
    """One server under test: how to start it and, once started, its process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    log_file: Path
    stdout_path: Path
    stderr_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Return the token endpoint's URL."""
        return f"http://127.0.0.1:{self.port}/api/token"


@dataclass
class WrkResult:
    """Figures parsed from one wrk run."""

    requests: int = 0
    requests_per_sec: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    )

    @property
    def ok(self) -> bool:
        """Return True when every answer was 2xx and no socket error happened."""
        return self.requests > 0 and self.non_2xx == 0 and not any(self.socket_errors.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Benchmark POST /api/token: seed-style Django vs ours.")
    parser.add_argument("--duration", type=int, default=15, help="seconds of measured load per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (-c)")
    parser.add_argument("--workers", type=int, default=2, help="MEMHARBOR_HTTP_WORKERS for our server")
    parser.add_argument("--only", choices=("seed", "ours"), help="benchmark one server only")
    parser.add_argument(
        "--minimal",
        "--floor",
        dest="minimal",
        action="store_true",
        help="also run the minimal server (bench/minimal_app.py) and check ours against it",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object on stdout (table to stderr)")
    return parser.parse_args(argv)


def find_wrk() -> str:
    """Return wrk's path or exit 2 with an install hint."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found: install it with `apt-get update && apt-get install -y wrk`", file=sys.stderr)
        raise SystemExit(2)
    return wrk


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_lua() -> Path:
    """Write bench/token_post.lua if it is missing or stale, and return its path."""
    if not LUA_PATH.exists() or LUA_PATH.read_text() != LUA_SCRIPT:
        LUA_PATH.write_text(LUA_SCRIPT)
    return LUA_PATH


def agora_env() -> dict[str, str]:
    """Return throwaway Agora credentials (32 hex digits each) shared by both servers."""
    return {"AGORA_APP_ID": secrets.token_hex(16), "AGORA_APP_CERT": secrets.token_hex(16)}


def gunicorn_argv() -> list[str]:
    """Return the command that runs gunicorn from this interpreter's environment."""
    script = Path(sys.executable).parent / "gunicorn"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    help_text = subprocess.run([*base, "--help"], capture_output=True, text=True, check=False).stdout
    # gunicorn >= 24 opens a control socket in ~/.gunicorn; the seed's gunicorn had none.
    return [*base, "--no-control-socket"] if "--no-control-socket" in help_text else base


def seed_server(workdir: Path, creds: dict[str, str]) -> Server:
    """Describe the seed-style Django app under gunicorn with 2 sync workers."""
    port = free_port()
    log_dir = workdir / "seed-logs"
    argv = [
        *gunicorn_argv(),
        "--workers",
        "2",
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "config.wsgi:application",
    ]
    env = {
        **os.environ,
        **creds,
        "SEED_LOG_DIR": str(log_dir),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(SEED_DIR),
    }
    return Server(
        "seed",
        argv,
        env,
        SEED_DIR,
        port,
        log_dir / "api.log",
        workdir / "seed.stdout",
        workdir / "seed.stderr",
    )


def repo_pythonpath() -> str:
    """PYTHONPATH for a server run from this checkout: the repository first, then the caller's path."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def ours_server(workdir: Path, creds: dict[str, str], workers: int) -> Server:
    """Describe memharbor's aiohttp token server (`python -m memharbor http`)."""
    port = free_port()
    log_file = workdir / "ours.log"
    env = {
        **os.environ,
        **creds,
        "PYTHONPATH": repo_pythonpath(),
        "MEMHARBOR_AUTH": "none",
        "MEMHARBOR_HTTP_HOST": "127.0.0.1",
        "MEMHARBOR_HTTP_PORT": str(port),
        "MEMHARBOR_HTTP_WORKERS": str(workers),
        "FIREBASE_PROJECT_ID": "bench",
        "MEMHARBOR_LOG_FORMAT": "json",
        "MEMHARBOR_LOG_FILE": str(log_file),
    }
    argv = [sys.executable, "-m", "memharbor", "http"]
    return Server("ours", argv, env, REPO_ROOT, port, log_file, workdir / "ours.stdout", workdir / "ours.stderr")


def minimal_server(workdir: Path, creds: dict[str, str]) -> Server:
    """Describe the minimal server: the endpoint's required work only (bench/minimal_app.py)."""
    port = free_port()
    log_file = workdir / "minimal.log"
    env = {**os.environ, **creds, "PYTHONPATH": repo_pythonpath()}
    argv = [sys.executable, str(BENCH_DIR / "minimal_app.py"), str(port), str(log_file)]
    stdout, stderr = workdir / "minimal.stdout", workdir / "minimal.stderr"
    return Server("minimal", argv, env, REPO_ROOT, port, log_file, stdout, stderr)


def start(server: Server) -> None:
    """Start the server in its own process group, output going to files."""
    with server.stdout_path.open("wb") as out, server.stderr_path.open("wb") as err:
        server.proc = subprocess.Popen(
            server.argv,
            cwd=server.cwd,
            env=server.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send sig to the process group led by proc (one we started), ignoring a vanished group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(server: Server) -> None:
    """Stop the server: SIGTERM to its group, SIGKILL once STOP_TIMEOUT has passed."""
    proc = server.proc
    if proc is None:
        return
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
    signal_group(proc, signal.SIGKILL)  # any worker left behind in the group
    server.proc = None


def stderr_tail(server: Server) -> str:
    """Return the last lines the server wrote to stderr and stdout."""
    lines: list[str] = []
    for path in (server.stdout_path, server.stderr_path):
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines) or "(no output)"


def post_token(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """POST the benchmark body once and return the decoded 200 answer."""
    request = urllib.request.Request(
        url, data=BODY_JSON.encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 200:
            raise BenchError(f"status {response.status}")
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def check_answer(answer: dict[str, Any]) -> None:
    """Raise BenchError unless the answer looks like the seed's token answer."""
    token = answer.get("token")
    if not isinstance(token, str) or not token.startswith("006"):
        raise BenchError(f"answer has no 006 token: {answer!r}")
    if not isinstance(answer.get("expire_at"), int) or answer.get("expire_in") != 86400:
        raise BenchError(f"answer lacks expire_at/expire_in=86400: {answer!r}")


def wait_ready(server: Server) -> None:
    """Wait until the server answers a token POST correctly, or raise BenchError."""
    deadline = time.monotonic() + READY_TIMEOUT
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc is None or server.proc.poll() is not None:
            code = None if server.proc is None else server.proc.returncode
            raise BenchError(f"{server.name} server exited with code {code}")
        try:
            check_answer(post_token(server.url))
            return
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{server.name} server not ready after {READY_TIMEOUT:.0f}s ({last_error})")


def run_wrk(wrk: str, url: str, seconds: int, connections: int, during: Callable[[], None] | None = None) -> str:
    """Run wrk against url and return its output; `during` runs once wrk's connections are open."""
    argv = [
        wrk,
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(write_lua()),
        url,
    ]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        if during is not None:
            time.sleep(min(1.0, seconds / 2))
            during()
        try:
            stdout, stderr = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise BenchError(f"wrk did not finish within {seconds + 60}s") from None
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}: {stderr.strip() or stdout.strip()}")
    return stdout


def connection_split(port: int) -> list[int]:
    """Established connections to `port` per server process, most first; [] without `ss`.

    SO_REUSEPORT hands each of wrk's connections to a worker by a hash of its address: 64 connections
    land anywhere from 32/32 to about 26/38, and the busier worker sets the p99 (38/32 is 19 % more).
    """
    ss = shutil.which("ss")
    if ss is None:
        return []
    argv = [ss, "-tnpH", "state", "established", f"( sport = :{port} )"]
    listing = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return sorted(Counter(re.findall(r"pid=(\d+)", listing)).values(), reverse=True)


def to_ms(value: str, unit: str) -> float:
    """Convert a wrk duration (number and unit) to milliseconds."""
    return float(value) * UNIT_TO_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Parse requests/s, latency percentiles, non-2xx and socket errors from wrk --latency output."""
    result = WrkResult()
    if match := re.search(r"^\s*(\d+) requests in ", text, re.M):
        result.requests = int(match.group(1))
    if match := re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M):
        result.requests_per_sec = float(match.group(1))
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        result.latency_ms[f"p{pct}"] = round(to_ms(value, unit), 3)
    if match := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text):
        result.non_2xx = int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, match.groups()), strict=True))
    return result


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"[token_bench] {message}", file=sys.stderr, flush=True)


def bench_server(server: Server, wrk: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start one server, warm it up, measure it with wrk, stop it, and return its figures."""
    load = os.getloadavg()[0]
    log(f"starting {server.name}: {' '.join(server.argv)} (port {server.port}, 1-min load {load:.2f})")
    try:
        start(server)
        wait_ready(server)
        log(f"{server.name} ready; warm-up {WARMUP_SECONDS}s")
        run_wrk(wrk, server.url, WARMUP_SECONDS, args.connections)
        log(f"{server.name}: wrk -t{WRK_THREADS} -c{args.connections} -d{args.duration}s --latency")
        split: list[int] = []
        output = run_wrk(
            wrk, server.url, args.duration, args.connections, lambda: split.extend(connection_split(server.port))
        )
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- {server.name} output tail ---\n{stderr_tail(server)}") from exc
    finally:
        stop(server)
    result = parse_wrk(output)
    log_bytes = server.log_file.stat().st_size if server.log_file.exists() else 0
    extra = {
        "ok": result.ok,
        "log_bytes": log_bytes,
        "load_before": round(load, 2),
        "connection_split": split,
        "wrk_output": output,
    }
    return {**asdict(result), **extra}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Return requests/s over the seed's and the seed's p99 over each server's, and ours over minimal's."""

    def rps(name: str) -> float | None:
        return results[name]["requests_per_sec"] if name in results else None

    def p99(name: str) -> float | None:
        return results[name]["latency_ms"].get("p99") if name in results else None

    summary: dict[str, float | None] = {}
    for name in (n for n in ("ours", "minimal") if n in results):
        summary[f"rps_{name}_over_seed"] = _ratio(rps(name), rps("seed"))
        summary[f"p99_seed_over_{name}"] = _ratio(p99("seed"), p99(name))
    if "ours" in results and "minimal" in results:
        summary["rps_ours_over_minimal"] = _ratio(rps("ours"), rps("minimal"))
        summary["p99_ours_over_minimal"] = _ratio(p99("ours"), p99("minimal"))
    return summary


def targets(summary: dict[str, float | None]) -> list[tuple[bool, str]]:
    """Return (passed, description) for each target the run's servers let us judge."""
    checks = (
        ("rps_ours_over_seed", "requests/s ours/seed", ">=", TARGET_RATIO),
        ("rps_ours_over_minimal", "requests/s ours/minimal", ">=", MINIMAL_RPS_SHARE),
        ("p99_ours_over_minimal", "p99 ours/minimal", "<=", MINIMAL_P99_SLACK),
    )
    verdicts = []
    for key, label, op, bound in checks:
        value = summary.get(key)
        if value is not None:
            passed = value >= bound if op == ">=" else value <= bound
            verdicts.append((passed, f"{label} {value} (target {op} {bound:g})"))
    return verdicts


def table_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """Return the table's rows: metric name, then one cell per server."""

    def cell(res: dict[str, Any], key: str) -> str:
        if key == "requests_per_sec":
            return f"{res[key]:.0f}"
        if key.startswith("p"):
            return f"{res['latency_ms'].get(key, float('nan')):.2f}"
        if key == "socket_errors":
            return ",".join(f"{k}={v}" for k, v in res[key].items() if v) or "0"
        if key == "connection_split":
            return "/".join(map(str, res[key])) or "?"
        return str(res[key])

    keys = [
        ("requests/s", "requests_per_sec"),
        ("p50 ms", "p50"),
        ("p75 ms", "p75"),
        ("p90 ms", "p90"),
        ("p99 ms", "p99"),
        ("requests", "requests"),
        ("non-2xx", "non_2xx"),
        ("socket errors", "socket_errors"),
        ("connections per process", "connection_split"),
        ("all 200", "ok"),
    ]
    return [(label, *(cell(res, key) for res in results.values())) for label, key in keys]


def render(results: dict[str, dict[str, Any]], summary: dict[str, float | None]) -> str:
    """Return the side-by-side table and the ratios as text."""
    rows = [("metric", *results), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
    first = next(iter(results.values()), None)
    if first is not None:
        lines.append(f"1-minute load at start: {first['load_before']}")
    for name in ("ours", "minimal"):
        rps, p99 = summary.get(f"rps_{name}_over_seed"), summary.get(f"p99_seed_over_{name}")
        if rps is not None or p99 is not None:
            lines.append(f"requests/s {name}/seed: {rps}   p99 seed/{name}: {p99}")
    lines += [f"  {_verdict(passed)}  {text}" for passed, text in targets(summary)]
    return "\n".join(lines)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def run(args: argparse.Namespace, wrk: str) -> dict[str, dict[str, Any]]:
    """Benchmark the selected servers one after the other and return their figures."""
    creds = agora_env()
    names = [args.only] if args.only else ["seed", "ours"]
    if args.minimal:
        names.append("minimal")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="memharbor-bench-") as tmp:
        workdir = Path(tmp)
        for name in names:
            if name == "seed":
                server = seed_server(workdir, creds)
            elif name == "ours":
                server = ours_server(workdir, creds, args.workers)
            else:
                server = minimal_server(workdir, creds)
            results[name] = bench_server(server, wrk, args)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (and JSON with --json)."""
    args = parse_args(argv)
    wrk = find_wrk()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop our servers
    try:
        results = run(args, wrk)
    except BenchError as exc:
        print(f"token_bench: {exc}", file=sys.stderr)
        return 1
    summary = ratios(results)
    print(render(results, summary), file=sys.stderr if args.json else sys.stdout)
    all_ok = all(res["ok"] for res in results.values())
    if args.json:
        config = {
            "duration": args.duration,
            "connections": args.connections,
            "threads": WRK_THREADS,
            "ours_workers": args.workers,
            "seed_workers": 2,
            "cpus": os.cpu_count(),
        }
        verdicts = {text: passed for passed, text in targets(summary)}
        report = {"config": config, "results": results, "ratios": summary, "targets": verdicts, "ok": all_ok}
        print(json.dumps(report, indent=2))
    return 0 if all_ok else 3


if __name__ == "__main__":
    sys.exit(main())
