"""Second reading of the s33 commits on the key-file check (c749ff4) and the daemon's
fee counters (fdd5672):

* the key-file check (``_directories_above``) resolved every prefix of the path anew
  with realpath, each an lstat per name of a path that long, and built every
  directory's parents as a tuple: a load of a key a thousand names deep took a
  minute and more (cubic in the depth); the walk now resolves the path once, a name at
  a time, as the kernel does;
* a UDP flow's receipt claimed by its settlement while still on its way to the disk
  was never counted as earned when its write did not land: fdd5672 stopped raising
  ``fees_earned`` to ``fees_claimed`` for the connections served in the run, and only
  the TCP path counted its newest accepted receipt (``_Conn.accepted``) at the claim.

Real files and modes; a real in-process daemon, ledger and DTP connection (the UDP
relay itself replaced by one that hands the daemon's billing a receipt)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon.fees as fees_mod
import dtp.daemon.services as services_mod
from dtp.daemon.runner import Daemon
from dtp.errors import DTPError
from dtp.escrow import Receipt
from dtp.keys import HostIdentity
from dtp.receipt_store import ReceiptStore
from tests.daemon.test_settlement_retries import BOUND, _Client, _run, _until

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


# -- keys: one walk of the path, not one per prefix ----------------------------------------


@posix_only
def test_a_deep_key_path_is_checked_in_one_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 names deep, behind a symlinked directory: the check looks each name up once
    (and each of the link's target), not every prefix again (11 000 lstats before)."""
    depth = 150
    identity = HostIdentity.generate()
    deep = tmp_path.joinpath(*(["d"] * depth))
    deep.mkdir(parents=True, mode=0o700)
    identity.save(deep / "identity.json")
    (tmp_path / "via").symlink_to(tmp_path / "d")
    path = tmp_path.joinpath("via", *(["d"] * (depth - 1)), "identity.json")
    calls = [0]
    real_lstat = os.lstat

    def lstat(*args: Any, **kwargs: Any) -> os.stat_result:
        calls[0] += 1
        return real_lstat(*args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    assert HostIdentity.load(path) == identity
    names = len(path.parts) + len(tmp_path.parts) + 1  # (the link's target's too)
    assert calls[0] <= 2 * names, calls[0]


# -- daemon: a UDP flow's receipt claimed before its write landed ---------------------------


def _udp_service(port: int, backend: int) -> str:
    return f"""
[[service]]
name = "svc{port}"
port = {port}
protocol = "udp"
backends = ["127.0.0.1:{backend}"]
price_per_kib = 10
min_deposit = 1000
"""


def test_a_udp_receipt_claimed_before_its_write_is_earned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paid UDP flow's billing accepts one receipt; its write to the store is held past
    the settlement's wait for it, so the settlement claims it from the writer's queue,
    and then the write fails for good (dropped: its "kept" never runs). The TCP path
    counts such a claim as earned (fdd5672); the UDP path did not, and since the claim
    no longer raises fees_earned for a served connection, the fee was claimed but never
    earned. Earned once now (nothing more when a write lands is the TCP test's)."""
    monkeypatch.setattr(fees_mod, "SETTLE_FLUSH_WAIT", 0.05)
    hold, held, let_go = threading.Event(), threading.Event(), threading.Event()
    real_keep_many = ReceiptStore.keep_many

    def keep_many(self: ReceiptStore, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            held.set()
            let_go.wait(BOUND)
            raise RuntimeError("the write fails for good (a test)")  # (dropped at once)
        return real_keep_many(self, *args, **kwargs)

    monkeypatch.setattr(ReceiptStore, "keep_many", keep_many)
    to_send: list[Receipt] = []

    async def relay(reader: Any, writer: Any, backend: Any, **kwargs: Any) -> None:
        """The relay's part: its billing accepts the client's receipt, then the flow
        lasts until the client closes."""
        billing = kwargs["billing"]
        assert billing is not None
        billing.on_receipt(to_send[0])  # (what the billing does with a checked one)
        with contextlib.suppress(DTPError):
            await writer.wait_closed()

    monkeypatch.setattr(services_mod, "relay_udp_async", relay)

    async def scenario(daemon: Daemon, client: _Client, *_unused: Any) -> None:
        cid = await client.open_ledger(7000)
        receipt = client.receipt(cid)
        to_send.append(receipt)
        hold.set()
        _, writer = await client.connect(cid, 7000)
        await _until(held.is_set, "the receipt's write under way")
        writer.close()
        row = daemon.book.service("svc7000")
        await _until(lambda: row.fees_claimed, "claimed and counted")
        let_go.set()  # the write fails: the receipt is dropped, its "kept" never runs
        assert daemon.fees is not None
        await asyncio.to_thread(daemon.fees.writer.flush)
        await asyncio.sleep(0)  # (a callback, had one been posted before flush ended)
        assert client.ledger.get_connection(cid).settled
        assert row.fees_claimed == receipt.total_amount
        assert row.fees_earned == receipt.total_amount

    _run(tmp_path, lambda backend: _udp_service(7000, backend), scenario)
