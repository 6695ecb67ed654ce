"""A client raises its spending cap after opening a paid connection, the server reads
the raise, the client takes service beyond the limit it opened under, then lowers the
cap back before closing. Claims keep the limit at open (docs/escrow.md §4), so the part
served on the raise could not be claimed. The server therefore counts only on
``SpendingCap.serving_room``: the lower of the limit at open and the limit now. A raise
does not extend an open connection; every receipt the server counted is claimed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla, SpendingCap
from dtp.errors import DTPError
from dtp.keys import HostIdentity
from dtp.metering import MeteringConfig
from dtp.paid import PaidSocket, ServicePolicy
from tests.polling import wait_for

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
SLA = Sla(10, 5, 5000)  # 10 MIST per KiB
AT_OPEN = 10_000  # the cap's limit at open: about 1000 KiB of service
SERVED = 4 << 20


def test_a_raise_since_the_open_does_not_extend_the_connection(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.db")
    ledger.faucet(CLIENT.sui_address, 10_000_000)
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 7000, "x", SLA)
    cap = ledger.create_spending_cap(CLIENT, AT_OPEN)

    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        with contextlib.suppress(DTPError):
            sock.sendall(b"x" * SERVED)
            while sock.recv(1024):
                pass

    policy = ServicePolicy(pause_timeout=1, refresh_interval=3600)
    try:
        with dtp.socket.serve(
            host,
            7000,
            handler,
            ledger=ledger,
            identity=SERVER,
            receipts=tmp_path / "r.db",
            policy=policy,
        ) as server:
            with dtp.socket.create_connection(
                f"dtp://{host}:7000",
                timeout=20,
                ledger=ledger,
                identity=CLIENT,
                deposit=200_000,
                cap_id=cap,
                metering=MeteringConfig(every_bytes=64 << 10),
            ) as sock:
                cid = sock.connection_id
                assert cid is not None
                ledger.set_max_per_epoch(CLIENT, cap, 1_000_000)  # raised after the open
                assert wait_for(lambda: server.open_connections == 1)
                server.refresh_policy()  # the server reads the raise
                # a client that signs what it is served, whatever its cap said at open
                sock._engine.payment.meter.meter.deposit = 200_000  # type: ignore[union-attr]
                sock.sendall(b"go")
                got = 0
                with contextlib.suppress(DTPError):
                    while got < SERVED:
                        data = sock.recv(1 << 16)
                        if not data:
                            break
                        got += len(data)
                ledger.set_max_per_epoch(CLIENT, cap, AT_OPEN)  # back down before closing
            assert wait_for(lambda: ledger.get_connection(cid).settled, 10)
            kept = server.store.latest(cid)
        escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
        # served on credit up to the limit at open, not on the raise
        assert got < SERVED
        assert 0 < escrow.claimed <= AT_OPEN
        # and the latest receipt the server kept was claimed in full: nothing voided
        # (its mark in the store may lag the claim)
        assert kept is None or kept.receipt.total_amount <= escrow.claimed
    finally:
        ledger.close()


def test_serving_room() -> None:
    cap = SpendingCap(id="0x1", version=1, owner="0x2", max_per_epoch=500, spent=100, epoch=3)
    assert cap.serving_room(3, 1000) == 400  # lowered since the open: service pauses at it
    assert cap.serving_room(3, 200) == 100  # raised since the open: not extended
    assert cap.serving_room(4, 200) == 200  # a new epoch: nothing spent yet
    assert cap.serving_room(3, None) == 400  # not recorded: the limit now
    assert cap.serving_room(3, 0) == 0  # opened under 0: a raise extends nothing
    assert cap.serving_room(3, 50) == 0
