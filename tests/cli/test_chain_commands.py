"""The chain CLI (dtp.cli._ledger.register) against a temporary ledger and identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtp.cli._ledger import SUI_INSTALL_HINT
from dtp.errors import ChainError
from dtp.ledger.local import LocalLedger
from tests.cli.chain_cli import Cli, make_parser
from tests.support.daemon_procs import ENV, SUI


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    return Cli(tmp_path, capsys)


@pytest.fixture(params=["local", "sui"])
def chain_cli(request: pytest.FixtureRequest, cli: Cli) -> Cli:
    """``cli`` on each ledger: the embedded one, and a Sui node."""
    if request.param == "sui":
        cli.network = request.getfixturevalue("sui_network")
        cli.ledger_args = cli.network.args
    return cli


def test_keys(cli: Cli) -> None:
    created = cli.json("keys", "new")
    assert created["sui_address"].startswith("0x") and len(created["sui_address"]) == 66
    shown = cli.json("keys", "show")
    assert shown["sui_address"] == created["sui_address"]
    assert "sui address: 0x" in cli("keys", "show")
    err = cli("keys", "new", code=1)  # no silent overwrite
    assert "already exists; pass --force to replace it" in err and "overwrite=" not in err
    assert cli.json("keys", "new", "--force")["sui_address"] != created["sui_address"]


def test_keys_new_on_a_directory_says_so(cli: Cli) -> None:
    # not "already exists; pass --force": --force cannot replace a folder either
    cli.identity.mkdir()
    for force in ((), ("--force",)):
        err = cli("keys", "new", *force, code=1)
        assert (
            err
            == f"dtp: {cli.identity} is a directory: --identity names the identity file to write.\n"
        )
    assert cli.identity.is_dir() and not any(cli.identity.iterdir())


def test_a_file_named_under_a_file_is_refused_in_words(cli: Cli, tmp_path: Path) -> None:
    # the file in the way named, where the writes say "File exists: PARENT"
    blocker = tmp_path / "afile"
    blocker.write_text("")
    key, ledger = blocker / "key.json", blocker / "l.sqlite"
    cli.json("keys", "new")
    for argv, option, path in (
        (("keys", "new", "--identity", str(key)), "--identity", key),
        (
            ("localnet", "faucet", "--ledger-path", str(ledger), "--identity", str(cli.identity)),
            "--ledger-path",
            ledger,
        ),
    ):
        args = make_parser().parse_args(argv)
        assert args.func(args) == 1
        assert cli.capsys.readouterr().err == (
            f"dtp: {path} cannot be created: {blocker} is not a directory; check {option}.\n"
        )
    assert blocker.read_text() == ""


def test_localnet_commands(cli: Cli) -> None:
    cli.json("keys", "new")
    assert "No ledger at" in cli("localnet", "status", code=1)  # status creates nothing
    assert not cli.ledger.exists()
    assert cli.json("localnet", "faucet", "--amount", "500")["balance_mist"] == 500
    status = cli.json("localnet", "status")
    assert status["epoch"] == 0 and status["minted_mist"] == 500
    with LocalLedger(cli.ledger) as ledger:  # the package the file's receipts name
        assert status["package"] == ledger.package_id
    assert cli.json("localnet", "advance-epoch")["epoch"] == 1
    before = cli.json("localnet", "status")["clock_ms"]
    assert cli.json("localnet", "advance-clock", "60000")["clock_ms"] >= before + 60000
    host = cli.json("host", "create")["host"]
    assert cli.json("localnet", "status")["objects"] == {"Host": 1}
    assert cli.json("host", "show", host)["id"] == host


def test_host_and_service_commands(chain_cli: Cli) -> None:
    cli = chain_cli
    address = cli.json("keys", "new")["sui_address"]
    funds = 500 if cli.network is None else SUI  # (gas, on Sui)
    cli.fund(address, funds)

    host = cli.json("host", "create", "--endpoint", "tcp://127.0.0.1:7000")["host"]
    cli(
        "service",
        "add",
        host,
        "7",
        "--price-per-kib",
        "10",
        "--price-per-request",
        "5",
        "--min-deposit",
        "1000",
    )
    cli(
        "host",
        "set",
        host,
        "--firewall",
        "allow-listed",
        "--allow",
        address,
        "--max-connections-per-client",
        "2",
    )
    shown = cli.json("host", "show", host)
    assert shown["authority"] == address
    assert shown["endpoints"] == ["tcp://127.0.0.1:7000"]
    assert shown["firewall"]["mode"] == "allowlist"  # the daemon config's word
    assert shown["firewall"]["allow"] == [address]
    assert shown["firewall"]["max_connections_per_client"] == 2
    assert shown["services"]["7"]["sla"]["price_per_kib"] == 10
    assert f"id: {host}" in cli("host", "show", host)

    ledger = cli.open_ledger()
    gas = cli.gas_paid(address)
    held = ledger.balance(address)
    assert held == funds - gas if gas is not None else held < funds
    assert ledger.get_host(host).services[7].sla.min_deposit == 1000
    ledger.close()


def test_service_half_close_timeout_options(chain_cli: Cli) -> None:
    """``service add|update --half-close-timeout`` set a service's half-close timeout
    (docs/escrow.md §2); ``service update`` changes what it is given and keeps the rest
    as published; ``service show`` and ``host show`` read it back; a timeout out of the
    ledger's bounds is refused in its words, before any transaction."""
    cli = chain_cli
    address = cli.json("keys", "new")["sui_address"]
    funds = 500 if cli.network is None else SUI  # (gas, on Sui)
    cli.fund(address, funds)
    host = cli.json("host", "create")["host"]
    added = cli.json(
        "service", "add", host, "7", "--price-per-kib", "10", "--half-close-timeout", "2h"
    )
    assert added["sla"]["half_close_timeout_ms"] == 7_200_000
    cli("service", "add", host, "8")  # not given: the ledger's default, 10 minutes
    assert cli.json("service", "show", host, "8")["sla"]["half_close_timeout_ms"] == 600_000
    # an update of the price alone keeps the timeout (and the rest) as published
    updated = cli.json("service", "update", host, "7", "--price-per-kib", "20")
    assert updated["sla"] == {
        "price_per_kib": 20,
        "price_per_request": 0,
        "min_deposit": 0,
        "half_close_timeout_ms": 7_200_000,
    }
    # and of the timeout alone, the prices: 7 days, the longest, in milliseconds
    cli("service", "update", host, "7", "--half-close-timeout", "604800000")
    shown = cli.json("service", "show", host, "7")
    assert shown["kind"] == "raw" and shown["max_connections"] == 0
    assert shown["sla"]["price_per_kib"] == 20
    assert shown["sla"]["half_close_timeout_ms"] == 604_800_000
    assert cli.json("host", "show", host)["services"]["7"]["sla"]["half_close_timeout_ms"] == (
        604_800_000
    )
    assert "half_close_timeout_ms" in cli("service", "show", host, "7")  # (text output too)
    ledger = cli.open_ledger()
    service = ledger.get_service(host, 7)
    assert service is not None and service.sla.half_close_timeout_ms == 604_800_000
    gas = cli.gas_paid(address)
    ledger.close()
    # refused before any transaction: out of bounds, nothing to change, no such service
    for argv in (
        ("service", "update", host, "7", "--half-close-timeout", "9m"),
        ("service", "update", host, "7", "--half-close-timeout", "8d"),
        ("service", "add", host, "9", "--half-close-timeout", "599999"),
    ):
        err = cli(*argv, code=1)
        assert err.startswith("dtp: ") and "from 600000 (10 minutes) to 604800000" in err
    assert "Nothing to change" in cli("service", "update", host, "7", code=1)
    for argv in (("update", "--min-deposit", "1"), ("show",)):
        err = cli("service", argv[0], host, "9", *argv[1:], code=1)
        assert err.startswith("dtp: No service on this port: port 9 of host")
    missing = cli("service", "update", "0x" + "12" * 32, "7", "--min-deposit", "1", code=1)
    assert missing.startswith("dtp: No Host")
    ledger = cli.open_ledger()
    assert ledger.get_service(host, 9) is None
    assert cli.gas_paid(address) == gas  # (the refusals cost nothing)
    ledger.close()


def test_host_command_errors_are_one_line(chain_cli: Cli) -> None:
    cli = chain_cli
    address = cli.json("keys", "new")["sui_address"]
    cli.fund(address, SUI)
    assert "not a valid object ID" in cli("host", "show", "nope", code=1)
    assert "No Host" in cli("host", "show", "0x" + "12" * 32, code=1)
    assert "Nothing to change" in cli("host", "set", "0x" + "12" * 32, code=1)
    # a host that is not there, named as a Host, by the commands that change one
    missing = cli("service", "add", "0x" + "12" * 32, "7", code=1)
    assert missing.startswith("dtp: No Host") and missing.count("\n") == 1


def test_payment_model_commands(chain_cli: Cli) -> None:
    """``service subscription|sponsor|retention`` publish the payment models of
    docs/escrow.md §13-16 (``retention --replace`` and ``retire-retention`` take retention
    terms back); ``subscription buy|renew|show`` buy access by the epoch."""
    cli = chain_cli
    address = cli.json("keys", "new")["sui_address"]
    funds = 10_000 if cli.network is None else SUI  # (gas, on Sui)
    cli.fund(address, funds)
    host = cli.json("host", "create")["host"]
    cli("service", "add", host, "7", "--price-per-kib", "10", "--min-deposit", "1000")
    offer = cli.json("service", "subscription", host, "7", "--price-per-epoch", "100")["offer"]
    assert (offer["provider"], offer["price_per_epoch"], offer["period_epochs"]) == (
        address,
        100,
        1,
    )
    pool = cli.json(
        "service",
        "sponsor",
        host,
        "7",
        "--share-bps",
        "2500",
        "--max-pledge",
        "1000",
        "--fund",
        "500",
    )
    assert pool["pool"]["share_bps"] == 2500
    assert sum(lane["funds"] for lane in pool["lanes"]) == 500
    terms = cli.json(
        "service", "retention", host, "7", "--retention-ms", "60000",
        "--storage-price-per-byte", "2",
    )["terms"]  # fmt: skip
    assert terms["retention_ms"] == 60000 and terms["retired"] is False
    # replaced in one transaction: the old terms retired, new ones for the same port
    other = cli.json(
        "service", "retention", host, "7", "--retention-ms", "30s", "--replace", terms["id"],
    )  # fmt: skip
    assert other["replaced"] == terms["id"] and other["terms"]["retention_ms"] == 30_000
    assert cli.json("service", "retire-retention", other["terms"]["id"])["terms"]["retired"]
    ledger = cli.open_ledger()
    assert ledger.get_retention_terms(terms["id"]).retired
    assert ledger.get_retention_terms(other["terms"]["id"]).retired
    ledger.close()
    again = cli("service", "retire-retention", terms["id"], code=1)
    assert again.startswith("dtp: ") and "retired" in again and again.count("\n") == 1
    elsewhere = cli(
        "service", "retention", host, "8", "--retention-ms", "1000", "--replace", terms["id"],
        code=1,
    )  # fmt: skip
    assert "are for host" in elsewhere and "port 7, not" in elsewhere
    missing = cli("service", "retire-retention", "0x" + "12" * 32, code=1)
    assert missing.startswith("dtp: No RetentionTerms with ID")
    ledger = cli.open_ledger()
    before = ledger.epoch()  # (a real network's epoch may end meanwhile)
    sub = cli.json("subscription", "buy", offer["id"], "--epochs", "2")["subscription"]
    assert (sub["holder"], sub["funds"]) == (address, 200)
    assert before + 2 <= sub["expires_epoch"] <= ledger.epoch() + 2
    renewed = cli.json("subscription", "renew", sub["id"], "--epochs", "1")["subscription"]
    assert renewed["expires_epoch"] == sub["expires_epoch"] + 1
    assert cli.json("subscription", "show", sub["id"])["live"] is True
    refused = cli("subscription", "buy", offer["id"], "--epochs", "0", code=1)
    assert refused.startswith("dtp: Epochs must be a positive multiple of the offer's period")
    gas = cli.gas_paid(address)
    held = ledger.balance(address)
    assert held == funds - 500 - 300 - gas if gas is not None else held < funds - 800
    if isinstance(ledger, LocalLedger):
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    ledger.close()


def test_errors_are_one_line(cli: Cli) -> None:
    cli("keys", "new")
    cli("localnet", "faucet")  # creates the ledger (advance-epoch wants one)
    # a spec that names no ledger, and two ways of naming one, are usage errors
    assert "not both" in cli("localnet", "status", "--ledger", "local", code=2)
    args = make_parser().parse_args(["localnet", "status", "--ledger", "sui"])
    assert args.func(args) == 2
    err = cli.capsys.readouterr().err
    assert err.startswith("dtp: --ledger: sui alone names no node") and err.count("\n") == 1


def test_identity_missing(chain_cli: Cli) -> None:
    cli = chain_cli
    err = cli("host", "create", code=1)
    assert str(cli.identity) in err


def test_deploy_without_sui(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    err = cli("deploy", "--network", "localnet", code=1)
    assert err == f"dtp: {SUI_INSTALL_HINT}\n"
    assert err.count(". ") == 0 and "install" in err  # one sentence
    err = cli("deploy", "--network", "devnet", "--sui-bin", "/nonexistent/sui", code=1)
    assert err == f"dtp: {SUI_INSTALL_HINT}\n"
    # --json: the failure as one JSON object, as every command's
    err = cli("deploy", "--network", "localnet", "--json", code=1)
    assert json.loads(err) == {
        "error": "CommandError",
        "message": SUI_INSTALL_HINT,
        "exit_status": 1,
    }


def test_deploy_with_fake_sui(cli: Cli, tmp_path: Path) -> None:
    fake = tmp_path / "sui"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        '  "move build") echo built ;;\n'
        '  "client publish") echo \'{"digest": "D1", "objectChanges": '
        '[{"type": "published", "packageId": "0xabc"}, {"type": "created", '
        '"objectType": "0xabc::version::AdminCap", "objectId": "0xad"}, {"type": "created", '
        '"objectType": "0x2::package::UpgradeCap", "objectId": "0xbc"}]}\' ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    result = cli.json("deploy", "--network", "localnet", "--sui-bin", str(fake))
    assert result["package_id"] == "0xabc" and result["admin_cap"] == "0xad"
    records = json.loads(Path(result["recorded_in"]).read_text())
    # the AdminCap that migrates the objects after an upgrade is recorded with the package
    assert records["localnet"] == {"package_id": "0xabc", "digest": "D1", "admin_cap": "0xad"}
    err = cli("deploy", "--network", "testnet", "--sui-bin", str(fake), code=1)
    assert "sui client switch --env testnet" in err


def test_deploy_the_bundled_package_from_a_copy(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed dtp (no checkout beside it) deploys the Move package it carries, built
    in a temporary copy: sui writes build/ and Move.lock there, not into site-packages."""
    import dtp.cli._ledger as chain_cli

    bundled = tmp_path / "site-packages" / "dtp" / "move" / "dtp"
    shutil.copytree(chain_cli.CHECKOUT_PACKAGE, bundled)
    monkeypatch.setattr(chain_cli, "CHECKOUT_PACKAGE", tmp_path / "no-checkout")
    monkeypatch.setattr(chain_cli, "BUNDLED_PACKAGE", bundled)
    seen = tmp_path / "seen"
    fake = tmp_path / "sui"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        f'  "move build") test -f Move.toml -a -f sources/escrow.move || exit 1; pwd > {seen}; '
        "mkdir build; touch Move.lock; echo built ;;\n"
        '  "client publish") echo \'{"digest": "D2", "objectChanges": '
        '[{"type": "published", "packageId": "0xdef"}]}\' ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    result = cli.json("deploy", "--network", "localnet", "--sui-bin", str(fake))
    assert result["package_id"] == "0xdef"
    built_in = Path(seen.read_text().strip())
    assert built_in != bundled and built_in.name == "dtp"
    assert not built_in.exists()  # the temporary copy is gone
    assert not (bundled / "build").exists() and not (bundled / "Move.lock").exists()


def test_read_only_commands_need_an_existing_ledger(cli: Cli, tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "dir" / "x.sqlite"
    for argv in (
        ("localnet", "status"),
        ("host", "show", "0x" + "12" * 32),
        ("subscription", "show", "0x" + "12" * 32),
    ):
        args = make_parser().parse_args([*argv, "--ledger-path", str(typo)])
        assert args.func(args) == 1
        err = cli.capsys.readouterr().err
        assert (
            err == f"dtp: No ledger at {typo}: check --ledger-path, or create one with "
            "`dtp localnet faucet`.\n"
        )
    assert not (tmp_path / "typo").exists()


def test_a_file_that_is_not_a_ledger_is_a_one_line_error(tmp_path: Path) -> None:
    not_db = tmp_path / "notes.txt"
    not_db.write_text("not SQLite\n" * 100)
    for path, reason in (
        (not_db, "file is not a database"),
        (tmp_path, "it is a directory"),
        (not_db / "x.sqlite", "File exists"),
    ):
        with pytest.raises(ChainError) as info:
            LocalLedger(path)
        assert str(info.value).startswith(f"cannot open the ledger {path}: {reason}")
        assert info.value.name == "LedgerUnavailable"
        # status wants a file; faucet creates one (advance-epoch wants one too)
        command = ["status"] if path.exists() else ["faucet", "--to", "0x1"]
        done = subprocess.run(
            [sys.executable, "-m", "dtp", "localnet", *command, "--ledger-path", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr
        # (a path under a file is named so before the open: the test above)
        opened = f"cannot open the ledger {path}: " if path.exists() else f"{path} cannot be"
        assert done.stderr.startswith(f"dtp: {opened}")
        assert done.stderr.count("\n") == 1
