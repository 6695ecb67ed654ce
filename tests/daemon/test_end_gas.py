"""The services daemon's ends of connections weighed against their gas (docs/daemon.md,
"On Sui"; docs/escrow.md §7.1), on the Sui node stand-in -- where a connection's end
costs the provider 3.3 M MIST of gas -- and on a LocalLedger file, which charges none:

- a cheap connection's end is left to its client: the provider sends no transaction,
  counts the end and the fee given up in its status, and the client's own settlement
  after the half-close timeout returns its whole deposit;
- a profitable one is claimed and settled in one transaction;
- at start (and at a reload that changes prices) a service whose prices cannot cover a
  typical connection's end is warned about, with the numbers;
- ``dtp status`` shows the gas the daemon has spent, by kind, over its runs.

In-process daemons (a provider, and a forwarder as its client), real DTP connections on
127.0.0.1, a real echo backend, real SQLite stores."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import dtp.payments._ends as ends_mod
import dtp.payments._live_claims as live_claims_mod
from dtp.daemon import _config as config_mod
from dtp.daemon._config import load_config
from dtp.daemon._runner import Daemon
from dtp.daemon._state import read_status
from dtp.daemon._status import format_table
from dtp.errors import DaemonConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger._connections import find_connections
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.payments._refunds import collect_refund
from dtp.testing.sui_node import SuiNodeStandIn
from tests.daemon.inproc import BOUND, echo_backend, running, through, until

SUI = 1_000_000_000
DEPOSIT = 20_000_000
#: The docs' old example: 10 MIST/KiB (a tunnel of a few KiB pays a few dozen MIST)
CHEAP = "price_per_kib = 10\nmin_deposit = 1000000"
#: A tunnel is a request: 4 M MIST each, more than a connection's end costs
PROFITABLE = "price_per_kib = 1000\nprice_per_request = 4000000\nmin_deposit = 5000000"


@pytest.fixture
def node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(clock_ms=1_000_000) as stand_in:
        yield stand_in
        stand_in.state.check()


def _config(tmp: Path, node: SuiNodeStandIn | None, name: str, body: str, extra: str = "") -> Path:
    """A daemon config, on the stand-in (its identity funded by the faucet) or on the
    LocalLedger file ``tmp/ledger.sqlite`` (None)."""
    key = tmp / f"{name}.key"
    if not key.exists():
        identity = HostIdentity.generate()
        identity.save(key)
        if node is not None:
            node.faucet(identity.sui_address, 10 * SUI)
    if node is not None:
        ledger = f'ledger = "localnet@{node.url}"\nsui_package = "{node.package_id}"'
    else:
        ledger = f'ledger = "ledger.sqlite"\nfaucet = {10 * SUI}'
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[daemon]
{ledger}
identity = "{name}.key"
state_dir = "{name}-state"
drain_timeout = 2
{extra}
{body}"""
    )
    return path


def _service(name: str, port: int, backend: int, prices: str) -> str:
    return f"""
[[service]]
name = "{name}"
port = {port}
backends = ["127.0.0.1:{backend}"]
health_interval = 30
{prices}
"""


def _forward(daemon: Daemon, port: int = 7000, deposit: int = DEPOSIT) -> str:
    return f"""
[[forward]]
name = "fwd"
listen = "127.0.0.1:0"
target = "dtp://{daemon.host_id}:{port}"
deposit = {deposit}
"""


@asynccontextmanager
async def _pair(
    tmp: Path, node: SuiNodeStandIn | None, prices: str
) -> AsyncIterator[tuple[Daemon, Path, tuple[str, int]]]:
    """A provider serving an echo backend as ``svc`` (port 7000) at ``prices``, and a
    forwarder to it (the forwarder's config path and its listening address): the
    provider is yielded running, the forwarder stopped at the end of the block."""
    async with echo_backend() as backend:
        provider = _config(tmp, node, "provider", _service("svc", 7000, backend, prices))
        async with running(provider) as daemon:
            client = _config(tmp, node, "client", _forward(daemon))
            async with running(client) as forwarder:
                fwd = forwarder.forwarders["fwd"]
                assert fwd.server is not None
                address = fwd.server.sockets[0].getsockname()[:2]
                yield daemon, client, address
            # (the forwarder drained: its connection ended and it half-closed it)


def _connection_of(daemon: Daemon) -> str:
    assert daemon.host_id is not None
    (report,) = find_connections(daemon.ledger, host=daemon.host_id, settled=True).reports
    return report.connection.id


def test_a_cheap_connections_end_is_left_and_its_clients_settlement_returns_the_deposit(
    node: SuiNodeStandIn, tmp_path: Path
) -> None:
    async def main() -> None:
        async with _pair(tmp_path, node, CHEAP) as (daemon, _, address):
            assert await through(address, b"x" * 4096) == b"x" * 4096
        row = daemon.book.service("svc")
        await until(lambda: row.ends_left, "the end left to the client")
        assert row.fees_left == row.fees_earned > 0  # every MIST it earned, given up
        assert row.fees_claimed == row.refunded == 0
        spent = daemon.book.info["gas"]["spent"]
        assert spent["ends"] == 0 and spent["host"] > 0  # not one transaction for it
        cid = _connection_of(daemon)
        tc = daemon.ledger.get_connection(cid)
        # the forwarder half-closed it as it ended; nobody settled it
        assert tc.state == ConnectionState.HALF_CLOSED and not tc.settled
        # the client settles once the half-close timeout has passed: its whole deposit
        node.advance_clock(HALF_CLOSE_TIMEOUT_MS + 1_000)
        client = HostIdentity.load(tmp_path / "client.key")
        ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            refunded = await asyncio.to_thread(collect_refund, ledger, client, cid)
        finally:
            ledger.close()
        assert refunded == DEPOSIT
        escrow = daemon.ledger.get_escrow(tc.escrow)
        assert escrow.settled and escrow.claimed == 0
        table = format_table(daemon.book.to_json())
        assert "left" in table.splitlines()[table.splitlines().index("") + 1]

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


def test_a_profitable_connections_end_is_claimed_in_one_transaction(
    node: SuiNodeStandIn, tmp_path: Path
) -> None:
    async def main() -> None:
        async with _pair(tmp_path, node, PROFITABLE) as (daemon, _, address):
            before = daemon.ledger.gas_spent(daemon.identity.sui_address)
            assert await through(address, b"x" * 4096) == b"x" * 4096
        row = daemon.book.service("svc")
        await until(lambda: row.refunded, "the provider's claim and settlement")
        assert row.fees_claimed == row.fees_earned >= 4_000_000
        assert row.refunded == DEPOSIT - row.fees_claimed
        assert row.ends_left == row.fees_left == 0
        after = daemon.ledger.gas_spent(daemon.identity.sui_address)
        assert after.transactions == before.transactions + 1  # claim, close, settle: one
        ends = after.by_kind["ends"]
        assert 0 < ends < row.fees_claimed  # the end paid for itself
        # the status shows it (dtp status reads the file the daemon writes)
        daemon.book.save(force=True)
        status = read_status(tmp_path / "provider-state")
        assert status is not None
        assert status["gas"]["spent"]["ends"] == ends
        assert status["gas"]["spent"]["total"] == after.total
        table = format_table(status)
        assert f"spent:  {after.total:,} MIST of gas" in table
        assert f"connection ends {ends:,} MIST" in table

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


@pytest.mark.parametrize("aware", [True, False], ids=["gas_aware_ends", "every_end"])
def test_a_forwarder_does_not_half_close_what_would_not_pay_for_it(
    node: SuiNodeStandIn, tmp_path: Path, aware: bool
) -> None:
    """A deposit of 3 M MIST, used for a few dozen: its half-close and the settlement
    after it would cost the client about 3.5 M MIST of gas on the stand-in, more than
    they would take back. With ``gas_aware_ends`` the forwarder sends no half-close as
    the connection ends (left Open: the provider may still settle it, ``dtp refund``
    takes it back by hand); with ``gas_aware_ends = false`` it half-closes as ever."""
    deposit = 3_000_000

    async def main() -> str:
        async with echo_backend() as backend:
            provider = _config(tmp_path, node, "provider", _service("svc", 7000, backend, CHEAP))
            async with running(provider) as daemon:
                extra = "" if aware else "gas_aware_ends = false"
                body = _forward(daemon, deposit=deposit)
                client = _config(tmp_path, node, "client", body, extra)
                async with running(client) as forwarder:
                    fwd = forwarder.forwarders["fwd"]
                    assert fwd.server is not None
                    address = fwd.server.sockets[0].getsockname()[:2]
                    assert await through(address, b"x" * 4096) == b"x" * 4096
                    gas = await asyncio.to_thread(forwarder.ledger.end_gas)
                    assert gas.client_refund > deposit  # (what the test is about)
                # (the forwarder drained: its connection ended)
                return _connection_of(daemon)

    cid = asyncio.run(asyncio.wait_for(main(), 6 * BOUND))
    client = HostIdentity.load(tmp_path / "client.key")
    ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
    try:
        tc = ledger.get_connection(cid)
        escrow = ledger.get_escrow(tc.escrow)
    finally:
        ledger.close()
    assert not tc.settled and escrow.balance == deposit  # (the provider left its end)
    if aware:
        assert tc.state == ConnectionState.OPEN and tc.half_closed_by is None
    else:
        assert tc.state == ConnectionState.HALF_CLOSED
        assert tc.half_closed_by == client.sui_address


def test_on_a_local_ledger_every_end_is_settled_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with _pair(tmp_path, None, CHEAP) as (daemon, _, address):
            assert await through(address, b"x" * 4096) == b"x" * 4096
        row = daemon.book.service("svc")
        await until(lambda: row.refunded, "the settlement")
        assert row.fees_claimed == row.fees_earned > 0 and row.ends_left == 0
        assert "spent:" not in format_table(daemon.book.to_json())  # (no gas)

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


def _price_warnings(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, Any]]:
    return {
        r.fields["service"]: r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "prices below the gas of a connection's end"
    }


def test_a_start_warns_of_prices_below_the_gas_of_an_end(
    node: SuiNodeStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cheap service is warned about with the numbers (on a fresh daemon the gas is
    estimated from the network's price); the profitable one and the free one are not."""

    async def main() -> None:
        async with echo_backend() as backend:
            body = (
                _service("cheap", 7000, backend, CHEAP)
                + _service("dear", 7001, backend, PROFITABLE)
                + _service("free", 7002, backend, "")
            )
            config = _config(tmp_path, node, "provider", body)
            with caplog.at_level(logging.WARNING, logger="dtp.daemon"):
                async with running(config) as daemon:
                    warned = _price_warnings(caplog)
                    assert set(warned) == {"cheap"}
                    fields = warned["cheap"]
                    gas = daemon.ledger.end_gas()
                    assert fields["end_gas"] == gas.settle_claim > 3_000_000
                    assert fields["typical"] == "1024 KiB in 1 request"
                    assert fields["typical_fee"] == 10_240  # 1 MiB at 10 MIST/KiB
                    assert fields["bytes_needed"] == -(-gas.settle_claim * 1024 // 10)
                    assert fields["gas_estimated_from"] == "the network's gas price"
                    assert str(gas.settle_claim) in fields["hint"]
                    # a reload that makes the free service cheap warns of it
                    caplog.clear()
                    config.write_text(
                        config.read_text().replace(
                            'name = "free"\nport = 7002', 'name = "free"\nport = 7002\n' + CHEAP
                        )
                    )
                    await daemon.reload()
                    assert set(_price_warnings(caplog)) == {"free"}

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


def test_a_daemon_on_a_local_ledger_warns_of_no_gas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with echo_backend() as backend:
            config = _config(tmp_path, None, "provider", _service("cheap", 7000, backend, CHEAP))
            with caplog.at_level(logging.WARNING, logger="dtp.daemon"):
                async with running(config):
                    assert not _price_warnings(caplog)

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


def test_the_gas_spent_is_carried_over_a_restart(node: SuiNodeStandIn, tmp_path: Path) -> None:
    async def main() -> None:
        async with echo_backend() as backend:
            config = _config(tmp_path, node, "provider", _service("svc", 7000, backend, CHEAP))
            async with running(config) as first:
                spent = first.ledger.gas_spent(first.identity.sui_address)
                assert spent.total > 0  # (its Host and service published)
            status = read_status(tmp_path / "provider-state")
            assert status is not None and status["gas"]["spent"]["total"] == spent.total
            async with running(config) as second:
                now = second.ledger.gas_spent(second.identity.sui_address)
                shown = second.book.info["gas"]["spent"]
                assert shown["total"] == spent.total + now.total
                assert shown["transactions"] == spent.transactions + now.transactions

    asyncio.run(asyncio.wait_for(main(), 6 * BOUND))


# -- the config keys -------------------------------------------------------------------------


def test_the_config_keys_and_their_defaults(tmp_path: Path) -> None:
    base = f'[daemon]\nledger = "ledger.sqlite"\nidentity = "k.key"\nfaucet = {SUI}\n'
    forward = (
        f'\n[[forward]]\nname = "f"\nlisten = "127.0.0.1:0"\ntarget = "dtp://0x{"ab" * 32}:80"\n'
    )
    path = tmp_path / "d.toml"
    path.write_text(base + forward)
    settings = load_config(path).daemon
    assert settings.gas_aware_ends is True
    assert settings.batch_window == config_mod.BATCH_WINDOW == ends_mod.BATCH_WINDOW
    # (the claims while a connection lives: the library's defaults, repeated there)
    assert settings.claim_age == config_mod.CLAIM_AGE == live_claims_mod.CLAIM_AGE
    assert settings.claim_interval == config_mod.CLAIM_INTERVAL == live_claims_mod.CLAIM_INTERVAL
    path.write_text(base + "gas_aware_ends = false\nbatch_window = 0\n" + forward)
    settings = load_config(path).daemon
    assert settings.gas_aware_ends is False and settings.batch_window == 0
    for line, message in (
        ('gas_aware_ends = "yes"', "expected true or false"),
        ("batch_window = -1", "from 0 to 300"),
        ("batch_window = 301", "from 0 to 300"),
        ("batch_window = nan", "from 0 to 300"),
    ):
        path.write_text(base + line + "\n" + forward)
        with pytest.raises(DaemonConfigError, match=message):
            load_config(path)
