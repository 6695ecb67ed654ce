"""Paid servers' receipt stores in tests: a store whose disk stalls on demand, and the
store tests' service, ledger world (:func:`store_world`) and server runs in another
process (tests/paid/test_shared_receipt_store.py, test_recovery*.py,
tests/payments/test_receipt_store_file_modes.py, tests/daemon/test_fees.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import fee
from tests.support.paid_twins import funded_ledger, ident
from tests.support.settlements import is_settled, settled_escrow


class StallingStore(ReceiptStore):
    """A receipt store whose disk stalls on demand (writes block until ``resume`` is
    set): a disk that takes minutes to sync cannot be had on purpose here."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stall = threading.Event()
        self.resume = threading.Event()
        self.stalled = threading.Event()  # a write is blocked now

    def _wait(self) -> None:
        if self.stall.is_set():
            self.stalled.set()
            self.resume.wait(600)

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        self._wait()
        return super().keep_many(receipts, claimed)

    def mark_claimed_many(self, claimed: Mapping[str, int]) -> None:
        self._wait()
        super().mark_claimed_many(claimed)


#: The service whose receipts the store tests keep
STORE_SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
STORE_PORT = 7000
STORE_DEPOSIT = 100_000
STORE_SERVER, STORE_CLIENT = ident(0x91), ident(0x92)

# A server run in another process: attached to the store, it keeps the receipts given
# (hex) as its live connections' and holds on until killed (or its stdin closes).
_RUN = (
    "import sys\n"
    "from dtp.payments.receipts import Receipt\n"
    "from dtp.payments.receipt_store import ReceiptStore\n"
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


@dataclass
class StoreWorld:
    """A ledger with the store tests' service and a client's spending cap, and where
    the store is."""

    ledger: LocalLedger
    host_id: str
    cap_id: str
    store_path: Path

    def receipt(self) -> Receipt:
        """A receipt of a new connection, for 100 KiB and one request."""
        cid = self.ledger.open_connection(
            STORE_CLIENT, self.host_id, STORE_PORT, self.cap_id, STORE_DEPOSIT
        ).connection_id
        return Receipt(
            self.ledger.receipt_scope(cid), 102400, 1, fee(STORE_SLA, 102400, 1), 1
        ).sign(STORE_CLIENT)

    def settled(self, receipt: Receipt) -> bool:
        return is_settled(self.ledger, receipt.connection_id)

    def claimed(self, receipt: Receipt) -> int:
        return settled_escrow(self.ledger, receipt.connection_id).claimed


@contextmanager
def store_world(tmp_path: Path) -> Iterator[StoreWorld]:
    """A funded ledger with the store tests' Host, service and the client's spending cap;
    the store at ``tmp_path / "receipts.db"``."""
    with funded_ledger(tmp_path, STORE_CLIENT) as ledger:
        host_id = ledger.create_host(STORE_SERVER, STORE_SERVER.noise_public)
        ledger.add_service(STORE_SERVER, host_id, STORE_PORT, "x", STORE_SLA)
        cap_id = ledger.create_spending_cap(STORE_CLIENT, 10**9)
        yield StoreWorld(ledger, host_id, cap_id, tmp_path / "receipts.db")
