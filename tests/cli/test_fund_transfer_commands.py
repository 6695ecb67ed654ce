"""``dtp fund`` and ``dtp transfer`` end to end, each run as a real ``python -m dtp``
process: on a LocalLedger file (the embedded faucet) and on Sui through the node
stand-in (its HTTP faucet, as ``sui start --with-faucet`` serves one; the transfer a
real Sui transaction the stand-in checks and executes). Bad addresses, amounts and
balances are refused in one line, and nothing moves."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn
from tests.support.daemon_procs import ENV, ROOT

SUI = 10**9


@dataclass
class Place:
    """Two identity files (``me``, ``other``) and a ledger, with the ``dtp`` command."""

    tmp: Path
    ledger: Ledger
    args: list[str]
    faucet: str | None  # the Sui faucet's URL (None: the embedded ledger)
    me: HostIdentity = field(default_factory=HostIdentity.generate)
    other: HostIdentity = field(default_factory=HostIdentity.generate)

    def __post_init__(self) -> None:
        self.me.save(self.tmp / "me.json")
        self.other.save(self.tmp / "other.json")
        self.env = {
            **{k: v for k, v in ENV.items() if not k.startswith(("DTP_LEDGER", "DTP_SUI_"))},
            "XDG_DATA_HOME": str(self.tmp / "data"),
            "SUI_CONFIG_DIR": str(self.tmp / "no-sui-config"),
        }

    def run(self, *argv: str, who: str = "me", env: dict[str, str] | None = None) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "dtp", *argv, *self.args, "--identity", str(self.tmp / who)]
            if who
            else [sys.executable, "-m", "dtp", *argv, *self.args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done

    def json(self, *argv: str, who: str = "me.json", **kw: Any) -> Any:
        done = self.run(*argv, "--json", who=who, **kw)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def fails(self, *argv: str, code: int, who: str = "me.json") -> dict[str, Any]:
        """A failing command's ``--json`` error (nothing on stdout)."""
        done = self.run(*argv, "--json", who=who)
        assert (done.returncode, done.stdout) == (code, ""), done.stderr
        error: dict[str, Any] = json.loads(done.stderr)
        assert error["exit_status"] == code
        return error

    def fund_args(self) -> list[str]:
        return [] if self.faucet is None else ["--faucet", self.faucet]


@pytest.fixture(params=["local", "sui"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "local":
        path = tmp_path / "ledger.sqlite"
        local = LocalLedger(path)
        yield Place(tmp_path, local, ["--ledger", f"local:{path}"], None)
        local.close()
        return
    with SuiNodeStandIn(clock_ms=0, faucet_port=0) as node:
        ledger = SuiLedger(SuiConfig(node.url, node.package_id))
        args = ["--ledger", f"localnet@{node.url}", "--sui-package", node.package_id]
        yield Place(tmp_path, ledger, args, node.faucet_url)
        ledger.close()
        node.state.check()


def test_fund_then_transfer_to_another_key(place: Place) -> None:
    funded = place.json("fund", *place.fund_args(), "--amount", "3sui")
    assert funded["address"] == place.me.sui_address
    assert funded["received_mist"] == 3 * SUI
    assert place.ledger.balance(place.me.sui_address) == 3 * SUI
    if place.faucet is None:
        assert funded["faucet"] == "embedded" and funded["balance_mist"] == 3 * SUI
    else:
        assert funded["faucet"] == place.faucet and funded["coin"].startswith("0x")
    # another address, named
    other = place.json("fund", place.other.sui_address, *place.fund_args(), "--amount", "7")
    assert other["address"] == place.other.sui_address
    assert place.ledger.balance(place.other.sui_address) == 7

    sent = place.json("transfer", place.other.sui_address, "--amount", "1.25sui")
    assert (sent["from"], sent["to"], sent["sent_mist"]) == (
        place.me.sui_address,
        place.other.sui_address,
        1_250_000_000,
    )
    assert place.ledger.balance(place.other.sui_address) == 1_250_000_007
    left = place.ledger.balance(place.me.sui_address)
    assert sent["balance_mist"] == left
    # on Sui the sender paid the gas besides
    assert left == 1_750_000_000 if place.faucet is None else left < 1_750_000_000

    # the other key sends some back (it paid its own gas from what it got)
    back = place.json("transfer", place.me.sui_address, "--amount", "1sui", who="other.json")
    assert back["to"] == place.me.sui_address
    assert place.ledger.balance(place.me.sui_address) == left + SUI


def test_a_transfer_beyond_the_balance_is_refused_and_moves_nothing(place: Place) -> None:
    place.json("fund", *place.fund_args(), "--amount", "1sui")
    error = place.fails("transfer", place.other.sui_address, "--amount", "2sui", code=1)
    assert error["error"] == "InsufficientFunds"
    assert place.me.sui_address in error["message"]
    assert place.ledger.balance(place.me.sui_address) == SUI
    assert place.ledger.balance(place.other.sui_address) == 0
    # without --json: one line
    done = place.run("transfer", place.other.sui_address, "--amount", "2sui", who="me.json")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("dtp: Address ")


def test_bad_addresses_and_amounts_are_usage_errors(place: Place) -> None:
    for argv in (
        ["transfer", "0xnothex", "--amount", "5"],
        ["transfer", "--amount", "5"],
        ["transfer", place.other.sui_address, "--amount", "five"],
        ["transfer", place.other.sui_address],
        ["fund", "0x" + "1" * 65, *place.fund_args()],
    ):
        done = place.run(*argv, who="me.json")
        assert (done.returncode, done.stdout) == (2, ""), argv
        assert "error: argument" in done.stderr or "required" in done.stderr, done.stderr
    for argv in (
        ["transfer", place.other.sui_address, "--amount", "0"],
        ["transfer", place.other.sui_address, "--amount", str(2**64)],
        ["fund", *place.fund_args(), "--amount", "0"],
    ):
        error = place.fails(*argv, code=2)
        assert error["error"] == "UsageError" and "--amount" in error["message"]
    assert place.ledger.balance(place.me.sui_address) == 0


def test_fund_names_the_faucet_it_needs(tmp_path: Path) -> None:
    """Sui specs without a faucet to ask, a faucet that is no URL or out of reach, and
    a faucet where the ledger mints its own (no node is reached by the refusals)."""
    local = LocalLedger(tmp_path / "l.sqlite")
    try:
        place = Place(tmp_path, local, ["--ledger", f"local:{tmp_path / 'l.sqlite'}"], None)
        error = place.fails("fund", "--faucet", "http://127.0.0.1:1", code=2)
        assert "--faucet names a Sui faucet" in error["message"]
        for args, why in [
            (["--ledger", "mainnet", "--sui-package", "0x2"], "mainnet has no faucet"),
            (["--ledger", "testnet", "--sui-package", "0x2"], "faucet.sui.io"),
            (["--ledger", "sui:http://127.0.0.1:1", "--sui-package", "0x2"], "--faucet URL"),
        ]:
            place.args = args
            error = place.fails("fund", code=2)
            assert error["error"] == "LedgerSpecError" and why in error["message"], error
        place.args = ["--ledger", "sui:http://127.0.0.1:1", "--sui-package", "0x2"]
        error = place.fails("fund", "--faucet", "ftp://x", code=2)
        assert "http:// or https://" in error["message"]
        # a faucet that cannot be reached: one line naming it, exit 1
        error = place.fails("fund", "--faucet", "http://127.0.0.1:1", code=1)
        assert error["error"] == "FaucetError" and "127.0.0.1:1/v2/gas" in error["message"]
    finally:
        local.close()


def test_the_faucet_url_comes_from_the_environment_too(tmp_path: Path) -> None:
    with SuiNodeStandIn(clock_ms=0, faucet_port=0) as node:
        ledger = SuiLedger(SuiConfig(node.url, node.package_id))
        args = ["--ledger", f"localnet@{node.url}", "--sui-package", node.package_id]
        place = Place(tmp_path, ledger, args, node.faucet_url)
        assert node.faucet_url is not None
        got = place.json("fund", "--amount", "5", env={"DTP_SUI_FAUCET": node.faucet_url})
        assert got["faucet"] == node.faucet_url
        assert ledger.balance(place.me.sui_address) == 5
        # an amount no faucet may send: refused before the faucet is asked
        error = place.fails("fund", "--faucet", node.faucet_url, "--amount", str(2**64), code=2)
        assert "--amount" in error["message"]
        ledger.close()
