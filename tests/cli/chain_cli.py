"""The ledger commands of ``dtp`` run in this process (Cli: a parser, a ledger file and the
output read back), for the command tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from dtp.cli._ledger import register
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from tests.support.cli_runs import chain_argv
from tests.support.sui_network import SuiNetwork


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtp")
    register(parser.add_subparsers(dest="command"))
    return parser


class Cli:
    """The chain commands run in this process on a temporary identity and a ledger: a
    LocalLedger file (``--ledger-path``), or with ``network`` a Sui node
    (tests/support/sui_network.py: ``--ledger localnet@URL --sui-package 0x…``)."""

    def __init__(
        self, tmp: Path, capsys: pytest.CaptureFixture[str], network: SuiNetwork | None = None
    ) -> None:
        self.ledger = tmp / "ledger.sqlite"
        self.identity = tmp / "id.json"
        self.capsys = capsys
        self.network = network
        self.ledger_args = (
            network.args if network is not None else ["--ledger-path", str(self.ledger)]
        )

    def _argv(self, argv: tuple[str, ...]) -> list[str]:
        return chain_argv(argv, self.ledger_args, ["--identity", str(self.identity)])

    def __call__(self, *argv: str, code: int = 0) -> str:
        args = make_parser().parse_args(self._argv(argv))
        assert args.func(args) == code
        out, err = self.capsys.readouterr()
        return out if code == 0 else err

    def json(self, *argv: str) -> Any:
        return json.loads(self(*argv, "--json"))

    def run(self, *argv: str) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of a command, whatever its code."""
        args = make_parser().parse_args(self._argv(argv))
        code = int(args.func(args))
        out, err = self.capsys.readouterr()
        return code, out, err

    def fund(self, address: str, mist: int) -> None:
        """Give ``address`` ``mist``: ``dtp localnet faucet``, or the Sui node's funding."""
        if self.network is None:
            self.json("localnet", "faucet", "--to", address, "--amount", str(mist))
        else:
            self.network.fund(address, mist)

    def open_ledger(self) -> Ledger:
        """The same ledger, to read what the commands did."""
        if self.network is None:
            return LocalLedger(self.ledger)
        return self.network.ledger()

    def gas_paid(self, address: str) -> int | None:
        """Gas ``address`` paid: 0 on the embedded ledger, the stand-in's count on Sui,
        None on a real node (not counted there)."""
        return 0 if self.network is None else self.network.gas_paid(address)
