"""``dtp keys show`` shows the DTP identity file, whatever ``$DTP_LEDGER`` names: on a
Sui ledger with no identity file, where the other commands sign with the Sui key
(``$DTP_SUI_KEY`` here), it is an error naming the missing file, not that key's
address printed under the file's path. Offline: a Sui ledger spec is parsed, never
reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.cli import main
from dtp.identity.keys import HostIdentity

SUI = "sui:http://127.0.0.1:1"


def test_keys_show_on_a_sui_ledger_without_an_identity_file_names_the_file(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sui_key = HostIdentity.generate()
    monkeypatch.setenv("DTP_LEDGER", SUI)
    monkeypatch.setenv("DTP_SUI_KEY", sui_key.to_sui_bech32())
    path = home / "data" / "dtp" / "identity.json"
    assert main(["keys", "show"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"dtp: no identity file at {path}: create one with `dtp keys new`")
    assert sui_key.sui_address not in err
    assert not path.exists()


def test_keys_show_on_a_sui_ledger_shows_the_identity_file(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sui_key = HostIdentity.generate()
    monkeypatch.setenv("DTP_LEDGER", SUI)
    monkeypatch.setenv("DTP_SUI_KEY", sui_key.to_sui_bech32())
    path = home / "id.json"
    identity = HostIdentity.generate()
    identity.save(path)
    assert main(["keys", "show", "--identity", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"identity: {path}\n" in out
    assert f"sui address: {identity.sui_address}\n" in out


def test_keys_show_on_a_local_ledger_without_an_identity_file_says_nothing_of_sui(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    assert main(["keys", "show"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dtp: no identity file at ") and "Sui" not in err
