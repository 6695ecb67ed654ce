"""A live paid server recovers dead runs' receipts in a thread of its own (not in
the policy loop):

- the policy refreshes (the firewall's enforcement on open connections) went on only
  once every claim of a round was made: 8 s without a refresh for 8 slow claims;
- close() mid-recovery waited 5 s, closed the store under it, and its claims went on
  reaching the ledger after wait_released() said the server was done;
- ReceiptWriter.close(None) raised TypeError and left the writer unstoppable.

Each test failed on the code before this fix."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dtp.hostid.paid
import dtp.hostid.paid._blocking_server
import dtp.payments._serving
import dtp.payments._settlement
import dtp.socket
from dtp.hostid.paid import ServicePolicy
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from tests.support.paid_stores import STORE_CLIENT as CLIENT
from tests.support.paid_stores import STORE_PORT as PORT
from tests.support.paid_stores import STORE_SERVER as SERVER
from tests.support.paid_stores import STORE_SLA as SLA
from tests.support.paid_stores import StoreWorld as World
from tests.support.paid_stores import kill, server_run
from tests.support.paid_twins import funded_ledger, streams_forever
from tests.support.polling import wait_for

CLAIM = 0.3  # seconds a claim takes here (on a real chain: seconds)
LOST = 6  # receipts the killed run left


def _slow_claims(
    monkeypatch: pytest.MonkeyPatch, seconds: float, started: threading.Event | None = None
) -> None:
    """Each claim takes ``seconds`` more (``started`` set as one begins)."""
    real = dtp.payments._settlement.claim_and_settle

    def slow(*args: Any, **kwargs: Any) -> Any:
        if started is not None:
            started.set()
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(dtp.payments._settlement, "claim_and_settle", slow)


def _serve(ledger: Any, tmp_path: Path, **options: Any) -> tuple[World, dtp.hostid.paid.PaidServer]:
    """A host with a paid service on ``ledger`` and its server (``options`` to serve())."""
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "x", SLA)
    world = World(ledger, host_id, ledger.create_spending_cap(CLIENT, 10**9), tmp_path / "r.db")
    server = dtp.socket.serve(
        host_id,
        PORT,
        streams_forever,
        ledger=ledger,
        identity=SERVER,
        receipts=world.store_path,
        **options,
    )
    return world, server


def test_recovery_holds_up_neither_the_policy_nor_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dtp.payments._serving, "RECOVERY_INTERVAL", 0.2)
    with funded_ledger(tmp_path, CLIENT) as ledger:
        world, server = _serve(ledger, tmp_path, policy=ServicePolicy(refresh_interval=0.05))
        refreshes: list[float] = []
        real_refresh = server.refresh_policy

        def refresh() -> None:
            refreshes.append(time.monotonic())
            real_refresh()

        server.refresh_policy = refresh  # type: ignore[method-assign]
        lost = [world.receipt() for _ in range(LOST)]
        _slow_claims(monkeypatch, CLAIM)
        with server_run(world.store_path, *lost) as run:
            kill(run)
            assert wait_for(lambda: sum(world.settled(r) for r in lost) >= 2, 30)
            began = time.monotonic()
            server.close()
            assert server.wait_released(30)
            closed_in = time.monotonic() - began
        claimed = sum(world.settled(r) for r in lost)
        time.sleep(3 * CLAIM)
        # nothing reached the ledger after the release, and what did is counted
        assert sum(world.settled(r) for r in lost) == claimed == len(server.recovered)
        assert claimed < LOST  # (stopped between claims: the rest waits for a restart)
        assert closed_in < 2 * CLAIM + 1.0  # the claim under way, not a 5 s join
        gaps = [b - a for a, b in itertools.pairwise(refreshes)]
        # refreshed all along, the round's LOST claims included
        assert gaps and max(gaps) < 3 * CLAIM
    # the dead run's lock file stays for the receipts left, so a later server claims them
    with ReceiptStore(world.store_path) as store, store.orphaned() as receipts:
        assert len(receipts) == LOST - claimed


def test_a_writer_closed_with_no_timeout_stops(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "r.db") as store:
        writer = ReceiptWriter(store)
        assert writer.close(None)
        assert writer.stopped


def test_close_does_not_wait_for_a_slow_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() waits RECOVERY_CLOSE_WAIT at most for a claim under way (the first
    Recovery version joined it without limit: a ledger that stalled hung close()), and
    the release follows the claim: wait_released() is True once it has."""
    monkeypatch.setattr(dtp.payments._serving, "RECOVERY_INTERVAL", 0.2)
    monkeypatch.setattr(dtp.hostid.paid._blocking_server, "RECOVERY_CLOSE_WAIT", 0.2)
    with funded_ledger(tmp_path, CLIENT) as ledger:
        world, server = _serve(ledger, tmp_path)
        lost = world.receipt()
        started = threading.Event()
        _slow_claims(monkeypatch, 3.0, started)
        with server_run(world.store_path, lost) as run:
            kill(run)
            assert started.wait(30)
            began = time.monotonic()
            server.close()
            assert time.monotonic() - began < 1.5
            assert not server.wait_released(0)  # the claim goes on, then the release
            assert server.wait_released(30)
        assert world.settled(lost)
        assert [cid for cid, _ in server.recovered] == [lost.connection_id]
