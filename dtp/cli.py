"""The ``dtp`` command."""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
from collections.abc import Sequence

from dtp import __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from dtp.demo import run_demo

    return run_demo(quick=args.quick)


def _cmd_version(args: argparse.Namespace) -> int:
    from dtp import _core

    print(f"dtp {__version__} (core backend: {_core.BACKEND})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtp",
        description="DTP: encrypted, paid, TCP-like connections between Sui hosts.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the guided demo (no set-up needed)")
    demo.add_argument("--quick", action="store_true", help="smaller workloads")
    demo.set_defaults(func=_cmd_demo)

    version = sub.add_parser("version", help="print the version and core backend")
    version.set_defaults(func=_cmd_version)

    from dtp.chain.cli import register as register_chain
    from dtp.daemon.cli import register as register_daemon

    register_chain(sub)
    register_daemon(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`dtp status | head -1`): stop quietly, as other tools do;
        # stdout goes to devnull so the interpreter's final flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
