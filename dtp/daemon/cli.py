"""The ``dtp daemon`` and ``dtp status`` subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: What to give instead of an empty value, by option.
_INSTEAD: dict[str, str] = {
    "--config": "give a path",
    "--state-dir": "give a path",
    "--passphrase-env": "name an environment variable",
}


def _empty_option(command: str, values: dict[str, str | None]) -> int | None:
    """Exit status 2 after a one-line usage error if an option was given empty, else
    None. ``--config "$UNSET"`` would otherwise read ``.`` (``dtp daemon``: "cannot
    read the config file: Is a directory") or fall back to ./dtp.toml (``dtp status``:
    another daemon's counters shown as this one's); ``--passphrase-env ""`` would read
    no passphrase and blame a variable with no name ("set $")."""
    for option, value in values.items():
        if value == "":
            print(
                f"dtp {command}: {option} is empty: {_INSTEAD[option]}, or leave it out.",
                file=sys.stderr,
            )
            return 2
    return None


def _cmd_daemon(args: argparse.Namespace) -> int:
    from dtp.daemon.runner import main

    refused = _empty_option(
        "daemon", {"--config": args.config, "--passphrase-env": args.passphrase_env}
    )
    if refused is not None:
        return refused
    # the process ends once main returns: signals stay caught (then ignored) to the end
    return main(args.config, args.log_format, args.passphrase_env, exiting=True)


def _cmd_status(args: argparse.Namespace) -> int:
    from dtp.daemon.status import main

    refused = _empty_option("status", {"--config": args.config, "--state-dir": args.state_dir})
    if refused is not None:
        return refused
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
    # one or the other: given both, the config file was ignored without a word
    where = status.add_mutually_exclusive_group()
    where.add_argument("--config", help="the daemon's config file (default dtp.toml)")
    where.add_argument("--state-dir", help="or the daemon's state directory")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.set_defaults(func=_cmd_status)
