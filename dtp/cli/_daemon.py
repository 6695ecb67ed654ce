"""The ``dtp daemon`` and ``dtp status`` subcommands.

This module stays light (the standard library only): the ``dtp`` parser imports it for
every command, and ``dtp daemon`` installs its signal handlers
(:class:`~dtp.daemon._signals.StopSignals`) before importing the rest of the daemon.
(:func:`register` takes ``--passphrase-env``'s action from ``dtp.cli._ledger``, which the
parser has imported by then.)
"""

from __future__ import annotations

import argparse
from typing import Any

from dtp.daemon._reporting import report
from dtp.daemon._signals import CAUGHT_SIGNALS, STOP_SIGNALS, StopSignals

# (the signal names live in dtp.daemon._signals; listed here for the old import path)
__all__ = ["CAUGHT_SIGNALS", "STOP_SIGNALS", "StopSignals", "register"]

#: What to give instead of an empty value, by option.
_INSTEAD: dict[str, str] = {
    "--config": "give a path",
    "--state-dir": "give a path",
    "--passphrase-env": "name an environment variable",
}


def _empty_option(command: str, values: dict[str, str | None], as_json: bool) -> int | None:
    """Exit status 2 after a one-line usage error if an option was given empty, else
    None. ``--config "$UNSET"`` would otherwise read ``.`` (``dtp daemon``: "cannot
    read the config file: Is a directory") or fall back to ./dtp.toml (``dtp status``:
    another daemon's counters shown as this one's); ``--passphrase-env ""`` would read
    no passphrase and blame a variable with no name ("set $")."""
    for option, value in values.items():
        if value == "":
            message = f"{option} is empty: {_INSTEAD[option]}, or leave it out."
            return report(command, 2, message, as_json=as_json)
    return None


def _unset_for_a_new_identity(args: argparse.Namespace, signals: StopSignals) -> int | None:
    """Exit status 2 after a one-line usage error if ``--passphrase-env`` was given,
    names a variable that is not set, and the daemon would generate its identity (the
    config's identity file is not there), as ``dtp keys new`` refuses it; else None.
    The first start wrote the new secret key unencrypted, with nothing said. The
    default variable unset still means an unencrypted identity, and an identity already
    there is read as before (an unencrypted one needs no passphrase)."""
    from dtp.cli._ledger import unset_passphrase_env

    unset = unset_passphrase_env(args)
    if unset is None or signals.stop is not None:
        return None  # (a stop meanwhile: the runner ends the start, nothing created)
    from dtp.daemon._config import load_config
    from dtp.errors import DaemonConfigError

    try:
        config = load_config(args.config)
    except DaemonConfigError:
        return None  # the runner says what is wrong with it, in its words
    # as dtp.daemon._runner.load_identity decides to generate one
    if config.daemon.identity.exists():
        return None
    return report("daemon", 2, unset, as_json=args.json)


def _cmd_daemon(args: argparse.Namespace) -> int:
    # first, before the runner's imports: a stop meanwhile is recorded, and the runner
    # ends the start at its first step (exit 0, nothing created). ``dtp``'s main may
    # have installed them already, before it built its parser (``stop_signals``)
    signals = getattr(args, "stop_signals", None) or StopSignals()
    signals.install()
    try:
        refused = _empty_option(
            "daemon", {"--config": args.config, "--passphrase-env": args.passphrase_env}, args.json
        )
        if refused is None and not args.check:
            refused = _unset_for_a_new_identity(args, signals)
        if refused is not None:
            return refused
        if args.check:
            from dtp.daemon._check import main as check

            return check(args.config, args.passphrase_env, as_json=args.json)
        from dtp.daemon._runner import main

        return main(
            args.config,
            args.log_format,
            args.passphrase_env,
            exiting=True,
            signals=signals,
            as_json=args.json,
        )
    finally:
        # the process ends once this returns: signals stay caught (then ignored) to the
        # end, on the paths that never reached main too
        signals.ignore()


def _cmd_status(args: argparse.Namespace) -> int:
    from dtp.daemon._status import main

    refused = _empty_option(
        "status", {"--config": args.config, "--state-dir": args.state_dir}, args.json
    )
    if refused is not None:
        return refused
    return main(args.config, args.state_dir, args.json, live=not args.file)


def register(sub: Any) -> None:
    """Add the subcommands to the ``dtp`` parser's subparsers."""
    daemon = sub.add_parser(
        "daemon",
        help="expose and reach TCP and UDP services through DTP",
        description="Expose local TCP and UDP servers as DTP services, and forward local "
        "ports to remote DTP services, as the config file says (docs/daemon.md). "
        "SIGTERM/SIGINT: drain and stop; SIGHUP: reload the config.",
    )
    daemon.add_argument("--config", default="dtp.toml", help="config file (default dtp.toml)")
    daemon.add_argument("--log-format", choices=["json", "text"], help="override the config")
    daemon.add_argument(
        "--json",
        action="store_true",
        help="a failure as one JSON object on stderr, as every command's --json; with "
        "--check, the findings too (the daemon's own output, its ready line and logs, "
        "is JSON already: [daemon] log_format)",
    )
    daemon.add_argument(
        "--check",
        action="store_true",
        help="test the config (keys, ledger, backends, listen addresses), list every "
        "problem, then exit: 0 when there is none (like nginx -t)",
    )
    # the chain commands' action: it records that the option was given, for the rule
    # that a variable so named must be set when a new identity is written
    from dtp.cli._ledger import EnvNameGiven

    daemon.add_argument(
        "--passphrase-env",
        default="DTP_PASSPHRASE",
        action=EnvNameGiven,
        help="environment variable holding the identity passphrase (default DTP_PASSPHRASE; "
        "one named here must be set when the identity is first generated)",
    )
    daemon.set_defaults(func=_cmd_daemon)

    status = sub.add_parser("status", help="show the services daemon's counters")
    # one or the other: argparse refuses the two together
    where = status.add_mutually_exclusive_group()
    where.add_argument("--config", help="the daemon's config file (default dtp.toml)")
    where.add_argument("--state-dir", help="or the daemon's state directory")
    status.add_argument(
        "--json", action="store_true", help="machine-readable output (and errors: one JSON object)"
    )
    status.add_argument(
        "--file",
        action="store_true",
        help="read the status file the daemon last saved, not its live counters",
    )
    status.set_defaults(func=_cmd_status)
