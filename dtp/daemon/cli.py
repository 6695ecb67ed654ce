"""The ``dtp daemon`` and ``dtp status`` subcommands, and :class:`StopSignals` (the
daemon's signals caught from the moment the command starts).

This module stays light (the standard library only): the ``dtp`` parser imports it for
every command, and ``dtp daemon`` installs its signal handlers here before importing
the rest of the daemon. (:func:`register` takes ``--passphrase-env``'s action from
``dtp.ledger.cli``, which the parser has imported by then.)
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

__all__ = ["CAUGHT_SIGNALS", "STOP_SIGNALS", "StopSignals", "register"]

#: The signals that stop the daemon (drain, then exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: What StopSignals catches: the stops, and SIGHUP (a reload).
CAUGHT_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
# how many of the latest arrivals a StopSignals keeps for since()
_ARRIVALS_KEPT = 16

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


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP caught before the event loop's handlers are in place.

    Python's default actions would otherwise apply while ``dtp daemon`` reads its
    config, opens the ledger and starts: SIGTERM and SIGHUP end the process on the spot
    and SIGINT raises KeyboardInterrupt wherever the main thread is (asyncio.run turns
    it into a cancel of the start at any await). Either way nothing was cleaned up: the
    status file never written, listeners and the receipt store closed by the exit
    alone, and exit status -15, -1 or 130 instead of 0. Here each signal is only
    recorded; ``dtp.daemon.runner.Daemon.run`` acts on it once its loop handles the
    signals.

    It lives here, not in the runner, so that ``dtp daemon`` can install it before it
    imports the runner: those imports (asyncio, the ledger, the crypto) take a few
    tenths of a second, during which a supervisor's SIGTERM killed the process (exit
    143) and a Ctrl-C printed a KeyboardInterrupt traceback.
    """

    def __init__(self) -> None:
        self.stop: int | None = None
        """The first SIGTERM or SIGINT received, if any."""
        self.reload = False
        """Whether a SIGHUP arrived (a reload is due once the daemon is ready)."""
        self.caught = 0
        """How many of the three signals arrived (any of them, each time)."""
        self.last: int | None = None
        """The latest of them."""
        # the latest arrivals, (count, signal), for since(): a few, whatever the storm
        self._arrivals: list[tuple[int, int]] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch the three signals from now on (main thread only)."""
        for sig in CAUGHT_SIGNALS:
            previous = signal.signal(sig, self._record)
            self._previous.setdefault(sig, previous)

    def _record(self, signum: int, _frame: object) -> None:
        self.caught += 1
        self.last = signum
        self._arrivals.append((self.caught, signum))
        if len(self._arrivals) > _ARRIVALS_KEPT:
            del self._arrivals[0]
        if signum == signal.SIGHUP:
            self.reload = True
        elif self.stop is None:
            self.stop = signum

    def ignore(self) -> None:
        """Ignore the three signals from now on: for a process that only exits from here
        (a supervisor's repeated SIGTERM during the interpreter's shutdown took the
        default action and turned exit status 0 into death by that signal)."""
        for sig in CAUGHT_SIGNALS:
            previous = signal.signal(sig, signal.SIG_IGN)
            self._previous.setdefault(sig, previous)

    def since(self, mark: int) -> list[int]:
        """The signals that arrived after :attr:`caught` was ``mark``: each kind once,
        in the order they first came (of the latest arrivals only, which hold every
        kind that came unless a storm of one pushed another out)."""
        kinds: dict[int, None] = {}
        for count, signum in self._arrivals:
            if count > mark:
                kinds.setdefault(signum, None)
        return list(kinds)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced: all of them, even when one
        raises on the way (a SIGINT landing once Python's own handler is back raises
        KeyboardInterrupt out of the next :func:`signal.signal`, which left the signals
        after it with this recorder for good); the first such exception is raised
        once they are back."""
        error: BaseException | None = None
        try:
            for sig, previous in self._previous.items():
                try:
                    # None: a handler not set from Python (the default, to the interpreter)
                    signal.signal(sig, signal.SIG_DFL if previous is None else previous)
                except BaseException as exc:
                    if error is None:
                        error = exc
        finally:
            self._previous.clear()
        if error is not None:
            raise error


def _unset_for_a_new_identity(args: argparse.Namespace, signals: StopSignals) -> int | None:
    """Exit status 2 after a one-line usage error if ``--passphrase-env`` was given,
    names a variable that is not set, and the daemon would generate its identity (the
    config's identity file is not there), as ``dtp keys new`` refuses it; else None.
    The first start wrote the new secret key unencrypted, with nothing said. The
    default variable unset still means an unencrypted identity, and an identity already
    there is read as before (an unencrypted one needs no passphrase)."""
    from dtp.ledger.cli import unset_passphrase_env

    unset = unset_passphrase_env(args)
    if unset is None or signals.stop is not None:
        return None  # (a stop meanwhile: the runner ends the start, nothing created)
    from dtp.daemon.config import load_config
    from dtp.errors import DaemonConfigError

    try:
        config = load_config(args.config)
    except DaemonConfigError:
        return None  # the runner says what is wrong with it, in its words
    # as dtp.daemon.runner.load_identity decides to generate one
    if config.daemon.identity.exists():
        return None
    print(f"dtp daemon: {unset}", file=sys.stderr)
    return 2


def _cmd_daemon(args: argparse.Namespace) -> int:
    # first, before the runner's imports: a stop meanwhile is recorded, and the runner
    # ends the start at its first step (exit 0, nothing created). ``dtp``'s main may
    # have installed them already, before it built its parser (``stop_signals``)
    signals = getattr(args, "stop_signals", None) or StopSignals()
    signals.install()
    try:
        refused = _empty_option(
            "daemon", {"--config": args.config, "--passphrase-env": args.passphrase_env}
        )
        if refused is None:
            refused = _unset_for_a_new_identity(args, signals)
        if refused is not None:
            return refused
        from dtp.daemon.runner import main

        return main(
            args.config, args.log_format, args.passphrase_env, exiting=True, signals=signals
        )
    finally:
        # the process ends once this returns: signals stay caught (then ignored) to the
        # end, on the paths that never reached main too
        signals.ignore()


def _cmd_status(args: argparse.Namespace) -> int:
    from dtp.daemon.status import main

    refused = _empty_option("status", {"--config": args.config, "--state-dir": args.state_dir})
    if refused is not None:
        return refused
    return main(args.config, args.state_dir, args.json)


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
    # the chain commands' action: it records that the option was given, for the rule
    # that a variable so named must be set when a new identity is written
    from dtp.ledger.cli import EnvNameGiven

    daemon.add_argument(
        "--passphrase-env",
        default="DTP_PASSPHRASE",
        action=EnvNameGiven,
        help="environment variable holding the identity passphrase (default DTP_PASSPHRASE; "
        "one named here must be set when the identity is first generated)",
    )
    daemon.set_defaults(func=_cmd_daemon)

    status = sub.add_parser("status", help="show the services daemon's counters")
    # one or the other: given both, the config file was ignored without a word
    where = status.add_mutually_exclusive_group()
    where.add_argument("--config", help="the daemon's config file (default dtp.toml)")
    where.add_argument("--state-dir", help="or the daemon's state directory")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.set_defaults(func=_cmd_status)
