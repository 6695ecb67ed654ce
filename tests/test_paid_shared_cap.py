"""One spending cap shared by a client's connections to one paid server at once: the
receipts they hold together never exceed what the cap lets the server claim, so every
receipt the server counted is claimable (before, each connection counted receipts
against the whole cap, and the later settlements were refused by it: service on credit
the server could not be paid for)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import DTPError, PaymentError, SpendingCapExceeded
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity
from dtp.metering import MeteringConfig, ReceiptGate
from dtp.paid import PaidServer, PaidSocket, ServicePolicy
from tests.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
CLIENT = HostIdentity.from_private_bytes(b"\x61" * 32, b"\x61" * 32)
PROVIDER = HostIdentity.from_private_bytes(b"\x62" * 32, b"\x62" * 32)
PORT = 7300


def _gate(cid: str) -> ReceiptGate:
    return ReceiptGate(
        connection_id=cid,
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        deposited=10_000,
        spend_limit=10_000,
    )


def _receipt(cid: str, kib: int, nonce: int) -> bytes:
    amount = fee(SLA, kib * 1024, 1)
    return Receipt(cid, kib * 1024, 1, amount, nonce).sign(CLIENT).encode()


def test_connections_sharing_a_cap_hold_no_more_receipts_than_it_pays() -> None:
    from dtp.metering import CapShares

    shares = CapShares()
    one, two, other = (_gate("0x" + c * 64) for c in "abc")
    shares.join("0xcap", one, 10_000)
    shares.join("0xcap", two, 10_000)
    shares.join("0xothercap", other, 10_000)
    one.receive(_receipt(one.connection_id, 600, 1))  # 6005 MIST
    # 6005 + 4005 is more than the cap lets be claimed: not counted (not a violation)
    with pytest.raises(SpendingCapExceeded):
        two.receive(_receipt(two.connection_id, 400, 1))
    assert two.latest_amount == 0 and two.violation is None
    two.receive(_receipt(two.connection_id, 399, 2))  # 3995: fits beside the 6005
    assert two.latest_amount == 3995
    # another cap is not touched by these
    other.receive(_receipt(other.connection_id, 900, 1))
    assert other.latest_amount == 9005
    # `one` ends (its 6005 claimed): what it held is spent, the rest stays shared
    shares.leave(one)
    with pytest.raises(SpendingCapExceeded):
        two.receive(_receipt(two.connection_id, 401, 3))  # 4015 > the 3995 left
    shares.join("0xcap", one, 3995)  # a new connection reads the cap afresh
    with pytest.raises(SpendingCapExceeded):
        one.receive(_receipt(one.connection_id, 601, 4))  # the cap is all held by `two`
    shares.leave(one)
    shares.leave(two)
    shares.leave(other)
    assert shares._shares == {}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalLedger, str, PaidServer]]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    ledger.faucet(PROVIDER.sui_address, 10**6)
    ledger.faucet(CLIENT.sui_address, 10**6)
    host = ledger.create_host(PROVIDER, PROVIDER.noise_public)
    ledger.add_service(PROVIDER, host, PORT, "echo", SLA)

    def echo(sock: PaidSocket) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)

    server = dtp.socket.serve(
        host,
        PORT,
        echo,
        ledger=LocalLedger(tmp_path / "ledger.db"),
        identity=PROVIDER,
        receipts=tmp_path / "receipts.db",
        policy=ServicePolicy(pause_timeout=1.0),
    )
    try:
        yield ledger, host, server
    finally:
        server.close()
        ledger.close()


def test_two_connections_on_one_cap_are_paid_for_what_the_server_counted(
    served: tuple[LocalLedger, str, PaidServer],
) -> None:
    """Two connections at once on a cap of 10000 MIST, each using about 5800: the
    server claims every receipt it counted, all within the cap, and none is left
    unclaimed (before: the second settlement was refused whole, its receipt left in the
    store, and the client got its whole deposit back after the timeout). The connection
    the cap cannot pay for is paused, then closed (PaymentRequired)."""
    ledger, host, server = served
    cap = ledger.create_spending_cap(CLIENT, 10_000)
    metering = MeteringConfig(every_bytes=64 << 10, every_ms=200)
    socks = [
        dtp.socket.create_connection(
            f"dtp://{host}:{PORT}",
            timeout=15,
            ledger=ledger,
            identity=CLIENT,
            deposit=8000,
            cap_id=cap,
            metering=metering,
        )
        for _ in range(2)
    ]
    piece = os.urandom(32 << 10)

    ended: list[BaseException] = []

    def use(sock: dtp.socket.DTPSocket) -> None:
        try:
            for _ in range(9):  # 288 KiB each way: about 5800 MIST
                sock.sendall(piece)
                got = 0
                while got < len(piece):
                    got += len(sock.recv(len(piece) - got))
        except DTPError as exc:
            ended.append(exc)

    threads = [threading.Thread(target=use, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [s.connection_id or "" for s in socks]
    for sock in socks:
        sock.close()
    # a connection the server closed for want of payment is settled after that close
    # (the client may be back first): wait for it
    assert wait_for(lambda: all(ledger.get_connection(c).settled for c in ids))
    claimed = [ledger.get_escrow(ledger.get_connection(c).escrow).claimed for c in ids]
    assert 0 < sum(claimed) <= 10_000
    assert all(isinstance(exc, PaymentError) for exc in ended), ended
    assert ledger.get_cap(cap).spent == sum(claimed)
    server.receipt_writer.flush(timeout=5)  # (claims are marked once receipts are written)
    assert list(server.store.unclaimed()) == []
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
