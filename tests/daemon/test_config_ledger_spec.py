"""The daemon's ``ledger = ...`` is a ledger spec (docs/sui.md "Ledger specs",
docs/daemon.md): a file name relative to the config file as before, or a Sui network
with ``sui_package``; its mistakes are config errors in the file's words
(``file:line: daemon.ledger: ...``), found before the daemon creates or binds anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dtp.daemon._config import parse_config
from dtp.errors import DaemonConfigError, LedgerSpecError
from tests.support.daemon_procs import run_daemon

PACKAGE = "0x" + "ab" * 32
SVC = '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:8080"]\n'


def head(ledger: str, *extra: str) -> str:
    return "\n".join(["[daemon]", f'ledger = "{ledger}"', 'identity = "k.key"', *extra]) + "\n"


def error_of(text: str) -> str:
    with pytest.raises(DaemonConfigError) as info:
        parse_config(text, Path("etc/dtp.toml"))
    return str(info.value)


def test_a_file_name_is_relative_to_the_config_file() -> None:
    for spec in ("l.sqlite", "local:l.sqlite"):
        config = parse_config(head(spec) + SVC, Path("/etc/dtp/dtp.toml"))
        assert config.daemon.ledger.path == Path("/etc/dtp/l.sqlite")
        assert not config.daemon.ledger.is_sui and config.daemon.sui_package is None


def test_a_sui_network_with_its_package() -> None:
    config = parse_config(
        head("testnet@https://node.example:443", 'sui_package = "0xAB' + "ab" * 31 + '"') + SVC,
        Path("dtp.toml"),
    )
    ledger = config.daemon.ledger
    assert (ledger.network, ledger.node) == ("testnet", "https://node.example:443")
    assert config.daemon.sui_package == PACKAGE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            head("tesnet"),
            "etc/dtp.toml:2: daemon.ledger: 'tesnet' is no ledger spec (did you mean "
            "testnet?); write ./tesnet for a ledger file of that name.",
        ),
        (
            head("local:"),
            "etc/dtp.toml:2: daemon.ledger: local: names no file: write local:PATH, or local "
            "for the default file.",
        ),
        (
            head("http://node.example/x"),
            "etc/dtp.toml:2: daemon.ledger: 'http://node.example/x' has a path or query: a "
            "Sui node URL is http(s)://HOST[:PORT].",
        ),
        (
            head("testnet", 'sui_package = "0xzz"'),
            "etc/dtp.toml:4: daemon.sui_package: '0xzz' is not a valid package ID (0x followed "
            "by 1 to 64 hex digits).",
        ),
        (
            head("l.sqlite", f'sui_package = "{PACKAGE}"'),
            "etc/dtp.toml:4: daemon.sui_package: names a Sui package, but ledger names the "
            "ledger file etc/l.sqlite",
        ),
        (
            head("devnet", "faucet = 5"),
            "etc/dtp.toml:4: daemon.faucet: only the embedded ledger has a faucet, and ledger "
            "names Sui devnet at https://fullnode.devnet.sui.io:443: fund the daemon's address "
            "with `dtp fund` (the network's faucet) or `dtp transfer`, and remove faucet",
        ),
    ],
)
def test_mistakes_name_the_file_line_and_key(text: str, message: str) -> None:
    assert error_of(text + SVC) == message


def test_a_spec_error_is_a_ledger_spec_error_too() -> None:
    with pytest.raises(LedgerSpecError):
        parse_config(head("sui") + SVC, Path("dtp.toml"))


def test_a_missing_package_stops_the_daemon_before_anything_is_made(tmp_path: Path) -> None:
    config = tmp_path / "dtp.toml"
    config.write_text(head("testnet", 'state_dir = "state"') + SVC)
    done = run_daemon(config, XDG_DATA_HOME=str(tmp_path / "data"), DTP_SUI_PACKAGE="")
    records = tmp_path / "data" / "dtp" / "deployments.json"
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"dtp daemon: No dtp package is recorded for testnet ({config}:2: daemon.ledger; "
        f"records: {records}): run `dtp deploy --network testnet`, or set DTP_SUI_PACKAGE "
        "(--sui-package, sui_package in the daemon config).\n"
    )
    # no state directory, no identity generated for a ledger it cannot use
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtp.toml"]


def test_the_deploy_record_gives_the_daemon_its_package(tmp_path: Path) -> None:
    """With the record in place the daemon starts on the node it names: here one that
    cannot be reached, which ends the start with the ledger's one-line error (exit 1),
    not a traceback."""
    records = tmp_path / "data" / "dtp" / "deployments.json"
    records.parent.mkdir(parents=True)
    records.write_text(json.dumps({"localnet": {"package_id": PACKAGE, "digest": None}}))
    config = tmp_path / "dtp.toml"
    config.write_text(head("localnet@http://127.0.0.1:1", 'state_dir = "state"') + SVC)
    done = run_daemon(
        config,
        timeout=60,
        XDG_DATA_HOME=str(tmp_path / "data"),
        DTP_SUI_PACKAGE="",
        DTP_SUI_RETRIES="0",
        DTP_SUI_TIMEOUT="10",
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("dtp daemon: Sui node http://127.0.0.1:1 is unreachable")
    assert "Traceback" not in done.stderr


FORWARD = (
    '\n[[forward]]\nname = "f"\nlisten = "127.0.0.1:0"\ntarget = "dtp://0x' + "cd" * 32 + ':80"\n'
)


def test_the_timeouts_default_to_what_the_ledger_needs() -> None:
    """On Sui the admission's grace is longer (a full node may show an open late) and
    so is a forward's open timeout (the open is two transactions); both keys override."""
    local = parse_config(head("l.sqlite") + SVC + FORWARD, Path("dtp.toml"))
    assert (local.daemon.open_grace, local.forwards[0].open_timeout) == (2.0, 10.0)
    assert local.daemon.low_gas is None
    on_sui = parse_config(head("testnet", f'sui_package = "{PACKAGE}"') + SVC + FORWARD, Path("x"))
    assert (on_sui.daemon.open_grace, on_sui.forwards[0].open_timeout) == (3.0, 30.0)
    text = head("testnet", f'sui_package = "{PACKAGE}"', "open_grace = 5", "low_gas = 7")
    chosen = parse_config(text + SVC + FORWARD + "open_timeout = 60\n", Path("x"))
    assert (chosen.daemon.open_grace, chosen.forwards[0].open_timeout) == (5.0, 60.0)
    assert chosen.daemon.low_gas == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (head("l.sqlite", "open_grace = 0") + SVC, "etc/dtp.toml:4: daemon.open_grace: expected a"),
        (head("l.sqlite", "low_gas = -1") + SVC, "etc/dtp.toml:4: daemon.low_gas: expected an"),
        (
            head("l.sqlite") + FORWARD + "open_timeout = nan\n",
            "etc/dtp.toml:9: forward[0].open_timeout: expected a positive number",
        ),
    ],
)
def test_bad_timeouts_and_gas_thresholds_name_their_key(text: str, message: str) -> None:
    assert error_of(text).startswith(message), error_of(text)
