"""Serving a paid DTP service with asyncio: :func:`dtp.aio.serve`, the twin of
:mod:`dtp.paid` (same policy, gate, rate limits, host refresh and settlement).

The callback gets a :class:`PaidReader` / :class:`PaidWriter` pair: reads and
``drain()`` wait for payment and for the rate limits first (no flow-control credit goes
back meanwhile, so the client's writes block). Ledger calls and receipt-store writes
run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtp.chain.objects import normalize_id
from dtp.connection import CloseCode
from dtp.errors import ChainError, DTPError, PaymentRequired, move_error
from dtp.escrow import Receipt
from dtp.metering import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_PAYMENT_REQUIRED,
    RECEIPT_REQUEST,
    GateState,
    GateVerdict,
    ReceiptGate,
)
from dtp.paid import (
    ServicePolicy,
    check_address,
    closes_store,
    gate_for,
    open_store,
    release_receipts,
    settle_ended,
)
from dtp.ratelimit import ClientBuckets, HostPolicy, RateLimiter
from dtp.receipt_store import ReceiptStore
from dtp.receipt_writer import ReceiptWriter
from dtp.settlement import publish_endpoint, recover_unclaimed

if TYPE_CHECKING:
    from dtp.aio import DTPServer, DTPStreamReader, DTPStreamWriter, _Protocol
    from dtp.chain.ledger import Ledger
    from dtp.chain.objects import Settlement
    from dtp.connection import ConnectionConfig
    from dtp.keys import HostIdentity

__all__ = ["PaidAioServer", "PaidReader", "PaidWriter", "serve"]

logger = logging.getLogger(__name__)

PaidCallback = Callable[["PaidReader", "PaidWriter"], "Awaitable[None] | None"]


class _PaidConnection:
    """The server's state of one paid connection (shared by its streams)."""

    def __init__(
        self,
        proto: _Protocol,
        gate: ReceiptGate,
        buckets: ClientBuckets,
        policy: ServicePolicy,
        writer: ReceiptWriter,
    ) -> None:
        self.proto = proto
        self.receipt_writer = writer
        self.conn = proto.conn
        self.client = proto.conn.peer_address or ""
        cid = proto.conn.peer_connection_id
        self.connection_id = "" if cid is None else "0x" + cid.hex()
        self.gate = gate
        self.buckets = buckets
        self.policy = policy
        #: The receipt that came with the end of the connection, claimed by the settlement
        #: instead of written first (as dtp.paid's)
        self.final: Receipt | None = None

    def on_receipt(self, data: bytes) -> None:
        """A RECEIPT frame: checked here, stored by the writer thread (never on the event
        loop), counted once stored."""
        try:
            receipt = self.gate.check(data)
        except ChainError as exc:  # InvalidReceipt, SpendingCapExceeded
            logger.warning("connection %s: %s", self.connection_id, exc)
            return
        if self.conn.closed:
            self.final = receipt
            return
        self.receipt_writer.submit(receipt, self._stored)

    def _stored(self, receipt: Receipt) -> None:
        """In the writer thread: hand the stored receipt to the event loop."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to resume
            self.proto.loop.call_soon_threadsafe(self._kept, receipt)

    def _kept(self, receipt: Receipt) -> None:
        self.gate.kept(receipt)
        self.proto._notify()  # a paused reader or drain() looks again

    def verdict(self) -> GateVerdict:
        total_bytes, total_requests = self.conn.usage
        return self.gate.verdict(int(time.monotonic() * 1000), total_bytes, total_requests)

    def close(self, code: int, reason: str) -> None:
        self.conn.close(code, reason)
        self.proto.flush()
        if self.proto.transport is not None:
            self.proto.transport.close()

    async def wait_paid(self) -> None:
        """As :meth:`dtp.paid._PaidConnection.wait_paid`."""
        if self.gate.serving(*self.conn.usage):
            return
        verdict = self.verdict()
        session = self.proto.session
        while verdict.state is GateState.PAUSE:
            if session.terminated is not None:
                return
            with contextlib.suppress(DTPError):
                self.conn.send_receipt(RECEIPT_REQUEST)
            self.proto.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.proto.wait_for(
                        lambda: (
                            self.verdict().state is not GateState.PAUSE
                            or session.terminated is not None
                        )
                    ),
                    self.policy.request_interval,
                )
            verdict = self.verdict()
        if verdict.state is GateState.CLOSE:
            logger.info("closing connection %s: %s", self.connection_id, verdict.reason)
            self.close(CLOSE_PAYMENT_REQUIRED, verdict.reason)
            raise PaymentRequired(verdict.reason, CLOSE_PAYMENT_REQUIRED)

    async def request_final_receipt(self) -> None:
        """As :meth:`dtp.paid._PaidConnection.request_final_receipt`."""
        session = self.proto.session

        def done() -> bool:
            return session.terminated is not None or self.gate.settled_up(*self.conn.usage)

        deadline = time.monotonic() + self.policy.final_receipt_timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(DTPError):
                self.conn.send_receipt(RECEIPT_REQUEST)
            self.proto.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.proto.wait_for(done), min(left, self.policy.request_interval)
                )

    async def throttle(self, nbytes: int = 0, requests: int = 0) -> None:
        if not self.buckets.bytes.rate and not self.buckets.requests.rate:
            return
        now = time.monotonic()
        delay = max(
            self.buckets.bytes.charge(nbytes, now), self.buckets.requests.charge(requests, now)
        )
        if delay > 0:
            await asyncio.sleep(delay)

    def deny(self) -> None:
        logger.info(
            "closing connection %s: the firewall now denies %s", self.connection_id, self.client
        )
        self.close(CLOSE_FIREWALL_DENIED, "the host's firewall now denies this client")


class PaidReader:
    """A paid stream's reader: :class:`dtp.aio.DTPStreamReader` whose reads wait for
    payment and the rate limits first."""

    def __init__(self, reader: DTPStreamReader, paid: _PaidConnection) -> None:
        self._reader = reader
        self._paid = paid

    async def read(self, n: int = -1) -> bytes:
        await self._paid.wait_paid()
        data = await self._reader.read(n)
        await self._paid.throttle(len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        await self._paid.wait_paid()
        data = await self._reader.readexactly(n)
        await self._paid.throttle(len(data))
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        await self._paid.wait_paid()
        data = await self._reader.readuntil(separator)
        await self._paid.throttle(len(data))
        return data

    async def readline(self) -> bytes:
        await self._paid.wait_paid()
        data = await self._reader.readline()
        await self._paid.throttle(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class PaidWriter:
    """A paid stream's writer: :meth:`drain` waits for payment and the rate limits."""

    def __init__(self, writer: DTPStreamWriter, paid: _PaidConnection) -> None:
        self._writer = writer
        self._paid = paid
        self._unthrottled = 0

    @property
    def gate(self) -> ReceiptGate:
        return self._paid.gate

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writer.write(data)
        self._unthrottled += len(data)

    async def drain(self) -> None:
        await self._writer.drain()
        written, self._unthrottled = self._unthrottled, 0
        await self._paid.throttle(written)
        await self._paid.wait_paid()

    async def accept_stream(self) -> tuple[PaidReader, PaidWriter]:
        """Wait for the client to open a stream (one request)."""
        await self._paid.wait_paid()
        reader, writer = await self._writer.accept_stream()
        await self._paid.throttle(requests=1)
        return PaidReader(reader, self._paid), PaidWriter(writer, self._paid)

    async def open_stream(self) -> tuple[PaidReader, PaidWriter]:
        reader, writer = await self._writer.open_stream()
        return PaidReader(reader, self._paid), PaidWriter(writer, self._paid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class PaidAioServer:
    """The asyncio paid server (see :func:`serve`)."""

    def __init__(
        self,
        host_id: str,
        port: int,
        callback: PaidCallback,
        *,
        ledger: Ledger,
        identity: HostIdentity,
        store: ReceiptStore,
        policy: ServicePolicy,
        close_store: bool = False,
    ) -> None:
        self.ledger = ledger
        self.identity = identity
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.callback = callback
        self.store = store
        self._own_store = close_store  # closed with the server (one serve() opened)
        self.receipt_writer = ReceiptWriter(store)
        self.policy = policy
        self.server: DTPServer | None = None
        self.host_policy: HostPolicy | None = None
        self.limiter = RateLimiter()
        self.recovered: list[tuple[str, Settlement]] = []
        self.settlements: deque[tuple[str, Settlement]] = deque(maxlen=1024)
        self._live: set[_PaidConnection] = set()
        self._policy_task: asyncio.Task[None] | None = None
        self._closed = False
        self._handling = 0  # _handle calls running (they may still write receipts)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address

    async def _start(
        self,
        address: tuple[str, int],
        config: ConnectionConfig | None,
        endpoint: tuple[str, int] | None,
    ) -> None:
        from dtp.aio import start_server

        host = await asyncio.to_thread(self.ledger.get_host, self.host_id)
        if self.port not in host.services:
            raise move_error("host", "EServiceNotFound", f"port {self.port} of host {self.host_id}")
        self.recovered = await asyncio.to_thread(
            recover_unclaimed, self.ledger, self.identity, self.store
        )
        self.server = await start_server(
            self._handle,
            address[0],
            address[1],
            identity=self.identity,
            config=config,
            ledger=self.ledger,
            host_id=self.host_id,
            dtp_port=self.port,
        )
        await asyncio.to_thread(
            publish_endpoint, self.ledger, self.identity, self.host_id, endpoint or self.address
        )
        self.host_policy = HostPolicy(host, time.monotonic(), self.policy.refresh_interval)
        self.limiter.set_limits(
            host.firewall.max_bytes_per_sec, host.firewall.max_requests_per_sec, time.monotonic()
        )
        self._policy_task = asyncio.ensure_future(self._policy_loop())

    async def _handle(self, reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        if self._closed:
            # a handshake that finished as the server closed: the receipt writer may be
            # gone already, so nothing could be kept for it
            writer.abort("the server is closed")
            return
        self._handling += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._handling -= 1
            if self._closed and not self._handling:
                self._release()

    async def _serve(self, reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        proto = writer._proto  # the connection's I/O driver: the gate waits on it
        conn = proto.conn
        client = conn.peer_address
        raw_cid = conn.peer_connection_id
        if client is None or raw_cid is None:
            writer.abort("no ledger connection")
            return
        cid = "0x" + raw_cid.hex()
        try:
            gate = await asyncio.to_thread(gate_for, self.ledger, cid, self.policy)
        except ChainError as exc:
            logger.warning("cannot meter connection %s: %s", cid, exc)
            writer.abort("the server cannot read the connection on the ledger")
            return
        paid = _PaidConnection(
            proto,
            gate,
            self.limiter.acquire(client, time.monotonic()),
            self.policy,
            self.receipt_writer,
        )
        proto.session.on_receipt = paid.on_receipt
        while proto.session.receipts:
            paid.on_receipt(proto.session.receipts.popleft())
        proto.hold_carrier = True  # until settled, should the client close
        self._live.add(paid)
        try:
            await paid.throttle(requests=1)
            result = self.callback(PaidReader(reader, paid), PaidWriter(writer, paid))
            if inspect.isawaitable(result):
                await result
        except DTPError as exc:
            logger.info("connection %s ended: %s", cid, exc)
        except Exception:
            logger.exception("callback failed for connection %s", cid)
        finally:
            self._live.discard(paid)
            self.limiter.release(client)
            if proto.session.terminated is None:
                await paid.request_final_receipt()
            ended = proto.session.terminated
            if ended is not None and ended.by_peer and ended.error_code == CloseCode.NO_ERROR:
                # the client closed: settle before our end of the carrier closes (as
                # dtp.paid does)
                await self._settle(cid, paid.final)
                self._release_carrier(proto)
            else:
                self._release_carrier(proto)
                if proto.session.terminated is None:
                    writer.close()
                    with contextlib.suppress(DTPError):
                        await writer.wait_closed()
                await self._settle(cid, paid.final)

    @staticmethod
    def _release_carrier(proto: _Protocol) -> None:
        proto.hold_carrier = False
        if proto.session.terminated is not None and proto.transport is not None:
            proto.transport.close()

    async def _settle(self, cid: str, final: Receipt | None) -> None:
        settlement = await asyncio.to_thread(
            settle_ended, self.ledger, self.identity, cid, self.receipt_writer, final
        )
        if settlement is not None:
            self.settlements.append((cid, settlement))

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.refresh_interval)
            await self.refresh_policy()

    async def refresh_policy(self) -> None:
        """Read the Host now and apply its firewall to open connections."""
        assert self.host_policy is not None
        try:
            host = await asyncio.to_thread(self.ledger.get_host, self.host_id)
        except ChainError as exc:
            logger.warning("cannot read host %s: %s", self.host_id, exc)
            return
        now = time.monotonic()
        live = list(self._live)
        change = self.host_policy.refresh(host, now, frozenset(p.client for p in live))
        if change.limits_changed:
            self.limiter.set_limits(
                change.firewall.max_bytes_per_sec, change.firewall.max_requests_per_sec, now
            )
        for paid in live:
            if paid.client in change.denied:
                paid.deny()

    @property
    def open_connections(self) -> int:
        return len(self._live)

    def close(self) -> None:
        """Stop accepting and refreshing. Open connections finish and settle; once the
        last has (at once when there are none), the receipt writer writes what it holds
        and stops (a short wait on the event loop: one SQLite commit at most), and a
        store :func:`serve` opened from ``receipts`` (a path) is closed. A
        :class:`ReceiptStore` passed in stays open: the caller's to close, after this."""
        if self._closed:
            return
        self._closed = True
        if self._policy_task is not None:
            self._policy_task.cancel()
        if self.server is not None:
            self.server.close()
        if not self._handling:
            self._release()
        else:
            # what is waiting is written now; the last connection to end stops the writer
            self.receipt_writer.flush(timeout=5.0)

    def _release(self) -> None:
        """Stop the receipt writer and close our own store (once, when the server is
        closed and no connection can write any more)."""
        release_receipts(self.receipt_writer, self.store, self._own_store)

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()

    async def serve_forever(self) -> None:
        assert self.server is not None
        await self.server.serve_forever()

    async def __aenter__(self) -> PaidAioServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def serve(
    host_id: str,
    port: int,
    callback: PaidCallback,
    *,
    ledger: Ledger,
    identity: HostIdentity,
    address: tuple[str, int] = ("127.0.0.1", 0),
    receipts: ReceiptStore | str | Path | None = None,
    policy: ServicePolicy | None = None,
    config: ConnectionConfig | None = None,
    endpoint: tuple[str, int] | None = None,
) -> PaidAioServer:
    """The asyncio twin of :func:`dtp.socket.serve`: a started :class:`PaidAioServer`;
    ``callback(reader, writer)`` runs per admitted client."""
    check_address(address, "address")
    if endpoint is not None:
        check_address(endpoint, "endpoint")
    store, opened = open_store(receipts)
    try:
        server = PaidAioServer(
            host_id,
            port,
            callback,
            ledger=ledger,
            identity=identity,
            store=store,
            policy=policy or ServicePolicy(),
            close_store=closes_store(receipts),
        )
    except BaseException:
        if opened:
            store.close()
        raise
    try:
        await server._start(address, config, endpoint)
    except BaseException:
        # whatever started so far stops with the error, the store too (in memory as
        # well: nobody gets this server); closed by the release, which waits for a
        # connection admitted while the endpoint was being published
        server._own_store = opened
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        raise
    return server
