"""The half-close timeout as a term of a service (docs/escrow.md §2, §5, §7): the
provider sets it in the service's SLA, from 10 minutes to 7 days; a connection copies it
when it opens and keeps it; ``finalize`` and the client's ``settle`` wait for the
connection's own. On LocalLedger and on SuiLedger over the node stand-in, every test on
a virtual clock and with MIST conserved; and the off-chain readers of the timeout (the
connection reports of ``dtp connections``/``dtp refund``, the refund engine) read the
connection's own.

The services are a Table (``Table<u16, Service>``): SuiLedger reads one by its dynamic
field's derived ID and lists them with ``ListDynamicFields``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ChainError, HostConfigError, InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._connections import ConnectionReport, client_settles_at, format_duration
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_HALF_CLOSE_TIMEOUT_MS,
    MIN_HALF_CLOSE_TIMEOUT_MS,
    ConnectionState,
    Service,
    Sla,
)
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import NodeObject
from dtp.ledger.sui._codec import port_field_id, table_id
from dtp.payments._refund_engine import RefundAction, refund_step
from dtp.testing.sui_node import SuiNodeStandIn


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x61), ident(0x62)
PORT = 7
SLA = Sla(10, 5, 1000)
HOUR = 3_600_000
LONG = Sla(10, 5, 1000, HOUR)
FUNDS = 10**9


@dataclass
class World:
    """A Host with one service (default timeout) on a ledger, the client with a cap; the
    clock at 0 and moved by hand."""

    ledger: Ledger
    host: str
    cap: str
    advance: Callable[[int], object]
    conserved: Callable[[], None]
    node: SuiNodeStandIn | None = None

    def net(self, who: HostIdentity) -> int:
        """``who``'s balance net of the gas it paid (none on LocalLedger)."""
        paid = self.node.gas_paid(who.sui_address) if self.node is not None else 0
        return self.ledger.balance(who.sui_address) + paid

    def receipt(self, connection: str, total_bytes: int, requests: int, nonce: int) -> Receipt:
        tc = self.ledger.get_connection(connection)
        amount = (total_bytes * tc.sla.price_per_kib + 1023) // 1024
        amount += requests * tc.sla.price_per_request
        scope = self.ledger.receipt_scope(connection)
        return Receipt(scope, total_bytes, requests, amount, nonce).sign(CLIENT)


def _host_and_cap(ledger: Ledger) -> tuple[str, str]:
    """The server's Host with one service of the default timeout, the client's cap."""
    host = ledger.create_host(SERVER, SERVER.noise_public, ["tcp://127.0.0.1:7000"])
    ledger.add_service(SERVER, host, PORT, "raw", SLA)
    return host, ledger.create_spending_cap(CLIENT, 10**6)


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "local":
        local = LocalLedger(tmp_path / "ledger.db", clock_ms=0)
        for who in (SERVER, CLIENT):
            local.faucet(who.sui_address, FUNDS)
        host, cap = _host_and_cap(local)

        def audit() -> None:
            books = local.audit()
            assert books["minted"] == 2 * FUNDS
            assert books["minted"] == books["balances"] + books["escrows"] + books["broadcasts"]

        yield World(local, host, cap, local.advance_clock, audit)
        local.close()
        return
    with SuiNodeStandIn(clock_ms=0) as node:
        for who in (SERVER, CLIENT):
            node.faucet(who.sui_address, FUNDS)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        host, cap = _host_and_cap(sui)

        def node_audit() -> None:
            books = node.audit()
            assert books["minted"] == 2 * FUNDS
            held = books["balances"] + books["escrows"] + books["broadcasts"] + books["gas"]
            assert books["minted"] == held

        yield World(sui, host, cap, node.advance_clock, node_audit, node)
        sui.close()


def _refused(call: Callable[[], object], module: str, name: str) -> ChainError:
    with pytest.raises(ChainError) as refused:
        call()
    assert (refused.value.module, refused.value.name) == (module, name)
    return refused.value


# -- a long timeout protects the provider's claims ------------------------------------------------


def test_a_long_timeout_keeps_the_providers_claim_through_ten_minutes_away(world: World) -> None:
    led, h = world.ledger, world.host
    led.update_service(SERVER, h, PORT, LONG)
    opened = led.open_connection(CLIENT, h, PORT, world.cap, 1000)
    conn = opened.connection_id
    assert opened.sla == LONG  # (the ConnectionOpened event carries the terms)
    assert led.get_connection(conn).half_close_timeout_ms == HOUR
    receipt = world.receipt(conn, 10240, 4, 1)  # 120 MIST, signed in-band
    client_before, server_before = world.net(CLIENT), world.net(SERVER)
    world.advance(1000)
    led.close_connection(CLIENT, conn)  # the server is down from here
    half_closed = led.get_connection(conn).half_closed_at_ms
    assert half_closed is not None
    world.advance(MIN_HALF_CLOSE_TIMEOUT_MS + 1)
    # past the default ten minutes: the client cannot settle, nor either side finalize
    _refused(lambda: led.settle(CLIENT, conn), "transport_control", "ETimeoutNotReached")
    _refused(lambda: led.finalize(CLIENT, conn), "transport_control", "ETimeoutNotReached")
    world.conserved()
    # the server is back after the outage: its receipt is still claimable
    assert led.claim(SERVER, opened.escrow_id, receipt) == 120
    world.advance(half_closed + HOUR - 1 - led.clock_ms())
    _refused(lambda: led.settle(CLIENT, conn), "transport_control", "ETimeoutNotReached")
    world.advance(1)  # the service's hour has passed: the client settles alone
    settled = led.settle(CLIENT, conn)
    assert (settled.claimed, settled.refunded) == (120, 880)
    tc = led.get_connection(conn)
    assert tc.state == ConnectionState.CLOSED and tc.settled
    assert world.net(CLIENT) - client_before == 880
    assert world.net(SERVER) - server_before == 120
    world.conserved()


def test_finalize_waits_for_the_connections_own_timeout(world: World) -> None:
    led, h = world.ledger, world.host
    led.update_service(SERVER, h, PORT, Sla(10, 5, 1000, MAX_HALF_CLOSE_TIMEOUT_MS))
    conn = led.open_connection(CLIENT, h, PORT, world.cap, 1000).connection_id
    led.close_connection(SERVER, conn)  # the server closes and the client goes silent
    world.advance(MAX_HALF_CLOSE_TIMEOUT_MS - 1)
    _refused(lambda: led.finalize(SERVER, conn), "transport_control", "ETimeoutNotReached")
    world.advance(1)
    led.finalize(SERVER, conn)
    assert led.get_connection(conn).state == ConnectionState.CLOSED
    assert led.settle(CLIENT, conn).refunded == 1000
    world.conserved()


# -- bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ms", [0, 1, MIN_HALF_CLOSE_TIMEOUT_MS - 1, MAX_HALF_CLOSE_TIMEOUT_MS + 1])
def test_a_timeout_out_of_bounds_is_refused_typed_and_costs_nothing(world: World, ms: int) -> None:
    led, h = world.ledger, world.host
    before = (led.get_host(h), led.balance(SERVER.sui_address))
    for call in (
        lambda: led.update_service(SERVER, h, PORT, Sla(10, 5, 1000, ms)),
        lambda: led.add_service(SERVER, h, 8, "raw", Sla(10, 5, 1000, ms)),
    ):
        error = _refused(call, "host", "EInvalidHalfCloseTimeout")
        assert isinstance(error, HostConfigError) and error.code == 11
        assert "from 10 minutes to 7 days" in str(error)
    # refused before anything was signed: no state changed, no gas paid
    assert (led.get_host(h), led.balance(SERVER.sui_address)) == before
    # and before the authority is looked at, as the Sla's constructor runs first on Sui
    _refused(
        lambda: led.update_service(CLIENT, h, PORT, Sla(10, 5, 1000, ms)),
        "host",
        "EInvalidHalfCloseTimeout",
    )


@pytest.mark.parametrize("ms", [MIN_HALF_CLOSE_TIMEOUT_MS, MAX_HALF_CLOSE_TIMEOUT_MS])
def test_the_bounds_themselves_are_accepted(world: World, ms: int) -> None:
    led, h = world.ledger, world.host
    led.add_service(SERVER, h, 8, "raw", Sla(10, 5, 1000, ms))
    assert led.get_host(h).services[8].sla.half_close_timeout_ms == ms
    conn = led.open_connection(CLIENT, h, 8, world.cap, 1000).connection_id
    assert led.get_connection(conn).half_close_timeout_ms == ms


@pytest.mark.parametrize("ms", ["600000", 600_000.0, True, None, -1, 2**64])
def test_a_timeout_that_is_not_a_u64_is_a_bad_argument(world: World, ms: Any) -> None:
    with pytest.raises(InvalidArgument):
        world.ledger.update_service(SERVER, world.host, PORT, Sla(10, 5, 1000, ms))


def test_the_node_refuses_a_timeout_out_of_bounds_in_the_sla_constructor(tmp_path: Path) -> None:
    """SuiLedger refuses first, but the rule is the package's: a transaction built with
    one (``host::new_sla_with_half_close_timeout``) aborts on the node, in its first
    command, and changes nothing but the gas."""
    with SuiNodeStandIn(clock_ms=0) as node:
        node.faucet(SERVER.sui_address, FUNDS)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            h = sui.create_host(SERVER, SERVER.noise_public)
            sui.add_service(SERVER, h, PORT, "raw", SLA)
            before = sui.get_host(h)
            ref = sui._shared(h, "Host")
            bad = Sla(10, 5, 1000, MIN_HALF_CLOSE_TIMEOUT_MS - 1)
            with pytest.raises(HostConfigError) as refused:
                sui._execute(
                    SERVER,
                    "host::update_service",
                    lambda ctx: sui_tx.update_service(ctx, ref, PORT, bad, 0),
                )
            assert refused.value.name == "EInvalidHalfCloseTimeout"
            assert sui.get_host(h).services == before.services
        finally:
            sui.close()


# -- open connections keep theirs -----------------------------------------------------------------


def test_open_connections_keep_their_timeout_whatever_the_service_becomes(world: World) -> None:
    led, h = world.ledger, world.host
    short = led.open_connection(CLIENT, h, PORT, world.cap, 1000).connection_id
    led.update_service(SERVER, h, PORT, LONG)
    long = led.open_connection(CLIENT, h, PORT, world.cap, 1000).connection_id
    led.update_service(SERVER, h, PORT, SLA)  # back to ten minutes: not for `long`
    assert led.get_host(h).services[PORT].sla == SLA
    led.remove_service(SERVER, h, PORT)  # and gone: the connections never read it again
    led.add_service(SERVER, h, PORT, "raw", Sla(10, 5, 1000, 2 * HOUR))
    assert led.get_connection(short).half_close_timeout_ms == HALF_CLOSE_TIMEOUT_MS
    assert led.get_connection(long).half_close_timeout_ms == HOUR
    assert led.get_escrow(led.get_connection(long).escrow).sla == LONG
    for conn in (short, long):
        led.close_connection(CLIENT, conn)
    world.advance(HALF_CLOSE_TIMEOUT_MS)
    assert led.settle(CLIENT, short).refunded == 1000
    _refused(lambda: led.settle(CLIENT, long), "transport_control", "ETimeoutNotReached")
    world.advance(HOUR - HALF_CLOSE_TIMEOUT_MS)
    assert led.settle(CLIENT, long).refunded == 1000
    world.conserved()


def test_a_subscribed_connection_keeps_the_services_timeout(world: World) -> None:
    """A prepaid connection's prices are zero (docs/escrow.md §13); its half-close timeout
    is the service's, as any connection's."""
    led, h = world.ledger, world.host
    led.update_service(SERVER, h, PORT, LONG)
    offer = led.create_subscription_offer(SERVER, h, PORT, 100, 1)
    sub = led.subscribe(CLIENT, offer, 1)
    opened = led.open_subscribed_connection(CLIENT, sub, world.cap)
    tc = led.get_connection(opened.connection_id)
    assert tc.sla == Sla(0, 0, 0, HOUR)
    world.conserved()


# -- the services Table ---------------------------------------------------------------------------


def test_services_are_read_one_by_one_and_listed(world: World) -> None:
    led, h = world.ledger, world.host
    for port in range(100, 130):
        led.add_service(SERVER, h, port, f"kind-{port}", Sla(port, 0, 0, HOUR), port)
    services = led.get_host(h).services
    assert sorted(services) == [PORT, *range(100, 130)]
    for port in (PORT, 100, 117, 129):
        assert led.get_service(h, port) == services[port]
    assert led.get_service(h, 117) is not None
    assert led.get_service(h, 117).sla == Sla(117, 0, 0, HOUR)  # type: ignore[union-attr]
    assert led.get_service(h, 99) is None
    led.remove_service(SERVER, h, 117)
    assert led.get_service(h, 117) is None and 117 not in led.get_host(h).services
    with pytest.raises(InvalidArgument):
        led.get_service(h, 70_000)


def test_suiledger_reads_a_service_with_one_getobject_of_its_derived_id(tmp_path: Path) -> None:
    with SuiNodeStandIn(clock_ms=0) as node:
        node.faucet(SERVER.sui_address, FUNDS)
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            h = sui.create_host(SERVER, SERVER.noise_public)
            for port in range(1, 41):
                sui.add_service(SERVER, h, port, "raw", SLA)
            raw_host = sui._node.get_object(h)
            services = table_id("Host", raw_host.contents)
            assert services is not None
            sui.get_host(h)  # (the Host's Tables' IDs are remembered from any read)
            calls: list[str] = []
            real = sui._node.get_object

            def counted(object_id: str, **kwargs: Any) -> NodeObject:
                calls.append(object_id)
                return real(object_id, **kwargs)

            sui._node.get_object = counted  # type: ignore[method-assign]
            assert sui.get_service(h, 33) == Service("raw", SLA, 0)
            assert sui.get_service(h, 41) is None
            assert calls == [port_field_id(services, 33), port_field_id(services, 41)]
        finally:
            sui.close()


# -- the readers of the timeout off-chain ---------------------------------------------------------


def test_the_reports_and_the_refund_engine_read_the_connections_own_timeout(
    world: World,
) -> None:
    led, h = world.ledger, world.host
    led.update_service(SERVER, h, PORT, Sla(10, 5, 1000, 90 * 60_000))
    conn = led.open_connection(CLIENT, h, PORT, world.cap, 1000).connection_id
    open_tc = led.get_connection(conn)
    escrow = led.get_escrow(open_tc.escrow)
    report = ConnectionReport(open_tc, escrow, led.clock_ms(), None)
    assert report.when(as_server=False).endswith("refundable by the client 1 h 30 min later")
    assert refund_step(open_tc, led.clock_ms()).action is RefundAction.HALF_CLOSE
    led.close_connection(CLIENT, conn)
    tc = led.get_connection(conn)
    assert tc.half_closed_at_ms is not None
    due = tc.half_closed_at_ms + 90 * 60_000
    assert client_settles_at(tc) == tc.client_settles_at_ms == due
    waiting = refund_step(tc, due - 1)
    assert (waiting.action, waiting.at_ms) == (RefundAction.WAIT, due)
    assert refund_step(tc, due).action is RefundAction.SETTLE
    assert (
        ConnectionReport(tc, escrow, due - 1, None)
        .when(as_server=False)
        .startswith("refundable by the client after")
    )
    assert ConnectionReport(tc, escrow, due, None).when(as_server=False) == "settle now"


@pytest.mark.parametrize(
    ("ms", "words"),
    [(600_000, "10 min"), (HOUR, "1 h"), (90 * 60_000, "1 h 30 min"), (604_800_000, "7 d")],
)
def test_format_duration(ms: int, words: str) -> None:
    assert format_duration(ms) == words


def test_terms_a_file_kept_from_before_the_timeout_have_the_default(tmp_path: Path) -> None:
    """A LocalLedger file written before the timeout was a term holds services and
    connections whose SLAs lack it: they read, open and settle under the default."""
    path = tmp_path / "ledger.db"
    with LocalLedger(path, clock_ms=0) as ledger:
        for who in (SERVER, CLIENT):
            ledger.faucet(who.sui_address, FUNDS)
        h = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, h, PORT, "raw", LONG)
        cap = ledger.create_spending_cap(CLIENT, 10**6)
        conn = ledger.open_connection(CLIENT, h, PORT, cap, 1000).connection_id
    db = sqlite3.connect(path)
    for object_id, data in db.execute("SELECT id, data FROM objects").fetchall():
        fields = json.loads(data)
        slas = [fields.get("sla")] + [s["sla"] for s in fields.get("services", {}).values()]
        for sla in slas:
            if isinstance(sla, dict):
                sla.pop("half_close_timeout_ms", None)
        db.execute("UPDATE objects SET data = ? WHERE id = ?", (json.dumps(fields), object_id))
    db.commit()
    db.close()
    with LocalLedger(path) as ledger:
        assert ledger.get_host(h).services[PORT].sla == SLA
        assert ledger.get_connection(conn).half_close_timeout_ms == HALF_CLOSE_TIMEOUT_MS
        second = ledger.open_connection(CLIENT, h, PORT, cap, 1000).connection_id
        assert ledger.get_connection(second).sla == SLA
        ledger.close_connection(CLIENT, conn)
        ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
        assert ledger.settle(CLIENT, conn).refunded == 1000
