"""The chain CLI when a command makes several transactions, or sui talks too much.

``dtp host set --authority X --firewall ...`` hands the host over last, after every
change its sender may still make; ``service sponsor --fund`` whose funding fails still
gives the pool's ID; ``dtp deploy`` finds the JSON of ``sui client publish --json``
after compiler warnings (Sui CLI <= 1.64 prints them on stdout), so a paid publish is
never lost; an argument that is not UTF-8 is a usage error, not a traceback. All run
against a real LocalLedger file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import LedgerUnavailable
from dtp.ledger.local import LocalLedger
from tests.cli.chain_cli import Cli, make_parser

NEW_AUTHORITY = "0x" + "00" * 31 + "aa"


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    c = Cli(tmp_path, capsys)
    c.json("keys", "new")
    c.json("localnet", "faucet")
    return c


def test_host_set_hands_the_host_over_after_the_other_changes(cli: Cli) -> None:
    host = cli.json("host", "create")["host"]
    shown = cli.json(
        "host", "set", host, "--authority", NEW_AUTHORITY, "--firewall", "allow-listed"
    )
    assert shown["changed"] == ["firewall mode", "authority"]
    with LocalLedger(cli.ledger) as ledger:
        h = ledger.get_host(host)
        assert h.authority == NEW_AUTHORITY
        assert int(h.firewall.mode) == 1  # allow-listed: applied before the hand-over


def test_host_set_says_what_was_changed_before_a_step_failed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = cli.json("host", "create")["host"]

    # the ledger fails the limits' transaction, after the firewall change (a u64 too big
    # did this until the CLI checked the limits before the first transaction)
    def unavailable(*_args: object) -> None:
        raise LedgerUnavailable("the ledger went away")

    monkeypatch.setattr(LocalLedger, "set_client_limits", unavailable)
    argv = ["--firewall", "allow-listed", "--max-bytes-per-sec", "5"]
    code, out, err = cli.run("host", "set", host, *argv, "--authority", NEW_AUTHORITY)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1  # one line: what happened, and what did not
    assert err.startswith(f"dtp: Host {host}: changed firewall mode; then client limits failed")
    assert "(authority not tried)" in err and "the ledger went away" in err  # its own error
    with LocalLedger(cli.ledger) as ledger:
        h = ledger.get_host(host)
        assert int(h.firewall.mode) == 1 and h.authority != NEW_AUTHORITY


def test_host_set_checks_every_address_before_changing_anything(cli: Cli) -> None:
    host = cli.json("host", "create")["host"]
    for bad in (["--deny", "nonsense"], ["--authority", "0xzz"]):
        code, _, err = cli.run("host", "set", host, "--firewall", "allow-listed", *bad)
        assert code == 1 and err.startswith("dtp: ") and "changed" not in err
    with LocalLedger(cli.ledger) as ledger:
        assert int(ledger.get_host(host).firewall.mode) == 0


def test_host_set_whose_first_step_fails_reports_only_the_error(cli: Cli) -> None:
    host = cli.json("host", "create")["host"]
    code, _, err = cli.run("host", "set", host, "--authority", "")
    assert code == 1 and "changed" not in err and err.startswith("dtp: ")


def test_sponsor_fund_failure_names_the_created_pool(cli: Cli) -> None:
    host = cli.json("host", "create")["host"]
    cli.json("service", "add", host, "7")
    code, out, err = cli.run(
        "service",
        "sponsor",
        host,
        "7",
        "--share-bps",
        "100",
        "--max-pledge",
        "1000",
        "--fund",
        str(10**17),
    )
    assert code == 1 and out == ""
    with LocalLedger(cli.ledger) as ledger:
        (pool,) = [ref.object_id for ref in ledger.objects("SponsorPool")]
        assert all(lane.funds == 0 for lane in ledger.get_sponsor_lanes(pool))
    assert err.startswith(f"dtp: Created the sponsor pool {pool}, but funding it failed")
    assert "MIST" in err  # the funding error itself follows


def test_sponsor_fund_that_works_still_shows_the_funded_pool(cli: Cli) -> None:
    host = cli.json("host", "create")["host"]
    cli.json("service", "add", host, "7")
    shown = cli.json(
        "service",
        "sponsor",
        host,
        "7",
        "--share-bps",
        "100",
        "--max-pledge",
        "1000",
        "--fund",
        "500",
    )
    # spread over the pool's lanes (8 by default)
    assert len(shown["pool"]["lanes"]) == len(shown["lanes"]) == 8
    assert [lane["funds"] for lane in shown["lanes"]] == [63, 63, 63, 63, 62, 62, 62, 62]


def test_text_that_is_not_utf8_is_one_line(cli: Cli) -> None:
    host = cli.json("host", "create")["host"]
    lone = "caf\udce9"  # argv b"caf\xe9" as Python keeps it
    code, _, err = cli.run("service", "add", host, "9", "--kind", lone)
    assert (code, err) == (1, "dtp: kind is not valid UTF-8.\n")
    code, _, err = cli.run("host", "create", "--endpoint", "h\udce9st:80")
    assert (code, err) == (1, "dtp: endpoint is not valid UTF-8.\n")


# -- deploy ---------------------------------------------------------------------------

PACKAGE_ID = "0x" + "5eed" * 16
#: What a Sui CLI <= 1.64 prints on stdout for `client publish --json` (MystenLabs/sui#24965).
NOISY = f"""INCLUDING DEPENDENCY Sui
BUILDING dtp
warning[Lint W01001]: non-composable transfer to sender
    ┌─ ./sources/tickets.move:225:5
    │
216 │ public fun refund(sale: &mut TicketSale, clock: &Clock, ctx: &mut TxContext): u64 {{
{{ this line is no JSON
{{
  "digest": "9oEjS2QfWcJ9sN1Yp3Yd7wq3wKQvV4nK1mZcT2a8bXyZ",
  "objectChanges": [
    {{"type": "mutated", "objectId": "0x1", "digest": "y"}},
    {{"type": "published", "packageId": "{PACKAGE_ID}", "version": "1", "digest": "x"}}
  ]
}}
"""


def deploy(place: Path, publish_output: str) -> int:
    """`dtp deploy` with a stand-in `sui` that prints ``publish_output`` on publish."""
    (place / "publish.out").write_text(publish_output)
    sui = place / "sui"
    sui.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        '  "move build") echo built ;;\n'
        f'  "client publish") cat "{place / "publish.out"}" ;;\n'
        "esac\n"
    )
    sui.chmod(0o755)
    package = place / "pkg"
    package.mkdir(exist_ok=True)
    (package / "Move.toml").write_text('[package]\nname = "dtp"\n')
    parser = make_parser()
    args = parser.parse_args(
        ["deploy", "--network", "localnet", "--sui-bin", str(sui), "--package-path", str(package)]
    )
    return int(args.func(args))


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path


def recorded(place: Path) -> Any:
    return json.loads((place / "data" / "dtp" / "deployments.json").read_text())


@pytest.mark.parametrize("tail", ["", "trailing words\n"])
def test_deploy_reads_the_json_after_compiler_diagnostics(
    place: Path, capsys: pytest.CaptureFixture[str], tail: str
) -> None:
    assert deploy(place, NOISY + tail) == 0
    assert recorded(place)["localnet"] == {
        "package_id": PACKAGE_ID,
        "digest": "9oEjS2QfWcJ9sN1Yp3Yd7wq3wKQvV4nK1mZcT2a8bXyZ",
    }
    assert f"package id: {PACKAGE_ID}" in capsys.readouterr().out


def test_deploy_that_cannot_read_the_json_names_the_package_it_finds(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = NOISY.rsplit("}", 1)[0]  # the JSON cut short
    assert deploy(place, broken) == 1
    err = capsys.readouterr().err
    assert err.startswith("dtp: Could not read the JSON output of `sui client publish`")
    assert PACKAGE_ID in err


def test_deploy_that_finds_no_package_shows_what_sui_printed(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(place, "something else entirely { not json\n") == 1
    err = capsys.readouterr().err
    assert err == (
        "something else entirely { not json\n"
        "dtp: Could not read the JSON output of `sui client publish` (printed above).\n"
    )
