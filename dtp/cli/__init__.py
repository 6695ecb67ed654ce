"""The ``dtp`` command: its parser and :func:`main`; the subcommands live in the
modules beside this one (ledger, funds, daemon, demo)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dtp import __version__
from dtp._distribution import NAME as DISTRIBUTION

# (dtp.cli._common, the errors and the subcommands are imported once ``main`` runs:
# ``dtp daemon`` catches its stop signals first, _early_stop_signals)

if TYPE_CHECKING:
    from dtp.daemon._signals import StopSignals


def _cmd_demo(args: argparse.Namespace) -> int:
    from dtp.cli._common import EXIT_USAGE, CliError, print_error
    from dtp.cli._demo import run_demo

    if args.screenshots is not None:
        # made now: a folder that cannot be was a traceback six steps into the demo
        try:
            os.makedirs(args.screenshots, exist_ok=True)
        except OSError as exc:
            problem = CliError(f"--screenshots: cannot make {args.screenshots}: {exc.strerror}")
            return print_error(problem, EXIT_USAGE, as_json=False, command="demo")
    return run_demo(quick=args.quick, browser_wait=args.browser_wait, screenshots=args.screenshots)


def package_version() -> str:
    """The installed distribution's version (``importlib.metadata``, under the name pip
    installs it by, ``dtp-sui``), else ``dtp.__version__`` (a source tree run without
    installing; pyproject.toml reads its version from there, so both are one)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__


class _VersionAction(argparse.Action):
    """``dtp --version``: the version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"dtp {package_version()}")
        parser.exit()


def _cmd_version(args: argparse.Namespace) -> int:
    import platform

    from dtp.eventloop import uvloop_installed
    from dtp.native import core as _core

    if args.json:
        data = {
            "version": package_version(),
            # what pip knows it by (pip show, pip uninstall), which is not the command's
            "distribution": DISTRIBUTION,
            "core_backend": _core.BACKEND,
            "python": platform.python_version(),
            # the loop dtp.aio.run and the daemon take by default ("auto")
            "event_loop": "uvloop" if uvloop_installed() else "asyncio",
        }
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"dtp {package_version()} (distribution {DISTRIBUTION}, core backend: {_core.BACKEND})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dtp.cli._common import add_json, duration

    parser = argparse.ArgumentParser(
        prog="dtp",
        description="DTP: encrypted, paid, TCP-like connections between Sui hosts.",
        # the graph's peers have a command of their own, which nothing here names
        epilog="The replicated graph's peers: python -m dtp.graph serve|gun --help "
        "(a graph over DTP sync; a Gun relay for gun.js apps). docs/graph.md.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the guided demo (no set-up needed)")
    demo.add_argument("--quick", action="store_true", help="smaller workloads")
    demo.add_argument(
        "--browser-wait",
        type=duration("s"),
        default=None,
        metavar="SECONDS",
        help="how long the browser step keeps its page up for you to open (default: until "
        "Enter at a terminal, else 5 s; 0: not at all)",
    )
    demo.add_argument(
        "--screenshots",
        metavar="DIR",
        default=None,
        help="save a screenshot of the browser step's page in DIR",
    )
    demo.set_defaults(func=_cmd_demo)

    version = sub.add_parser("version", help="print the version and core backend")
    add_json(version)
    version.set_defaults(func=_cmd_version)

    from dtp.cli._daemon import register as register_daemon
    from dtp.cli._lan import register as register_lan
    from dtp.cli._ledger import register as register_chain

    register_chain(sub)
    register_daemon(sub)
    register_lan(sub)
    return parser


def _early_stop_signals(argv: Sequence[str]) -> StopSignals | None:
    """For ``dtp daemon``: its stop signals caught before the parser is built (the
    parser's imports, ``dtp.cli._ledger``'s above all, took most of the first tenth of a
    second, in which a SIGTERM killed the daemon and a SIGINT printed a traceback).
    The command is the first argument that is no option (``-v``, the one option
    before it, takes no value)."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command != "daemon" or threading.current_thread() is not threading.main_thread():
        return None
    from dtp.daemon._signals import StopSignals  # (the standard library only)

    signals = StopSignals()
    signals.install()
    return signals


def main(argv: Sequence[str] | None = None) -> int:
    early = _early_stop_signals(sys.argv[1:] if argv is None else list(argv))
    from dtp.cli._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, print_error
    from dtp.errors import DaemonConfigError, DTPError, LedgerSpecError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except BaseException:  # (a usage error, --help: the daemon never ran)
        if early is not None:
            early.restore()
        raise
    if early is not None:
        if args.command == "daemon":
            args.stop_signals = early  # (dtp.cli._daemon._cmd_daemon takes them over)
        else:
            early.restore()
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal or pipe whose encoding lacks a character we print (the demo's ✓, a
        # service named "café" in `dtp status`, under LANG=en_US.ISO-8859-1 or
        # PYTHONIOENCODING=ascii) gets it escaped, as stderr does, not a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except DTPError as exc:
        # what a command did not catch itself: one line (with --json naming the typed
        # error), not a traceback (-vv logs the traceback too, for a bug report)
        logging.getLogger("dtp.cli").debug("the command failed", exc_info=exc)
        usage = isinstance(exc, DaemonConfigError | LedgerSpecError)
        status = EXIT_USAGE if usage else EXIT_FAILURE
        as_json = bool(getattr(args, "json", False))
        return print_error(exc, status, as_json=as_json, command=args.command)
    except BrokenPipeError:
        # the reader went away (`dtp status | head -1`): stop quietly, as other tools do;
        # stdout goes to devnull so the interpreter's final flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
