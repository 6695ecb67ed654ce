"""Two sans-I/O connections joined by ledger carriers on one LocalLedger file (the World),
the ledger optionally impaired, and the clock and steps that run them, for the ledger
carrier tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from dtp.hostid.ledger_carrier._carrier import LedgerCarrier, LedgerLink
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol._events import PeerAuthenticated
from tests.support import ledger_faults
from tests.support.pairs import CLIENT_ID, SERVER_ID, Side

PORT = 7
SLA = Sla(10, 5, 1000)


class ImpairedLedger(ledger_faults.ImpairedLedger):
    """The fault injector of tests/support/ledger_faults.py drawing the events that wait
    one by one (``holding="each"``): these tests' seeds were chosen with those draws.
    ``faults``: its ``loss``, ``duplicate`` and ``reorder``."""

    def __init__(self, ledger: LocalLedger, *, seed: int, **faults: Any) -> None:
        super().__init__(ledger, seed=seed, holding="each", **faults)


class World:
    """A LocalLedger with the server's host and service, a funded client with a cap, and
    one opened connection."""

    def __init__(self) -> None:
        self.ledger = LocalLedger(":memory:", clock_ms=0)
        self.host = self.ledger.create_host(SERVER_ID, SERVER_ID.noise_public, [])
        self.ledger.add_service(SERVER_ID, self.host, PORT, "raw", SLA)
        self.ledger.faucet(CLIENT_ID.sui_address, 100_000)
        self.cap = self.ledger.create_spending_cap(CLIENT_ID, 1_000_000)
        opened = self.ledger.open_connection(CLIENT_ID, self.host, PORT, self.cap, 1000)
        self.conn_id = opened.connection_id

    def carriers(self, ledger: Any = None, **kw: Any) -> tuple[LedgerCarrier, LedgerCarrier]:
        led = self.ledger if ledger is None else ledger
        cc = LedgerCarrier(
            led,
            CLIENT_ID,
            self.conn_id,
            peer_address=SERVER_ID.sui_address,
            clock=frozen_clock,
            **kw,
        )
        sc = LedgerCarrier(
            led,
            SERVER_ID,
            self.conn_id,
            peer_address=CLIENT_ID.sui_address,
            clock=frozen_clock,
            **kw,
        )
        return cc, sc

    def payloads(self) -> list[bytes]:
        events, _ = self.ledger.events(filter=EventFilter(type="PipeDataSent"), limit=1_000_000)
        return [bytes(e["data"]) for e in events]


def frozen_clock() -> float:
    return 0.0


def stepper(c: Side, s: Side) -> Callable[[], None]:
    def step() -> None:
        c.drain()
        s.drain()
        server = s.conn
        if s.of(PeerAuthenticated) and not server.established and not server.closed:
            server.accept()

    return step


def run_exchange(
    c: Side, s: Side, link: LedgerLink, sizes: tuple[int, ...], seed: int, marker: bytes = b""
) -> None:
    step = stepper(c, s)
    rng = random.Random(seed)
    payloads: dict[int, bytes] = {}
    for size in sizes:
        sid = c.conn.open_stream()
        payloads[sid] = marker + rng.randbytes(size) + marker
        c.conn.send_stream_data(sid, payloads[sid], end_stream=True)
    assert link.run(lambda: set(payloads) <= s.eof, on_round=step, max_time=600)
    for sid, data in payloads.items():
        assert bytes(s.data[sid]) == data
    for sid, data in payloads.items():
        s.conn.send_stream_data(sid, data[::-1], end_stream=True)
    assert link.run(lambda: set(payloads) <= c.eof, on_round=step, max_time=600)
    for sid, data in payloads.items():
        assert bytes(c.data[sid]) == data[::-1]
