"""Two or more paid servers on one receipt store, one of them killed (dtp.receipt_store's
server runs, dtp.paid.recover_store, the servers' policy loops).

A server killed while another was live on the same store left its unclaimed receipts
for a start when none was: its restart was not alone, so it claimed nothing, and the
client's half-close timeout refunded the whole deposit -- a fee earned, lost to a crash.
Each server run now owns its rows and holds a lock file of its own: a restart, and
every live server from time to time, claims the rows of runs whose lock nobody holds
(dead), never those of live ones, and removes their lock files.

Real SQLite files, a real LocalLedger, real processes killed with SIGKILL, real paid
servers (blocking and asyncio)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
import dtp.paid
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.escrow import Receipt, fee
from dtp.paid import ServicePolicy, recover_store
from dtp.receipt_store import ReceiptStore
from tests.paid_twins import funded_ledger, ident, loop_in_thread, stop, streams_forever
from tests.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
DEPOSIT = 100_000
SERVER, CLIENT = ident(0x91), ident(0x92)

# A server run in another process: attached to the store, it keeps the receipts given
# (hex) as its live connections' and holds on until killed (or its stdin closes).
_RUN = (
    "import sys\n"
    "from dtp.escrow import Receipt\n"
    "from dtp.receipt_store import ReceiptStore\n"
    "store = ReceiptStore(sys.argv[1])\n"
    "store.attach_server()\n"
    "for encoded in sys.argv[2:]:\n"
    "    assert store.keep(Receipt.decode(bytes.fromhex(encoded)))\n"
    "print('serving', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def server_run(path: Path, *receipts: Receipt) -> Iterator[subprocess.Popen[str]]:
    """A server run in another process that kept ``receipts`` in the store at ``path``;
    killed at the end of the block if the test did not kill it."""
    run = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(path), *(r.encode().hex() for r in receipts)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None and run.stdout.readline() == "serving\n"
        yield run
    finally:
        if run.poll() is None:
            run.kill()
        run.wait(30)
        assert run.stdin is not None and run.stdout is not None
        run.stdin.close()
        run.stdout.close()


def kill(run: subprocess.Popen[str]) -> None:
    """SIGKILL: no detach, no clean-up; its locks go with the process."""
    os.kill(run.pid, signal.SIGKILL)
    run.wait(30)


def run_lock_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f"{path.name}-lock-"))


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    cap_id: str
    store_path: Path

    def receipt(self) -> Receipt:
        """A receipt of a new connection, for 100 KiB and one request."""
        cid = self.ledger.open_connection(
            CLIENT, self.host_id, PORT, self.cap_id, DEPOSIT
        ).connection_id
        return Receipt(cid, 102400, 1, fee(SLA, 102400, 1), 1).sign(CLIENT)

    def settled(self, receipt: Receipt) -> bool:
        return self.ledger.get_connection(receipt.connection_id).settled

    def claimed(self, receipt: Receipt) -> int:
        tc = self.ledger.get_connection(receipt.connection_id)
        return self.ledger.get_escrow(tc.escrow).claimed


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, PORT, "x", SLA)
        cap_id = ledger.create_spending_cap(CLIENT, 10**9)
        yield World(ledger, host_id, cap_id, tmp_path / "receipts.db")


def test_a_restart_beside_a_live_server_claims_what_the_killed_run_left(world: World) -> None:
    live, lost = world.receipt(), world.receipt()
    with server_run(world.store_path, live), server_run(world.store_path, lost) as killed:
        kill(killed)
        # the killed server restarts, with the other one still live
        with ReceiptStore(world.store_path) as store:
            alone = store.attach_server()
            assert not alone
            recovered = recover_store(world.ledger, SERVER, store, alone)
            # before: [] -- left for a start when no server is live, and refunded
            # to the client at its half-close timeout meanwhile
            assert [cid for cid, _ in recovered] == [lost.connection_id]
            assert world.claimed(lost) == lost.total_amount
            # the live server's connection is its own: untouched
            assert not world.settled(live)
            assert [s.receipt.connection_id for s in store.unclaimed()] == [live.connection_id]
            # the dead run's lock file is gone; the live run's and the restart's stay
            assert len(run_lock_files(world.store_path)) == 2
            store.detach_server()
        # (the restart left nothing to claim: its lock file went with its detach)
        assert len(run_lock_files(world.store_path)) == 1


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_live_server_claims_what_a_run_killed_beside_it_left(
    world: World, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    # (raising=False: the old code had no such interval, nor any recovery while live)
    monkeypatch.setattr(dtp.paid, "RECOVERY_INTERVAL", 0.2, raising=False)
    policy = ServicePolicy(refresh_interval=0.05)
    options = {
        "ledger": world.ledger,
        "identity": SERVER,
        "receipts": world.store_path,
        "policy": policy,
    }
    live, lost = world.receipt(), world.receipt()
    with loop_in_thread() as loop:
        if api == "blocking":
            server: object = dtp.socket.serve(world.host_id, PORT, streams_forever, **options)
        else:
            started = dtp.aio.serve(world.host_id, PORT, streams_forever, **options)
            server = asyncio.run_coroutine_threadsafe(started, loop).result(30)
        try:
            with server_run(world.store_path, live), server_run(world.store_path, lost) as run:
                assert server.recovered == []  # type: ignore[attr-defined]
                kill(run)
                # before: claimed at a start when none was live, long after the client
                # had taken it all back
                assert wait_for(lambda: world.settled(lost), 60)
                assert world.claimed(lost) == lost.total_amount
                recovered = server.recovered  # type: ignore[attr-defined]
                assert wait_for(lambda: len(recovered) == 1, 10)
                assert recovered[0][0] == lost.connection_id
                # rounds later, the live run's connection is still its own
                rounds = 3 * dtp.paid.RECOVERY_INTERVAL
                assert not wait_for(lambda: world.settled(live), rounds)
        finally:
            if isinstance(server, dtp.paid.PaidServer):
                server.close()
                assert server.wait_released(30)
            else:
                asyncio.run_coroutine_threadsafe(stop(server), loop).result(30)  # type: ignore[arg-type]


def test_a_store_from_before_run_ids_is_migrated_and_its_receipts_recovered(
    world: World,
) -> None:
    path = world.store_path
    left = world.receipt()
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE receipts (connection_id TEXT PRIMARY KEY, nonce TEXT NOT NULL, "
        "total_amount TEXT NOT NULL, encoded BLOB NOT NULL, "
        "claimed_amount TEXT NOT NULL DEFAULT '00000000000000000000', "
        "updated_ms INTEGER NOT NULL)"
    )
    old.execute(
        "INSERT INTO receipts (connection_id, nonce, total_amount, encoded, updated_ms) "
        "VALUES (?, ?, ?, ?, 1)",
        (left.connection_id, f"{left.nonce:020d}", f"{left.total_amount:020d}", left.encode()),
    )
    old.commit()
    old.close()
    with ReceiptStore(path) as store:
        # a server alone claims what a run before run IDs left, as before
        alone = store.attach_server()
        assert alone
        assert [cid for cid, _ in recover_store(world.ledger, SERVER, store, alone)] == [
            left.connection_id
        ]
        store.detach_server()
    check = sqlite3.connect(path)
    try:
        columns = [row[1] for row in check.execute("PRAGMA table_info(receipts)")]
    finally:
        check.close()
    assert columns[-1] == "run_id"
    assert run_lock_files(path) == []
