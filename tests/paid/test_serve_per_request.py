"""``dtp.socket.serve(..., billing="requests")``: the paid server bills each RPC request
by the receipt it carries, through the RPC fee engine (no glue left to the
application), over a real socket and a LocalLedger file. Requests at the SLA's price
and one at a method's own price are billed exactly: the receipts kept, then the
settlement at the connection's end -- the provider's balance grows by the fee, the
client gets the rest of its deposit back. A request without a receipt is refused, as
is a client its method rules refuse (nothing charged); a handler that is not an
RpcServer, or one with payments of its own, is refused before anything is published."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.hostid.paid import ServicePolicy
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.method_rules import MethodRule, MethodRules
from dtp.messaging.rpc import RpcClient, RpcServer
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Meter, Receipt, fee
from tests.support.paid_twins import ident
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
PORT = 8545
DEPOSIT = 1_000
PROVIDER, ALICE, BOB = ident(0xC1), ident(0xC2), ident(0xC3)
RULES = MethodRules(
    [
        MethodRule("echo"),
        MethodRule("dear", price=125),
        MethodRule("admin", allow=[ALICE.sui_address]),
    ]
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with _serving(tmp_path) as made:
        yield made


@contextlib.contextmanager
def _serving(tmp_path: Path, policy: ServicePolicy | None = None) -> Iterator[dict[str, Any]]:
    """The provider's RPC service billed per request, served with ``policy``, and a
    ledger of its clients: what the tests use, as a dict."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, PORT, "rpc", SLA)
    for key in (ALICE, BOB):
        ledger.faucet(key.sui_address, 100_000)
    rpc = RpcServer(workers=2, rules=RULES)
    rpc.register("echo", lambda p: p)
    rpc.register("dear", lambda p: ["dear", p])
    rpc.register("admin", lambda p: "ok")
    server_ledger = LocalLedger(tmp_path / "ledger.db")
    server = dtp.socket.serve(
        host,
        PORT,
        rpc,
        ledger=server_ledger,
        identity=PROVIDER,
        receipts=tmp_path / "receipts.db",
        billing="requests",
        policy=policy,
    )
    opened: list[Any] = []  # (what _connect opened: closed here too, so a test that
    # fails midway leaves no client running into the next test's thread counts)
    try:
        yield {"ledger": ledger, "host": host, "server": server, "rpc": rpc, "opened": opened}
    finally:
        for end in reversed(opened):
            with contextlib.suppress(Exception):  # (one failing to close stops no other)
                end.close()
        server.close()
        server.wait_released(10)
        rpc.close()
        server_ledger.close()
        ledger.close()


def _connect(world: dict[str, Any], key: HostIdentity) -> tuple[RpcClient, Meter, Any]:
    ledger = world["ledger"]
    sock = dtp.socket.create_connection(
        f"dtp://{world['host']}:{PORT}",
        ledger=ledger,
        identity=key,
        deposit=DEPOSIT,
        timeout=10,
        metering=MeteringConfig(enabled=False),
    )
    world["opened"].append(sock)
    meter = Meter(key, ledger.receipt_scope(sock.connection_id), SLA, DEPOSIT, every_requests=1)
    client = RpcClient(sock, timeout=10, meter=meter)
    world["opened"].append(client)
    return client, meter, sock


def test_requests_are_billed_at_their_prices_and_settled(world: dict[str, Any]) -> None:
    ledger, server = world["ledger"], world["server"]
    provider_before = ledger.balance(PROVIDER.sui_address)
    alice_before = ledger.balance(ALICE.sui_address)
    client, meter, sock = _connect(world, ALICE)
    for i in range(3):
        assert client.call("echo", i) == i
    assert client.call("dear", 1, requests=5) == ["dear", 1]
    assert client.call("admin", None) == "ok"
    assert meter.latest is not None and meter.latest.total_amount == 3 * 25 + 125 + 25
    cid = sock.connection_id
    client.close()
    sock.close()
    assert wait_for(lambda: any(c == cid for c, _ in server.settlements), 20)
    fee = 3 * 25 + 125 + 25
    assert ledger.balance(PROVIDER.sui_address) - provider_before == fee
    assert alice_before - ledger.balance(ALICE.sui_address) == fee  # (the rest refunded)


def test_unpaid_and_refused_requests_cost_nothing(world: dict[str, Any]) -> None:
    ledger, server = world["ledger"], world["server"]
    provider_before = ledger.balance(PROVIDER.sui_address)
    bob_before = ledger.balance(BOB.sui_address)
    client, meter, sock = _connect(world, BOB)
    assert meter.latest is None
    meter_less = RpcClient(sock.open_stream(), timeout=10)
    with pytest.raises(E.PaymentRequired):
        meter_less.call("echo", 1)  # (no receipt covers it)
    with pytest.raises(E.MethodNotAllowed):
        client.call("admin", None, requests=0)
    with pytest.raises(E.PaymentRequired) as short:
        client.call("dear", 1)  # (metered as one request: it counts as five)
    assert short.value.data == {"requests": 5, "counted": 0}
    # its receipt was not kept (nothing pays for another stream's request), and the
    # meter took it back: the next receipt pays for the next call alone
    with pytest.raises(E.PaymentRequired):
        meter_less.call("echo", 1)
    assert meter.latest is None
    assert client.call("echo", 2) == 2
    assert meter.latest is not None and meter.latest.total_requests == 1
    cid = sock.connection_id
    meter_less.close()
    client.close()
    sock.close()
    assert wait_for(lambda: any(c == cid for c, _ in server.settlements), 20)
    assert ledger.balance(PROVIDER.sui_address) - provider_before == 25
    assert bob_before - ledger.balance(BOB.sui_address) == 25


def test_the_handler_must_be_an_rpc_server_without_payments(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, PORT, "rpc", SLA)
    from dtp.messaging.rpc import ledger_payments

    common: dict[str, Any] = {"ledger": ledger, "identity": PROVIDER, "billing": "requests"}
    with pytest.raises(TypeError, match="RpcServer"):
        dtp.socket.serve(host, PORT, lambda sock: None, **common)
    paid = RpcServer(payments=ledger_payments(ledger))
    with pytest.raises(ValueError, match="without payments"):
        dtp.socket.serve(host, PORT, paid, **common)
    with pytest.raises(ValueError, match="billing"):
        dtp.socket.serve(
            host, PORT, lambda sock: None, ledger=ledger, identity=PROVIDER, billing="minutes"
        )  # type: ignore[arg-type]
    assert ledger.get_host(host).endpoints == ()  # (nothing published)
    paid.close()
    ledger.close()


def test_requests_are_claimed_while_the_connection_lives(tmp_path: Path) -> None:
    """Each request's receipt is kept before it is served; the server claims it while
    the connection lives (docs/escrow.md §7.1), its end then settling the rest."""
    with _serving(tmp_path, ServicePolicy(claim_interval=0)) as world:
        ledger, server = world["ledger"], world["server"]
        provider_before = ledger.balance(PROVIDER.sui_address)
        client, meter, sock = _connect(world, ALICE)
        for i in range(4):
            assert client.call("echo", i) == i
        cid = sock.connection_id
        assert cid is not None and meter.latest is not None
        signed = meter.latest.total_amount
        escrow_id = ledger.get_connection(cid).escrow
        assert wait_for(lambda: ledger.get_escrow(escrow_id).claimed == signed, 20)
        assert not ledger.get_connection(cid).settled  # (claimed while it lives)
        # (the server notes its claim once the ledger's call returns: just after the
        # escrow shows it)
        assert wait_for(
            lambda: [c.total_amount for k, c in server.live_claims if k == cid][-1:] == [signed], 10
        )
        client.close()
        sock.close()
        assert wait_for(lambda: is_settled(ledger, cid), 20)
        escrow = settled_escrow(ledger, cid)
        assert (escrow.claimed, escrow.refunded) == (signed, DEPOSIT - signed)
        assert ledger.balance(PROVIDER.sui_address) - provider_before == signed
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def test_a_receipt_for_less_sent_with_the_close_does_not_undercut_the_bills_receipts(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RPC bill stores receipts the connection's byte gate never checks: one sent
    with the CLOSE, for less but a later nonce, passes that gate, so the settlement
    reads the store for the one for more (tests/paid/test_final_receipt_is_newest.py:
    billed by bytes, every receipt stored went through the gate, and it is not read)."""
    import dtp.hostid.paid._server_books as books

    seen: list[tuple[bool, object]] = []
    settle_ended = books.settle_ended

    def settle_seen(*args: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["final_is_newest"], args[4]))
        return settle_ended(*args, **kwargs)

    monkeypatch.setattr(books, "settle_ended", settle_seen)
    ledger, server = world["ledger"], world["server"]
    client, meter, sock = _connect(world, ALICE)
    for i in range(3):
        assert client.call("echo", i) == i
    cid = sock.connection_id
    assert cid is not None and meter.latest is not None
    signed = meter.latest.total_amount
    low = Receipt(ledger.receipt_scope(cid), 0, 1, fee(SLA, 0, 1), meter.latest.nonce + 100)
    engine = sock._engine
    with engine.lock:  # (queued, not flushed: it goes with the CLOSE)
        engine.conn.send_receipt(low.sign(ALICE).encode())
    client.close()
    sock.close()
    assert wait_for(lambda: any(c == cid for c, _ in server.settlements), 20)
    assert [newest for newest, _ in seen] == [False]
    escrow = settled_escrow(ledger, cid)
    assert (escrow.claimed, escrow.refunded) == (signed, DEPOSIT - signed)
