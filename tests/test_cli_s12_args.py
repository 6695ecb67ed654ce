"""Chain commands given an empty --ledger-path or --identity (``"$UNSET"`` in a
script): an error, not the default file acted on in their place."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dtp.chain.cli import register


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dtp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (("localnet", "faucet", "--to", "0x1", "--ledger-path", ""), "--ledger-path"),
        (("localnet", "advance-epoch", "--ledger-path", ""), "--ledger-path"),
        (("keys", "new", "--identity", ""), "--identity"),
        (("keys", "show", "--identity", ""), "--identity"),
    ],
)
def test_an_empty_path_option_is_an_error(
    data_home: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], option: str
) -> None:
    """The faucet minted into the default ledger, keys new wrote the default identity."""
    assert run(*argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"dtp: {option} is empty: give a file, or leave the option out."
    ]
    assert not data_home.exists()  # neither default file was created
