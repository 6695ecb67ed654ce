"""The chain commands' refusals: a missing host is named as one
without hiding what the command said before (a port, a price, a missing identity file),
``host create`` refused for its Noise key makes no ledger, and ``dtp daemon
--passphrase-env NAME`` with $NAME unset writes no unencrypted identity on its first
start, as ``dtp keys new`` refuses it. Each test fails on the code before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.cli import main
from dtp.identity.keys import HostIdentity
from tests.support.cli_runs import chain_argv
from tests.support.paths import ROOT

#: A host ID that names nothing on the test's ledger.
NO_HOST = "0x" + "ab" * 32


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary home: no default ledger, identity or passphrase from the machine."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name in ("DTP_PASSPHRASE", "DTP_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


def dtp(place: Path, *argv: str, identity: str = "id.json") -> int:
    """``dtp ARGV`` in-process, on a ledger and identity in ``place``."""
    return main(
        chain_argv(
            argv,
            ["--ledger-path", str(place / "ledger.sqlite")],
            ["--identity", str(place / identity)],
        )
    )


# -- 1. which error wins over a missing host ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "identity", "said"),
    [
        (["service", "add", NO_HOST, "70000"], "id.json", "A port is a u16 (0..65535), got 70000."),
        (
            ["service", "add", NO_HOST, "80", "--max-connections", "-1"],
            "id.json",
            "max_connections must be an integer from 0 to 2**64-1, got -1.",
        ),
        (
            ["service", "subscription", NO_HOST, "80", "--price-per-epoch", "-1"],
            "id.json",
            "price_per_epoch must be an integer from 0 to 2**64-1, got -1.",
        ),
        (
            ["service", "retention", NO_HOST, "80", "--retention-ms", "-1"],
            "id.json",
            "retention_ms must be an integer from 0 to 2**64-1, got -1.",
        ),
        (
            ["service", "subscription", NO_HOST, "80", "--price-per-epoch", "1"],
            "nobody.json",
            "no identity file at {place}/nobody.json",
        ),
        (
            ["service", "retention", NO_HOST, "80", "--retention-ms", "1000"],
            "nobody.json",
            "no identity file at {place}/nobody.json",
        ),
    ],
    ids=["add-port", "add-max-connections", "sub-price", "ret-ms", "sub-identity", "ret-identity"],
)
def test_a_missing_host_does_not_hide_what_was_said_first(
    place: Path, capsys: pytest.CaptureFixture[str], argv: list[str], identity: str, said: str
) -> None:
    """The host was looked up before the transaction (and, for subscription and
    retention, before the identity was read): a port or price out of range, or a
    missing identity file, was then reported as "No Host with ID ...", where the
    command said what it says with the host there. Alone, the host is still named."""
    assert dtp(place, "keys", "new") == 0
    assert dtp(place, "localnet", "faucet") == 0
    capsys.readouterr()
    assert dtp(place, *argv, identity=identity) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"dtp: {said.format(place=place)}\n")
    # the same command with only the host wrong: the host, by its kind
    fixed = [a if a not in ("70000", "-1") else "1" for a in argv]
    assert dtp(place, *fixed) == 1
    assert capsys.readouterr().err == f"dtp: No Host with ID {NO_HOST} exists on this ledger.\n"


# -- 2. host create refused for its Noise key --------------------------------------------


def test_host_create_with_a_low_order_noise_key_makes_no_ledger(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by the ledger's host::create, it left a new, empty ledger at the path;
    it is refused before the ledger is opened, in the ledger's words."""
    assert dtp(place, "keys", "new") == 0
    capsys.readouterr()
    zero = "00" * 32
    assert dtp(place, "host", "create", "--noise-key", zero) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "dtp: Noise static key must be 32 bytes and not a low-order point: "
        f"{zero} is a low-order X25519 point, with which no handshake can succeed\n"
    )
    assert not (place / "ledger.sqlite").exists()
    # on a ledger that is there, the same words (the ledger's own)
    assert dtp(place, "localnet", "faucet") == 0
    capsys.readouterr()
    assert dtp(place, "host", "create", "--noise-key", zero) == 1
    assert capsys.readouterr().err == err


# -- 3. dtp daemon --passphrase-env NAME, $NAME unset -------------------------------------


def daemon(place: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``dtp daemon --config dtp.toml ARGV`` in ``place``, with no DTP_ variable but
    ``env``. Its ledger is a directory: a start that gets past the identity fails there
    (exit 1), so no test waits for a daemon to stop."""
    (place / "dtp.toml").write_text(
        '[daemon]\nledger = "ledgerdir"\nidentity = "id.json"\nstate_dir = "state"\n'
        '[[service]]\nname = "echo"\nport = 7\nbackends = ["127.0.0.1:9"]\n',
        encoding="utf-8",
    )
    (place / "ledgerdir").mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DTP_", "S36_"))}
    path = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "dtp", "daemon", "--config", "dtp.toml", *argv],
        cwd=place,
        env={**base, "HOME": str(place), "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def unset_error(name: str) -> str:
    return (
        f"dtp daemon: --passphrase-env names ${name}, which is not set: set it to the new "
        "identity's passphrase, or leave the option out (with $DTP_PASSPHRASE unset) for "
        "an unencrypted identity.\n"
    )


def test_daemon_with_a_named_variable_unset_generates_no_identity(tmp_path: Path) -> None:
    """Its first start generated the identity and wrote the secret key unencrypted, with
    nothing said. With the option left out and $DTP_PASSPHRASE unset, the identity is
    the documented unencrypted one; once it is there, it is read as before."""
    identity = tmp_path / "id.json"
    done = daemon(tmp_path, "--passphrase-env", "S36_UNSET")
    assert (done.returncode, done.stderr) == (2, unset_error("S36_UNSET"))
    assert not identity.exists()
    assert not (tmp_path / "state").exists()  # nothing was started

    done = daemon(tmp_path)
    assert done.returncode == 1 and "cannot open the ledger" in done.stderr, done.stderr
    assert json.loads(identity.read_text())["secret"]["encoding"] == "plain"
    written = identity.read_bytes()
    # an unencrypted identity needs no passphrase: the variable is not read for it
    done = daemon(tmp_path, "--passphrase-env", "S36_UNSET")
    assert done.returncode == 1 and "cannot open the ledger" in done.stderr, done.stderr
    assert identity.read_bytes() == written


def test_daemon_with_the_default_variable_named_unset_generates_none(tmp_path: Path) -> None:
    """Named on the command line, $DTP_PASSPHRASE too must be set (as for ``keys
    new``); set, the new identity is encrypted with it."""
    identity = tmp_path / "id.json"
    done = daemon(tmp_path, "--passphrase-env", "DTP_PASSPHRASE")
    assert (done.returncode, done.stderr) == (2, unset_error("DTP_PASSPHRASE"))
    assert not identity.exists()

    done = daemon(tmp_path, "--passphrase-env", "S36_SET", S36_SET="correct horse")
    assert done.returncode == 1 and "cannot open the ledger" in done.stderr, done.stderr
    assert json.loads(identity.read_text())["secret"]["encoding"] != "plain"
    HostIdentity.load(identity, "correct horse")
