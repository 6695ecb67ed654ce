"""The ``dtp daemon`` and ``dtp status`` subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd_daemon(args: argparse.Namespace) -> int:
    from dtp.daemon.runner import main

    # the process ends once main returns: signals stay caught (then ignored) to the end
    return main(args.config, args.log_format, args.passphrase_env, exiting=True)


def _cmd_status(args: argparse.Namespace) -> int:
    from dtp.daemon.status import main

    # an empty value (`--state-dir "$UNSET"`) would fall back to ./dtp.toml and show
    # another daemon's counters as this one's
    for option, value in (("--config", args.config), ("--state-dir", args.state_dir)):
        if value == "":
            print(f"dtp status: {option} is empty: give a path, or leave it out.", file=sys.stderr)
            return 2
    return main(args.config, args.state_dir, args.json)


def register(sub: Any) -> None:
    """Add the subcommands to the ``dtp`` parser's subparsers."""
    daemon = sub.add_parser("daemon", help="expose and reach TCP services through DTP")
    daemon.add_argument("--config", default="dtp.toml", help="config file (default dtp.toml)")
    daemon.add_argument("--log-format", choices=["json", "text"], help="override the config")
    daemon.add_argument(
        "--passphrase-env",
        default="DTP_PASSPHRASE",
        help="environment variable holding the identity passphrase (default DTP_PASSPHRASE)",
    )
    daemon.set_defaults(func=_cmd_daemon)

    status = sub.add_parser("status", help="show the services daemon's counters")
    status.add_argument("--config", help="the daemon's config file (default dtp.toml)")
    status.add_argument("--state-dir", help="or the daemon's state directory")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.set_defaults(func=_cmd_status)
