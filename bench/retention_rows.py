"""Benchmark row ``ledger_retention_bulk``: what data retention costs on the ledger carrier.

Two sans-I/O connections over :class:`~dtp.hostid.ledger_carrier._carrier.LedgerLink` on
one LocalLedger file (frozen clock, no sockets, so the ledger's work is what is measured).
Ours: ``total``
bytes one way with ``retention_terms`` (a retention time of 0): every data payload is a
``retention::send``, the receiver confirms each record, and the sender then deletes them
all (``reclaim_storage``), so an op is the whole retention cycle. Peer: the same bytes
through plain ``pipe::send``. Handshake included on both. Report only (no bar).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace

from bench.workload import Workload
from dtp.hostid.ledger_carrier._bridge import ledger_config
from dtp.hostid.ledger_carrier._carrier import LedgerCarrier, LedgerLink
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol._events import PeerAuthenticated, StreamDataReceived
from dtp.protocol.connection import Connection, ConnectionConfig

__all__ = ["ledger_retention_bulk"]

MB = 1_000_000
PORT = 9
_CLIENT = HostIdentity.from_private_bytes(b"\x71" * 32, b"\x71" * 32)
_SERVER = HostIdentity.from_private_bytes(b"\x72" * 32, b"\x72" * 32)


def _transfer(ledger: LocalLedger, conn_id: str, total: int, terms: str | None) -> None:
    base = ConnectionConfig(identity=_CLIENT, is_client=True, server_static=_SERVER.noise_public)
    client = Connection(ledger_config(base), ephemeral_key=os.urandom(32), now=0.0)
    server_cfg = ledger_config(replace(base, identity=_SERVER, is_client=False, server_static=None))
    server = Connection(server_cfg, ephemeral_key=os.urandom(32), now=0.0)
    cc, sc = (
        LedgerCarrier(
            ledger,
            me,
            conn_id,
            peer_address=peer.sui_address,
            clock=lambda: 0.0,
            retention_terms=terms,
        )
        for me, peer in ((_CLIENT, _SERVER), (_SERVER, _CLIENT))
    )
    link = LedgerLink(client, server, cc, sc)
    got = 0

    def step() -> None:
        nonlocal got
        for conn in (client, server):
            while (event := conn.next_event()) is not None:
                if isinstance(event, PeerAuthenticated) and conn is server:
                    server.accept()
                elif isinstance(event, StreamDataReceived) and conn is server:
                    got += len(event.data)
                    server.acknowledge_read(event.stream_id, len(event.data))

    assert link.run(lambda: client.established and server.established, on_round=step)
    sid = client.open_stream()
    client.send_stream_data(sid, os.urandom(total), end_stream=True)
    assert link.run(lambda: got >= total, on_round=step, max_time=600)
    cc.close()
    sc.close()
    if terms is not None:
        sc.confirm_retained()
        cc.confirm_retained()
        cc.reclaim_storage()
        sc.reclaim_storage()
        assert not cc.retained and not sc.retained


def ledger_retention_bulk(total: int = 1 << 20) -> Workload:
    """One-way ``total`` bytes over LedgerLink with retention (whole cycle) vs without."""
    directory = tempfile.mkdtemp(prefix="dtp-bench-retention-")
    ledger = LocalLedger(os.path.join(directory, "ledger.sqlite"), clock_ms=1)
    host = ledger.create_host(_SERVER, _SERVER.noise_public, [])
    ledger.add_service(_SERVER, host, PORT, "sink", Sla(0, 0, 1))
    terms = ledger.create_retention_terms(_SERVER, host, PORT, 0, 1)
    for who in (_CLIENT, _SERVER):
        ledger.faucet(who.sui_address, 10**15)
    cap = ledger.create_spending_cap(_CLIENT, 10**15)

    def op(retain: bool) -> Callable[[], object]:
        def run() -> None:
            conn_id = ledger.open_connection(_CLIENT, host, PORT, cap, 1).connection_id
            _transfer(ledger, conn_id, total, terms if retain else None)

        return run

    def close() -> None:
        ledger.close()
        shutil.rmtree(directory, ignore_errors=True)

    return Workload(
        "ledger_retention_bulk",
        "MB/s",
        total / MB,
        op(True),
        op(False),
        bar=None,
        note=(
            f"report only: one-way {total >> 20} MiB over LedgerLink on a LocalLedger file, "
            "retention::send + confirm + delete per data payload vs plain pipe::send"
        ),
        close=close,
    )
