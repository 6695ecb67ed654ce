"""RPC over DTP streams: blocking :class:`RpcClient` / :class:`RpcServer` and asyncio
:class:`AsyncRpcClient` / :class:`AsyncRpcServer`, on the sans-I/O
:class:`~dtp.messaging.protocol.RpcProtocol` (wire format: docs/messaging.md §2).

Every API takes an already-open stream — a :class:`dtp.socket.DTPSocket` (or anything with
``sendall``/``recv``/``settimeout``), or an asyncio ``(reader, writer)`` pair from
:mod:`dtp.aio` — so how the connection was made (address + server key today, a host ID
later) is the caller's business::

    sock = dtp.socket.create_connection(addr, server_key=key)
    client = RpcClient(sock)
    client.call("add", [1, 2], timeout=5.0)   # -> 3

The blocking client does its socket work in the calling thread ("leader/follower"): one
waiting caller reads for everyone and hands out the responses it finds, so a sequential
call costs no thread hand-off, and many threads may have calls in flight on one stream.
A call on a quiet stream (no other call in flight, no fees) is one send and usually one
read: the read is taken as its answer when it is exactly that, with no call object,
timer or event; anything else makes it an ordinary call. Likewise a server answering
inline (``workers=0``, no fees) answers a read that is one request for a plain handler
straight away. Both fall back to the general path for everything else.

Money (docs/escrow.md): a client with a :class:`~dtp.payments.receipts.Meter` attaches a signed
cumulative receipt to every request, and a server with :class:`RequestPayments` refuses
requests that no valid receipt covers. With :class:`ResponsePrepay` the client prepays the
response fee into a ledger ``ResponseEscrow`` per request; the server checks it
(:class:`ResponseFeePolicy`), the client acknowledges each response with a signature, and
the server claims with it — or the client takes the fee back after the deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import inspect
import logging
import math
import os
import select
import socket as _socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, overload

from dtp.admission import LedgerAdmission, while_opening
from dtp.errors import DTPError, LocalProtocolError, ObjectNotFound
from dtp.ledger.objects import Sla, normalize_id
from dtp.ledger.receipt import Receipt
from dtp.messaging import errors as E
from dtp.messaging.framing import DEFAULT_MAX_MESSAGE
from dtp.messaging.protocol import (
    AckReceived,
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RpcEvent,
    RpcProtocol,
    _check_count,
    _check_our_method,
    _check_our_timeout,
    _check_wait,
)
from dtp.payments.receipts import ConnectionTerms, Meter, check_next_receipt
from dtp.socket import DTPSocket

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "AsyncRpcClient",
    "AsyncRpcServer",
    "BlockingStream",
    "CallContext",
    "RequestPayments",
    "ResponseFeePolicy",
    "ResponsePrepay",
    "RpcCall",
    "RpcClient",
    "RpcServer",
    "ledger_payments",
    "response_hash",
]

logger = logging.getLogger(__name__)

RECV_SIZE = 256 * 1024
#: The fast paths' reads (the quiet call's answer, the inline server's next request)
#: while messages are small: a DTPSocket reads up to 64 KiB into its lane's own buffer,
#: cheaper than a read into a buffer of the caller's size (about 4 us a call both sides
#: together on one CPU). After a message that did not come whole in one short read they
#: read RECV_SIZE, which takes large messages faster (what does not fit a read goes
#: through the general path), until one comes whole and short again.
QUICK_RECV_SIZE = 64 * 1024


def _next_read_size(data: bytes, whole: bool) -> int:
    """A fast path's next read size after the read ``data`` was (``whole``) or was not
    one whole message."""
    return QUICK_RECV_SIZE if whole and len(data) < QUICK_RECV_SIZE else RECV_SIZE


#: A connection's first stream looks for streams the client opened at most this often
#: (seconds) while requests flow; when idle, at growing intervals up to ACCEPT_POLL_MAX.
ACCEPT_POLL_MIN = 0.005
ACCEPT_POLL_MAX = 0.1
_DEFAULT: Any = object()


class BlockingStream(Protocol):
    """What the blocking client and server need from a stream (a DTPSocket has it)."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, bufsize: int, /) -> bytes: ...

    def settimeout(self, timeout: float | None, /) -> None: ...


def _meta_copy(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A call's ``meta`` to add to (None when empty); TypeError when not a mapping."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta is a mapping or None, not {type(meta).__name__!r}")
    return dict(meta) if meta else None


def _deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` value ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


def _check_blocking_stream(stream: object) -> None:
    """A blocking client's or server's stream has what it uses (BlockingStream): an
    object without them (an asyncio writer, say) failed at the first call, in the
    reader, with an AttributeError about one of them."""
    missing = [name for name in ("sendall", "recv", "settimeout") if not hasattr(stream, name)]
    if missing:
        hint = (
            " (an asyncio stream: use AsyncRpcClient / AsyncRpcServer)"
            if hasattr(stream, "drain")
            else ""
        )
        raise TypeError(
            f"a blocking RPC stream needs sendall, recv and settimeout (a DTPSocket or a "
            f"socket); {type(stream).__name__!r} has no {', '.join(missing)}{hint}"
        )


def _check_async_streams(reader: object, writer: object) -> None:
    """The asyncio client's (reader, writer) have what it uses: a DTPSocket given as
    both failed in the read loop's task, and again at each call."""
    if not callable(getattr(reader, "read", None)):
        raise TypeError(
            "AsyncRpcClient's reader must be an asyncio stream reader (dtp.aio "
            f"open_connection's), not {type(reader).__name__!r}; a blocking DTPSocket "
            "takes RpcClient"
        )
    if not callable(getattr(writer, "write", None)) or not callable(getattr(writer, "drain", None)):
        raise TypeError(
            "AsyncRpcClient's writer must be an asyncio stream writer (dtp.aio "
            f"open_connection's), not {type(writer).__name__!r}; a blocking DTPSocket "
            "takes RpcClient"
        )


def _check_one_meter(meter: Meter | None, stream: Any) -> None:
    """Refuse an RPC meter on a connection its transport meters already (one by host
    ID, metered by default): both would sign cumulative receipts for the one escrow,
    which takes one sequence of them -- a server claims the one and the other's fees
    are never collected (or its claim fails once the connection is settled)."""
    if meter is None:
        return
    engine = getattr(stream, "_engine", None)  # a DTPSocket
    proto = getattr(stream, "_proto", None)  # a dtp.aio writer
    if getattr(engine, "payment", None) is not None or getattr(proto, "payment", None) is not None:
        raise ValueError(
            "meter=: this connection is metered by its transport already (connected by "
            "host ID): its receipts and the meter's would compete for one escrow. Pay "
            "per request with a meter on a connection made with "
            "metering=MeteringConfig(enabled=False), or let the transport's receipts pay "
            "(no meter=)"
        )


def _send_answer(stream: BlockingStream, data: bytes, closed: threading.Event) -> None:
    """``stream.sendall(data)`` whatever read timeout the stream has. A connection's
    first stream reads with short timeouts, to look for the streams the client opens
    in between (and the general loop waits for deadlines the same way), and the
    timeout is the stream's, shared by its reads and writes: an answer that a client
    is slow to take must wait for its flow-control window instead, or the stream would
    end with the answer half sent. It waits until the server closes."""
    send = getattr(stream, "send", None)
    if send is None:
        stream.sendall(data)
        return
    view = memoryview(data)
    while view:
        try:
            n: int = send(view)  # a timeout means nothing of this call was taken
        except TimeoutError:
            if closed.is_set():
                raise
            continue
        except BlockingIOError:
            # the first stream's thread set timeout 0 for a moment (to look for new
            # streams without waiting): it sets its own again at once
            if closed.is_set():
                raise
            time.sleep(0.001)
            continue
        view = view[n:]


def _can_send(sock: _socket.socket) -> bool:
    """Whether ``sock`` (a plain socket) takes data now. A socket with a timeout waits
    for room up to that timeout before it tries, even with MSG_DONTWAIT, so it is asked
    first (a DTPSocket does what the flag says). poll where there is one: select
    refuses a descriptor past FD_SETSIZE (1024), which a busy server has."""
    if not sock.gettimeout() or sock.fileno() < 0:
        # no timeout: the flag is obeyed (no poll per send); closed: the send says so
        # (OSError), as it did before
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(0))
    return bool(select.select((), (sock,), (), 0)[1])


#: How long one wait of a blocked write lasts (seconds) before it looks at its deadline.
_SEND_STEP = 0.25
#: The longest a client's read waits (seconds) before it looks whether the client was
#: closed (it does not own the stream, so it cannot end a read in progress).
_READ_SLICE = 1.0
#: A client takes a large read in pieces of this many bytes, looking at the clock in
#: between: a peer that sends frames costly to take (junk, a flood of tiny ones: up to
#: about 1 us a byte) would otherwise keep a call's thread past its deadline by a whole
#: read's worth of work. What is left when the deadline passes waits for the next reader.
_TAKE_PIECE = 16 * 1024
#: Most answers a client keeps queued for a peer that does not take them (refusals of
#: the peer's requests: a client serves nothing); beyond, the peer's requests are dropped
#: unanswered, so a peer that sends requests and never reads cannot grow our memory.
_MAX_QUEUED_OUT = 256
#: Bytes of the cap a paid call keeps for its receipt and prepaid escrow ID (meta "r",
#: "re"), checked before they are made (RpcProtocol.check_request).
_FEE_META_RESERVE = 512
#: Bytes of answers a server queues for a client that does not take them before it
#: reads no more of its requests (_ServerStream.backed_up).
_UNSENT_CAP = 4 << 20
#: The asyncio client lets the loop run after this long (seconds) of notification
#: handlers (AsyncRpcClient._take).
_TAKE_TIME = 0.01


def _send_failed(exc: BaseException) -> E.RpcConnectionLost:
    """The error of every call once a write failed with ``exc``."""
    if isinstance(exc, TimeoutError):
        return E.RpcConnectionLost(
            "sending timed out: the peer took no data before the call's deadline, and the "
            "stream may hold part of a message"
        )
    return E.RpcConnectionLost(f"sending failed: {exc}")


def _meter_request(
    meter: Meter,
    prepay: ResponsePrepay | None,
    escrow_id: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Count one request in ``meter`` and return the call's ``meta`` with the receipt
    that covers it (key ``"r"``), when the meter signs one now. A meter that raises
    leaves the call's prepaid escrow (``escrow_id``, made first) to
    :meth:`ResponsePrepay.refund_due`. Shared by the blocking and asyncio clients."""
    now_ms = int(time.time() * 1000)
    try:
        receipt = meter.record(now_ms, requests=1) or meter.flush(now_ms)
    except BaseException:
        if escrow_id is not None and prepay is not None:
            prepay.unanswered.append(escrow_id)
        raise
    if receipt is not None:
        extra = extra or {}
        extra["r"] = receipt.encode()
    return extra


def response_hash(body: bytes) -> bytes:
    """BLAKE2b-256 of a RESPONSE frame's msgpack body: what acknowledgements sign."""
    return hashlib.blake2b(body, digest_size=32).digest()


# -- money ----------------------------------------------------------------------------------------


class RequestPayments:
    """The server's per-request fee check for one connection's escrow.

    Each request may carry a receipt (meta ``"r"``); it is checked with
    :func:`dtp.payments.receipts.check_receipt` (the rules of ``escrow::claim``) and kept
    when valid.
    A request is served only while ``served < latest.total_requests + credit_requests``;
    otherwise it fails with :class:`~dtp.messaging.errors.PaymentRequired`. Claim
    :attr:`latest` on the ledger whenever convenient.
    """

    def __init__(
        self,
        connection_id: str,
        sla: Sla,
        client_public_key: bytes,
        deposited: int,
        *,
        credit_requests: int = 0,
        on_receipt: Callable[[Receipt], None] | None = None,
    ) -> None:
        # (checked here: a wrong one refused every request, or let them all through,
        # only once a client came)
        if not isinstance(sla, Sla):
            raise TypeError(f"sla must be an Sla, not {type(sla).__name__!r}")
        if type(client_public_key) is not bytes or len(client_public_key) != 32:
            raise TypeError("client_public_key must be the 32 bytes of an Ed25519 public key")
        _check_count("deposited", deposited, 0)
        _check_count("credit_requests", credit_requests, 0)
        if on_receipt is not None and not callable(on_receipt):
            raise TypeError(f"on_receipt must be callable, not {type(on_receipt).__name__!r}")
        self.connection_id = normalize_id(connection_id, "connection ID")
        #: Called with each accepted receipt (e.g. ``ReceiptStore.keep``), before the
        #: request it pays for is served.
        self.on_receipt = on_receipt
        self.sla = sla
        self.client_public_key = client_public_key
        self.deposited = deposited
        self.credit_requests = credit_requests
        self.served = 0
        self.latest: Receipt | None = None
        #: Reads the escrow's deposit again (set by :meth:`from_ledger`): a client that
        #: topped up signs receipts beyond the deposit read at the start.
        self.read_deposit: Callable[[], int] | None = None
        # (monotonic) when read_deposit last ran: at most once a _DEPOSIT_REREAD, so a
        # client sending receipts beyond its deposit cannot make us hammer the ledger
        self._deposit_read_at = -math.inf
        # the re-read under way, if any: done once it ended (a thread waits on it, and
        # so does the event loop, with no thread)
        self._rereading: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_ledger(
        cls,
        ledger: Ledger,
        connection_id: str,
        *,
        credit_requests: int = 0,
        on_receipt: Callable[[Receipt], None] | None = None,
    ) -> RequestPayments:
        """The check for a ledger connection, with its SLA, client key and deposit read
        from its TransportControl and Escrow (for servers reached by host ID)."""
        terms = ConnectionTerms.from_ledger(ledger, connection_id)
        payments = cls(
            connection_id,
            terms.sla,
            terms.client_public_key,
            terms.deposited,
            credit_requests=credit_requests,
            on_receipt=on_receipt,
        )
        escrow_id = terms.escrow_id
        payments.read_deposit = lambda: ledger.get_escrow(escrow_id).deposited
        return payments

    def resume(self, latest: Receipt) -> None:
        """Carry on from ``latest``, a receipt accepted earlier on this connection
        (kept in a :class:`~dtp.payments.receipt_store.ReceiptStore`): every request it pays for
        counts as served, so the client's receipts up to it pay for nothing more."""
        with self._lock:
            if self.latest is None or latest.nonce > self.latest.nonce:
                self.latest = latest
            self.served = max(self.served, self.latest.total_requests)

    @property
    def earned(self) -> int:
        """MIST the latest receipt lets the server claim."""
        return 0 if self.latest is None else self.latest.total_amount

    def admit(self, meta: Mapping[str, Any] | None) -> None:
        """Check the request's receipt (if any) and count the request, or raise
        PaymentRequired.

        A receipt at or below the latest one's nonce is not refused while the latest
        pays for more requests than were served: the client signed them in one order
        and they came in another (two streams sharing a meter), and the newer receipt
        already paid for this request. A receipt beyond the known deposit has the
        escrow's deposit read again first (the client may have topped up)."""
        raw = None if meta is None else meta.get("r")
        refused = self._first_admit(raw)
        if refused is None:
            return
        if refused.read_now:
            if not self._read_deposit():
                raise refused.error
        elif refused.wait_for is None:
            raise refused.error
        else:
            done, _ = concurrent.futures.wait([refused.wait_for], _REREAD_WAIT)
            if not done:
                raise refused.error
        self._readmit(raw)

    async def admit_async(self, meta: Mapping[str, Any] | None) -> None:
        """:meth:`admit` for a server on an event loop: the deposit's re-read (a
        ledger read, perhaps over the network) runs in a worker thread; requests
        waiting for it wait on the loop. ``on_receipt`` runs in a worker thread too
        (:meth:`ReceiptStore.keep <dtp.payments.receipt_store.ReceiptStore.keep>` syncs the
        disk), and the request waits for it; concurrent requests' calls may overlap
        and end in any order (``keep`` stores the highest nonce whatever the order)."""
        raw = None if meta is None else meta.get("r")
        accepted: list[Receipt] = []
        try:
            await self._admit_async(raw, accepted)
        finally:
            if accepted and self.on_receipt is not None:
                loop = asyncio.get_running_loop()
                for receipt in accepted:  # (shielded: a cancelled request's is kept too)
                    await asyncio.shield(loop.run_in_executor(None, self.on_receipt, receipt))

    async def _admit_async(self, raw: Any, accepted: list[Receipt]) -> None:
        refused = self._first_admit(raw, accepted)
        if refused is None:
            return
        if refused.read_now:
            # submitted now, ahead of anything queued later for the executor, and
            # shielded: a request cancelled meanwhile does not cut short the read that
            # the requests waiting for it need (the thread records the deposit itself)
            loop = asyncio.get_running_loop()
            if not await asyncio.shield(loop.run_in_executor(None, self._read_deposit)):
                raise refused.error
        elif refused.wait_for is None:
            raise refused.error
        else:
            try:
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(refused.wait_for)), _REREAD_WAIT
                )
            except TimeoutError:
                raise refused.error from None
        self._readmit(raw, accepted)

    def _first_admit(self, raw: Any, accepted: list[Receipt] | None = None) -> _Refused | None:
        """:meth:`_admit`, and whether a refusal beyond the deposit should have it
        read again (``read_now``, at most every ``_DEPOSIT_REREAD`` seconds) or wait
        for the re-read under way (``wait_for``): a receipt signed after a top-up,
        behind another one's re-read, is covered once that read is in."""
        with self._lock:
            refused = self._admit(raw, accepted)
            if refused is None:
                return None
            if not isinstance(refused, _BeyondDeposit) or self.read_deposit is None:
                return refused
            if self._rereading is not None:
                refused.wait_for = self._rereading
            elif time.monotonic() - self._deposit_read_at >= _DEPOSIT_REREAD:
                self._deposit_read_at = time.monotonic()
                self._rereading = concurrent.futures.Future()
                refused.read_now = True
            return refused

    def _read_deposit(self) -> bool:
        """Read the escrow's deposit again (outside the lock: a ledger read) and record
        it, then wake the requests waiting for it. False when it could not be read (the
        request is refused as it was)."""
        assert self.read_deposit is not None
        deposited = None
        try:
            deposited = self.read_deposit()
        except DTPError as exc:
            logger.info("cannot read the deposit of %s again: %s", self.connection_id, exc)
            return False
        except Exception:
            # a failing read refuses the request as it was, as a typed one does: raised,
            # it reached a cancelled request's shielded wait, never retrieved
            logger.exception("reading the deposit of %s again failed", self.connection_id)
            return False
        finally:
            with self._lock:
                if deposited is not None:
                    self.deposited = max(self.deposited, deposited)
                done, self._rereading = self._rereading, None
            if done is not None:
                done.set_result(None)
        return True

    def _readmit(self, raw: Any, accepted: list[Receipt] | None = None) -> None:
        with self._lock:
            again = self._admit(raw, accepted)
        if again is not None:
            raise again.error

    def _admit(self, raw: Any, accepted: list[Receipt] | None = None) -> _Refused | None:
        """:meth:`admit` under ``_lock``: None once the request is counted, else why
        it is refused. A receipt it accepts goes to ``on_receipt`` now, or into
        ``accepted`` for the caller to pass on (outside the lock)."""
        if raw is not None:
            if not isinstance(raw, bytes):
                return _Refused(E.PaymentRequired("receipt must be bytes"))
            try:
                receipt = Receipt.decode(raw)
            except DTPError as exc:
                return _Refused(E.PaymentRequired(f"receipt refused: {exc}"))
            latest = self.latest
            # overtaken by a newer receipt that pays for this request: served as paid
            # by that one (the served count still bounds what it pays for)
            overtaken = (
                latest is not None
                and receipt.nonce <= latest.nonce
                and latest.total_requests > self.served
            )
            if not overtaken:
                try:
                    check_next_receipt(
                        receipt,
                        latest,
                        connection_id=self.connection_id,
                        sla=self.sla,
                        public_key=self.client_public_key,
                        deposited=self.deposited,
                    )
                except DTPError as exc:
                    error = E.PaymentRequired(f"receipt refused: {exc}")
                    if receipt.total_amount > self.deposited:
                        return _BeyondDeposit(error)
                    return _Refused(error)
                self.latest = receipt
                if accepted is not None:
                    accepted.append(receipt)
                elif self.on_receipt is not None:
                    self.on_receipt(receipt)
        paid = 0 if self.latest is None else self.latest.total_requests
        if self.served >= paid + self.credit_requests:
            return _Refused(
                E.PaymentRequired(
                    f"request {self.served + 1} is not covered (receipts cover {paid})"
                )
            )
        self.served += 1
        return None


#: Shortest time (seconds) between two reads of a connection's deposit by its
#: RequestPayments (a receipt beyond the deposit it knows: perhaps a top-up).
_DEPOSIT_REREAD = 1.0
#: Longest a request beyond the deposit waits for another request's re-read of it.
_REREAD_WAIT = 30.0


class _Refused:
    """Why RequestPayments refused a request (``error``, to raise)."""

    __slots__ = ("error", "read_now", "wait_for")

    def __init__(self, error: E.PaymentRequired) -> None:
        self.error = error
        # (set by RequestPayments._first_admit) read the deposit again, or wait for
        # the re-read under way; neither: refused as it is
        self.read_now = False
        self.wait_for: concurrent.futures.Future[None] | None = None


class _BeyondDeposit(_Refused):
    """A receipt refused while it exceeds the deposit known: read it again, retry."""

    __slots__ = ()


# A server's ``payments``: one :class:`RequestPayments` for every stream, or a function
# from the ledger connection ID a client named in its handshake (None when it named none)
# to that connection's check (None: serve unpaid). The function runs once per connection
# and its result is shared by the connection's streams; a DTPError it raises refuses
# every request of the connection with PaymentRequired and that message.


def ledger_payments(
    ledger: Ledger,
    *,
    on_receipt: Callable[[Receipt], None] | None = None,
    receipts: ReceiptStore | None = None,
) -> Callable[[str | None], RequestPayments]:
    """A ``payments`` source for servers reached by host ID: each connection's check is
    built from its ledger connection (:meth:`RequestPayments.from_ledger`); requests of a
    client that named no ledger connection (or an unknown one) get PaymentRequired. A
    connection not found is looked for again for up to
    :attr:`~dtp.admission.LedgerAdmission.OPEN_GRACE` first, as the admission does: the
    client's open may still be landing when the stream starts. ``on_receipt`` sees every
    accepted receipt of every connection (keep them to claim).

    ``receipts`` (by default the store ``on_receipt`` is the ``keep`` of, if it is one):
    a connection's check carries on from its stored latest receipt
    (:meth:`RequestPayments.resume`), so a server restarted, or one that forgot the
    connection, does not take the client's receipts again as pay for new requests.
    Without a store the source remembers each connection's latest receipt in memory
    (a few hundred bytes per ledger connection that paid, for the source's life): a
    server forgets the checks of connections gone quiet, and a client coming back
    after that must not be served again for the receipts it sent before."""
    from dtp.payments.receipt_store import ReceiptStore

    if receipts is None and isinstance(getattr(on_receipt, "__self__", None), ReceiptStore):
        receipts = on_receipt.__self__  # type: ignore[union-attr]
    remembered: dict[str, Receipt] = {}
    remembered_lock = threading.Lock()
    keep = on_receipt

    if receipts is None:

        def keep(receipt: Receipt) -> None:
            key = normalize_id(receipt.connection_id, "connection")
            with remembered_lock:
                known = remembered.get(key)
                if known is None or receipt.nonce > known.nonce:
                    remembered[key] = receipt
            if on_receipt is not None:
                on_receipt(receipt)

    def read(connection_id: str) -> RequestPayments | None:
        try:
            payments = RequestPayments.from_ledger(ledger, connection_id, on_receipt=keep)
        except ObjectNotFound:
            return None
        if receipts is not None:
            stored = receipts.latest(payments.connection_id)
            if stored is not None:
                payments.resume(stored.receipt)
        else:
            with remembered_lock:
                latest = remembered.get(payments.connection_id)
            if latest is not None:
                payments.resume(latest)
        return payments

    def source(connection_id: str | None) -> RequestPayments:
        if connection_id is None:
            raise E.PaymentRequired("this service is paid: connect by host ID (dtp://…)")
        try:
            # a stream may start (and this run) while the client's open lands: the
            # client names its connection in the handshake before the open is done
            found = while_opening(lambda: read(connection_id), LedgerAdmission.OPEN_GRACE)
        except DTPError as exc:
            raise E.PaymentRequired(f"no ledger connection {connection_id}: {exc}") from None
        if found is None:
            raise E.PaymentRequired(f"no ledger connection {connection_id}")
        return found

    return source


#: Most ledger connections whose payments check a server keeps once none of their
#: streams is served (the least recently used go first).
_KEPT_PAYMENTS = 4096


class _PaymentsCache:
    """Resolves a payments source per connection ID, once, for all its streams; a
    check built (a :class:`RequestPayments`) outlives the connection's streams, kept
    among the last :data:`_KEPT_PAYMENTS` connections used: a client reconnecting to the
    same ledger connection must not start again from nothing served (its last receipt
    would pay for its requests a second time). A failure to build one is forgotten with
    the connection's last stream: the next stream tries again."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._lock = threading.Lock()
        # (insertion order: least recently used first, for eviction)
        self._by_connection: dict[str | None, Any] = {}
        self._users: dict[str | None, int] = {}

    def release(self, connection_id: str | None) -> None:
        """A stream of ``connection_id`` is no longer served."""
        with self._lock:
            left = self._users.get(connection_id, 0) - 1
            if left > 0:
                self._users[connection_id] = left
                return
            self._users.pop(connection_id, None)
            entry = self._by_connection.get(connection_id)
            if entry is not None and not isinstance(entry.value, RequestPayments):
                del self._by_connection[connection_id]
            self._evict()

    def _evict(self) -> None:
        """Forget the least recently used checks beyond :data:`_KEPT_PAYMENTS`, of
        connections with no stream served (``_lock`` held)."""
        excess = len(self._by_connection) - _KEPT_PAYMENTS
        if excess <= 0:
            return
        for key in [k for k in self._by_connection if k not in self._users][:excess]:
            del self._by_connection[key]

    def resolve(self, connection_id: str | None) -> RequestPayments | None:
        """The connection's check; raises the DTPError that building it raised.

        The source runs outside the lock (``ledger_payments`` looks for a connection
        for up to two seconds): under it, a client naming connections that do not exist
        held up every other stream's start, of every connection. The streams of one
        connection wait for the first one's result, and share it."""
        if self.source is None or isinstance(self.source, RequestPayments):
            return self.source
        if connection_id is None:  # never kept: each such stream asks on its own
            return self.source(None)  # type: ignore[no-any-return]
        with self._lock:
            entry = self._by_connection.pop(connection_id, None)
            building = entry is None
            if building:
                entry = _Resolving()
            self._by_connection[connection_id] = entry  # (now the most recently used)
            self._users[connection_id] = self._users.get(connection_id, 0) + 1
        assert entry is not None
        if building:
            try:
                entry.value = self.source(connection_id)
            except BaseException as exc:  # (a DTPError refuses the connection's requests)
                entry.value = exc
            entry.done.set()
        else:
            entry.done.wait()
        if isinstance(entry.value, BaseException):
            raise entry.value
        return entry.value  # type: ignore[no-any-return]


class _Resolving:
    """A connection's payments check being built (``done`` once ``value`` is set: the
    check, None, or what building it raised)."""

    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None


@dataclass
class ResponsePrepay:
    """Client side of response escrow: prepay ``amount`` MIST per call to ``server``
    (its Sui address) on ``ledger``; the fee comes back after the deadline when no
    response came. ``grace_ms`` is added to the call's timeout for the ledger deadline
    (ledger clock), so the server has time to claim."""

    ledger: Ledger
    identity: HostIdentity
    server: str
    amount: int
    grace_ms: int = 1000
    #: escrows whose call got no response: refund them with :meth:`refund_due`.
    unanswered: list[str] = field(default_factory=list)

    def deposit(self, timeout: float) -> str:
        """Create the ResponseEscrow for one call; returns its ID. ``timeout``: the
        call's, in seconds (finite, not negative: InvalidArgument otherwise)."""
        from dtp.errors import InvalidArgument

        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            # (nan and inf failed in int() untyped, a negative one made a deadline
            # already past)
            raise InvalidArgument(f"timeout must be finite seconds >= 0, not {timeout!r}")
        deadline = self.ledger.clock_ms() + int(timeout * 1000) + self.grace_ms
        return self.ledger.response_escrow_deposit(
            self.identity, self.server, os.urandom(16), self.amount, deadline
        )

    def refund_due(self) -> int:
        """Refund every unanswered escrow whose deadline passed; returns the MIST back.

        Escrows are taken off :attr:`unanswered` one by one and those not refunded put
        back at the end (list pops and extends are atomic): the calls of other threads
        add theirs meanwhile, and the list replaced whole at the end dropped one added
        after the last was looked at -- never refunded. An error (the ledger not
        answering) puts back the escrow it came on too."""
        from dtp.errors import ChainError

        total = 0
        keep: list[str] = []
        try:
            while True:
                try:
                    escrow_id = self.unanswered.pop(0)
                except IndexError:
                    break
                try:
                    esc = self.ledger.get_response_escrow(escrow_id)
                    if esc.state != 0:
                        continue
                    if self.ledger.clock_ms() <= esc.deadline_ms:
                        keep.append(escrow_id)
                        continue
                    try:
                        total += self.ledger.response_escrow_refund(self.identity, escrow_id)
                    except ChainError:
                        keep.append(escrow_id)
                except BaseException:
                    keep.append(escrow_id)
                    raise
        finally:
            self.unanswered.extend(keep)
        return total


def _claim_refused_for_good(exc: BaseException) -> bool:
    """Whether a failed claim would fail again: a Move abort, an unknown or malformed
    object, a signer the escrow does not name (not an outage, gas or a busy object)."""
    from dtp.errors import ChainError, NotAuthorized, ObjectNotFound

    if not isinstance(exc, ChainError):
        return False
    return exc.code is not None or isinstance(exc, (ObjectNotFound, NotAuthorized, ValueError))


class ResponseFeePolicy:
    """Server side of response escrow: which prepaid escrows a request may use, and the
    acknowledgements collected for claiming.

    A request must name (meta ``"re"``) an open ResponseEscrow on ``ledger`` that pays
    ``identity``'s address at least ``min_amount`` with a deadline still ahead, prepaid by
    the client that sent it (the escrow's requester is the Sui address the client proved
    in its DTP handshake); otherwise it fails with PaymentRequired (when ``required``;
    else it is served unpaid).
    """

    def __init__(
        self, ledger: Ledger, identity: HostIdentity, min_amount: int, *, required: bool = True
    ) -> None:
        _check_count("min_amount", min_amount, 0)
        if not isinstance(required, bool):
            raise TypeError(f"required must be a bool, not {type(required).__name__!r}")
        self.ledger = ledger
        self.identity = identity
        self.min_amount = min_amount
        self.required = required
        self._lock = threading.Lock()
        #: escrow ID -> (response hash, response body) for answered requests
        self.answered: dict[str, tuple[bytes, bytes]] = {}
        #: escrow ID -> (response hash, requester signature): ready to claim
        self.acks: dict[str, tuple[bytes, bytes]] = {}
        #: MIST claimed or delivered so far
        self.claimed = 0
        #: acknowledged fees the ledger refused for good in :meth:`claim_all`
        self.claims_refused = 0

    def admit(self, meta: Mapping[str, Any] | None, peer: str | None = None) -> str | None:
        """The escrow ID a request prepaid with (None if none and not required).

        ``peer``: the Sui address the requesting client proved (None: not known, as on a
        plain socket). An escrow's ID is public (a shared object, its deposit event):
        served to anyone naming it, a third party had the server paid with the
        requester's fee for its own response; so only its requester may use it."""
        from dtp.errors import ChainError
        from dtp.ledger.interface import RESPONSE_ESCROW_OPEN

        escrow_id = None if meta is None else meta.get("re")
        if escrow_id is None:
            if self.required:
                raise E.PaymentRequired("this service needs a prepaid response fee")
            return None
        if not isinstance(escrow_id, str):
            raise E.PaymentRequired("re must be an object ID")
        try:
            esc = self.ledger.get_response_escrow(escrow_id)
        except ChainError as exc:
            raise E.PaymentRequired(f"no such response escrow: {exc}") from None
        if esc.state != RESPONSE_ESCROW_OPEN or esc.server != self.identity.sui_address:
            raise E.PaymentRequired("the response escrow is not open for this server")
        if peer is None or normalize_id(peer, "peer address") != normalize_id(
            esc.requester, "requester address"
        ):
            raise E.PaymentRequired(
                "the response escrow was not prepaid by this client (connect with the "
                "identity that made it)"
            )
        if esc.amount < self.min_amount:
            raise E.PaymentRequired(f"response fee {esc.amount} < {self.min_amount} MIST")
        try:
            now_ms = self.ledger.clock_ms()
        except ChainError as exc:  # (refused, not the stream ended: see acknowledged)
            raise E.PaymentRequired(f"the ledger's clock cannot be read: {exc}") from None
        if esc.deadline_ms <= now_ms:
            raise E.PaymentRequired("the response escrow's deadline has passed")
        with self._lock:
            if escrow_id in self.answered or escrow_id in self.acks:
                raise E.PaymentRequired("this response escrow was already used")
            self.answered[escrow_id] = (b"", b"")
        return escrow_id

    def responded(self, escrow_id: str, body: bytes) -> None:
        """The request that prepaid with ``escrow_id`` was answered with ``body``."""
        with self._lock:
            self.answered[escrow_id] = (response_hash(body), body)

    def release(self, escrow_id: str) -> None:
        """The request that named ``escrow_id`` ended with no response (its handler
        failed, it was cancelled or its deadline passed): forget the escrow, kept since
        :meth:`admit` so that no other request used it meanwhile (a second request may
        use it now: one response is paid once). Without this every such request left
        an entry for good."""
        with self._lock:
            entry = self.answered.get(escrow_id)
            if entry is not None and not entry[0]:
                del self.answered[escrow_id]

    def acknowledged(self, escrow_id: str, signature: bytes) -> bool:
        """Keep a requester's acknowledgement if it verifies; returns whether it did."""
        from dtp.errors import ChainError
        from dtp.identity.ed25519 import verify_memoized
        from dtp.ledger.interface import response_ack_message

        with self._lock:
            entry = self.answered.get(escrow_id)
        if entry is None or not entry[0]:
            return False
        try:
            esc = self.ledger.get_response_escrow(escrow_id)
        except ChainError as exc:
            # the ledger failing here must not end the stream (every call on it): the
            # response stays answered, for deliver_unacknowledged
            logger.info("cannot check the acknowledgement for %s: %s", escrow_id, exc)
            return False
        message = response_ack_message(escrow_id, entry[0])
        if not verify_memoized(esc.requester_public_key, signature, message):
            return False
        with self._lock:
            self.answered.pop(escrow_id, None)
            self.acks[escrow_id] = (entry[0], signature)
        return True

    def claim_all(self) -> int:
        """Claim every acknowledged response fee on the ledger; returns the MIST earned.

        Each claim stands alone: one the ledger refuses for good (a Move abort such as an
        escrow already settled or refunded, an unknown object) is dropped with a warning
        and counted in :attr:`claims_refused`; one that failed for a passing reason (the
        node unreachable, gas, a busy object) stays in :attr:`acks` for the next call, as
        do the claims not yet tried when the ledger stopped answering. Earlier claims of
        the same call are kept either way."""
        from dtp.errors import ChainError

        with self._lock:
            acks, self.acks = self.acks, {}
        items = list(acks.items())
        total = 0
        done = 0  # items[done:] are neither claimed, dropped nor kept yet
        try:
            for index, (escrow_id, (digest, signature)) in enumerate(items):
                try:
                    amount = self.ledger.response_escrow_claim(
                        self.identity, escrow_id, digest, signature
                    )
                except ChainError as exc:
                    if _claim_refused_for_good(exc):
                        done = index + 1
                        logger.warning("response fee for %s refused: %s", escrow_id, exc)
                        with self._lock:
                            self.claims_refused += 1
                        continue
                    logger.info("cannot claim the response fee for %s yet: %s", escrow_id, exc)
                    if exc.name == "LedgerUnavailable":
                        break  # every other claim would wait out the same outage
                    self._keep_acks([items[index]])
                    done = index + 1
                    continue
                done = index + 1
                total += amount
        finally:
            # also on an unexpected error: what was not claimed stays claimable
            self._keep_acks(items[done:])
            with self._lock:
                self.claimed += total
        return total

    def _keep_acks(self, items: list[tuple[str, tuple[bytes, bytes]]]) -> None:
        with self._lock:
            for escrow_id, ack in items:
                self.acks.setdefault(escrow_id, ack)

    def deliver_unacknowledged(self) -> int:
        """Post unacknowledged responses on the ledger (before their deadlines) to be paid
        without the requester's help; returns the MIST earned."""
        from dtp.errors import ChainError

        with self._lock:
            pending = {k: v for k, v in self.answered.items() if v[1]}
        total = 0
        for escrow_id, (_, body) in pending.items():
            try:
                total += self.ledger.response_escrow_deliver(self.identity, escrow_id, body)
            except ChainError as exc:
                logger.info("cannot deliver response for %s: %s", escrow_id, exc)
                continue
            with self._lock:
                self.answered.pop(escrow_id, None)
        with self._lock:
            self.claimed += total
        return total


# -- calls ----------------------------------------------------------------------------------------


class RpcCall:
    """A call in flight on an :class:`RpcClient` (a small future)."""

    __slots__ = ("_client", "_error", "_event", "_result", "done", "escrow_id", "request_id")

    def __init__(self, client: RpcClient, request_id: int) -> None:
        self._client = client
        self.request_id = request_id
        self.done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._event: threading.Event | None = None
        #: The ResponseEscrow this call prepaid, if any.
        self.escrow_id: str | None = None

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error, self.done = result, error, True
        if self._event is not None:
            self._event.set()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the answer: the result, or the call's typed error. When ``timeout``
        (seconds) passes first the call itself ends in :class:`RpcTimeout` (the peer is
        told, as at the call's own deadline): a later ``result()`` raises it too."""
        if timeout is not None:
            _check_wait(timeout)
        self._client._wait(self, None if timeout is None else time.monotonic() + timeout)
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> bool:
        """Cancel the call (the peer is told); False if it already finished. A thread
        waiting in :meth:`result` sees it at once, also one reading the stream for
        everybody when the stream is a DTPSocket (its read is interrupted); on another
        stream that one sees it at the end of its read, within about a second."""
        return self._client._cancel(self)


class RpcClient:
    """Blocking RPC client over one stream (thread-safe; many calls may be in flight).

    ``timeout``: default seconds per call (None: wait forever). ``meter``: attach a
    receipt to every request (per-request fees). ``prepay``: prepay each call's response
    fee into a ResponseEscrow. The client does not own the stream: :meth:`close` fails the
    calls in flight and leaves the stream open unless ``close_stream`` is set.
    """

    def __init__(
        self,
        stream: BlockingStream,
        *,
        timeout: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_in_flight: int = 4096,
        meter: Meter | None = None,
        prepay: ResponsePrepay | None = None,
        on_notification: Callable[[str, Any], None] | None = None,
        close_stream: bool = False,
    ) -> None:
        if timeout is not None:
            # refused now: every call and notification would fail with it, a
            # notification perhaps with its frame half written
            _check_our_timeout(timeout)
        if on_notification is not None and not callable(on_notification):
            # found out only when a notification came: in the reader, failing its call
            raise TypeError(
                f"on_notification must be callable, not {type(on_notification).__name__!r}"
            )
        _check_blocking_stream(stream)
        _check_one_meter(meter, stream)
        self._stream = stream
        self.timeout = timeout
        self.meter = meter
        self.prepay = prepay
        self.on_notification = on_notification
        self._close_stream = close_stream
        self._proto = RpcProtocol(max_message_size=max_message_size, max_outgoing=max_in_flight)
        self._calls: dict[int, RpcCall] = {}
        self._lock = threading.Lock()  # protocol state and _calls
        self._cond = threading.Condition(self._lock)
        self._wlock = threading.Lock()  # order of bytes on the stream
        self._reading = False  # a thread is reading for everybody
        self._followers = 0  # threads waiting in _cond for the reader
        self._closed: BaseException | None = None
        self._current_timeout: float | object | None = _DEFAULT
        self._read_size = QUICK_RECV_SIZE  # the quiet call's (see _next_read_size)
        # (_lock, reader) bytes read but not yet taken: a reader whose deadline passed
        # while it took a large read left them to the next reader (_take)
        self._backlog = b""
        # the stream's send takes MSG_DONTWAIT (a DTPSocket, a socket): the reader's
        # flush of our control frames never waits for the peer (_flush_soon)
        self._dontwait = isinstance(stream, _socket.socket | DTPSocket)
        # a DTPSocket sends a request and reads its answer in one go (DTPSocket.send_recv)
        self._send_recv: Callable[..., bytes | None] | None = getattr(stream, "send_recv", None)
        # notifications read, for on_notification: it runs once the reader has let go of
        # _lock (it may call this client), in order (_note_lock: one thread runs them)
        self._notes: deque[tuple[str, Any]] = deque()
        self._note_lock = threading.Lock()
        #: Frames from the peer that broke the format (skipped).
        self.violations: list[ProtocolViolation] = []

    # -- public ---------------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        meta: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ``method`` and wait for its result (raises the typed error otherwise)."""
        if timeout is _DEFAULT:
            timeout = self.timeout
        if meta is None and self.meter is None and self.prepay is None:
            outcome = self._call_quiet(method, params, timeout)
            if outcome is not None:
                return outcome[0]
        return self.start(method, params, timeout=timeout, meta=meta).result()

    def start(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        meta: Mapping[str, Any] | None = None,
    ) -> RpcCall:
        """Send a request and return its :class:`RpcCall` at once (pipelining)."""
        if timeout is _DEFAULT:
            timeout = self.timeout
        extra = _meta_copy(meta)
        escrow_id = None
        if self.meter is not None or self.prepay is not None:
            # a request that cannot be sent is found out before it is paid for
            with self._lock:
                if self._closed is not None:
                    raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
                self._proto.check_request(
                    method, params, timeout=timeout, meta=extra, reserve=_FEE_META_RESERVE
                )
        # the escrow first: a deposit the ledger refuses must not leave the request
        # counted in the meter (the next receipt would pay for it); a meter that
        # refuses leaves the escrow to refund_due
        if self.prepay is not None:
            escrow_id = self.prepay.deposit(timeout if timeout is not None else 60.0)
            extra = extra or {}
            extra["re"] = escrow_id
        with self._wlock:
            # metered under _wlock, as sent: receipts reach the server in their nonce
            # order (signed outside it, a later one could be sent first and the earlier
            # one refused as replayed); and in one _lock section with the checks and the
            # request's framing, so that nothing between them (another call filling the
            # in-flight limit, the reader failing the stream, close()) can refuse a
            # request the meter has counted: its next receipt would pay for a request
            # never sent. (The meter only signs: no I/O under the lock.)
            with self._lock:
                try:
                    if self._closed is not None:
                        raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
                    if self.meter is not None:
                        self._proto.check_request(
                            method, params, timeout=timeout, meta=extra, reserve=_FEE_META_RESERVE
                        )
                        extra = _meter_request(self.meter, None, None, extra)
                    request_id = self._proto.send_request(
                        method, params, now=time.monotonic(), timeout=timeout, meta=extra
                    )
                except BaseException:
                    if escrow_id is not None and self.prepay is not None:
                        # closed meanwhile, too many in flight, or the meter refused:
                        # the fee comes back after the escrow's deadline (refund_due)
                        self.prepay.unanswered.append(escrow_id)
                    raise
                call = RpcCall(self, request_id)
                call.escrow_id = escrow_id
                self._calls[request_id] = call
                data = self._proto.data_to_send()
            self._send(data, _deadline(timeout))
        return call

    def notify(
        self, method: str, params: Any = None, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Send a notification (no response)."""
        with self._wlock:
            with self._lock:
                if self._closed is not None:
                    raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
                self._proto.send_notification(method, params, meta=meta)
                data = self._proto.data_to_send()
            self._send(data, _deadline(self.timeout))

    @property
    def in_flight(self) -> int:
        """Calls awaiting their answer (a call on a quiet stream, which has no
        :class:`RpcCall`, included)."""
        return 0 if self._closed is not None else self._proto.in_flight

    def close(self) -> None:
        """Fail the calls in flight with RpcConnectionLost (and close the stream if owned):
        every thread waiting for an answer returns (at once on a DTPSocket stream,
        whatever the peer's handler is doing; within about a second on another), a
        thread waiting for the peer to take its request at its write's next look (under
        a second: a write cannot be ended from outside), a thread running notification
        handlers once the one running ends (the notifications not yet run are dropped).
        Calls, starts and notifications after it raise RpcConnectionLost at once. It may
        be called again, from any thread, and from a notification handler. (The
        server's :meth:`RpcServer.close` ends no call: see there.)"""
        with self._lock:
            self._fail_all(E.RpcConnectionLost("the client was closed"))
            reading = self._reading
        if reading:
            self._interrupt_reader()
        if self._close_stream:
            close = getattr(self._stream, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _send(self, data: bytes, deadline: float | None) -> None:
        """Write ``data`` (``_wlock`` held), waiting for the peer's flow control until
        ``deadline`` (``time.monotonic()``; None: no limit). Past it the stream may hold
        part of a frame, so every call fails."""
        if not data:
            return
        try:
            self._write(data, deadline)
        except (DTPError, OSError) as exc:
            error = _send_failed(exc)
            with self._lock:
                self._fail_all(error)
            raise error from exc

    def _write(self, data: bytes, deadline: float | None) -> None:
        """``stream.sendall(data)`` by ``deadline`` (TimeoutError past it), whatever
        timeout the last read left on the stream: the timeout is shared by reads and
        writes, and reads set short ones to keep deadlines, which a write held up by the
        peer's flow control must not end at with a frame half sent."""
        stream = self._stream
        send = getattr(stream, "send", None)
        if send is None:  # only sendall: its own timeout applies
            stream.sendall(data)
            return
        current = self._current_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if not (isinstance(current, float | int) and current <= left + 0.05):
                # the stream's timeout (None, unknown or longer) would outlast the deadline
                step = min(max(left, 1e-3), _SEND_STEP)
                stream.settimeout(step)
                self._current_timeout = step
        elif not isinstance(current, float | int):
            # none or unknown: a write the peer holds up waits in steps, to see close()
            stream.settimeout(_SEND_STEP)
            self._current_timeout = _SEND_STEP
        view = memoryview(data)
        while view:
            try:
                n: int = send(view)  # a timeout means nothing of this call was taken
            except TimeoutError:
                if self._closed is not None:  # close(): no thread is left waiting
                    closed = f"the RPC stream is closed ({self._closed})"
                    raise E.RpcConnectionLost(closed) from None
                step = _SEND_STEP
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    step = min(remaining, _SEND_STEP)
                # wait on in steps (the last read's timeout may be a fraction of a ms)
                stream.settimeout(step)
                self._current_timeout = step
                continue
            view = view[n:]

    def _flush_soon(self) -> None:
        """Send queued protocol output (CANCELs, ACKs, refusals) if no writer is busy (it
        would send it anyway). It does not wait for the peer when the stream can say so
        (MSG_DONTWAIT): what the peer does not take now goes back to the head of the
        queue, for the next write (a call's, which waits up to its deadline) or flush. A
        reader waiting here for a peer that does not read would keep its call, and every
        call it reads for, past their deadlines (for good without a client timeout)."""
        while True:
            if not self._wlock.acquire(blocking=False):
                return
            try:
                with self._lock:
                    data = self._proto.data_to_send()
                if data:
                    if self._dontwait:
                        rest = self._send_nowait(data)
                        if rest:
                            with self._lock:  # first: it may hold part of a frame
                                self._proto._out.insert(0, rest)
                                if len(rest) > _UNSENT_CAP:
                                    # a peer that sends malformed requests (each answered
                                    # by its id) and never reads: our memory is bounded
                                    self._fail_all(
                                        E.RpcConnectionLost(
                                            "the peer takes none of our answers to its "
                                            f"requests ({len(rest)} bytes wait)"
                                        )
                                    )
                            return
                    else:
                        with contextlib.suppress(E.RpcConnectionLost):
                            self._send(data, _deadline(self.timeout))
            finally:
                self._wlock.release()
            with self._lock:
                if not self._proto._out:
                    return

    def _send_nowait(self, data: bytes) -> bytes:
        """Send what the stream takes of ``data`` now (``_wlock`` held); returns the
        rest. A failed stream fails every call, as in :meth:`_send`."""
        stream = self._stream
        send = stream.send  # type: ignore[attr-defined]
        plain = stream if isinstance(stream, _socket.socket) else None  # (_can_send)
        view = memoryview(data)
        try:
            while view:
                if plain is not None and not _can_send(plain):
                    return bytes(view)
                try:
                    n: int = send(view, _socket.MSG_DONTWAIT)
                except (BlockingIOError, TimeoutError):
                    return bytes(view)
                view = view[n:]
        except (DTPError, OSError) as exc:
            with self._lock:
                self._fail_all(_send_failed(exc))
        return b""

    def _fail_all(self, error: BaseException) -> None:
        """(lock held)"""
        if self._closed is None:
            self._closed = error
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call._finish(None, error)
            if call.escrow_id and self.prepay is not None:
                self.prepay.unanswered.append(call.escrow_id)
        self._wake_followers()

    def _cancel(self, call: RpcCall) -> bool:
        with self._lock:
            if call.done:
                return False
            self._proto.cancel(call.request_id)
            self._calls.pop(call.request_id, None)
            call._finish(None, E.RpcCancelled(f"call {call.request_id} cancelled"))
            if call.escrow_id and self.prepay is not None:
                self.prepay.unanswered.append(call.escrow_id)
            self._wake_followers()
            reading = self._reading
        if reading:
            self._interrupt_reader()
        self._flush_soon()
        return True

    def _interrupt_reader(self) -> None:
        """End the read another thread waits in for everybody, so that it sees what
        changed (a call cancelled, the client closed) now rather than at the end of
        its read slice: a DTPSocket stream can (``interrupt_recv``); on another
        stream the read ends with its slice (up to ``_READ_SLICE``)."""
        interrupt = getattr(self._stream, "interrupt_recv", None)
        if interrupt is not None:
            with contextlib.suppress(DTPError, OSError):
                interrupt()

    def _dispatch(self, events: list[RpcEvent]) -> None:
        """Hand events to their calls (lock held)."""
        for event in events:
            if isinstance(event, ResponseReceived):
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    if call.escrow_id and self.prepay is not None:
                        self._acknowledge(call, event)
                    call._finish(event.result, None)
            elif isinstance(event, ErrorReceived):
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    if call.escrow_id and self.prepay is not None:
                        self.prepay.unanswered.append(call.escrow_id)
                    call._finish(None, event.error)
            elif isinstance(event, RequestTimedOut):
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    if call.escrow_id and self.prepay is not None:
                        self.prepay.unanswered.append(call.escrow_id)
                    call._finish(None, E.RpcTimeout(f"no answer to call {event.request_id}"))
            elif isinstance(event, NotificationReceived):
                if self.on_notification is not None:
                    # run by _run_notes once the lock is let go of: a handler that calls
                    # this client would wait for the lock its own thread holds
                    self._notes.append((event.method, event.params))
            elif isinstance(event, ProtocolViolation):
                if len(self.violations) < 1000:
                    self.violations.append(event)
            elif isinstance(event, RequestReceived):
                # this client serves nothing: say so, keep the stream usable -- while the
                # peer takes our answers (it may send requests and never read)
                if len(self._proto._out) < _MAX_QUEUED_OUT:
                    self._proto.send_error(
                        event.request_id, E.METHOD_NOT_FOUND, f"no method {event.method!r} here"
                    )
                else:
                    self._proto.drop_request(event.request_id)
        self._wake_followers()

    def _acknowledge(self, call: RpcCall, event: ResponseReceived) -> None:
        from dtp.ledger.interface import response_ack_message

        assert self.prepay is not None and call.escrow_id is not None
        message = response_ack_message(call.escrow_id, response_hash(event.body))
        self._proto.send_ack(event.request_id, self.prepay.identity.sign(message))

    def _run_notes(self, limit: float | None = None) -> None:
        """Run ``on_notification`` for the notifications read (``_lock`` not held), in
        the order they came: one thread at a time runs them, so one that finds another
        running them (or a handler of its own thread calling this client) leaves its
        own to it. Once ``limit`` (``time.monotonic()``: the deadline the thread reads
        for) has passed, it leaves the rest to the next reader: a peer that sends
        notifications faster than the handler takes them must not hold a call past
        its deadline. Once the client is closed (or its stream failed) it runs no
        more: the thread's call failed, and nobody reads for the rest."""
        notes, note_lock = self._notes, self._note_lock
        while notes:
            if not note_lock.acquire(False):
                return
            try:
                while notes:
                    if self._closed is not None:
                        # the thread's call has failed: a slow handler and a read's
                        # worth of notifications would hold it (for minutes), and a
                        # handler that closed the client would go on being called
                        return
                    method, params = notes.popleft()
                    handler = self.on_notification
                    if handler is None:
                        continue
                    try:
                        handler(method, params)
                    except Exception:
                        logger.exception("notification handler failed")
                    if limit is not None and time.monotonic() >= limit:
                        return
            finally:
                note_lock.release()

    def _wake_followers(self) -> None:
        """Wake the threads waiting for the reader (lock held), if there are any."""
        if self._followers:
            self._cond.notify_all()

    def _call_quiet(self, method: str, params: Any, timeout: float | None) -> tuple[Any] | None:
        """:meth:`call` on a quiet stream -- no other call in flight, nobody reading,
        nothing queued -- in one send and (usually) one read: the request is framed and
        sent as is, and the read that follows is taken as its answer when it is exactly
        that (one frame, the RESPONSE), with no RpcCall, timer, event or dispatch. Any
        other outcome turns the request into an ordinary call, which the general path
        finishes. Returns ``(result,)``, or None when the stream is not quiet (nothing
        was done); raises as :meth:`call` does."""
        # (acquire / release rather than with blocks, and the read inline: this is the
        # whole of a sequential call's own cost)
        wlock, lock, proto = self._wlock, self._lock, self._proto
        if not wlock.acquire(False):
            return None
        lock.acquire()
        try:
            quiet = not (
                self._calls
                or self._reading
                or self._closed is not None
                or proto._out
                or self._backlog  # (left by a reader whose deadline passed)
                or self._notes
            )
            if quiet:
                request_id, frame = proto.begin_request(method, params, time.monotonic(), timeout)
                # we read for everybody until the answer: calls other threads start
                # meanwhile wait for us (RpcClient._wait), as for any reader
                self._reading = True
        except BaseException:
            wlock.release()
            raise
        finally:
            lock.release()
        if not quiet:
            wlock.release()
            return None
        stream = self._stream
        data: bytes | None = None
        failed: BaseException | None = None
        sent = False
        try:
            # reads last a slice at most, so that close() ends the wait (the rest of a
            # longer one is the general path's)
            read_for = timeout if timeout is not None and timeout <= _READ_SLICE else _READ_SLICE
            if read_for != self._current_timeout:
                self._read_timeout(stream, read_for)
            if self._send_recv is not None:
                # the send and the read in one go: from here wlock is send_recv's to let
                # go of once the frame is out (None back: nothing was done, it is ours)
                sent = True
                data = self._send_recv(frame, self._read_size, release=wlock)
                sent = data is not None
            if not sent:
                try:
                    self._write(frame, _deadline(timeout))
                except TimeoutError as exc:  # the write's, not a read's
                    raise _send_failed(exc) from exc
                finally:
                    sent = True
                    wlock.release()
                data = stream.recv(self._read_size)
        except TimeoutError:
            data = None
        except (DTPError, OSError) as exc:
            failed = exc
        except BaseException:
            if not sent:
                wlock.release()
            with lock:
                self._reading = False
                self._adopt(request_id)  # a later reader settles it
                self._wake_followers()
            raise
        if failed is not None and not sent:
            wlock.release()
        lock.acquire()
        try:
            self._reading = False
            if self._closed is not None:  # close() while we read: the call failed
                proto._outgoing.pop(request_id, None)
                self._wake_followers()
                raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
            if data:
                got = proto.take_response(request_id, data)
                self._read_size = _next_read_size(data, got is not None)
                if got is not None:
                    if self._followers:
                        self._cond.notify_all()
                    return got
            call = self._adopt(request_id)
            timer = proto.get_timer()
            self._absorb(data, failed, timer, call, None)  # wakes the followers
            pending_out = bool(proto._out)
        finally:
            lock.release()
        if pending_out:
            self._flush_soon()
        if self._notes:
            self._run_notes(timer)
        return (call.result(),)

    def _adopt(self, request_id: int) -> RpcCall:
        """Make a request from :meth:`_call_quiet` an ordinary call (lock held): what
        settles it reaches it through the protocol's events, or its timer."""
        call = RpcCall(self, request_id)
        self._calls[request_id] = call
        self._proto.track(request_id)
        return call

    def _absorb(
        self,
        data: bytes | None,
        failed: BaseException | None,
        timer: float | None,
        call: RpcCall,
        deadline: float | None,
    ) -> None:
        """Act on a read (lock held, the reader flag cleared): ``data`` (None: the read
        timed out; b"": the peer closed) or the error ``failed``; ``timer`` is the
        protocol timer the read waited for."""
        proto = self._proto
        if failed is not None:
            self._fail_all(E.RpcConnectionLost(f"the stream failed: {failed}"))
            return
        if data == b"":
            self._fail_all(E.RpcConnectionLost("the peer closed the stream"))
            return
        now = time.monotonic()
        if data:
            if timer is not None and len(data) > _TAKE_PIECE:
                now = self._take(data, now, timer)
            else:
                proto.receive_data(data, now)
        # what was read only settles or adds deadlines after ``now``: only the timer
        # that was due before can be due
        if timer is not None and timer <= now:
            proto.handle_timer(now)
        self._dispatch(proto.events())  # wakes the followers
        if not call.done and deadline is not None and now >= deadline:
            self._expire(call, deadline)

    def _take(self, data: bytes, now: float, limit: float) -> float:
        """Feed a large read to the protocol piece by piece (lock held, the reader flag
        cleared) until ``limit`` (the timer the read waited for) passes; what is left
        then is the backlog, which the next reader takes before it reads the stream (in
        order: nobody reads meanwhile). Returns the time of the last look."""
        proto, end = self._proto, len(data)
        pos = 0
        while pos < end:
            proto.receive_data(data[pos : pos + _TAKE_PIECE], now)
            pos += _TAKE_PIECE
            now = time.monotonic()
            if now >= limit and pos < end:
                self._backlog = data[pos:]
                break
        return now

    @staticmethod
    def _read(stream: BlockingStream, size: int) -> tuple[bytes | None, BaseException | None]:
        """One read for everybody (the reader flag set): ``(data, None)`` -- b"" when
        the peer closed -- or ``(None, None)`` when the read timed out, ``(None, the
        error)`` when it failed (what :meth:`_absorb` takes)."""
        try:
            return stream.recv(size), None
        except TimeoutError:
            return None, None
        except (DTPError, OSError) as exc:
            return None, exc

    def _read_timeout(self, stream: BlockingStream, timeout: float | None) -> None:
        """Give the stream's reads ``timeout``, unless the one already set is as good: a
        little shorter (the wait ends a moment early and the loop comes back) or at most
        a millisecond longer (a deadline is late by that much at worst)."""
        current = self._current_timeout
        if timeout != current and not (
            timeout is not None
            and type(current) is float
            and timeout - 0.05 <= current <= timeout + 0.001
        ):
            stream.settimeout(timeout)
            self._current_timeout = timeout

    def _wait(self, call: RpcCall, deadline: float | None) -> None:
        """Wait until ``call`` is done, reading for everybody while nobody else does."""
        stream, proto, lock = self._stream, self._proto, self._lock
        monotonic = time.monotonic
        while True:
            with lock:
                while not call.done and self._reading:
                    wait = self._wait_time(deadline)
                    if wait is not None and wait <= 0:
                        # a deadline passed while another thread reads: it is kept here,
                        # not at the end of that read (which began, perhaps before this
                        # call was made, with up to _READ_SLICE to wait)
                        self._expire(call, deadline)
                        continue
                    self._followers += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._followers -= 1
                if call.done:
                    # (the CANCEL of a call that timed out here goes now, not with the
                    # next write: the peer stops working for it)
                    pending_out = bool(proto._out)
                    break
                self._reading = True
                timer = proto.get_timer()
                backlog, self._backlog = self._backlog, b""
            leading = True
            try:
                if deadline is not None and (timer is None or deadline < timer):
                    timer = deadline
                data: bytes | None
                failed: BaseException | None
                if backlog:  # a reader before us left it: it comes before the stream
                    data, failed = backlog, None
                else:
                    # a slice at most: close() fails the calls, and the wait sees it
                    wait = (
                        _READ_SLICE
                        if timer is None
                        else min(max(timer - monotonic(), 1e-4), _READ_SLICE)
                    )
                    self._read_timeout(stream, wait)
                    data, failed = self._read(stream, RECV_SIZE)
                with lock:
                    self._reading = leading = False
                    self._absorb(data, failed, timer, call, deadline)
                    if failed is not None or data == b"":
                        return
                    pending_out = bool(proto._out)
                if pending_out:
                    self._flush_soon()
                if self._notes:
                    self._run_notes(timer)
            except BaseException:
                with lock:  # let another thread read, and re-check
                    if leading:
                        self._reading = False
                    self._wake_followers()
                raise
            if call.done:
                return
        if pending_out:
            self._flush_soon()

    def _wait_time(self, deadline: float | None) -> float | None:
        """Seconds until the first of ``deadline`` and the protocol's next timer (the
        deadline of a call in flight) comes due: at most 0 once it has, None when there
        is neither (lock held)."""
        timer = self._proto.get_timer()
        if deadline is not None and (timer is None or deadline < timer):
            timer = deadline
        return None if timer is None else timer - time.monotonic()

    def _expire(self, call: RpcCall, deadline: float | None) -> None:
        """A wait ran out (lock held): the protocol's timers due are handled (calls whose
        own deadline passed time out), and ``call`` times out when ``deadline`` (its
        ``result(timeout)``) has passed."""
        now = time.monotonic()
        timer = self._proto.get_timer()
        if timer is not None and timer <= now:
            self._proto.handle_timer(now)
            self._dispatch(self._proto.events())
        if not call.done and deadline is not None and now >= deadline:
            self._proto.cancel(call.request_id)
            self._calls.pop(call.request_id, None)
            if call.escrow_id and self.prepay is not None:
                self.prepay.unanswered.append(call.escrow_id)
            call._finish(None, E.RpcTimeout(f"no answer to call {call.request_id}"))


# -- server ---------------------------------------------------------------------------------------


@dataclass
class CallContext:
    """What a handler registered with ``context=True`` gets besides the params."""

    request_id: int
    method: str
    #: ``time.monotonic()`` value after which the caller stops waiting (None: never).
    deadline: float | None
    meta: Mapping[str, Any] | None
    #: The client's verified Sui address (from the DTP handshake), when known.
    peer_address: str | None
    #: Set when the caller cancels, the deadline passes or the client ends its side of
    #: the stream (it may still read the answer: a half-close): long handlers should
    #: check it.
    #: Only a server that reads while handlers run sees these: :class:`RpcServer` with
    #: a worker pool. Inline (``workers=0``) it stays clear: check :attr:`deadline`.
    #: :class:`AsyncRpcServer` cancels the handler's task instead.
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: The ResponseEscrow this request prepaid, if any.
    escrow_id: str | None = None


Handler = Callable[..., Any]


class _Registry:
    def __init__(self) -> None:
        self.methods: dict[str, tuple[Handler, bool]] = {}
        self.notifications: dict[str, tuple[Handler, bool]] = {}

    def register(
        self, name: str, fn: Handler, *, context: bool = False, notification: bool = False
    ) -> None:
        """Serve ``fn`` as method (or, with ``notification``, notification) ``name``.
        A name that no request could carry, a handler that cannot be called, or a name
        already taken is refused here (TypeError / ValueError), not at the first call:
        silently replacing a handler would hide the mistake."""
        _check_our_method(name)
        if not callable(fn):
            raise TypeError(f"a handler must be callable, not {type(fn).__name__!r}")
        table = self.notifications if notification else self.methods
        if name in table:
            kind = "notification" if notification else "method"
            raise ValueError(f"{kind} {name!r} is already registered")
        table[name] = (fn, context)

    @overload
    def method(self, name: Handler, *, context: bool = False) -> Handler: ...

    @overload
    def method(
        self, name: str | None = None, *, context: bool = False
    ) -> Callable[[Handler], Handler]: ...

    def method(
        self, name: str | Handler | None = None, *, context: bool = False
    ) -> Handler | Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`: ``@server.method()`` and the bare
        ``@server.method`` register the function under its own name,
        ``@server.method("name")`` under that one (``context=True`` as register's). It
        returns the function itself.

        The bare form is taken because it is how such decorators are commonly written:
        without it the function would arrive here as ``name``, and the decorator would
        return its inner wrapper in the function's place and register nothing (clients
        would get MethodNotFound, and calling the function a puzzling TypeError)."""

        def wrap_as(given: str | None) -> Callable[[Handler], Handler]:
            def wrap(fn: Handler) -> Handler:
                own = given or getattr(fn, "__name__", None)
                if not isinstance(own, str):
                    # (a partial, a callable object): said plainly, not an AttributeError
                    raise TypeError(
                        f"a {type(fn).__name__!r} handler has no name of its own: "
                        "give one, method(name)"
                    )
                # register makes every check, whichever form named the method
                self.register(own, fn, context=context)
                return fn

            return wrap

        if name is None or isinstance(name, str):
            return wrap_as(name)
        if callable(name):
            return wrap_as(None)(name)
        # neither a name nor a function: refused now, as register would refuse it
        raise TypeError(f"a method name is a str, not {type(name).__name__!r}")


def _check_server_options(
    max_message_size: object, max_pending: object, payments: object, response_fees: object
) -> None:
    """A server's options, checked when it is made: the limits went unchecked to each
    stream's RpcProtocol, so ``max_pending=0`` (or a str) was taken and every client
    that connected then failed; a payments source that cannot be called refused every
    request, and a wrong fee policy failed at the first prepaid one."""
    _check_count("max_message_size", max_message_size, 1)
    _check_count("max_pending", max_pending, 1)
    if not (payments is None or isinstance(payments, RequestPayments) or callable(payments)):
        raise TypeError(
            "payments must be a RequestPayments, a function of the connection ID or None, "
            f"not {type(payments).__name__!r}"
        )
    if response_fees is not None and not isinstance(response_fees, ResponseFeePolicy):
        raise TypeError(
            "response_fees must be a ResponseFeePolicy or None, "
            f"not {type(response_fees).__name__!r}"
        )


def _error_reply(exc: BaseException) -> tuple[int, str, Any]:
    if isinstance(exc, E.RemoteError):
        return exc.code, exc.message, exc.data
    if isinstance(exc, TypeError):
        # taken for params the handler cannot take; its text is sent only when Python
        # raised it binding the call (the handler never ran): a handler's own text stays
        # private, as any other exception's does
        tb = exc.__traceback__
        detail = f": {exc}" if tb is not None and tb.tb_next is None else ""
        return E.INVALID_PARAMS, f"invalid params{detail}", None
    return E.INTERNAL_ERROR, f"internal error ({type(exc).__name__})", None


class RpcServer(_Registry):
    """Blocking RPC server: register handlers, then serve streams.

    ``workers``: 0 (the default) runs handlers inline in the stream's thread (lowest
    latency, one request at a time per stream, nothing read while a handler runs): by
    design, a handler that blocks holds up every later request on its stream -- their
    callers' calls end in RpcTimeout at their deadlines, while the stream stays
    usable -- and, on a connection's first stream (:meth:`serve_connection`), the
    streams the client opens meanwhile, until it returns (streams opened before are
    served by their own threads). Serve handlers that may block or take long with N > 0:
    they run in a pool of N threads (shared by every stream), so requests on one stream
    overlap, at most N at once, and answers go out in completion order; requests beyond
    wait in the pool's queue (up to ``max_pending`` per stream, then SERVER_BUSY).
    Notification handlers run in the stream's thread, in order: a slow one delays the
    requests read after it (hand long work to a thread).
    ``payments`` / ``response_fees``: see the module docs. ``max_message_size`` and
    ``max_pending`` (ints >= 1), ``workers`` (>= 0) and those are checked here
    (TypeError / ValueError), before anything starts, not when a client connects.

    Handlers are ``fn(params)`` or, registered with ``context=True``,
    ``fn(params, ctx)``; they return the result or raise a
    :class:`~dtp.messaging.errors.RemoteError` subclass to answer with its code (a
    TypeError answers ``INVALID_PARAMS``, with Python's message only when the handler's
    signature refused the params; any other exception answers ``INTERNAL_ERROR`` with
    its type name, never its message). A result that cannot be encoded answers
    ``INTERNAL_ERROR`` too, whatever encoding it raised.

    A BaseException that is not an Exception (KeyboardInterrupt, SystemExit...) is
    answered the same way, then goes on up as Python's own threads and pools have it:
    inline (``workers=0``) it ends :meth:`serve_stream` (so Ctrl-C stops a server whose
    handler it interrupts; a stream :meth:`serve_connection` serves is closed); in a
    worker it is logged and the worker goes on, as a pool keeps it from everyone.
    """

    def __init__(
        self,
        *,
        workers: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_pending: int = 1024,
        payments: RequestPayments | Callable[[str | None], RequestPayments | None] | None = None,
        response_fees: ResponseFeePolicy | None = None,
    ) -> None:
        # (before the pool is made: a bool or a float made a pool of that many threads,
        # a negative count failed inside ThreadPoolExecutor)
        _check_count("workers", workers, 0)
        _check_server_options(max_message_size, max_pending, payments, response_fees)
        super().__init__()
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.payments = payments
        self._payments = _PaymentsCache(payments)
        self.response_fees = response_fees
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rpc") if workers else None
        self._closed = threading.Event()
        # the counters: a stream being served counts in its own attributes, written by
        # its thread alone (no lock on the inline server's path), and adds them here
        # when it ends; handlers in the pool count here, under the lock
        self._stats_lock = threading.Lock()
        self._live: set[_ServerStream] = set()
        self._served = 0
        self._violations = 0

    @property
    def served(self) -> int:
        """Requests whose handler returned, on every stream (those being served too)."""
        with self._stats_lock:
            return self._served + sum(s.served for s in self._live)

    @property
    def violations(self) -> int:
        """Frames from clients that broke the format (skipped), on every stream."""
        with self._stats_lock:
            return self._violations + sum(s.violations for s in self._live)

    def serve_stream(self, stream: BlockingStream, *, peer_address: str | None = None) -> None:
        """Answer requests on ``stream`` until the peer closes it (or it fails).
        ``peer_address``: the client's Sui address handlers see (CallContext), by
        default the stream's own; InvalidObjectId when it is not an address."""
        _check_blocking_stream(stream)
        if peer_address is None:
            peer_address = getattr(stream, "peer_address", None)
        else:
            # (it reached handlers as given: an int, or an address in another form
            # than the one the handshake gives)
            peer_address = normalize_id(peer_address, "peer address")
        _ServerStream(self, stream, peer_address).run()

    def serve_connection(self, sock: Any) -> None:
        """Answer requests on a connection's first stream ``sock`` and on every stream
        the client opens on it, each in a thread of its own, until the first stream
        ends; then the connection is closed (it lives as long as its first stream).

        The first stream's thread also takes the new streams, between requests and at
        least every :data:`ACCEPT_POLL_MAX` seconds when idle: a second thread blocked
        on the connection would take the reads in turn with it, a thread hand-off per
        request. So with ``workers=0`` a handler running on the first stream holds up
        the streams the client opens meanwhile until it returns (a pool's does not)."""
        peer = getattr(sock, "peer_address", None)

        def run_stream(stream: Any) -> None:
            with stream:
                try:
                    self.serve_stream(stream, peer_address=peer)
                except DTPError as exc:
                    logger.debug("RPC stream ended: %s", exc)

        def start(stream: Any) -> None:
            threading.Thread(target=run_stream, args=(stream,), daemon=True).start()

        with sock:
            try:
                _ServerStream(self, sock, peer, on_stream=start).run()
            except DTPError as exc:
                logger.debug("RPC connection ended: %s", exc)

    def serve(self, server: Any) -> None:
        """Accept connections from a :class:`dtp.socket.DTPServer` until it closes,
        serving each with :meth:`serve_connection` in its own thread."""
        while not self._closed.is_set():
            try:
                sock, _ = server.accept(timeout=0.5)
            except TimeoutError:
                continue
            except LocalProtocolError:
                return
            threading.Thread(target=self.serve_connection, args=(sock,), daemon=True).start()

    def close(self) -> None:
        """Stop :meth:`serve` (no new connections, within half a second; nor new streams
        on the connections served) and the worker pool. It returns at once: it waits
        for no handler, and a handler running goes on (its answer is still sent).
        Connections being served stay open, as with :meth:`asyncio.Server.close`: inline
        handlers go on answering, and with a pool their requests are refused with
        ``SERVER_BUSY``, until their clients close them (or their DTPSockets are
        closed). So it fails no call in flight: a client waiting for a handler that
        blocks waits for it, or for its call's deadline (RpcTimeout); closing the
        connection's DTPSocket ends its calls at once (RpcConnectionLost)."""
        self._closed.set()
        if self._pool is not None:
            # requests queued for the pool are answered SERVER_BUSY by its workers
            # (run_in_pool): cancelled futures left their clients waiting for good
            self._pool.shutdown(wait=False)


def _stream_payments(
    cache: _PaymentsCache, stream: Any
) -> tuple[RequestPayments | None, str | None]:
    """(the check for the stream's connection, or why there is none and requests must be
    refused)."""
    try:
        return cache.resolve(getattr(stream, "peer_connection_id", None)), None
    except DTPError as exc:
        # (a RemoteError's own text: str() prefixes its code, which the refusal adds)
        return None, exc.message if isinstance(exc, E.RemoteError) else str(exc)
    except Exception:
        # a failing payments source refuses the stream's requests (its cache entry is
        # released with the stream) rather than end the stream's thread untyped
        logger.exception("the payments source failed")
        return None, "the server's payments check failed"


class _Job:
    """A request handed to the worker pool (RpcServer.run_in_pool), while it waits in
    the pool's queue. A request that ends there (cancelled, or its deadline passed)
    lets go of its event -- params and all -- at once, and its job counts against
    ``max_pending`` (RpcProtocol.held_incoming) until a worker takes it off the queue:
    its slot was free again at once, so a client sending requests and cancelling them
    filled the queue without bound while the workers were busy (nothing answered, so
    nothing held up the reading either)."""

    __slots__ = ("ctx", "event", "fn", "wants_ctx")

    def __init__(
        self, fn: Handler, wants_ctx: bool, event: RequestReceived, ctx: CallContext | None
    ) -> None:
        self.fn = fn
        self.wants_ctx = wants_ctx
        self.event: RequestReceived | None = event
        self.ctx = ctx


class _ServerStream:
    """One stream being served: the reading loop runs in the stream's thread; with a
    worker pool, handlers answer from the pool's threads (``lock`` guards the protocol
    and the sending role, :meth:`flush`)."""

    def __init__(
        self,
        server: RpcServer,
        stream: BlockingStream,
        peer: str | None,
        *,
        on_stream: Callable[[Any], None] | None = None,
    ) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        #: takes the streams the client opens (the connection's first stream only)
        self.on_stream = on_stream
        self.proto = RpcProtocol(
            max_message_size=server.max_message_size, max_incoming=server.max_pending
        )
        self.lock = threading.Lock()
        #: (``lock``) a thread is sending what the protocol queued: the others leave it
        #: what they queue (it looks again before it stops)
        self.sending = False
        #: the stream's send takes MSG_DONTWAIT (a DTPSocket, a socket): answers from
        #: the pool never wait for the client
        self.dontwait = isinstance(stream, _socket.socket | DTPSocket)
        self.contexts: dict[int, CallContext] = {}
        #: (``lock``) request id -> its job while it waits in the pool's queue
        self.queued: dict[int, _Job] = {}
        self.escrows: dict[int, str] = {}  # request id -> escrow id (answered ones)
        self.connection_id: str | None = getattr(stream, "peer_connection_id", None)
        self.payments, self.payments_error = _stream_payments(server._payments, stream)
        #: set when a pool worker or the writer thread is done with an answer (for
        #: finish_answers); ``failed``: sending failed, the stream is done for
        self.progress = threading.Event()
        self.failed = False
        #: requests answered by the stream's own thread, and frames that broke the
        #: format (RpcServer.served / .violations: this thread alone writes them)
        self.served = 0
        self.violations = 0

    def flush(self) -> None:
        """Send what the protocol queued without waiting for the client: what it does
        not take now is left to a writer thread of the stream's, which waits for it.
        So a client that does not read its answers holds up neither a pool worker
        (nor, through the pool, other connections) nor the stream's reading."""
        with self.lock:
            if self.sending:
                return
            data = self.proto.data_to_send()
            if not data or self.failed:  # (failed: it cannot be sent, and is let go)
                return
            self.sending = True
        try:
            while True:
                rest = self._send_now(data)
                if rest:
                    threading.Thread(
                        target=self._send_rest, args=(rest,), name="dtp-rpc-writer", daemon=True
                    ).start()
                    return  # the writer is the sender now
                with self.lock:
                    data = self.proto.data_to_send()
                    if not data:
                        self.sending = False
                        return
        except BaseException:
            with self.lock:
                self.sending = False
            raise

    def _send_now(self, data: bytes) -> bytes:
        """Send what the stream takes of ``data`` now; returns the rest."""
        if not self.dontwait:
            _send_answer(self.stream, data, self.server._closed)
            return b""
        send = self.stream.send  # type: ignore[attr-defined]
        # (a plain socket with a timeout -- the read loop's -- waited that long for room
        # before it tried, holding a worker for a client that does not read: _can_send)
        plain = self.stream if isinstance(self.stream, _socket.socket) else None
        view = memoryview(data)
        while view:
            if plain is not None and not _can_send(plain):
                return bytes(view)
            try:
                n: int = send(view, _socket.MSG_DONTWAIT)
            except (BlockingIOError, TimeoutError):
                # (a socket with a timeout waits for room that long before it tries)
                return bytes(view)
            view = view[n:]
        return b""

    def _send_rest(self, data: bytes) -> None:
        """The writer thread: send ``data`` however long the client takes (until the
        server closes or the stream fails), then what was queued meanwhile."""
        try:
            while True:
                _send_answer(self.stream, data, self.server._closed)
                self.progress.set()  # (a read loop held up by backed_up() goes on)
                with self.lock:
                    data = self.proto.data_to_send()
                    if not data:
                        self.sending = False
                        return
        except (DTPError, OSError) as exc:
            # the stream is done for: its reading ends too (run_general), and what was
            # queued meanwhile, or is later, is let go (flush): left with the sending
            # role, the read loop would go on taking requests and queuing their answers
            # for good
            logger.debug("RPC answers not sent: %s", exc)
            with self.lock:
                self.failed = True
                self.sending = False
                self.proto._out.clear()
        except BaseException:
            with self.lock:
                self.sending = False
            raise
        finally:
            self.progress.set()

    def run(self) -> None:
        server = self.server
        with server._stats_lock:
            server._live.add(self)
        try:
            if (
                server._pool is None
                and self.payments is None
                and self.payments_error is None
                and server.response_fees is None
            ):
                self.run_inline()
            else:
                self.run_general()
        except (DTPError, OSError) as exc:
            logger.debug("RPC stream ended: %s", exc)
        finally:
            self.server._payments.release(self.connection_id)
            with server._stats_lock:
                server._live.discard(self)
                server._served += self.served
                server._violations += self.violations
            for ctx in list(self.contexts.values()):
                ctx.cancelled.set()

    def run_inline(self) -> None:
        """The read loop when every request is answered in this thread as it is read
        (no worker pool, no fees): no other thread touches the protocol (no locks),
        and nothing is pending between reads, so no deadline comes due while we wait
        -- a read waits only for the next look for new streams. A read that is one
        request for a plain handler is answered straight away; anything else takes the
        protocol's general path and the handlers run in turn."""
        stream, proto = self.stream, self.proto
        methods = self.server.methods
        take_request, response_frame = proto.take_request, proto.response_frame
        closed = self.server._closed
        # a DTPSocket sends an answer and reads on in one go (None: do it ourselves)
        send_recv: Callable[[bytes, int], bytes | None] = getattr(
            stream, "send_recv", lambda reply, size: None
        )
        monotonic = time.monotonic
        accepting = self.on_stream is not None
        gap = ACCEPT_POLL_MIN
        next_poll = monotonic()  # streams opened before the first request
        if not accepting:
            stream.settimeout(None)
        data: bytes | None = None
        size = QUICK_RECV_SIZE  # (see _next_read_size)
        while True:
            if data is None:
                if accepting:
                    now = monotonic()
                    if now >= next_poll:
                        accepting = self.accept_streams()
                        next_poll = now + gap
                        gap = min(gap * 2, ACCEPT_POLL_MAX)  # back to the minimum on traffic
                        # reads wait until the next look at most (while requests keep
                        # coming, it happens between two of them)
                        stream.settimeout(max(1e-3, next_poll - now) if accepting else None)
                try:
                    data = stream.recv(size)
                except TimeoutError:
                    continue
            if not data:
                return
            gap = ACCEPT_POLL_MIN
            message = take_request(data)
            size = _next_read_size(data, message is not None)
            if message is not None:
                entry = methods.get(message[2])
                if entry is not None and not entry[1]:
                    # a plain handler: answered at once
                    try:
                        reply = response_frame(message[1], entry[0](message[3]))
                        self.served += 1
                    except Exception as exc:
                        reply = self.answer_error(message, exc)
                    except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                        # answered as any failure, then it ends the serving (class doc)
                        _send_answer(stream, self.answer_error(message, exc), closed)
                        raise
                    data = None
                    if not accepting or monotonic() < next_poll:  # no look for streams due
                        try:
                            data = send_recv(reply, size)
                        except TimeoutError:  # the read's: look for new streams, read again
                            continue
                    if data is None:
                        _send_answer(stream, reply, closed)
                    continue
                proto.admit_request(message, monotonic())
            else:
                proto.receive_data(data, monotonic())
            data = None
            for event in proto.events():
                if type(event) is RequestReceived:
                    entry = methods.get(event.method)
                    if entry is not None and not entry[1]:
                        self.answer_plain(entry[0], event)
                        continue
                self.handle(event)  # answers requests, contexts and all, inline
            proto.get_timer()  # drops the timers of the requests just answered
            out = proto.data_to_send()
            if out:
                _send_answer(stream, out, closed)

    def run_general(self) -> None:
        """The read loop with a worker pool or fees: handlers answer from other threads
        (``lock`` guards the protocol), deadlines are kept by the protocol's timers."""
        stream, proto, lock = self.stream, self.proto, self.lock
        monotonic = time.monotonic
        current: float | object | None = _DEFAULT
        accepting = self.on_stream is not None
        gap = ACCEPT_POLL_MIN
        next_poll = monotonic()  # streams opened before the first request
        while True:
            now = monotonic()
            if accepting and now >= next_poll:
                accepting = self.accept_streams()
                current = _DEFAULT  # accept_streams changed the stream's timeout
                next_poll = now + gap
                gap = min(gap * 2, ACCEPT_POLL_MAX)  # back to the minimum on traffic
            with lock:
                timer = proto.get_timer()
            until = timer
            if accepting and (until is None or next_poll < until):
                until = next_poll
            wait = None if until is None else max(1e-3, until - now)
            if wait != current and not (
                # as in RpcClient._wait: a timeout a little shorter, or at most a
                # millisecond longer, than the one wanted does as well
                wait is not None
                and type(current) is float
                and wait - 0.05 <= current <= wait + 0.001
            ):
                stream.settimeout(wait)
                current = wait
            if self.backed_up():
                # the client does not take its answers: read no more requests until it
                # does (it feels it as flow control), rather than queue answers for good
                self.progress.wait(0.1 if wait is None else min(wait, 0.1))
                data = None
            else:
                try:
                    data = stream.recv(RECV_SIZE)
                except TimeoutError:
                    data = None
            if self.failed:
                return  # answers cannot be sent (_send_rest, run_in_pool): none are taken
            if data == b"":
                # the client ended its side: it may still read (a half-close after its
                # last request), so what it asked is still answered. Handlers watching
                # ctx.cancelled are told at once: the client may as well have
                # closed for good (nothing tells the two apart), and a long one waiting
                # for it would hold the stream for good
                for ctx in list(self.contexts.values()):
                    ctx.cancelled.set()
                self.finish_answers()
                return
            with lock:
                now = monotonic()
                # deadlines passed first (only older requests' can be due): they count
                # against max_pending until then
                if timer is not None and timer <= now:
                    proto.handle_timer(now)
                if data:
                    gap = ACCEPT_POLL_MIN
                    proto.receive_data(data, now)
                events = proto.events()
            for event in events:
                self.handle(event)
            self.flush()

    def backed_up(self) -> bool:
        """Whether the writer thread waits for the client with more than the cap of
        answers queued behind it (:data:`_UNSENT_CAP`, or two messages of the cap)."""
        if not self.sending:  # (the usual case, without the lock: a stale answer is
            return False  # corrected at the next read)
        with self.lock:
            if not self.sending or self.failed:
                return False
            self.progress.clear()
            queued = sum(map(len, self.proto._out))
        return queued > max(_UNSENT_CAP, 2 * self.server.max_message_size)

    def finish_answers(self) -> None:
        """After the client's end of the stream: wait, keeping the requests' deadlines,
        until every request taken is answered and the answers are sent -- or the stream
        fails (the client closed for good) or the server closes."""
        proto, lock, closed = self.proto, self.lock, self.server._closed
        while not closed.is_set() and not self.failed:
            with lock:
                now = time.monotonic()
                timer = proto.get_timer()
                if timer is not None and timer <= now:
                    proto.handle_timer(now)  # dropped: the client stopped waiting
                    timer = proto.get_timer()
                events = proto.events()
                if not (proto.pending_incoming or self.sending or proto._out or events):
                    return
                self.progress.clear()
            for event in events:
                self.handle(event)
            self.flush()
            wait = 0.1 if timer is None else min(max(timer - now, 1e-3), 0.1)
            self.progress.wait(wait)

    def accept_streams(self) -> bool:
        """Pass the streams the client has opened to ``on_stream``, without waiting;
        False once the connection gives no more."""
        assert self.on_stream is not None
        sock: Any = self.stream
        sock.settimeout(0)
        while not self.server._closed.is_set():
            try:
                stream = sock.accept_stream()
            except BlockingIOError:
                return True
            except (DTPError, OSError):
                return False  # the connection ended
            self.on_stream(stream)
        return False

    def handle(self, event: RpcEvent) -> None:
        server = self.server
        if isinstance(event, RequestReceived):
            entry = server.methods.get(event.method)
            if entry is None:
                with self.lock:
                    self.proto.send_error(
                        event.request_id,
                        E.METHOD_NOT_FOUND,
                        f"no method {event.method!r}",
                        request=event,
                    )
                return
            fn, wants_ctx = entry
            # a context (and its Event) only for handlers that see it or escrows that
            # need it: most calls have neither
            ctx = None
            if wants_ctx or server.response_fees is not None:
                ctx = CallContext(
                    event.request_id, event.method, event.deadline, event.meta, self.peer
                )
            try:
                if self.payments_error is not None:
                    raise E.PaymentRequired(self.payments_error)
                if self.payments is not None:
                    self.payments.admit(event.meta)
                if ctx is not None and server.response_fees is not None:
                    ctx.escrow_id = server.response_fees.admit(event.meta, self.peer)
            except E.RemoteError as exc:
                with self.lock:
                    self.proto.send_error(event.request_id, exc.code, exc.message, request=event)
                return
            except Exception as exc:
                # the fee check itself failed (on_receipt, say, with the disk full): this
                # request's failure, answered as a handler's; it went up through the read
                # loop and ended the stream, every call in flight with it
                logger.exception("the fee check of %s failed", event.method)
                failure = f"internal error ({type(exc).__name__})"
                with self.lock:
                    self.proto.send_error(
                        event.request_id, E.INTERNAL_ERROR, failure, request=event
                    )
                return
            if server._pool is None:
                self.run_handler(fn, wants_ctx, event, ctx)
                return
            job = _Job(fn, wants_ctx, event, ctx)
            with self.lock:
                if ctx is not None:
                    self.contexts[event.request_id] = ctx
                self.queued[event.request_id] = job
            try:
                server._pool.submit(self.run_in_pool, job)
            except RuntimeError:  # pool shut down
                with self.lock:
                    if self.queued.get(event.request_id) is job:
                        del self.queued[event.request_id]
                    self.forget_context(event.request_id, ctx)
                    self.proto.send_error(
                        event.request_id, E.SERVER_BUSY, "shutting down", request=event
                    )
                self.release_escrow(ctx)
        elif isinstance(event, NotificationReceived):
            n_entry = server.notifications.get(event.method)
            if n_entry is not None:
                fn, wants_ctx = n_entry
                try:
                    if wants_ctx:
                        fn(event.params, CallContext(0, event.method, None, event.meta, self.peer))
                    else:
                        fn(event.params)
                except Exception:
                    logger.exception("notification handler %s failed", event.method)
        elif isinstance(event, RequestCancelled):
            with self.lock:
                ctx_found = self.contexts.pop(event.request_id, None)
                ended = self.queued.pop(event.request_id, None)
                if ended is not None:  # still queued: it never runs (_Job)
                    ended.event = ended.ctx = None
                    self.proto.held_incoming += 1
            if ctx_found is not None:
                ctx_found.cancelled.set()
                if ended is not None:
                    self.release_escrow(ctx_found)
        elif isinstance(event, AckReceived):
            escrow_id = self.escrows.pop(event.request_id, None)
            if escrow_id is not None and server.response_fees is not None:
                server.response_fees.acknowledged(escrow_id, event.signature)
        elif isinstance(event, ProtocolViolation):
            self.violations += 1

    def dropped(self, event: RequestReceived, ctx: CallContext | None) -> bool:
        """Whether the request of ``event`` ended before its handler started (the
        client cancelled it, or its deadline passed: a request queued behind others,
        in the pool or in a batch read); it is then forgotten, unanswered (the client
        stopped waiting). Its handler must not run: the client was told the call was
        cancelled or timed out, so it runs no side effects for it. (A dict lookup
        without the lock, and a clock read for a request with a deadline, per
        request.)"""
        deadline = event.deadline
        if self.proto._incoming.get(event.request_id) is event and (
            deadline is None or time.monotonic() < deadline
        ):
            return False
        with self.lock:
            self.forget_context(event.request_id, ctx)
            self.proto.drop_request(event.request_id, request=event)
        self.release_escrow(ctx)
        return True

    def forget_context(self, request_id: int, ctx: CallContext | None) -> None:
        """(``lock`` held) Forget ``ctx``, the context of a request that ended -- not a
        later request's of the same id (the client may reuse the id of a request it
        cancelled, or whose deadline passed, while that one's handler still runs)."""
        if ctx is not None and self.contexts.get(request_id) is ctx:
            del self.contexts[request_id]

    def run_handler(
        self, fn: Handler, wants_ctx: bool, event: RequestReceived, ctx: CallContext | None
    ) -> None:
        request_id = event.request_id
        if self.dropped(event, ctx):
            return
        try:
            result = fn(event.params, ctx) if wants_ctx else fn(event.params)
        except Exception as exc:
            if not isinstance(exc, E.RemoteError | TypeError):
                logger.exception("handler %s failed", event.method)
            code, message, data = _error_reply(exc)
            with self.lock:
                self.forget_context(request_id, ctx)
                self.proto.send_error(request_id, code, message, data, request=event)
            self.release_escrow(ctx)
            return
        except BaseException as exc:  # KeyboardInterrupt, SystemExit...
            self.fail_fatally(event, ctx, exc)
            self.release_escrow(ctx)
            raise
        with self.lock:
            self.forget_context(request_id, ctx)
            # (only its own request: the client may have ended it and reused its id)
            body = self.proto.send_response(request_id, result, request=event)
            if body is not None and ctx is not None and ctx.escrow_id is not None:
                fees = self.server.response_fees
                if fees is not None:
                    # before the lock is let go: any flush may send the response from
                    # then on, and the client's ACK must find its escrow answered
                    fees.responded(ctx.escrow_id, body)
                    self.escrows[request_id] = ctx.escrow_id
        if body is None:  # cancelled, past its deadline, or its result not encodable
            self.release_escrow(ctx)
        if self.server._pool is None:  # this stream's thread
            self.served += 1
        else:  # a worker's: several may finish at once, and after the stream ended
            with self.server._stats_lock:
                self.server._served += 1

    def release_escrow(self, ctx: CallContext | None) -> None:
        """The request of ``ctx`` ended with no response: the ResponseFeePolicy forgets
        its prepaid escrow (it kept it to stop a second request using it meanwhile)."""
        fees = self.server.response_fees
        if fees is not None and ctx is not None and ctx.escrow_id is not None:
            fees.release(ctx.escrow_id)

    def answer_error(self, request: list[Any], exc: BaseException) -> bytes:
        """The frame answering a request from RpcProtocol.take_request whose plain
        handler raised ``exc`` (the stream's thread only, no pool, no fees)."""
        if not isinstance(exc, E.RemoteError | TypeError):
            logger.exception("handler %s failed", request[2], exc_info=exc)
        code, message, data = _error_reply(exc)
        return self.proto.error_frame(request[1], code, message, data)

    def answer_plain(self, fn: Handler, event: RequestReceived) -> None:
        """Run a handler that takes no context inline and queue its answer (the stream's
        thread only, no pool, no fees)."""
        if self.dropped(event, None):
            return
        try:
            result = fn(event.params)
        except Exception as exc:
            if not isinstance(exc, E.RemoteError | TypeError):
                logger.exception("handler %s failed", event.method)
            code, message, data = _error_reply(exc)
            self.proto.send_error(event.request_id, code, message, data, request=event)
            return
        except BaseException as exc:  # KeyboardInterrupt, SystemExit...
            self.fail_fatally(event, None, exc)
            raise
        self.proto.send_response(event.request_id, result, request=event)
        self.served += 1

    def fail_fatally(
        self, event: RequestReceived, ctx: CallContext | None, exc: BaseException
    ) -> None:
        """A handler raised ``exc``, a BaseException that is not an Exception
        (KeyboardInterrupt, SystemExit...): answer its request as any failure and send
        what is queued now, before ``exc`` goes on up (RpcServer's class doc)."""
        code, message, data = _error_reply(exc)
        with self.lock:
            self.forget_context(event.request_id, ctx)
            self.proto.send_error(event.request_id, code, message, data, request=event)
        with contextlib.suppress(DTPError, OSError):
            self.flush()

    def run_in_pool(self, job: _Job) -> None:
        with self.lock:
            event, ctx = job.event, job.ctx
            if event is None:  # it ended while queued: its slot is free now (_Job)
                self.proto.held_incoming -= 1
            elif self.queued.get(event.request_id) is job:
                del self.queued[event.request_id]
        if event is None:
            return
        if self.server._closed.is_set():
            # queued when the server closed: refused, as requests read after it are
            with self.lock:
                self.forget_context(event.request_id, ctx)
                self.proto.send_error(
                    event.request_id, E.SERVER_BUSY, "shutting down", request=event
                )
            self.release_escrow(ctx)
        else:
            try:
                self.run_handler(job.fn, job.wants_ctx, event, ctx)
            except BaseException:
                # answered (run_handler); a worker has no caller to raise it to: a pool's
                # future would keep it unseen
                logger.exception("handler %s raised", event.method)
        try:
            self.flush()
        except (DTPError, OSError) as exc:
            logger.debug("RPC reply not sent: %s", exc)
            self.failed = True
        self.progress.set()


# -- asyncio --------------------------------------------------------------------------------------


async def _deposit(prepay: ResponsePrepay, timeout: float) -> str:
    """``prepay.deposit(timeout)`` in a worker thread. A call cancelled meanwhile cannot
    stop the thread: the escrow it then makes is left in ``prepay.unanswered``, for
    :meth:`ResponsePrepay.refund_due` (else it would be lost, the fee locked until
    someone found it)."""
    work = asyncio.ensure_future(asyncio.to_thread(prepay.deposit, timeout))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:

        def orphaned(done: asyncio.Future[str]) -> None:
            if not done.cancelled() and done.exception() is None:
                prepay.unanswered.append(done.result())

        work.add_done_callback(orphaned)
        raise


async def _admit_fee(
    policy: ResponseFeePolicy, meta: Mapping[str, Any] | None, peer: str | None
) -> str | None:
    """``policy.admit(meta)`` in a worker thread. A request cancelled meanwhile (its
    CANCEL, the stream's end) cannot stop the thread: the escrow it then admits is
    released, as for any request that ended with no response (it was kept as used for
    good: a request naming it again was refused, and the policy's memory grew)."""
    work = asyncio.ensure_future(asyncio.to_thread(policy.admit, meta, peer))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:

        def orphaned(done: asyncio.Future[str | None]) -> None:
            if not done.cancelled() and done.exception() is None:
                escrow_id = done.result()
                if escrow_id is not None:
                    policy.release(escrow_id)

        work.add_done_callback(orphaned)
        raise


class AsyncRpcClient:
    """asyncio RPC client over a ``(reader, writer)`` pair (e.g. from
    :func:`dtp.aio.open_connection`). A background task reads; calls await futures.

    ``meter`` and ``prepay`` work as for :class:`RpcClient` (per-request receipts;
    prepaid response fees, acknowledged on each response); the ledger calls of
    ``prepay`` run in a worker thread.
    """

    def __init__(
        self,
        reader: Any,
        writer: Any,
        *,
        timeout: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_in_flight: int = 4096,
        on_notification: Callable[[str, Any], Any] | None = None,
        meter: Meter | None = None,
        prepay: ResponsePrepay | None = None,
    ) -> None:
        if timeout is not None:
            _check_our_timeout(timeout)  # as RpcClient's
        if on_notification is not None and not callable(on_notification):
            raise TypeError(
                f"on_notification must be callable, not {type(on_notification).__name__!r}"
            )
        _check_async_streams(reader, writer)
        _check_one_meter(meter, writer)
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self.meter = meter
        self.prepay = prepay
        #: request ID -> the ResponseEscrow its call prepaid
        self._escrows: dict[int, str] = {}
        self.on_notification = on_notification
        self._proto = RpcProtocol(max_message_size=max_message_size, max_outgoing=max_in_flight)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._closed: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # the tasks of calls and notifications waiting in _send for the peer to take
        # their frame, which close() cancels (_closing: those it cancelled, which end
        # in RpcConnectionLost): the writer stays open, so a peer that does not read
        # would hold them for good
        self._sending: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Task[Any]] = set()
        self.violations = 0

    def _start(self) -> None:
        # (not once closed: the reader would take the stream, which is not ours, for good)
        if self._task is None and self._closed is None:
            self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = _DEFAULT,
        meta: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ``method`` and await its result (raises the typed error otherwise)."""
        self._start()
        if timeout is _DEFAULT:
            timeout = self.timeout
        if self._closed is not None:
            raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
        loop = asyncio.get_running_loop()
        extra = _meta_copy(meta)
        escrow_id = None
        if self.meter is not None or self.prepay is not None:
            # a request that cannot be sent is found out before it is paid for
            self._proto.check_request(
                method, params, timeout=timeout, meta=extra, reserve=_FEE_META_RESERVE
            )
        # the escrow first, as in RpcClient.start: a refused deposit leaves the meter
        # as it was
        if self.prepay is not None:
            escrow_id = await _deposit(self.prepay, timeout if timeout is not None else 60.0)
            extra = extra or {}
            extra["re"] = escrow_id
            try:
                if self._closed is not None:  # closed while the deposit was made
                    raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
                if self.meter is not None:
                    # other calls may have filled the in-flight limit meanwhile: refused
                    # now, before the meter counts a request never sent
                    self._proto.check_request(
                        method, params, timeout=timeout, meta=extra, reserve=_FEE_META_RESERVE
                    )
            except BaseException:
                self.prepay.unanswered.append(escrow_id)
                raise
        # (metering to sending runs with no await: receipts go out in nonce order)
        if self.meter is not None:
            extra = _meter_request(self.meter, self.prepay, escrow_id, extra)
        # the deadline is kept here (asyncio.timeout): no protocol timer, which nothing
        # would expire (one per call, kept for good)
        try:
            request_id = self._proto.send_request(
                method, params, now=loop.time(), timeout=timeout, meta=extra, timer=False
            )
        except BaseException:
            if escrow_id is not None and self.prepay is not None:
                self.prepay.unanswered.append(escrow_id)  # (refund_due, after its deadline)
            raise
        future: asyncio.Future[Any] = loop.create_future()
        self._futures[request_id] = future
        if escrow_id is not None:
            self._escrows[request_id] = escrow_id
        deadline = asyncio.timeout(timeout)
        try:
            # the deadline covers the send too: a peer that does not read holds the
            # drain (the frame is whole in the writer's buffer: ending the wait loses
            # nothing of it)
            async with deadline:
                await self._send(request_id)
                return await asyncio.shield(future)
        except TimeoutError:
            if not deadline.expired():
                raise
            self._futures.pop(request_id, None)
            self._give_up(request_id)
            if future.done() and not future.cancelled():
                return future.result()  # it came as the deadline passed
            self._unanswered(request_id)
            raise E.RpcTimeout(f"no answer to call {request_id}") from None
        except asyncio.CancelledError:
            self._futures.pop(request_id, None)
            self._unanswered(request_id)
            self._give_up(request_id)
            if future.done() and not future.cancelled():
                future.exception()  # seen: no 'Future exception was never retrieved'
            if self._ended_by_close():
                raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})") from None
            raise

    def _give_up(self, request_id: int) -> None:
        """Cancel our request at the peer (CANCEL) without waiting for the peer's flow
        control: the writer buffers the frame, and the next write's drain waits for it
        (a call that gave up, for its deadline or cancelled, must not wait on)."""
        if self._proto.cancel(request_id) and self._closed is None:
            data = self._proto.data_to_send()
            with contextlib.suppress(Exception):
                self._writer.write(data)

    def _unanswered(self, request_id: int) -> None:
        """Remember a prepaid call that got no response, for ResponsePrepay.refund_due."""
        escrow_id = self._escrows.pop(request_id, None)
        if escrow_id is not None and self.prepay is not None:
            self.prepay.unanswered.append(escrow_id)

    async def notify(
        self, method: str, params: Any = None, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Send a notification. Waiting for the peer to take it lasts the client's
        ``timeout`` at most (as the blocking client's): then RpcTimeout, the
        notification staying whole in the writer's buffer, to leave when the peer
        reads."""
        self._start()
        if self._closed is not None:
            raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})")
        self._proto.send_notification(method, params, meta=meta)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self._send()
        except TimeoutError:
            if not deadline.expired():
                raise
            raise E.RpcTimeout(
                "the peer took no data before the timeout (the notification is queued)"
            ) from None
        except asyncio.CancelledError:
            if self._ended_by_close():
                raise E.RpcConnectionLost(f"the RPC stream is closed ({self._closed})") from None
            raise

    def _ended_by_close(self) -> bool:
        """In a task cancelled while it called or notified: whether close() cancelled
        it (its wait in :meth:`_send`) and nobody else did -- a cancellation of the
        caller's own stays one."""
        task = asyncio.current_task()
        if task is None or task not in self._closing:
            return False
        self._closing.discard(task)
        return task.uncancel() == 0

    async def _send(self, request_id: int | None = None) -> None:
        """:meth:`_flush` for a call (``request_id``) or a notification: a failed write
        fails every call (RpcConnectionLost, as the blocking client's), and this one's
        error is raised here. :meth:`close` cancels the wait."""
        task = asyncio.current_task()
        if task is not None:
            self._sending.add(task)
        try:
            await self._flush()
        except (DTPError, OSError) as exc:
            if request_id is not None:
                self._futures.pop(request_id, None)
                self._unanswered(request_id)
            error = _send_failed(exc)
            self._fail_all(error)
            raise error from exc
        finally:
            if task is not None:
                self._sending.discard(task)

    async def _flush(self) -> None:
        data = self._proto.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self._reader.read(RECV_SIZE)
                if not data:
                    raise E.RpcConnectionLost("the peer closed the stream")
                if len(data) <= _TAKE_PIECE and self.on_notification is None:
                    self._proto.receive_data(data, loop.time())
                    for event in self._proto.events():
                        self._dispatch(event)
                else:
                    await self._take(data, loop)
                await self._flush()
        except (DTPError, OSError, asyncio.IncompleteReadError) as exc:
            error = exc if isinstance(exc, E.RpcConnectionLost) else E.RpcConnectionLost(str(exc))
            self._fail_all(error)
        except BaseException as exc:
            # cancelled (close(), or the loop shutting down) or failed: nobody reads any
            # more, so the calls waiting and those to come fail now, not at their
            # deadlines (or never, without one)
            if self._closed is None:
                if isinstance(exc, asyncio.CancelledError):
                    self._fail_all(E.RpcConnectionLost("the client stopped reading (cancelled)"))
                else:
                    self._fail_all(E.RpcConnectionLost(f"reading failed: {exc!r}"))
            raise

    async def _take(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Take a large read, or one that may hold notifications, letting the loop run
        (the calls' deadlines among others) every :data:`_TAKE_PIECE` bytes and every
        :data:`_TAKE_TIME` seconds of notification handlers: a peer that sends frames
        costly to take, or notifications faster than the handler takes them, would
        otherwise hold the loop, and every call's deadline with it, for a whole read."""
        proto, dispatch = self._proto, self._dispatch
        pieces = len(data) > _TAKE_PIECE
        since = loop.time()
        for pos in range(0, len(data), _TAKE_PIECE):
            proto.receive_data(data[pos : pos + _TAKE_PIECE] if pieces else data, loop.time())
            for event in proto.events():
                dispatch(event)
                if type(event) is NotificationReceived and loop.time() - since >= _TAKE_TIME:
                    await asyncio.sleep(0)
                    since = loop.time()
            if pieces:
                await asyncio.sleep(0)
                since = loop.time()

    def _dispatch(self, event: RpcEvent) -> None:
        if isinstance(event, ResponseReceived):
            future = self._futures.pop(event.request_id, None)
            escrow_id = self._escrows.pop(event.request_id, None)
            if escrow_id is not None and self.prepay is not None:
                from dtp.ledger.interface import response_ack_message

                message = response_ack_message(escrow_id, response_hash(event.body))
                self._proto.send_ack(event.request_id, self.prepay.identity.sign(message))
            if future is not None and not future.done():
                future.set_result(event.result)
        elif isinstance(event, ErrorReceived):
            future = self._futures.pop(event.request_id, None)
            self._unanswered(event.request_id)
            if future is not None and not future.done():
                future.set_exception(event.error)
        elif isinstance(event, NotificationReceived) and self.on_notification is not None:
            try:
                outcome = self.on_notification(event.method, event.params)
                if inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except Exception:
                logger.exception("notification handler failed")
        elif isinstance(event, RequestReceived):
            self._proto.send_error(event.request_id, E.METHOD_NOT_FOUND, "no methods here")
        elif isinstance(event, ProtocolViolation):
            self.violations += 1

    def _fail_all(self, error: BaseException) -> None:
        self._closed = error
        futures, self._futures = self._futures, {}
        for request_id, future in futures.items():
            # a prepaid call failing so got no response: its fee comes back (refund_due)
            self._unanswered(request_id)
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Stop reading and fail calls in flight (the stream stays open): calls and
        notifications waiting for the peer to take their frame end too, with
        RpcConnectionLost (what they wrote stays in the writer's buffer). A
        notification handler (a coroutine: its own task) may await it."""
        self._fail_all(E.RpcConnectionLost("the client was closed"))
        sending, self._sending = self._sending, set()
        for task in sending:
            self._closing.add(task)
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def __aenter__(self) -> AsyncRpcClient:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRpcServer(_Registry):
    """asyncio RPC server: handlers may be coroutines or plain functions; each request
    runs as its own task, so answers go out in completion order. Notifications are
    handled in order by the stream's reading loop (an async notification handler is
    awaited there: a slow one delays the requests behind it). Use :meth:`serve` as a
    :func:`dtp.aio.start_server` callback (or call it on any ``(reader, writer)``), or
    :meth:`serve_connection` to also answer on every stream the client opens.

    ``payments`` / ``response_fees`` as for :class:`RpcServer`; their ledger reads run in
    a worker thread. The options are checked here, as :class:`RpcServer`'s are.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_pending: int = 1024,
        payments: RequestPayments | Callable[[str | None], RequestPayments | None] | None = None,
        response_fees: ResponseFeePolicy | None = None,
    ) -> None:
        _check_server_options(max_message_size, max_pending, payments, response_fees)
        super().__init__()
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.payments = payments
        self._payments = _PaymentsCache(payments)
        self.response_fees = response_fees
        self.violations = 0
        self.served = 0

    async def serve_connection(self, reader: Any, writer: Any) -> None:
        """:meth:`serve` on the connection's first stream and on every stream the client
        opens on it (``writer.accept_stream()``), until the first stream ends; a
        :func:`dtp.aio.start_server` callback."""
        streams: set[asyncio.Task[None]] = set()

        async def accept_streams() -> None:
            while True:
                try:
                    r, w = await writer.accept_stream()
                except (DTPError, OSError):
                    return
                task = asyncio.get_running_loop().create_task(self.serve(r, w))
                streams.add(task)
                task.add_done_callback(streams.discard)

        acceptor = asyncio.get_running_loop().create_task(accept_streams())
        try:
            await self.serve(reader, writer)
        finally:
            acceptor.cancel()
            for task in list(streams):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(acceptor, *streams, return_exceptions=True)

    async def serve(self, reader: Any, writer: Any) -> None:
        """Answer requests from ``reader``/``writer`` until the peer closes the stream."""
        proto = RpcProtocol(max_message_size=self.max_message_size, max_incoming=self.max_pending)
        tasks: dict[int, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()
        peer = getattr(writer, "peer_address", None)

        async def flush() -> None:
            data = proto.data_to_send()
            if data:
                writer.write(data)
                await writer.drain()

        escrows: dict[int, str] = {}  # request ID -> prepaid ResponseEscrow (answered)
        # resolved in a thread, shielded: the resolution counts this stream as one of
        # its connection's users, released at the end below -- or, when this task is
        # cancelled meanwhile (a connection's first stream ending while its second
        # resolves), once the resolution is done; left counted, a failure cached for
        # the connection (its open still landing) would refuse its later streams for good
        connection_id = getattr(writer, "peer_connection_id", None)
        resolving = loop.run_in_executor(None, _stream_payments, self._payments, writer)
        try:
            payments, payments_error = await asyncio.shield(resolving)
        except asyncio.CancelledError:
            resolving.add_done_callback(lambda _: self._payments.release(connection_id))
            raise

        async def run(event: RequestReceived, fn: Handler, wants_ctx: bool) -> None:
            ctx = CallContext(event.request_id, event.method, event.deadline, event.meta, peer)
            try:
                if payments_error is not None:
                    raise E.PaymentRequired(payments_error)
                if payments is not None:
                    await payments.admit_async(event.meta)
                if self.response_fees is not None:
                    ctx.escrow_id = await _admit_fee(self.response_fees, event.meta, peer)
                outcome = fn(event.params, ctx) if wants_ctx else fn(event.params)
                if inspect.isawaitable(outcome):
                    remaining = None if event.deadline is None else event.deadline - loop.time()
                    outcome = await asyncio.wait_for(outcome, remaining)
                # (only its own request: the client may have ended it and reused its id)
                body = proto.send_response(event.request_id, outcome, request=event)
                self.served += 1
                if body is not None and ctx.escrow_id is not None and self.response_fees:
                    self.response_fees.responded(ctx.escrow_id, body)
                    escrows[event.request_id] = ctx.escrow_id
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    return  # this task was cancelled: the caller cancelled, or serve ended
                # the handler's own (it awaited something cancelled): a failure like any
                logger.warning("handler %s failed: cancelled (%r)", event.method, exc)
                proto.send_error(event.request_id, *_error_reply(exc), request=event)
            except Exception as exc:
                if (
                    isinstance(exc, TimeoutError)
                    and event.deadline is not None
                    and loop.time() >= event.deadline
                ):
                    return  # the request's deadline (wait_for's): the caller stopped waiting
                # (a TimeoutError of the handler's own is its failure, answered as any)
                if not isinstance(exc, E.RemoteError | TypeError):
                    logger.exception("handler %s failed", event.method)
                code, message, data = _error_reply(exc)
                proto.send_error(event.request_id, code, message, data, request=event)
            except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                # answered as any failure (written: a loop that stops at once may
                # close the connection before it leaves), then on up: asyncio stops
                # the loop with it
                proto.send_error(event.request_id, *_error_reply(exc), request=event)
                with contextlib.suppress(Exception):
                    await flush()
                raise
            finally:
                # only this task's entry: once the client cancelled its request, it may
                # have reused the id, and the later request's task is listed under it
                # now (removed, a CANCEL of it, or the end of the stream, missed it)
                if tasks.get(event.request_id) is asyncio.current_task():
                    del tasks[event.request_id]
                if ctx.escrow_id is not None and self.response_fees is not None:
                    # (forgets it only when no response was made: ended otherwise)
                    self.response_fees.release(ctx.escrow_id)
            with contextlib.suppress(DTPError, OSError):
                await flush()

        since = loop.time()  # the loop last ran other tasks (about)
        try:
            while True:
                # no wait_for around read(): cancelling a read can lose what it took;
                # deadlines are enforced per request in run() instead
                data = await reader.read(RECV_SIZE)
                if data == b"":
                    # the client ended its side: it may still read (a half-close after
                    # its last request), so what it asked is still answered -- unless
                    # the connection ended (the client closed for good): the handlers
                    # left are cancelled then (finally), as a long one would hold the
                    # stream for good
                    while tasks and not writer.is_closing():
                        await asyncio.wait(list(tasks.values()), timeout=0.1)
                    return
                # requests whose deadline passed first: they count against max_pending
                # until then, and nothing here wakes up at a deadline
                now = loop.time()
                timer = proto.get_timer()
                if timer is not None and timer <= now:
                    proto.handle_timer(now)
                # a large read is taken in pieces, the loop running in between (as in
                # AsyncRpcClient._take): frames costly to take (junk, a flood of tiny
                # ones) held the loop, and every other stream it serves, for a whole read
                pieces = len(data) > _TAKE_PIECE
                for pos in range(0, len(data), _TAKE_PIECE):
                    if pos:  # (pieces only)
                        await asyncio.sleep(0)
                        since = now = loop.time()
                    proto.receive_data(data[pos : pos + _TAKE_PIECE] if pieces else data, now)
                    for event in proto.events():
                        if isinstance(event, RequestReceived):
                            entry = self.methods.get(event.method)
                            if entry is None:
                                missing = f"no method {event.method!r}"
                                proto.send_error(
                                    event.request_id, E.METHOD_NOT_FOUND, missing, request=event
                                )
                                continue
                            tasks[event.request_id] = loop.create_task(run(event, *entry))
                        elif isinstance(event, RequestCancelled):
                            task = tasks.pop(event.request_id, None)
                            if task is not None:
                                task.cancel()
                        elif isinstance(event, NotificationReceived):
                            n_entry = self.notifications.get(event.method)
                            if n_entry is not None:
                                fn, wants_ctx = n_entry
                                ctx = CallContext(0, event.method, None, event.meta, peer)
                                try:
                                    outcome = (
                                        fn(event.params, ctx) if wants_ctx else fn(event.params)
                                    )
                                    if inspect.isawaitable(outcome):
                                        await outcome
                                except Exception:
                                    logger.exception("notification handler failed")
                        elif isinstance(event, AckReceived):
                            acked = escrows.pop(event.request_id, None)
                            if acked is not None and self.response_fees is not None:
                                await asyncio.to_thread(
                                    self.response_fees.acknowledged, acked, event.signature
                                )
                        elif isinstance(event, ProtocolViolation):
                            self.violations += 1
                await flush()
                if loop.time() - since >= _TAKE_TIME:
                    # reads back to back (the reader's buffer full) never wait: let the
                    # loop run now and then
                    await asyncio.sleep(0)
                    since = loop.time()
        except (DTPError, OSError) as exc:
            logger.debug("RPC stream ended: %s", exc)
        finally:
            self._payments.release(connection_id)
            for task in list(tasks.values()):
                task.cancel()
