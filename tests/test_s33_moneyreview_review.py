"""Second reading of the daemon's settlement retries and counters (8848a0c, 57db505):

* A retry of a failed settlement is scheduled as a task (``ServiceHost._retry_loop``)
  and takes the connection's ``_settling`` place only at its first step. An admission
  of the same ledger connection that resumed in between (its ledger read done, its
  wake-up already queued ahead of the retry's first step) found nothing being settled,
  took the connection ID and was served -- and the retry then closed and settled the
  ledger connection under the client being served.
* ``fees_earned`` was raised to ``fees_claimed`` after every settlement ("what was
  claimed was earned"), the live connections' too: a settlement that claimed a receipt
  still on its way to the disk (the store slow past ``SETTLE_FLUSH_WAIT``) raised it by
  the claim, and the receipt's own "kept" callback added it once more when the write
  landed -- the fee counted twice as earned.

Real LocalLedger files, real DTP connections on 127.0.0.1 to an in-process daemon; the
ledger's ``close_connection`` made to fail (LedgerUnavailable) by a thin wrapper, the
store's write held by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.daemon.fees as fees_mod
import dtp.daemon.services as services_mod
from dtp.chain.local import LocalLedger
from dtp.connection import ConnectionConfig
from dtp.daemon.config import load_config
from dtp.daemon.runner import Daemon
from dtp.daemon.tunnel import read_status
from dtp.errors import LedgerUnavailable
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity
from dtp.receipt_store import ReceiptStore

SUI = 1_000_000_000
DEPOSIT = 1_000_000
BOUND = 5.0


def _write_config(tmp: Path, services: str) -> Path:
    HostIdentity.generate().save(tmp / "provider.key")
    config = tmp / "daemon.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
faucet = {SUI}
drain_timeout = 1
{services}"""
    )
    return config


def _service(port: int, backend: int, paid: bool) -> str:
    price = "price_per_kib = 10\nmin_deposit = 1000\n" if paid else ""
    return f"""
[[service]]
name = "svc{port}"
port = {port}
backends = ["127.0.0.1:{backend}"]
health_interval = 30
{price}"""


@contextlib.asynccontextmanager
async def _echo() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class _Client:
    def __init__(self, tmp: Path, daemon: Daemon) -> None:
        self.identity = HostIdentity.generate()
        self.ledger = LocalLedger(tmp / "ledger.sqlite")
        self.ledger.faucet(self.identity.sui_address, SUI)
        self.cap = self.ledger.create_spending_cap(self.identity, SUI // 2)
        assert daemon.host_id is not None and daemon.endpoint is not None
        self.host_id = daemon.host_id
        self.endpoint = daemon.endpoint
        self.server_key = daemon.identity.noise_public

    async def open_ledger(self, port: int) -> str:
        opened = await asyncio.to_thread(
            self.ledger.open_connection, self.identity, self.host_id, port, self.cap, DEPOSIT
        )
        return opened.connection_id

    async def connect(
        self, cid: str, port: int
    ) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
        config = ConnectionConfig(
            identity=self.identity,
            is_client=True,
            connection_id=bytes.fromhex(cid[2:]),
            port=port,
        )
        host, dtp_port = self.endpoint
        return await dtp.aio.open_connection(
            host, dtp_port, identity=self.identity, server_key=self.server_key, config=config
        )

    def receipt(self, cid: str, kib: int = 40) -> Receipt:
        sla = self.ledger.get_connection(cid).sla
        return Receipt(cid, kib * 1024, 0, fee(sla, kib * 1024, 0), 1).sign(self.identity)


async def _tunnel(writer: dtp.aio.DTPStreamWriter) -> bytes:
    reader, stream = await writer.open_stream()
    await read_status(reader)
    stream.write(b"ping")
    stream.write_eof()
    return await reader.read()


async def _until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


def _run(
    tmp: Path,
    services: Callable[[int], str],
    scenario: Callable[[Daemon, _Client], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with _echo() as port:
            daemon = Daemon(load_config(_write_config(tmp, services(port))))
            client: _Client | None = None
            try:
                await daemon.start()
                client = _Client(tmp, daemon)
                await scenario(daemon, client)
            finally:
                await asyncio.wait_for(daemon.drain(), 8 * BOUND)
                if client is not None:
                    client.ledger.close()

    asyncio.run(asyncio.wait_for(main(), 16 * BOUND))


def test_an_admission_resuming_before_a_retrys_first_step_is_not_settled_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's settlement failed (its close refused: the ledger away), so it is
    tried again. The retry task is made; before its first step runs, an admission of the
    same ledger connection (the client back, its ledger read done) resumes and takes the
    connection ID, as dtp.aio then serves it. Before, the retry went on and closed and
    settled the ledger connection under the client being served; now it leaves it to
    that connection (tried again once it is no longer served), settled once."""
    monkeypatch.setattr(services_mod, "SETTLE_RETRY", 0.05)
    monkeypatch.setattr(services_mod, "SETTLE_RETRY_MAX", 0.1)
    away: set[str] = set()
    real_close = LocalLedger.close_connection

    def close_connection(
        self: LocalLedger, signer: HostIdentity, connection_id: str, host_id: str | None = None
    ) -> None:
        if connection_id in away:
            raise LedgerUnavailable("ledger.sqlite: the ledger is away (a test)")
        real_close(self, signer, connection_id, host_id)

    monkeypatch.setattr(LocalLedger, "close_connection", close_connection)
    armed: list[str] = []
    attempts: list[asyncio.Future[Any]] = []

    class Handlers(set[asyncio.Future[Any]]):
        """The host's handler set: the first retry task added after arming has the
        admission of its connection resume right behind it, ahead of its first step."""

        def add(self, task: asyncio.Future[Any]) -> None:
            super().add(task)
            if armed and isinstance(task, asyncio.Task):
                coro = task.get_coro()
                frame = getattr(coro, "cr_frame", None)
                if frame is not None and frame.f_locals.get("retry"):
                    cid = armed.pop()
                    attempts.append(task)
                    # what _admit does once its ledger read is back: not being settled
                    # (nothing in _settling yet), so the ID is taken for the DTP
                    # connection dtp.aio serves in this same step
                    assert cid not in host._settling
                    assert host._reserve(cid) is None
                    host._unclaimed.discard(cid)  # (its handler took it)

    host: services_mod.ServiceHost

    async def scenario(daemon: Daemon, client: _Client) -> None:
        nonlocal host
        assert daemon.services is not None
        host = daemon.services
        assert not host._handlers
        host._handlers = Handlers()
        cid = await client.open_ledger(7000)
        away.add(cid)
        _, writer = await client.connect(cid, 7000)
        assert await _tunnel(writer) == b"ping"
        writer.close()
        await _until(lambda: cid in host._retries, "its settlement failed")
        away.clear()  # the ledger is back
        armed.append(cid)
        await _until(lambda: attempts, "a retry made")
        await asyncio.wait(set(attempts))
        # the retry left the connection served alone: still Open on the ledger
        assert not client.ledger.get_connection(cid).settled
        row = daemon.book.service("svc7000")
        assert row.refunded == 0
        host._served.release(cid)  # the connection served ends
        await _until(lambda: row.refunded, "settled by a later retry")
        assert client.ledger.get_connection(cid).settled
        assert row.refunded == DEPOSIT

    _run(tmp_path, lambda b: _service(7000, b, paid=False), scenario)


def test_a_claim_of_a_receipt_still_being_written_is_earned_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paid connection sends one receipt and closes; the store's write of it is slow
    (held past the settlement's wait for it), so the settlement claims it from the
    writer's queue. Before, the claim raised fees_earned to fees_claimed and the
    receipt's "kept" callback, once the write landed, added it again: earned twice the
    fee. Now it is earned once, claimed once."""
    monkeypatch.setattr(fees_mod, "SETTLE_FLUSH_WAIT", 0.05)
    hold, held, let_go = threading.Event(), threading.Event(), threading.Event()
    real_keep_many = ReceiptStore.keep_many

    def keep_many(self: ReceiptStore, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            held.set()
            let_go.wait(BOUND)
        return real_keep_many(self, *args, **kwargs)

    monkeypatch.setattr(ReceiptStore, "keep_many", keep_many)

    async def scenario(daemon: Daemon, client: _Client) -> None:
        assert daemon.fees is not None
        cid = await client.open_ledger(7000)
        receipt = client.receipt(cid)
        hold.set()
        _, writer = await client.connect(cid, 7000)
        writer.write(receipt.encode())
        await writer.drain()
        await _until(held.is_set, "the receipt's write under way")
        writer.close()
        row = daemon.book.service("svc7000")
        await _until(lambda: row.fees_claimed, "claimed and counted")
        assert row.fees_claimed == receipt.total_amount
        hold.clear()
        let_go.set()  # the write lands: its "kept" callback runs
        await asyncio.to_thread(daemon.fees.writer.flush)
        await asyncio.sleep(0)  # (the callback, posted to the loop before flush ended)
        assert client.ledger.get_connection(cid).settled
        assert row.fees_claimed == receipt.total_amount
        assert row.fees_earned == receipt.total_amount

    _run(tmp_path, lambda b: _service(7000, b, paid=True), scenario)
