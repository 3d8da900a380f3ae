"""The one command line: `memharbor dev | http | watcher | recorder`.

Each subcommand builds the settings once, then hands them to its process's `main()`. Service
packages are imported lazily so one process never loads another's code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from memharbor import settings as settings_mod

NOT_BUILT: dict[str, str] = {}


def _run_http(settings: settings_mod.Settings) -> int:
    from token_http.main import main

    return main(settings)


def _run_watcher(settings: settings_mod.Settings) -> int:
    from watcher.main import main

    return main(settings)


def _run_recorder(settings: settings_mod.Settings) -> int:
    from recorder.main import main

    return main(settings)


def _run_dev(settings: settings_mod.Settings) -> int:
    from memharbor.dev import main

    return main(settings)


RUNNERS: dict[str, Callable[[settings_mod.Settings], int]] = {
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
    if args.command in NOT_BUILT:
        print(f"memharbor {args.command}: {NOT_BUILT[args.command]}", file=sys.stderr)
        return 2
    try:
        if args.command == "dev":
            from memharbor.dev import dev_settings

            settings = dev_settings()
        else:
            settings = settings_mod.load()
    except settings_mod.SettingsError as exc:
        print(f"memharbor {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        return RUNNERS[args.command](settings)
    except settings_mod.SettingsError as exc:
        print(f"memharbor {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
