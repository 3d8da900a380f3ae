"""The one command line: `memharbor dev | dev-token | http | watcher | recorder | inspect`.

Each subcommand builds its own process's settings once, then hands them to that process's `main()`
(`inspect` is small enough to be composed here). Service packages are imported lazily so one process
never loads another's code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from memharbor import calls
from memharbor import settings as settings_mod

if TYPE_CHECKING:  # annotations only: the repositories load Google's client libraries
    from memharbor.repositories.timeline import TimelineReader

# `memharbor inspect` exit statuses besides 0 (found) and 2 (usage or settings).
EXIT_NO_CALL = 1
EXIT_UNAVAILABLE = 3


def _run_http(_: argparse.Namespace) -> int:
    from token_http.main import main

    return main(settings_mod.load(settings_mod.http_settings))


def _run_watcher(_: argparse.Namespace) -> int:
    from watcher.main import main

    return main(settings_mod.load(settings_mod.watcher_settings))


def _run_recorder(_: argparse.Namespace) -> int:
    from recorder.main import main

    return main(settings_mod.load(settings_mod.recorder_settings))


def _run_dev(_: argparse.Namespace) -> int:
    from memharbor.dev import dev_settings, main

    return main(dev_settings())


def _run_dev_token(args: argparse.Namespace) -> int:
    from memharbor.dev import dev_settings
    from memharbor.devtokens import emulator_id_token

    settings = dev_settings()
    claims = {"admin": True} if args.admin else {}
    lifetime = int(args.hours * 3600)
    print(emulator_id_token(settings.http.firebase.project_id, args.uid, lifetime_s=lifetime, **claims))
    return 0


async def inspect_call(reader: TimelineReader, call_id: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Print a call's timeline to `out` as a table or JSON and return 0; EXIT_NO_CALL or EXIT_UNAVAILABLE
    with one line on `err`."""
    from google.auth.exceptions import GoogleAuthError

    from memharbor.errors import Unavailable
    from memharbor.timeline import render_table, to_json

    try:
        timeline = await reader.read(call_id)
    except (Unavailable, GoogleAuthError) as exc:
        # Credentials missing or refused, or no answer in time: the database's state is unknown.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"memharbor inspect: Firestore did not answer ({reason}); nothing was read", file=err)
        return EXIT_UNAVAILABLE
    if timeline is None:
        print(f"memharbor inspect: no call {call_id} (calls/{call_id} does not exist)", file=err)
        return EXIT_NO_CALL
    out.write(json.dumps(to_json(timeline), indent=2, ensure_ascii=False) + "\n" if as_json else render_table(timeline))
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from memharbor import firebase, logs, runtime
    from memharbor.repositories.client import LazyClient
    from memharbor.repositories.timeline import FirestoreTimeline

    settings = settings_mod.load(settings_mod.inspect_settings)
    logs.configure(settings.logging.format, settings.logging.level, settings.logging.file)
    firebase.use_emulators(settings)
    client = LazyClient(lambda: firebase.firestore_async(settings))

    async def run() -> int:
        try:
            reader = FirestoreTimeline(client, timeout_s=args.timeout)
            return await inspect_call(reader, args.call_id, args.json, sys.stdout, sys.stderr)
        finally:
            await client.aclose()

    return runtime.run(run())


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "http": _run_http,
    "watcher": _run_watcher,
    "recorder": _run_recorder,
    "dev": _run_dev,
    "dev-token": _run_dev_token,
    "inspect": _run_inspect,
}


def _call_id(value: str) -> str:
    if not calls.ID_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError("expected a call id: 1-128 characters of A-Z a-z 0-9 _ -")
    return value


def _uid(value: str) -> str:
    # Firebase uids are 1-128 characters; a space or slash would not survive a rules path.
    if not 0 < len(value) <= 128 or any(ch.isspace() or ch == "/" for ch in value):
        raise argparse.ArgumentTypeError("expected a uid: 1-128 characters, no spaces or slashes")
    return value


def _up_to(upper: float, unit: str) -> Callable[[str], float]:
    """An argparse type: a number of `unit` above 0 and at most `upper`."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not 0 < number <= upper:
            raise argparse.ArgumentTypeError(f"expected {unit}, more than 0 and at most {upper:g}")
        return number

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memharbor", description="Memharbor call backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("dev", help="start emulators and every service locally (Ctrl-C stops all)")
    token = sub.add_parser(
        "dev-token",
        help="print an emulator-format ID token for a user of the local stack (curl, scripts)",
        description="Print an unsigned ID token as the Auth emulator issues them. token_http accepts it only "
        "in emulator mode (FIREBASE_AUTH_EMULATOR_HOST set, as `memharbor dev` runs it); the Firestore "
        "emulator applies the security rules as this user.",
    )
    token.add_argument("uid", metavar="UID", type=_uid, help="the user, e.g. demo-caregiver")
    token.add_argument("--admin", action="store_true", help="add the admin claim (admin routes, any channel)")
    token.add_argument(
        "--hours", type=_up_to(24 * 30, "hours"), default=24.0, metavar="HOURS", help="lifetime (default 24)"
    )
    sub.add_parser("http", help="run token_http: Agora tokens, health, the seed's REST routes")
    sub.add_parser("watcher", help="run the call watcher (Firestore listeners, pushes, timeouts)")
    sub.add_parser("recorder", help="run the recording worker")
    inspect = sub.add_parser(
        "inspect",
        help="print what the server did about one call, and why it did or did not ring",
        description="Print a call's timeline (docs/support.md). Exit status: 0 printed, 1 no such call, "
        "2 usage or settings, 3 Firestore did not answer.",
    )
    inspect.add_argument("call_id", metavar="CALL_ID", type=_call_id, help="the call's id (calls/{CALL_ID})")
    inspect.add_argument("--json", action="store_true", help="print JSON (the admin REST route's body)")
    inspect.add_argument(
        "--timeout",
        type=_up_to(600, "seconds"),
        default=10.0,
        metavar="SECONDS",
        help="give up on Firestore after this long",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `memharbor` console script."""
    args = _parser().parse_args(argv)
    try:
        return RUNNERS[args.command](args)
    except settings_mod.SettingsError as exc:
        # A setting missing or malformed, found while reading settings or composing the process.
        print(f"memharbor {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
