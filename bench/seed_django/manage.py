#!/usr/bin/env python
"""Django's command-line utility for the seed-style token server (benchmark reference only)."""

import os
import sys


def main() -> None:
    """Run a Django management command against config.settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
