"""Two sans-I/O connections joined by ledger carriers on one LocalLedger file (the World),
the ledger optionally impaired, and the clock and steps that run them, for the ledger
carrier tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Event, EventFilter, Sla
from dtp.events import PeerAuthenticated
from dtp.hostid.ledger_carrier.carrier import LedgerCarrier, LedgerLink
from tests.support.pairs import CLIENT_ID, SERVER_ID, Side

PORT = 7
SLA = Sla(10, 5, 1000)


class ImpairedLedger:
    """Wraps a ledger so that ``PipeDataSent`` events are dropped, duplicated and
    reordered (also across calls) before a carrier sees them. Everything else passes."""

    def __init__(
        self,
        ledger: LocalLedger,
        *,
        seed: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
    ) -> None:
        self._ledger = ledger
        self.rng = random.Random(seed)
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self._held: list[Event] = []
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> tuple[list[Event], str | None]:
        events, cursor = self._ledger.events(cursor, filter, limit)
        out: list[Event] = []
        for event in events:
            if event.name != "PipeDataSent":
                out.append(event)
                continue
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            self._held.append(event)
            if self.rng.random() < self.duplicate:
                self._held.append(event)
        if self.reorder:
            self.rng.shuffle(self._held)
            keep = [e for e in self._held if self.rng.random() < self.reorder]
            release = [e for e in self._held if e not in keep or self.rng.random() < 0.5]
            self._held = [e for e in self._held if e not in release]
        else:
            release, self._held = self._held, []
        return out + release, cursor

    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        return self.events(cursor, filter, limit)


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
