"""The services daemon: a forwarder's deposit running out mid-tunnel cuts that tunnel
alone (the other tunnels of its DTP connection go on to their ends), and the local
client gets every byte paid for, then a reset; the provider claims exactly what the
final receipt covers."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._tunnel import CUT_DELIVERY
from dtp.eventloop import uvloop_installed
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Escrow, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt, fee
from dtp.payments.receipt_store import ReceiptStore
from tests.daemon.daemon_configs import write_provider
from tests.daemon.tcp_backends import Backend, serves_health_checks
from tests.support.daemon_procs import (
    SUI,
    daemon,
    forward_address,
    running,
    write_forwarder,
)
from tests.support.settlements import settled_escrow

ClientRun = Callable[[socket.socket], Any]


def test_used_up_deposit_cuts_only_its_own_tunnel(tmp_path: Path) -> None:
    go_on = threading.Event()

    def handler(sock: socket.socket) -> None:
        if serves_health_checks(sock):
            return
        sock.settimeout(10)
        first = sock.recv(16)
        if first.startswith(b"big"):
            sock.sendall(b"x" * (3 << 20))  # far more than the deposit pays for
        else:
            sock.sendall(b"small-reply")
            go_on.wait(20)  # (the deposit is used up to the byte: nothing more is sent)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(16)

    backend = Backend(handler)
    try:
        config = write_provider(
            tmp_path,
            backend.port,
            "drain_timeout = 2",
            "health_interval = 30\nprice_per_kib = 10\nmin_deposit = 10000",
        )
        d = daemon(config)
        with running(d):
            f = daemon(write_forwarder(tmp_path, d.info["host_id"], 7000, "deposit = 10000\n"))
            with running(f):
                address = forward_address(f)
                with socket.create_connection(address, timeout=10) as small:
                    small.sendall(b"hello")
                    assert small.recv(11) == b"small-reply"
                    with socket.create_connection(address, timeout=10) as big:
                        big.sendall(b"big")
                        received = 0
                        try:
                            while chunk := big.recv(1 << 16):
                                received += len(chunk)
                        except ConnectionResetError:
                            pass
                        assert received < 3 << 20  # cut: the deposit ran out
                    go_on.set()
                    # the other tunnel went on to its clean end: not reset with the cut one
                    assert small.recv(16) == b""
                assert f.stop() == 0
            assert "raised: closing the connection" not in f.log()
            # the cut says how much was held and what to change
            assert (
                "the deposit of this DTP connection (10,000 MIST) is used up: a larger "
                "`deposit` in the [[forward]] pays for larger transfers"
            ) in f.log()
            assert d.stop() == 0
    finally:
        go_on.set()
        backend.close()


SIZE = 4 << 20
"""Bytes each transfer would move: four times what the deposit pays for."""


@contextlib.contextmanager
def _deposit_pair(
    tmp_path: Path, loop: str, backend_port: int, price: int = 10
) -> Iterator[tuple[str, int]]:
    """A provider serving ``backend_port`` at ``price`` MIST per KiB and a forwarder
    holding a deposit of 10,000 MIST, both on ``loop``; yields the forward's address,
    and checks that both daemons stop cleanly."""
    config = write_provider(
        tmp_path,
        backend_port,
        f'drain_timeout = 2\nevent_loop = "{loop}"',
        f"health_interval = 30\nprice_per_kib = {price}\nmin_deposit = 10000",
    )
    d = daemon(config)
    with running(d):
        lines = f'ledger = "ledger.sqlite"\nfaucet = {10 * SUI}\nevent_loop = "{loop}"'
        f = daemon(write_forwarder(tmp_path, d.info["host_id"], 7000, "deposit = 10000\n", lines))
        with running(f):
            yield forward_address(f)
            assert f.stop() == 0
        assert d.stop() == 0


def _cut_transfer(
    tmp_path: Path,
    loop: str,
    handler: Callable[[socket.socket], None],
    client: ClientRun,
    price: int = 10,
) -> tuple[int, Receipt, Escrow]:
    """One tunnel of a forwarder with a deposit of 10,000 MIST at ``price`` MIST per KiB,
    both daemons on ``loop``: the backend runs ``handler``, the local client ``client(sock)``
    (what it returns is returned first); then the final receipt the provider holds,
    and the connection's escrow once both daemons stopped."""
    if loop == "uvloop" and not uvloop_installed():
        pytest.skip("uvloop is not installed")
    backend = Backend(handler)
    try:
        with (
            _deposit_pair(tmp_path, loop, backend.port, price) as address,
            socket.create_connection(address, timeout=10) as sock,
        ):
            result = client(sock)
    finally:
        backend.close()
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        client_address = HostIdentity.load(tmp_path / "client.key").sui_address
        events, _ = ledger.events()
        opened = [
            e.fields
            for e in events
            if e.name == "ConnectionOpened" and e.fields["client"] == client_address
        ]
        assert len(opened) == 1
        cid = opened[0]["connection"]
        sla = Sla(**opened[0]["sla"])  # (the connection's terms, from its open)
        escrow = settled_escrow(ledger, cid)
    finally:
        ledger.close()
    with ReceiptStore(tmp_path / "daemon-state" / "receipts.sqlite") as store:
        stored = store.latest(cid)
    assert stored is not None
    final = stored.receipt
    assert final.total_requests == 1
    # the deposit is used to the byte: one more would not be covered
    assert final.total_amount <= 10000 < fee(sla, final.total_bytes + 1, 1)
    # the provider claimed what the receipt covers, and the client got the rest back
    assert escrow.claimed == final.total_amount
    assert escrow.refunded == escrow.deposited - final.total_amount
    return result, final, escrow


def _sends_then_waits(sock: socket.socket) -> None:
    """A backend that sends SIZE bytes once asked, or until the tunnel's cut."""
    if serves_health_checks(sock):
        return
    sock.settimeout(30)
    sock.recv(16)
    with contextlib.suppress(OSError):  # (the tunnel's cut resets us)
        sock.sendall(b"x" * SIZE)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(16)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cut_download_delivers_every_byte_paid_for(tmp_path: Path, loop: str) -> None:
    """A download larger than the deposit: the local client gets exactly the bytes the
    final receipt covers (the last chunk cut where its cover ends), then a reset."""

    def download(sock: socket.socket) -> int:
        # a small receive buffer: most of what was paid for is still on its way to us
        # when the deposit runs out
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"big")
        received = 0
        with pytest.raises(ConnectionResetError):  # cut: not the clean end of a transfer
            while chunk := sock.recv(1 << 16):
                received += len(chunk)
        return received

    received, final, _ = _cut_transfer(tmp_path, loop, _sends_then_waits, download)
    assert 0 < received < SIZE
    # every byte paid for reached the client, and nothing more (3 bytes went up)
    assert received + 3 == final.total_bytes
    # the forward's status counts what went on, not the chunk's uncovered rest
    row = json.loads((tmp_path / "forwarder-state" / "status.json").read_text())["forwards"]["svc"]
    assert (row["bytes_in"], row["bytes_out"]) == (3, received)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cut_download_waits_for_a_slow_reader(tmp_path: Path, loop: str) -> None:
    """A local client that reads a little at a time, pausing, takes longer than
    CUT_DELIVERY in all to read what was paid for (about 100 KiB at 100 MIST per KiB):
    the cut waits for it as long as it keeps reading, and it still gets every byte paid
    for before the reset."""
    pause = 0.4  # well under CUT_DELIVERY: the client is slow, not gone
    assert pause < CUT_DELIVERY

    def download(sock: socket.socket) -> tuple[int, float]:
        # a small window: what was paid for waits in the forwarder's send queue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"big")
        received = 0
        start = time.monotonic()
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += len(chunk)
                time.sleep(pause)
        return received, time.monotonic() - start

    (received, took), final, _ = _cut_transfer(
        tmp_path, loop, _sends_then_waits, download, price=100
    )
    assert received + 3 == final.total_bytes  # every byte paid for, and nothing more
    assert took > CUT_DELIVERY  # (longer than the wait without progress allows in all)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cut_upload_delivers_every_byte_paid_for(tmp_path: Path, loop: str) -> None:
    """An upload larger than the deposit: the backend gets exactly the bytes the final
    receipt covers, then a reset."""
    got: list[tuple[int, bool]] = []

    def handler(sock: socket.socket) -> None:
        if serves_health_checks(sock):
            return
        sock.settimeout(10)
        received = 0
        try:
            while chunk := sock.recv(1 << 16):
                received += len(chunk)
        except ConnectionResetError:
            got.append((received, True))
        else:
            got.append((received, False))

    def upload(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # (the cut resets us)
            sock.sendall(b"y" * SIZE)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(16)

    _, final, _ = _cut_transfer(tmp_path, loop, handler, upload)
    [(received, reset)] = got
    assert reset  # cut: not the clean end of a transfer
    assert 0 < received < SIZE
    assert received == final.total_bytes


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_provider_claims_every_cut_connections_final_receipt(tmp_path: Path, loop: str) -> None:
    """Downloads read as fast as they come, each cut by its connection's deposit: the
    provider, still sending when the cut's receipts leave, gets them all and claims
    the whole deposit of every connection: the forwarder's connection stays open a
    second after the cut, since a carrier closed under the provider's bytes would be
    reset, losing the receipts the provider had not read yet."""
    if loop == "uvloop" and not uvloop_installed():
        pytest.skip("uvloop is not installed")
    downloads = 4

    backend = Backend(_sends_then_waits)
    got = []
    try:
        with _deposit_pair(tmp_path, loop, backend.port) as address:
            for _ in range(downloads):
                received = 0
                with socket.create_connection(address, timeout=10) as sock:
                    sock.sendall(b"big")
                    with contextlib.suppress(ConnectionResetError):
                        while chunk := sock.recv(1 << 16):
                            received += len(chunk)
                got.append(received)
    finally:
        backend.close()
    # each download was cut where its own connection's deposit ran out
    assert got == [10000 * 1024 // 10 - 3] * downloads
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        client_address = HostIdentity.load(tmp_path / "client.key").sui_address
        events, _ = ledger.events()
        escrows = [
            settled_escrow(ledger, e.fields["connection"])
            for e in events
            if e.name == "ConnectionOpened" and e.fields["client"] == client_address
        ]
    finally:
        ledger.close()
    assert [(e.claimed, e.refunded) for e in escrows] == [(10000, 0)] * downloads
