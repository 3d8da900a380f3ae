"""The one command line: `memharbor dev | http | watcher | recorder`.

Each subcommand builds its own process's settings once, then hands them to that process's `main()`.
Service packages are imported lazily so one process never loads another's code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from memharbor import settings as settings_mod


def _run_http() -> int:
    from token_http.main import main

    return main(settings_mod.load(settings_mod.http_settings))


def _run_watcher() -> int:
    from watcher.main import main

    return main(settings_mod.load(settings_mod.watcher_settings))


def _run_recorder() -> int:
    from recorder.main import main

    return main(settings_mod.load(settings_mod.recorder_settings))


def _run_dev() -> int:
    from memharbor.dev import dev_settings, main

    return main(dev_settings())


RUNNERS: dict[str, Callable[[], int]] = {
    "http": _run_http,
    "watcher": _run_watcher,
    "recorder": _run_recorder,
    "dev": _run_dev,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memharbor", description="Memharbor call backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("dev", help="start emulators and every service locally (Ctrl-C stops all)")
    sub.add_parser("http", help="run token_http: Agora tokens, health, the seed's REST routes")
    sub.add_parser("watcher", help="run the call watcher (Firestore listeners, pushes, timeouts)")
    sub.add_parser("recorder", help="run the recording worker")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `memharbor` console script."""
    args = _parser().parse_args(argv)
    try:
        return RUNNERS[args.command]()
    except settings_mod.SettingsError as exc:
        # A setting missing or malformed, found while reading settings or composing the process.
        print(f"memharbor {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
