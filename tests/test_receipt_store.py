"""The server's receipt store: newest wins, survives restarts, lists what is unclaimed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dtp.chain.objects import Sla
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity
from dtp.receipt_store import ReceiptStore

CLIENT = HostIdentity.generate()
SLA = Sla(10, 5, 1000)
CONN = "0x" + "c0" * 32
OTHER = "0x" + "0d" * 32


def receipt(nonce: int, nbytes: int, requests: int = 0, conn: str = CONN) -> Receipt:
    return Receipt(conn, nbytes, requests, fee(SLA, nbytes, requests), nonce).sign(CLIENT)


def test_newest_nonce_wins_and_older_is_refused(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "r.sqlite") as store:
        assert store.latest(CONN) is None
        assert store.keep(receipt(2, 2048))
        assert not store.keep(receipt(1, 4096))  # older nonce: refused
        assert not store.keep(receipt(2, 9999))  # same nonce: refused
        assert store.keep(receipt(10, 10240))
        latest = store.latest(CONN)
        assert latest is not None and latest.receipt.nonce == 10
        assert latest.receipt.verify(CLIENT.ed25519_public)


def test_u64_nonces_order_numerically() -> None:
    store = ReceiptStore()
    assert store.keep(receipt(9, 1))
    assert store.keep(receipt(10, 2))  # 10 > 9 although "10" < "9" as plain text
    assert store.keep(receipt(2**64 - 1, 3))
    assert not store.keep(receipt(2**63, 4))
    latest = store.latest(CONN)
    assert latest is not None and latest.receipt.nonce == 2**64 - 1


def test_survives_restart_and_lists_unclaimed(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ReceiptStore(path) as store:
        store.keep(receipt(3, 10240, 4))
        store.keep(receipt(1, 1024, conn=OTHER))
        store.mark_claimed(OTHER, fee(SLA, 1024, 0))
    # a fresh process sees what the first one kept
    code = (
        "from dtp.receipt_store import ReceiptStore\n"
        f"s = ReceiptStore({str(path)!r})\n"
        "print([(r.receipt.nonce, r.unclaimed) for r in s.unclaimed()])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"[(3, {fee(SLA, 10240, 4)})]"
