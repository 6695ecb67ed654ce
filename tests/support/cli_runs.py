"""``python -m dtp`` run as a user runs it, in a scratch home, and the environment of such a
child process (no passphrase or ledger of the caller's), for the tests of the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.paths import ROOT


def cli_env(place: Path) -> dict[str, str]:
    """This environment with ``place`` as the home and data home, no DTP_LEDGER or
    DTP_PASSPHRASE."""
    env = dict(os.environ, HOME=str(place), XDG_DATA_HOME=str(place / "data"))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc writes under a file-size limit
    for name in ("DTP_LEDGER", "DTP_PASSPHRASE"):
        env.pop(name, None)
    return env


def run_dtp(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dtp ARGV``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "dtp", *argv],
        cwd=cwd,
        env=env or cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """stderr without argparse's usage block."""
    return [line for line in stderr.splitlines() if not line.startswith(("usage:", " "))]


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child that imports the project (PYTHONPATH), no
    DTP_PASSPHRASE or DTP_LEDGER, and ``extra``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    env.pop("DTP_PASSPHRASE", None)
    env.pop("DTP_LEDGER", None)
    env.update(extra)
    return env


def chain_argv(argv: Sequence[str], ledger: Sequence[str], identity: Sequence[str]) -> list[str]:
    """``argv`` with those of the ledger options ``ledger`` and the identity options
    ``identity`` its command takes (docs/cli.md): ``keys`` takes no ledger, ``localnet``
    no identity (but ``faucet``, whose default address it is), ``deploy`` neither."""
    command = tuple(argv[:2])
    if command[:1] == ("deploy",):
        return list(argv)
    if command[:1] == ("keys",):
        return [*argv, *identity]
    if command[:1] == ("localnet",):
        return [*argv, *ledger, *(identity if command == ("localnet", "faucet") else ())]
    return [*argv, *ledger, *identity]
