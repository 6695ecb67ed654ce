"""The ``dtp`` chain commands as a user runs them: a mistyped
--ledger-path makes no new ledger (``localnet advance-epoch|advance-clock``, and a
``faucet`` or ``host create`` that fails), a named passphrase variable that is unset
writes no unencrypted key, a missing host is named as one, and ``--ledger sui`` says
what it takes. Each test fails on the code before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.cli import main
from dtp.ledger._objects import MAX_ENDPOINTS, normalize_id
from tests.support.cli_runs import chain_argv

#: A host ID that names nothing on the test's ledger.
NO_HOST = "0x" + "ab" * 32


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary home: no default ledger, identity or passphrase from the machine."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name in ("DTP_PASSPHRASE", "DTP_LEDGER", "S36_UNSET", "S36_SET"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


def dtp(place: Path, *argv: str, ledger: str = "ledger.sqlite") -> int:
    """``dtp ARGV`` in-process, on a ledger and identity in ``place``."""
    return main(
        chain_argv(
            argv, ["--ledger-path", str(place / ledger)], ["--identity", str(place / "id.json")]
        )
    )


def funded(place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An identity and a ledger on which it has test SUI (no host on it)."""
    assert dtp(place, "keys", "new") == 0
    assert dtp(place, "localnet", "faucet") == 0
    capsys.readouterr()


# -- 1. no new ledger at a mistyped path --------------------------------------------


@pytest.mark.parametrize(
    ("command", "key"), [(["advance-epoch"], "epoch"), (["advance-clock", "5"], "clock_ms")]
)
def test_advancing_a_ledger_that_is_not_there_creates_none(
    place: Path, capsys: pytest.CaptureFixture[str], command: list[str], key: str
) -> None:
    """They created an empty ledger at a mistyped --ledger-path and advanced it (exit 0),
    where the other commands on an existing ledger refuse the path."""
    funded(place, capsys)  # the ledger meant, which they still advance
    typo = place / "ledgr.sqlite"
    code = main(["localnet", *command, "--ledger-path", str(typo)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == (
        f"dtp: No ledger at {typo}: check --ledger-path, or create one with "
        "`dtp localnet faucet`.\n"
    )
    assert not typo.exists()
    assert dtp(place, "localnet", *command, "--json") == 0
    assert key in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [
        ["localnet", "faucet", "--amount", "-5"],
        ["localnet", "faucet", "--to", ""],
        ["host", "create", *[f"--endpoint=10.0.0.1:{p}" for p in range(MAX_ENDPOINTS + 1)]],
    ],
    ids=["faucet-amount", "faucet-to", "host-create-endpoints"],
)
def test_a_creating_command_refused_makes_no_ledger(
    place: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Refused by their transaction, they left a new, empty ledger behind."""
    assert dtp(place, "keys", "new") == 0
    capsys.readouterr()
    assert dtp(place, *argv, ledger="new.sqlite") == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("dtp: ") and err.count("\n") == 1
    assert not (place / "new.sqlite").exists()


# -- 2. a named passphrase variable that is unset ---------------------------------------


@pytest.mark.parametrize("name", ["S36_UNSET", "DTP_PASSPHRASE"])
def test_keys_new_with_a_named_variable_unset_writes_nothing(
    place: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """`keys new --passphrase-env NAME` with $NAME unset wrote the secret key
    unencrypted, with nothing said (exit 0). Set, it encrypts; with no option and
    $DTP_PASSPHRASE unset, the identity is the documented unencrypted one."""
    identity = place / "id.json"
    argv = ["keys", "new", "--identity", str(identity), "--passphrase-env", name]
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith(f"dtp: --passphrase-env names ${name}, which is not set: ")
    assert err.count("\n") == 1
    assert not identity.exists()

    plain = place / "plain.json"
    assert main(["keys", "new", "--identity", str(plain)]) == 0
    assert json.loads(plain.read_text())["secret"]["encoding"] == "plain"
    monkeypatch.setenv(name, "correct horse")
    assert main(argv) == 0
    assert json.loads(identity.read_text())["secret"]["encoding"] != "plain"
    assert capsys.readouterr().err == ""


# -- 3. a host that is not there ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["service", "add", NO_HOST, "80"],
        ["service", "subscription", NO_HOST, "80", "--price-per-epoch", "1"],
        ["service", "sponsor", NO_HOST, "80", "--share-bps", "100", "--max-pledge", "1000"],
        ["service", "retention", NO_HOST, "80", "--retention-ms", "1000"],
        ["host", "set", NO_HOST, "--firewall", "allow-all"],
    ],
    ids=lambda argv: "-".join(argv[:2]),
)
def test_a_missing_host_is_named_as_a_host(
    place: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """They said "No object with ID ... exists on this ledger", where `host show` says
    which kind of object is missing."""
    funded(place, capsys)
    assert dtp(place, *argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"dtp: No Host with ID {normalize_id(NO_HOST)} exists on this ledger.\n"


# -- 4. --ledger sui --------------------------------------------------------------------


def test_ledger_sui_says_what_there_is_to_configure(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ledger sui`` (the old choice) names no node: it says which specs do, in one
    line, rather than opening (or creating) a LocalLedger file named ``sui``."""
    assert main(["host", "show", NO_HOST, "--ledger", "sui"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("dtp: --ledger: sui alone names no node")
    assert "NETWORK@URL" in err and "sui:URL" in err and "testnet" in err
    assert not (place / "sui").exists() and not Path("sui").exists()
