"""A scratch place for the commands that write the local network's records (the ``place``
fixture), ``dtp`` run there, a host made in it and a fake ``sui`` that publishes, for the
atomicity tests of those commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.cli import main
from tests.support.cli_runs import chain_argv


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary home for the ledger, the identity and the deployments record."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    yield tmp_path


def dtp(place: Path, *argv: str, ledger: Path | None = None) -> int:
    """``dtp ARGV`` in-process, on the place's ledger (or ``ledger``) and identity."""
    return main(
        chain_argv(
            argv,
            ["--ledger-path", str(ledger or place / "ledger.sqlite")],
            ["--identity", str(place / "id.json")],
        )
    )


def a_host(place: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert dtp(place, "keys", "new") == 0
    assert dtp(place, "localnet", "faucet") == 0
    capsys.readouterr()
    assert dtp(place, "host", "create", "--json") == 0
    host: str = json.loads(capsys.readouterr().out)["host"]
    return host


def fake_sui(place: Path, publish: str) -> Path:
    sui = place / "sui"
    sui.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        "  \"move build\") printf 'warning: caf\\351 \\377\\n' ;;\n"
        f'  "client publish") {publish} ;;\n'
        "esac\n"
    )
    sui.chmod(0o755)
    package = place / "pkg"
    package.mkdir()
    (package / "Move.toml").write_text("[package]\n")
    return sui
