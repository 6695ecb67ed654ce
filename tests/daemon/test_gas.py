"""The daemon's gas watch (dtp/daemon/_gas.py): what its address holds, the states it
goes through (ok, low, out) each logged once, the typed error of running out, and how
``dtp status`` shows them. The balance comes from a function here; the daemon running
out of gas on the Sui node stand-in is in tests/daemon/test_on_sui.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dtp.daemon import _gas as gas_mod
from dtp.daemon._gas import GasWatch, insufficient_gas
from dtp.daemon._state import StatusBook
from dtp.daemon._status import format_table
from dtp.errors import InsufficientFunds, LedgerUnavailable, TunnelError

ADDRESS = "0x" + "ab" * 32
BUDGET = 1_000


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dtp.daemon._gas"]


def watch(tmp_path: Path, balances: list[int | Exception], budget: int = BUDGET) -> GasWatch:
    def read() -> int:
        value = balances.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    return GasWatch(ADDRESS, read, budget, StatusBook(tmp_path))


def test_each_state_is_logged_once_and_shown_in_the_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dtp.daemon._gas")
    balances: list[int | Exception] = [200_000, 90_000, 80_000, 900, 800, 50_000, 150_000]
    gas = watch(tmp_path, balances)
    assert gas.low == 100 * BUDGET  # the default: a hundred transactions' budgets
    states = [asyncio.run(gas.check(fresh=True)) for _ in range(7)]
    assert states == ["ok", "low", "low", "out", "out", "low", "ok"]
    assert records(caplog) == [
        ("WARNING", "gas is running low"),
        ("ERROR", "out of gas"),
        ("WARNING", "gas is running low"),
        ("INFO", "gas funded again"),
    ]
    out = next(r for r in caplog.records if r.getMessage() == "out of gas")
    # the typed error: InsufficientFunds named InsufficientGas, saying what goes on
    fields = out.__dict__["fields"]
    assert fields["error_type"] == "InsufficientFunds" and fields["name"] == "InsufficientGas"
    assert "what is open and paid for goes on" in fields["error"]
    shown = gas.book.to_json()["gas"]
    assert shown["balance"] == 150_000 and shown["state"] == "ok" and shown["budget"] == BUDGET
    assert shown["low_gas"] == 100 * BUDGET and shown["address"] == ADDRESS


def test_the_status_table_warns_of_low_and_missing_gas(tmp_path: Path) -> None:
    gas = watch(tmp_path, [50_000, 10])
    asyncio.run(gas.check(fresh=True))
    low = format_table({**gas.book.to_json(), "stopped": 1})
    assert f"gas:    50,000 MIST  LOW: below 100,000 MIST (low_gas); fund {ADDRESS}" in low
    asyncio.run(gas.check(fresh=True))
    out = format_table({**gas.book.to_json(), "stopped": 1})
    assert "gas:    10 MIST  OUT OF GAS: below one transaction's budget (1,000 MIST)" in out


def test_a_ledger_without_gas_shows_the_balance_and_never_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gas = watch(tmp_path, [5, 0], budget=0)
    assert [asyncio.run(gas.check(fresh=True)) for _ in range(2)] == ["ok", "ok"]
    assert records(caplog) == []
    shortfall = InsufficientFunds("no", name="InsufficientCoinBalance", module="sui")
    assert not asyncio.run(gas.explains(shortfall))
    table = format_table({**gas.book.to_json(), "stopped": 1})
    assert "balance: 0 MIST" in table and "gas" not in table.replace("gas:", "")


def test_a_failure_is_explained_by_running_out_only_when_the_gas_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction refused for the signer's coins is the daemon out of gas when what
    it holds is below one budget (read again at once, wrapped errors included); a
    deposit the coins cannot cover while the gas can is not, nor is any other error."""
    monkeypatch.setattr(gas_mod, "RECHECK", 0.0)
    gas = watch(tmp_path, [500_000, 500_000, 500, 500])
    asyncio.run(gas.check(fresh=True))
    shortfall = InsufficientFunds("coins", name="InsufficientCoinBalance", module="sui")
    wrapped = TunnelError("cannot connect")
    wrapped.__cause__ = shortfall
    assert not asyncio.run(gas.explains(LedgerUnavailable("away")))
    # an open whose deposit the coins cannot cover: read again, the gas is there
    assert not asyncio.run(gas.explains(wrapped)) and gas.state == "ok"
    assert asyncio.run(gas.explains(wrapped))  # (read again: 500)
    assert asyncio.run(gas.explains(shortfall)) and gas.out


def test_a_ledger_that_cannot_be_read_keeps_the_last_balance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dtp.daemon._gas")
    away = LedgerUnavailable("Sui node http://x is unreachable")
    gas = watch(tmp_path, [50_000, away, away, 200_000])
    states = [asyncio.run(gas.check(fresh=True)) for _ in range(3)]
    assert states == ["low", "low", "low"]
    shown = gas.book.to_json()["gas"]
    assert shown["balance"] == 50_000 and "unreachable" in shown["error"]
    table = format_table({**gas.book.to_json(), "stopped": 1})
    assert "as last read; the ledger cannot be read" in table
    assert [m for _, m in records(caplog)].count("cannot read the gas balance") == 1
    assert asyncio.run(gas.check(fresh=True)) == "ok"
    assert gas.book.to_json()["gas"]["error"] is None


def test_the_error_of_running_out_is_insufficient_funds() -> None:
    error = insufficient_gas(ADDRESS, 5, BUDGET)
    assert isinstance(error, InsufficientFunds) and error.name == "InsufficientGas"
    assert ADDRESS in str(error) and "1000 MIST" in str(error)


def test_being_funded_again_after_running_out_calls_back_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``on_funded`` callbacks run when a read finds the daemon, out of gas, able to pay
    again (to ``low`` or ``ok``): once per recovery, not at every read, and not for
    ``low`` to ``ok`` or a first read; a read that fails while out calls nothing. A
    callback that raises is logged, and the others and the watch go on."""
    away = LedgerUnavailable("away")
    gas = watch(tmp_path, [200_000, 500, away, 500, 50_000, 60_000, 200_000, 900, 300_000])
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    gas.on_funded(broken)
    gas.on_funded(lambda: calls.append(gas.state))
    states = [asyncio.run(gas.check(fresh=True)) for _ in range(9)]
    assert states == ["ok", "out", "out", "out", "low", "low", "ok", "out", "ok"]
    assert calls == ["low", "ok"]  # (out -> low, out -> ok)
    failed = [r for r in caplog.records if r.getMessage() == "gas funded: a follow-up failed"]
    assert len(failed) == 2 and "boom" in failed[0].__dict__["fields"]["error"]
