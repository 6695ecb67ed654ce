"""A live paid server's recovery spaces out the claims of a dead run's receipt that keep
failing (the ledger unreachable, a connection that cannot be read), rather than trying
each in every recovery round (RECOVERY_INTERVAL, 30 s) on every live server on the
store, each time with a ledger call and a warning: each server remembers its failed
claims (Recovery.backoff, a ClaimBackoff): after the n-th failure the receipt waits
2**(n-1) rounds, at most RETRY_MAX_ROUNDS, the first failure is a warning and the later
ones debug lines, and the memory is forgotten once the receipt is claimed or its row is
no longer unclaimed.

Real LocalLedger files, real receipt stores, a real dead run (another process attached
to the store and killed with SIGKILL), real paid servers (blocking and asyncio); the
recovery rounds are let through one at a time (a wrapper of
dtp.payments._serving.recover_store in the recovery thread), RECOVERY_INTERVAL short. A
failing claim is a ledger wrapper raising LedgerUnavailable at the settlement calls only
(a claim is never refused by the client's spending cap: the deposit was reserved against
it at open, docs/escrow.md section 4).

The start-up recovery (``recover_unclaimed``) goes on past one receipt's surprising
failure too (the last section)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.payments._serving
import dtp.socket
from dtp.ledger._objects import Settlement, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._serving import Recovery, recover_store
from dtp.payments._settlement import recover_unclaimed
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_stores import kill, server_run
from tests.support.paid_twins import (
    OutageLedger,
    funded_ledger,
    ident,
    loop_in_thread,
    stop,
    streams_forever,
    streams_forever_aio,
)
from tests.support.settlements import is_settled

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7100
DEPOSIT = 15_000
SERVER, CLIENT = ident(0xD1), ident(0xD2)
FEE = fee(SLA, 102400, 1)  # what each receipt here pays: 1,005 MIST
# the recovery rounds in which a receipt failing every time is tried: 1, then after 1,
# 2, 4, 4, ... rounds (RETRY_MAX_ROUNDS)
SCHEDULE = [1, 2, 4, 8, 12, 16]


class CountingLedger(OutageLedger):
    """The real ledger; its settlement calls (claims) counted per connection ID, and
    failing with LedgerUnavailable while :attr:`down` is set."""

    def __init__(self, ledger: LocalLedger) -> None:
        super().__init__(ledger)
        self.claims: dict[str, int] = {}
        self.settled: dict[str, int] = {}

    def _edge(self, name: str) -> Callable[..., Any]:
        call = super()._edge(name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            cid = str(args[1])
            if name != "close_connection":
                self.claims[cid] = self.claims.get(cid, 0) + 1
            result = call(*args, **kwargs)
            if isinstance(result, Settlement):
                self.settled[cid] = self.settled.get(cid, 0) + 1
            return result

        return counted


class Rounds:
    """The recovery thread's rounds, let through one at a time (the start's recovery,
    in another thread, is not held)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = dtp.payments._serving.recover_store
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self.count = 0
        monkeypatch.setattr(dtp.payments._serving, "RECOVERY_INTERVAL", 0.01, raising=False)
        monkeypatch.setattr(dtp.payments._serving, "recover_store", self._round)

    def _round(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name != "dtp-paid-recovery":
            return self._real(*args, **kwargs)
        self._go.acquire()
        try:
            return self._real(*args, **kwargs)
        finally:
            self._done.release()

    def run(self) -> int:
        """Let one round through and wait for it: its number."""
        self._go.release()
        assert self._done.acquire(timeout=10)
        self.count += 1
        return self.count

    def tried_in(self, ledger: CountingLedger, cid: str, last: int) -> list[int]:
        """Run rounds up to ``last``: those in which ``cid`` was claimed."""
        rounds = []
        while self.count < last:
            before = ledger.claims.get(cid, 0)
            number = self.run()
            if ledger.claims.get(cid, 0) > before:
                rounds.append(number)
        return rounds

    def release(self) -> None:
        """Let a round the stopped thread still waits at through."""
        for _ in range(2):
            self._go.release()


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    store_path: Path

    def receipt(self, cap_id: str) -> Receipt:
        """A receipt of a new connection on ``cap_id``, for 100 KiB and one request."""
        cid = self.ledger.open_connection(CLIENT, self.host_id, PORT, cap_id, DEPOSIT).connection_id
        return Receipt(self.ledger.receipt_scope(cid), 102400, 1, FEE, 1).sign(CLIENT)

    def claimed(self, receipt: Receipt) -> int:
        tc = self.ledger.get_connection(receipt.connection_id)
        return self.ledger.get_escrow(tc.escrow).claimed

    def settled(self, receipt: Receipt) -> bool:
        return self.ledger.get_connection(receipt.connection_id).settled

    def conserved(self) -> None:
        audit = self.ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, PORT, "x", SLA)
        yield World(ledger, host_id, tmp_path / "receipts.db")


def _lines(caplog: pytest.LogCaptureFixture, cid: str, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dtp.payments._settlement" and r.levelno == level and cid in r.getMessage()
    ]


def test_a_dead_runs_receipt_the_ledger_cannot_take_is_tried_with_backoff(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dtp.payments._settlement")
    rounds = Rounds(monkeypatch)
    ledger = CountingLedger(world.ledger)
    ledger.down.set()
    lost = world.receipt(world.ledger.create_spending_cap(CLIENT, 10**9))
    cid = lost.connection_id
    with ReceiptStore(world.store_path) as store:
        store.attach_server()  # (the live server's run)
        with server_run(world.store_path, lost) as run:
            kill(run)
        recovered: list[tuple[str, Settlement]] = []
        recovery = Recovery(ledger, SERVER, store, recovered)  # type: ignore[arg-type]
        recovery.start()
        try:
            # before: tried (and warned of) in every round, 1 to 12
            assert rounds.tried_in(ledger, cid, 12) == SCHEDULE[:5]
            warned = _lines(caplog, cid, logging.WARNING)
            assert len(warned) == 1 and "ledger unavailable" in warned[0]
            assert len(_lines(caplog, cid, logging.DEBUG)) == 4
            assert not world.settled(lost)
            # the ledger takes it again: claimed in the round it is due, once
            ledger.down.clear()
            assert rounds.tried_in(ledger, cid, 20) == [16]
            assert ledger.settled == {cid: 1}
            assert world.claimed(lost) == FEE and world.settled(lost)
            assert [c for c, _ in recovered] == [cid]
            assert cid not in recovery.backoff  # (forgotten once claimed)
            assert not list(store.unclaimed())
            assert len(_lines(caplog, cid, logging.WARNING)) == 1
        finally:
            recovery.stop()
            rounds.release()
            assert recovery.join(10)
            store.detach_server()
    world.conserved()


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_live_servers_failing_claim_waits_and_warns_once(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, api: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="dtp.payments._settlement")
    rounds = Rounds(monkeypatch)
    ledger = CountingLedger(world.ledger)
    lost = world.receipt(world.ledger.create_spending_cap(CLIENT, 10**9))
    cid = lost.connection_id
    options: dict[str, Any] = {"ledger": ledger, "identity": SERVER, "receipts": world.store_path}
    with loop_in_thread() as loop:
        if api == "blocking":
            server: Any = dtp.socket.serve(world.host_id, PORT, streams_forever, **options)
        else:
            started = dtp.aio.serve(world.host_id, PORT, streams_forever_aio, **options)
            server = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        try:
            # the live server's ledger fails its settlement calls from here on
            ledger.down.set()
            # a server run killed beside the live one, with the receipt unclaimed
            with server_run(world.store_path, lost) as run:
                kill(run)
            # before: tried in every round, each time with a warning
            assert rounds.tried_in(ledger, cid, 8) == SCHEDULE[:4]
            warned = _lines(caplog, cid, logging.WARNING)
            assert len(warned) == 1 and "ledger unavailable" in warned[0]
            assert len(_lines(caplog, cid, logging.DEBUG)) >= 3
            assert world.claimed(lost) == 0
            # the ledger takes it again: claimed in the round it is due, once
            ledger.down.clear()
            assert rounds.tried_in(ledger, cid, 14) == [12]
            assert ledger.settled == {cid: 1}
            assert world.claimed(lost) == FEE and world.settled(lost)
            assert [c for c, _ in server.recovered] == [cid]
            assert len(_lines(caplog, cid, logging.WARNING)) == 1
        finally:
            rounds.release()
            if api == "blocking":
                server.close()
                assert server.wait_released(30)
            else:
                asyncio.run_coroutine_threadsafe(stop(server), loop).result(30)
            rounds.release()
    world.conserved()


def test_a_receipt_claimed_by_another_server_is_forgotten(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rounds = Rounds(monkeypatch)
    ledger = CountingLedger(world.ledger)
    ledger.down.set()  # (for this server only)
    lost = world.receipt(world.ledger.create_spending_cap(CLIENT, 10**9))
    cid = lost.connection_id
    with ReceiptStore(world.store_path) as store:
        store.attach_server()
        with server_run(world.store_path, lost) as run:
            kill(run)
        recovery = Recovery(ledger, SERVER, store, [])  # type: ignore[arg-type]
        recovery.start()
        try:
            assert rounds.tried_in(ledger, cid, 2) == [1, 2]
            backoff = getattr(recovery, "backoff", None)
            assert backoff is not None and cid in backoff  # (before: no memory at all)
            # another live server on the store, whose ledger is up, claims it
            with ReceiptStore(world.store_path) as other:
                assert not other.attach_server()
                assert [c for c, _ in recover_store(world.ledger, SERVER, other, False)] == [cid]
                other.detach_server()
            # the next round finds the row claimed: forgotten, never tried again
            assert rounds.tried_in(ledger, cid, 8) == []
            assert cid not in backoff and len(backoff) == 0
            assert world.claimed(lost) == FEE
        finally:
            recovery.stop()
            rounds.release()
            assert recovery.join(10)
            store.detach_server()
    world.conserved()


# -- the recovery at the server's start ------------------------------------------


class _Surprising:
    """The real ledger, whose reads of one connection raise what no ledger should."""

    def __init__(self, ledger: LocalLedger, cid: str) -> None:
        self._ledger = ledger
        self._cid = cid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def get_connection(self, connection_id: str) -> Any:
        if connection_id == self._cid:
            raise ValueError("a TransportControl with a field out of range")
        return self._ledger.get_connection(connection_id)


def test_the_start_recovery_goes_on_past_a_surprising_failure(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A paid server's start-up recovery (``recover_unclaimed`` without a backoff) logs
    any exception out of one receipt's claim -- a ledger's surprise (a value it should
    not return), a bug -- with its traceback and goes on, as the live rounds do: else
    the receipts after it would go unclaimed and the server not start, on every restart
    alike."""
    cap_id = world.ledger.create_spending_cap(CLIENT, 10**9)
    with ReceiptStore(world.store_path) as store:
        opened = [world.receipt(cap_id) for _ in range(3)]
        for receipt in opened:
            assert store.keep(receipt)
        cids = [receipt.connection_id for receipt in opened]
        bad = cids[0]
        ledger = _Surprising(world.ledger, bad)
        with caplog.at_level(logging.ERROR):
            recovered = recover_unclaimed(ledger, SERVER, store)  # type: ignore[arg-type]
        assert sorted(cid for cid, _ in recovered) == sorted(cids[1:])
        for cid in cids[1:]:
            assert is_settled(world.ledger, cid)
        assert not is_settled(world.ledger, bad)
        assert bad in caplog.text and "field out of range" in caplog.text
        assert any(r.exc_info for r in caplog.records), "logged without its traceback"
        # still unclaimed in the store: tried again at the next start or round
        assert [s.receipt.connection_id for s in store.unclaimed()] == [bad]
