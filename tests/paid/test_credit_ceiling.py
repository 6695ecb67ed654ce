"""A paid server's credit stops at what the escrow can still pay (dtp.payments._gate.ReceiptGate;
docs/escrow.md §6.1: the allowance exists because "the server never serves more on credit
than the minimum escrow guarantees it can be paid"). The gate compared unreceipted usage
with the allowance alone: once a client's receipts had reached its deposit, the escrow
could pay nothing more, yet the server went on serving a whole allowance -- with the
default allowance (``min_deposit``) and a deposit of ``min_deposit``, a client got twice
what it paid for. Unit checks, then twins (blocking and asyncio server) on a real
LocalLedger file and real DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, SpendingCapExceeded
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._gate import GateState, ReceiptGate
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_twins import (
    funded_ledger,
    ident,
    loop_in_thread,
    stop,
    streams_forever,
    streams_forever_aio,
)
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER, CLIENT = ident(0x89), ident(0x8A)
PORT = 7000
DEPOSIT = SLA.min_deposit
CID = "0x" + "c3" * 32


def _gate() -> ReceiptGate:
    return ReceiptGate(
        scope=scope_of(CID),
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        deposited=DEPOSIT,
    )


def _receipt(total_bytes: int, nonce: int) -> bytes:
    return (
        Receipt(scope_of(CID), total_bytes, 1, fee(SLA, total_bytes, 1), nonce)
        .sign(CLIENT)
        .encode()
    )


def test_the_credit_is_what_the_escrow_can_still_pay() -> None:
    gate = _gate()
    assert gate.credit() == 5000  # the allowance: the deposit covers it
    half = 250 * 1024  # 2505 MIST
    gate.receive(_receipt(half, 1))
    assert gate.credit() == 5000 - 2505
    whole = (DEPOSIT - 5) * 1024 // 10  # the whole deposit
    gate.receive(_receipt(whole, 2))
    assert gate.payable() == DEPOSIT and gate.credit() == 0
    # usage beyond the deposit is not served (before: an allowance of it was)
    assert gate.serving(whole, 1)
    assert not gate.serving(whole + 1024, 1)
    assert gate.credit_bytes(whole, 1) == 0
    assert gate.verdict(0, whole + 1024, 1).state is GateState.PAUSE


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def _received_until_cut_off(ledger: LocalLedger, host_id: str) -> tuple[int, str]:
    got = 0
    with dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}", timeout=20, ledger=ledger, identity=CLIENT, deposit=DEPOSIT
    ) as sock:
        sock.sendall(b"go")
        with pytest.raises(DTPError):  # PaymentRequired once paused past the timeout
            while data := sock.recv(1 << 16):
                got += len(data)
        cid = sock.connection_id
        assert cid is not None
    return got, cid


def _check(ledger: LocalLedger, got: int, cid: str) -> None:
    # what the client was served (and sent: b"go") is worth no more than its deposit
    # (before: twice it), but for the one byte a write moves when the gate serves with
    # no credit left (so that it pauses next, rather than spin)
    assert fee(SLA, got + 2 - 1, 1) <= DEPOSIT
    # the server settles in the connection's thread once the client is cut off, which
    # the blocking server's close() does not wait for (CI read the escrow first)
    assert wait_for(lambda: is_settled(ledger, cid), timeout=30)
    escrow = settled_escrow(ledger, cid)
    assert escrow.claimed + escrow.refunded == DEPOSIT
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def _host(ledger: LocalLedger) -> str:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "stream", SLA)
    return host_id


POLICY = ServicePolicy(pause_timeout=0.3)


def test_blocking_server_serves_no_more_than_the_deposit(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = _host(ledger)
    with dtp.socket.serve(
        host_id,
        PORT,
        streams_forever,
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "r.db",
        policy=POLICY,
    ):
        got, cid = _received_until_cut_off(ledger, host_id)
    _check(ledger, got, cid)


def test_asyncio_server_serves_no_more_than_the_deposit(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    host_id = _host(ledger)
    with loop_in_thread() as loop:
        server = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(
                host_id,
                PORT,
                streams_forever_aio,
                ledger=ledger,
                identity=SERVER,
                receipts=tmp_path / "r.db",
                policy=POLICY,
            ),
            loop,
        ).result(10)
        try:
            got, cid = _received_until_cut_off(ledger, host_id)
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(10)
    _check(ledger, got, cid)


def test_a_connection_on_a_cap_another_one_used_up_is_refused_before_any_money_moves(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    """The first connection's open reserved the whole cap: the second open is refused by
    the ledger (docs/escrow.md §4), before a handshake or a deposit (before
    reservations: it was opened, and served an allowance's worth the cap never paid)."""
    host_id = _host(ledger)
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
    with dtp.socket.serve(
        host_id,
        PORT,
        streams_forever,
        ledger=ledger,
        identity=SERVER,
        receipts=tmp_path / "r.db",
        policy=POLICY,
    ):

        def connect() -> dtp.socket.DTPSocket:
            return dtp.socket.create_connection(
                f"dtp://{host_id}:{PORT}",
                timeout=20,
                ledger=ledger,
                identity=CLIENT,
                deposit=DEPOSIT,
                cap_id=cap,
            )

        with connect() as first:
            assert first.connection_id is not None
            balance = ledger.balance(CLIENT.sui_address)
            opened = ledger.events(filter=EventFilter(type="ConnectionOpened"))[0]
            with pytest.raises(SpendingCapExceeded):
                connect()
            assert ledger.balance(CLIENT.sui_address) == balance
            assert ledger.events(filter=EventFilter(type="ConnectionOpened"))[0] == opened
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
