"""The ledger carrier under the socket APIs: a background thread per connection that
moves records between a :class:`~dtp.hostid.ledger_carrier._carrier.LedgerCarrier` and one end of a
local socket pair, and a listener that finds the connections made to a host over the
ledger (docs/ledger-carrier.md).

The adapters run unchanged on one end of an ``AF_UNIX`` stream socketpair; the bridge
cuts the byte stream at record boundaries (the records' own headers frame it) and
writes back only records whose header and length are valid, for a stream parser cannot
resynchronise. Closing, polling, backpressure and retention's confirmations (in a
thread of their own) are docs/ledger-carrier.md. The connection must run with
:func:`ledger_config`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from dtp.errors import ChainError, ConnectionLost, DTPError, LocalProtocolError, NotAuthorized
from dtp.hostid.ledger_carrier._carrier import (
    MAX_DTP_RECORD,
    MAX_PIPE_DATA,
    LedgerCarrier,
    _check_int,
    _check_number,
    confirm_records,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Event, EventFilter, normalize_id
from dtp.ledger.interface import Ledger
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.carriers._bridged_end import BridgedEnd
from dtp.transport.carriers._tcp import wait_ready

__all__ = [
    "LEDGER_CLOSE_COPIES",
    "LEDGER_HANDSHAKE_RESEND_MAX",
    "LEDGER_HANDSHAKE_TIMEOUT",
    "LEDGER_RECORD_PLAINTEXT",
    "LEDGER_STREAM_WINDOW",
    "LedgerBridge",
    "LedgerCarrierOptions",
    "LedgerListener",
    "connect_ledger_carrier",
    "ledger_config",
    "listen_on_ledger",
]

logger = logging.getLogger(__name__)

#: Handshake timeout of ledger-carrier connections. A lossy handshake is resent after
#: 0.5 s, doubling up to 8 s (dtp.protocol.connection): 30 s leaves room for six resends, so a
#: handshake survives a 15 % event loss with a failure chance well below 1e-3.
LEDGER_HANDSHAKE_TIMEOUT = 30.0
#: The longest wait between two copies of a handshake message over the ledger carrier
#: (s): the doubling from 0.5 s goes on to here (docs/ledger-carrier.md).
LEDGER_HANDSHAKE_RESEND_MAX = 8.0
#: The copies of a CLOSE over the ledger carrier, one each probe timeout of the closing
#: period (docs/protocol.md 3.1).
LEDGER_CLOSE_COPIES = 3

_HEADER = 12
_TAG = 16
_DATA = 16
#: Flow-control window per stream of ledger-carrier connections (twice that per
#: connection). Every record costs a transaction, so a deep window only queues records
#: behind the ledger: their RTT samples grow, and so do spurious retransmissions
#: (measured on LocalLedger: 256 KiB ≈ 6 MB/s, 1-4 MiB ≈ 3-4 MB/s).
LEDGER_STREAM_WINDOW = 256 * 1024
#: Record plaintext that keeps a whole DATA record inside one RECORD payload
#: (kind byte + 12-byte header + plaintext + tag = MAX_PIPE_DATA): no fragments.
LEDGER_RECORD_PLAINTEXT = MAX_PIPE_DATA - 1 - _HEADER - _TAG
_HANDSHAKE_KINDS = (1, 2, 3)
#: The smallest max_payload that carries the largest record of a ledger-carrier
#: connection in 255 fragments (each payload has a 7-byte fragment header).
_MIN_PAYLOAD = -(-(_HEADER + LEDGER_RECORD_PLAINTEXT + _TAG) // 255) + 7
_READ_CHUNK = 256 * 1024
#: Records the ledger did not take kept to post again, the newest: enough to see the
#: ledger answer again and to keep the adapter's last (its CLOSE); the connection
#: retransmits the rest, and each one posted again is a transaction.
_MAX_UNSENT = 8
#: Records read and not yet taken by the adapter beyond which the bridge stops reading
#: the ledger (each read sized to the room left: ``receive(max_bytes=...)``).
_OUT_HIGH_WATER = 4 << 20
#: Connection IDs a listener remembers having handled (a client's second pipe for the
#: same connection is not a new connection); the oldest are forgotten beyond this.
_MAX_SEEN = 65_536


@dataclass(frozen=True)
class LedgerCarrierOptions:
    """Tuning of ledger-carrier connections (both sides)."""

    inner_count: int = 4
    """Inner pipes of our pipe (1..8)."""
    sync_every: int = 64
    sync_interval: float = 0.25
    """The SYNC cadence (docs/protocol.md §7): the connection's own ACKs drive
    retransmission, so these only keep the pipes' counters moving."""
    gap_timeout: float = 0.5
    """Seconds before a missing event is given up (the connection retransmits it)."""
    max_payload: int = MAX_PIPE_DATA
    poll_min: float = 0.001
    poll_max: float = 0.02
    """Ledger polling interval: ``poll_min`` right after traffic, doubling while idle up
    to ``poll_max`` (other processes' transactions are only seen by polling)."""
    peer_close_grace: float = 1.0
    """Seconds to keep reading after the peer destroyed its pipe."""
    outage_timeout: float = 30.0
    """Seconds a connection rides out a ledger that does not answer
    (``LedgerUnavailable``), what could not be posted lost as on any lossy link; longer
    (0: at once), or any other ledger error, ends the carrier."""
    ledger_filter: Callable[[Ledger], Ledger] | None = None
    """Wraps the ledger each carrier uses (tests: fault injection at the ledger edge)."""
    retention_terms: str | None = None
    """A RetentionTerms ID of the connection's service: our data payloads become
    RetainedRecords with a storage deposit (docs/escrow.md §16). The peer's retained
    records are confirmed whatever this says."""

    def __post_init__(self) -> None:
        # refused before any money moves (TypeError, ValueError): poll_min > 0, for the
        # idle poll doubles from it, and integer counts, as the carrier wants them
        for name in ("inner_count", "sync_every", "max_payload"):
            _check_int(name, getattr(self, name))
        if not 1 <= self.inner_count <= 8:
            raise ValueError(f"inner_count must be an integer in 1..8, not {self.inner_count!r}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, not {self.sync_every!r}")
        for name in _SECONDS_FIELDS:
            # (a bool is not a number of seconds, and a string fails here naming its
            # option, not at a comparison below with a bare TypeError)
            _check_number(name, getattr(self, name))
        positive = {
            "sync_interval": self.sync_interval,
            "gap_timeout": self.gap_timeout,
            "poll_min": self.poll_min,
        }
        for name, value in positive.items():
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        if not _MIN_PAYLOAD <= self.max_payload <= MAX_PIPE_DATA:
            # (any smaller, a full-size record would need more than 255 fragments, and
            # its send would end the bridge)
            raise ValueError(
                f"max_payload must be in {_MIN_PAYLOAD}..{MAX_PIPE_DATA}, not {self.max_payload}"
            )
        if not self.poll_min <= self.poll_max < float("inf"):
            raise ValueError(
                f"poll_max must be at least poll_min ({self.poll_min}), not {self.poll_max}"
            )
        if not 0 <= self.peer_close_grace < float("inf"):
            raise ValueError(f"peer_close_grace cannot be negative, not {self.peer_close_grace}")
        if not 0 <= self.outage_timeout < float("inf"):
            raise ValueError(
                f"outage_timeout must be a finite number of seconds, not {self.outage_timeout}"
            )


_SECONDS_FIELDS: Final = (
    "sync_interval",
    "gap_timeout",
    "poll_min",
    "poll_max",
    "peer_close_grace",
    "outage_timeout",
)


def ledger_config(base: ConnectionConfig) -> ConnectionConfig:
    """``base`` made fit for the ledger carrier (docs/ledger-carrier.md): lossy-carrier
    mode, records that fit one ``pipe::send``, and the windows, handshake timeouts and
    CLOSE copies of the ``LEDGER_*`` constants above (each copy is a transaction)."""
    return replace(
        base,
        reliable_carrier=False,
        handshake_timeout=max(base.handshake_timeout, LEDGER_HANDSHAKE_TIMEOUT),
        handshake_resend_max=max(base.handshake_resend_max, LEDGER_HANDSHAKE_RESEND_MAX),
        close_copies=min(base.close_copies, LEDGER_CLOSE_COPIES),
        max_record_plaintext=min(base.max_record_plaintext, LEDGER_RECORD_PLAINTEXT),
        stream_window=min(base.stream_window, LEDGER_STREAM_WINDOW),
        connection_window=min(base.connection_window, 2 * LEDGER_STREAM_WINDOW),
    )


def _valid_record(record: bytes) -> bool:
    """Whether ``record`` is one whole record with a valid header (docs/protocol.md §2)."""
    if len(record) < _HEADER + 1 or record[1] != 0:
        return False
    body = record[2] | record[3] << 8
    if len(record) != _HEADER + body:
        return False
    kind = record[0]
    if kind == _DATA:
        return 16 <= body <= 16400
    return kind in _HANDSHAKE_KINDS and body <= 4096


def _cut_records(buf: bytearray) -> list[bytes]:
    """Remove and return the whole records at the start of ``buf``."""
    out: list[bytes] = []
    pos = 0
    size = len(buf)
    while size - pos >= _HEADER:
        end = pos + _HEADER + (buf[pos + 2] | buf[pos + 3] << 8)
        if end > size:
            break
        out.append(bytes(buf[pos:end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


class _AdapterEnd(BridgedEnd):
    """The adapter's end of the pair: once the bridge failed, its reads and writes end
    with :class:`~dtp.errors.ConnectionLost` (the bridge's error as ``__cause__``), not a
    clean EOF that loses the cause."""

    __slots__ = ()

    def _raised(self) -> ConnectionLost:
        assert self.failure is not None
        error = ConnectionLost(f"the ledger carrier failed: {_describe(self.failure)}")
        error.__cause__ = self.failure
        return error

    def send(self, data: Any, flags: int = 0) -> int:
        return self._write(super().send, data, flags)

    def sendmsg(self, *args: Any) -> int:
        return self._write(super().sendmsg, *args)

    def _write(self, write: Callable[..., int], *args: Any) -> int:
        # a write after the bridge's end closed fails with EPIPE: that failure too
        try:
            return write(*args)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError:
            if self.failure is None:
                raise
            raise self._raised() from self.failure


def _describe(exc: BaseException) -> str:
    """``exc`` in a sentence: a ChainError with its name (LedgerUnavailable: ...)."""
    name = exc.qualified_name if isinstance(exc, ChainError) else ""
    return f"{name or type(exc).__name__}: {exc}"


class LedgerBridge:
    """Runs ``carrier`` in a daemon thread; :attr:`socket` is the adapter's end.

    The thread ends when the adapter closes :attr:`socket` (after posting what it wrote
    and destroying our pipe), when the peer's pipe is gone, on a ledger error, or on
    :meth:`stop`.
    """

    def __init__(
        self,
        carrier: LedgerCarrier,
        *,
        name: str,
        options: LedgerCarrierOptions | None = None,
    ) -> None:
        self.carrier = carrier
        self.options = options or LedgerCarrierOptions()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = theirs
        try:
            self.socket: socket.socket = _AdapterEnd(
                ours.family, ours.type, ours.proto, fileno=ours.detach()
            )
        except BaseException:
            ours.close()
            theirs.close()
            raise
        self._sock.setblocking(False)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.records_posted = 0
        self.records_delivered = 0
        self.records_malformed = 0
        self.records_confirmed = 0
        #: times the ledger stopped answering and the carrier rode it out (or began to)
        self.outages = 0
        self.name = f"dtp-ledger-{name}"
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._confirms: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._confirmer: threading.Thread | None = None

    @property
    def peername(self) -> tuple[str, str]:
        """What ``getpeername()`` reports for a ledger-carrier connection."""
        return ("ledger", self.carrier.connection_id)

    def start(self) -> socket.socket:
        """Start the thread; returns the adapter's end of the pair."""
        self._thread.start()
        return self.socket

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish (posting nothing more) and wait for it."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _discard(self) -> None:
        """Undo a bridge that could not be started: close both ends of the pair and
        destroy the carrier's pipe (best effort: the ledger may not answer)."""
        self.socket.close()
        self._sock.close()
        with contextlib.suppress(Exception):
            self.carrier.close()

    @property
    def running(self) -> bool:
        """Whether the thread is still moving records."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    def reclaim_storage(self) -> int:
        """Delete our RetainedRecords that are consumed and past their retention time;
        returns the MIST refunded (see :meth:`LedgerCarrier.reclaim_storage`). Callable
        while the bridge runs and after it ended."""
        return self.carrier.reclaim_storage()

    # -- confirming the peer's retained records ---------------------------------------------

    def _offer_confirmations(self) -> None:
        records = self.carrier.take_confirmations()
        if not records:
            return
        if self._confirmer is None:
            self._confirmer = threading.Thread(
                target=self._confirm_loop, name=f"{self.name}-confirm", daemon=True
            )
            self._confirmer.start()
        self._confirms.put(records)

    def _confirm_loop(self) -> None:
        carrier = self.carrier
        while (records := self._confirms.get()) is not None:
            try:
                self.records_confirmed += confirm_records(carrier.ledger, carrier.identity, records)
            except Exception as exc:  # the data already went through: only log it
                logger.warning("%s: confirming retained records failed: %s", self.name, exc)

    def _linger_for_retained(self) -> None:
        """After our side ended: if the peer retains its records, read its last ones
        (posted while we closed) until its pipe is gone or ``2 × peer_close_grace``, so
        that they are confirmed too and the peer gets their deposits back."""
        carrier = self.carrier
        if not carrier.peer_retains:
            return
        deadline = time.monotonic() + 2 * self.options.peer_close_grace
        while not self._stop.is_set() and time.monotonic() < deadline:
            was_closed = carrier.peer_closed
            # the records go nowhere (the connection is over): read in portions the
            # size of our buffer, one after the other while they come full (read
            # whole, a backlog on the ledger went into memory at once)
            while (
                sum(map(len, carrier.receive(0.0, max_bytes=_OUT_HIGH_WATER))) >= _OUT_HIGH_WATER
                and not self._stop.is_set()
                and time.monotonic() < deadline
            ):
                self._offer_confirmations()
            self._offer_confirmations()
            if was_closed:
                break
            self._stop.wait(self.options.poll_max)
        carrier.give_up_retained()
        self._offer_confirmations()

    def _finish_retention(self) -> None:
        """At the end: the pending confirmations, then our already deletable deposits."""
        if self._confirmer is not None:
            self._confirms.put(None)
            self._confirmer.join(30)
        if self.carrier.retained:
            try:
                self.carrier.reclaim_storage()
            except Exception as exc:  # a later reclaim_retained() can still do it
                logger.warning("%s: reclaiming retained records failed: %s", self.name, exc)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a ledger failure ends the carrier, not the process
            self.error = exc
            if isinstance(self.socket, _AdapterEnd):
                self.socket.failure = exc  # (before our end closes: see _AdapterEnd)
            logger.warning("ledger carrier %s failed: %s", self.carrier.connection_id, exc)
        finally:
            try:
                self.carrier.close()
            except Exception as exc:  # the ledger may be gone too: nothing more to do
                logger.debug("ledger carrier %s: destroying the pipe failed: %s", self.name, exc)
            with contextlib.suppress(OSError):
                self._sock.close()  # first: the adapter need not wait for what follows
            try:
                self._linger_for_retained()
            except Exception as exc:  # the ledger may be gone: confirm what we have
                logger.debug("%s: reading the last retained records failed: %s", self.name, exc)
            self._finish_retention()

    def _loop(self) -> None:
        opts = self.options
        carrier = self.carrier
        sock = self._sock
        inbuf = bytearray()  # adapter → ledger, a partial record at most
        out = bytearray()  # ledger → adapter
        wait = opts.poll_min
        write_failed = False
        peer_closed_at: float | None = None
        outage: float | None = None  # when the ledger stopped answering
        # records the ledger did not take, posted again at each turn: the outage lasts
        # until a post goes through (reads answering do not end it)
        unsent: list[bytes] = []
        while not self._stop.is_set():
            timer = carrier.get_timer()
            if timer is None or outage is not None:
                # (in an outage a SYNC stays due, its timer past: that spun without pause)
                timeout = wait
            else:
                timeout = max(0.0, min(wait, timer - time.monotonic()))
            rlist = [sock]
            wlist = [sock] if out else []
            r, w = wait_ready(rlist, wlist, timeout)
            moved = False
            failure: ChainError | None = None
            if r:
                data = _recv(sock)
                if data is None:
                    break  # the adapter closed its end
                inbuf += data
                unsent += _cut_records(inbuf)
            if unsent:
                try:
                    self._post(unsent)
                    moved = True
                except ChainError as exc:
                    if not _unavailable(exc):
                        raise
                    failure = exc  # (reading goes on: what comes in still goes up)
                    # only what the ledger did not take is cut to the newest: a read of
                    # more than _MAX_UNSENT records (a 256 KiB window's worth is 16) goes
                    # up whole while the ledger answers
                    del unsent[:-_MAX_UNSENT]
            try:
                if w and out and not self._write_out(out):
                    write_failed = True
                if len(out) < _OUT_HIGH_WATER:
                    # (no more than the room left: a receive read every event the ledger
                    # had, so a backlog came in whole as soon as the adapter took a byte)
                    for record in carrier.receive(0.0, max_bytes=_OUT_HIGH_WATER - len(out)):
                        if _valid_record(record):
                            out += record
                            self.records_delivered += 1
                            moved = True
                        else:
                            self.records_malformed += 1
                else:
                    carrier.poll()
            except ChainError as exc:
                if not _unavailable(exc):
                    raise
                failure = failure or exc
            if failure is not None:
                outage = self._ride_out(failure, outage)
                wait = opts.poll_max
                continue
            if outage is not None:
                logger.info(
                    "%s: the ledger answers again after %.1f s",
                    self.name,
                    time.monotonic() - outage,
                )
                outage = None
            self._offer_confirmations()
            if out and not self._write_out(out):
                write_failed = True
            if write_failed:
                # the adapter closed its end: what it wrote before (its CLOSE) is still
                # to be read and posted, so go on reading until EOF
                out.clear()
            if carrier.peer_closed:
                now = time.monotonic()
                if peer_closed_at is None:
                    peer_closed_at = now
                elif now - peer_closed_at >= opts.peer_close_grace and not out:
                    logger.debug("%s: the peer destroyed its pipe", self._thread.name)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)  # the adapter sees the carrier end
                    if self._drain_until_closed(sock):
                        self._close_out([], None)  # (an outage now is ridden out too)
                    return
            wait = opts.poll_min if moved else min(wait * 2, opts.poll_max)
        else:
            return  # stop()
        logger.debug("%s: the adapter closed its end", self._thread.name)
        self._close_out(unsent, outage)

    def _post(self, records: list[bytes]) -> None:
        """Post ``records`` in order, each removed once posted: what the ledger did not
        take stays in the list."""
        while records:
            self.carrier.send(records[:1])
            del records[0]
            self.records_posted += 1

    def _close_out(self, unsent: list[bytes], outage: float | None) -> None:
        """The adapter closed its end: post what is left (its CLOSE) and destroy our
        pipe, riding out an outage as any call, so that the peer sees the end."""
        while True:
            try:
                self._post(unsent)
                self.carrier.close()
                return
            except ChainError as exc:
                if not _unavailable(exc):
                    raise
                outage = self._ride_out(exc, outage)
            if self._stop.wait(self.options.poll_max):
                return

    def _ride_out(self, exc: ChainError, since: float | None) -> float:
        """The ledger did not answer (``exc``, LedgerUnavailable): when the outage began,
        or ``exc`` raised again once it has lasted ``outage_timeout``. What the failed
        call was posting is lost to the connection, which retransmits it."""
        now = time.monotonic()
        if since is None:
            since = now
            self.outages += 1
            if self.options.outage_timeout > 0:
                logger.warning(
                    "%s: the ledger does not answer (%s); retrying for up to %g s",
                    self.name,
                    exc,
                    self.options.outage_timeout,
                )
        if now - since >= self.options.outage_timeout:
            raise exc
        return since

    def _write_out(self, out: bytearray) -> bool:
        """Write what the adapter's end takes now; False if it is closed."""
        try:
            n = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        del out[:n]
        return True

    def _drain_until_closed(self, sock: socket.socket) -> bool:
        """After the peer left: discard what the adapter still writes until it closes
        (True), or :meth:`stop` (False)."""
        while not self._stop.is_set():
            r, _ = wait_ready([sock], [], 0.1)
            if r and _recv(sock) is None:
                return True
        return False


def _unavailable(exc: BaseException) -> bool:
    """Whether a ledger call failed for want of the ledger (a node or file that may
    answer again), not for what was asked."""
    return isinstance(exc, ChainError) and exc.name == "LedgerUnavailable"


def _recv(sock: socket.socket) -> bytes | None:
    """Bytes available now (b"" if none), or None once the other end closed."""
    try:
        data = sock.recv(_READ_CHUNK)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:
        return None
    return data or None


def _carrier(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    peer_address: str,
    cursor: str | None,
    options: LedgerCarrierOptions,
) -> LedgerCarrier:
    led = options.ledger_filter(ledger) if options.ledger_filter is not None else ledger
    carrier = LedgerCarrier(
        led,
        identity,
        connection_id,
        peer_address=peer_address,
        inner_count=options.inner_count,
        sync_every=options.sync_every,
        sync_interval=options.sync_interval,
        gap_timeout=options.gap_timeout,
        max_payload=options.max_payload,
        retention_terms=options.retention_terms,
        # (_valid_record drops anything larger: its fragments need not be kept)
        max_record=MAX_DTP_RECORD,
    )
    # the peer's pipe is created after the connection opened: no need to read older events
    carrier.cursor = cursor
    return carrier


def connect_ledger_carrier(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    peer_address: str,
    options: LedgerCarrierOptions | None = None,
) -> LedgerBridge:
    """Client side: create our pipe for ``connection_id`` and start a bridge reading
    ``peer_address``'s pipe (the host authority's). Blocking (ledger calls)."""
    opts = options or LedgerCarrierOptions()
    head = ledger.head_cursor()
    carrier = _carrier(ledger, identity, connection_id, peer_address, head, opts)
    try:
        bridge = LedgerBridge(carrier, name=f"client-{connection_id[:10]}", options=opts)
    except BaseException:
        with contextlib.suppress(Exception):
            carrier.close()  # (the pipe just created would stay on the ledger)
        raise
    try:
        bridge.start()
    except BaseException:
        bridge._discard()
        raise
    return bridge


Accepted = Callable[[LedgerBridge], None]


class LedgerListener:
    """Server side: finds connections made to ``host_id``:``port`` over the ledger
    carrier and hands each one, bridged, to ``on_accept``.

    On a client's ``PipeCreated`` it checks the connection is an Open TransportControl
    of that client to this host and port, creates the host's pipe and starts a
    :class:`LedgerBridge`; admission proper is the server's hook, on the handshake.
    Pipes created before the listener started are not picked up.
    """

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        host_id: str,
        port: int,
        on_accept: Accepted,
        *,
        options: LedgerCarrierOptions | None = None,
        poll: float = 0.05,
    ) -> None:
        self.ledger = ledger
        self.identity = identity
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        # checked now: otherwise every connection would be skipped in the background
        # and its client would see only a handshake timeout
        host = ledger.get_host(self.host_id)  # ObjectNotFound when there is none
        if host.authority != identity.sui_address:
            raise NotAuthorized(
                f"{identity.sui_address} is not the authority of host {self.host_id} "
                f"({host.authority} is): connections over the ledger name the authority "
                f"as their server"
            )
        if port not in host.services:
            logger.warning(
                "host %s has no service on port %d yet: clients cannot open connections "
                "to it until one is added",
                self.host_id,
                port,
            )
        self.options = options or LedgerCarrierOptions()
        self.poll = poll
        self._on_accept = on_accept
        self._seen: OrderedDict[str, None] = OrderedDict()  # connections handled
        self._stop = threading.Event()
        self.accepted = 0
        self.skipped = 0
        self.cursor = ledger.head_cursor()
        self._thread = threading.Thread(target=self._run, name="dtp-ledger-listener", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop watching (bridges already handed over go on), waiting up to ``timeout``
        seconds for the thread to end (0: not at all). Idempotent."""
        self._stop.set()
        if timeout > 0 and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the listener's thread is still running (it ends soon after close())."""
        return self._thread.is_alive()

    def _run(self) -> None:
        flt = EventFilter(type="PipeCreated")
        while not self._stop.is_set():
            try:
                start = self.cursor
                events, cursor = self.ledger.wait_events(start, self.poll, flt, 100)
            except Exception as exc:
                logger.warning("ledger listener: reading events failed: %s", exc)
                self._stop.wait(self.poll)
                continue
            before = start
            for event in events:
                if self._stop.is_set():
                    return
                try:
                    self._consider(event, before)
                except ChainError as exc:  # (_unavailable only)
                    # looked at again after a pause, from this event: skipped, the
                    # client's connection would be lost to one failed ledger read
                    logger.warning("ledger listener: %s; retrying", exc)
                    self.cursor = before
                    self._stop.wait(self.poll)
                    break
                except Exception:  # (e.g. no descriptor left for the bridge's pair)
                    logger.exception("ledger listener: a connection could not be taken")
                before = event.cursor
            else:
                self.cursor = cursor

    def _remember(self, cid: str) -> None:
        self._seen[cid] = None
        while len(self._seen) > _MAX_SEEN:
            self._seen.popitem(last=False)

    def _consider(self, event: Event, before: str | None) -> None:
        fields = event.fields
        cid = str(fields.get("connection", ""))
        owner = str(fields.get("owner", ""))
        if cid in self._seen or owner == self.identity.sui_address:
            return
        try:
            tc = self.ledger.get_connection(cid)
        except DTPError as exc:
            if _unavailable(exc):
                raise
            return
        if tc.host != self.host_id or tc.port != self.port or tc.client != owner:
            return
        if tc.state != ConnectionState.OPEN or tc.server != self.identity.sui_address:
            self._remember(cid)
            self.skipped += 1
            return
        try:
            carrier = _carrier(self.ledger, self.identity, cid, owner, before, self.options)
        except DTPError as exc:
            if _unavailable(exc):
                raise
            self._remember(cid)
            self.skipped += 1
            logger.warning("cannot create a pipe for connection %s: %s", cid, exc)
            return
        self._remember(cid)
        try:
            bridge = LedgerBridge(carrier, name=f"server-{cid[:10]}", options=self.options)
        except BaseException:
            # (no descriptor left for the pair): the pipe just created would stay on the
            # ledger, and the client's connection go unanswered until its timeout
            with contextlib.suppress(Exception):
                carrier.close()
            raise
        try:
            bridge.start()
        except BaseException:  # (no thread to be had)
            bridge._discard()
            raise
        self.accepted += 1
        try:
            self._on_accept(bridge)
        except Exception:
            logger.exception("handing over ledger connection %s failed", cid)
            bridge.socket.close()


class _LedgerServer(Protocol):
    """A DTP server that takes connections bridged from the ledger into its handshakes
    (:class:`dtp.socket.DTPServer`, :class:`dtp.aio.DTPServer`)."""

    identity: HostIdentity

    @property
    def attached(self) -> object | None: ...

    @property
    def connection_config(self) -> ConnectionConfig: ...

    def attach(self, listener: LedgerListener) -> None: ...


def listen_on_ledger(
    server: _LedgerServer,
    ledger: Ledger,
    host_id: str,
    port: int,
    options: LedgerCarrierOptions | None,
    handing: Callable[[ConnectionConfig], Accepted],
) -> LedgerListener:
    """Have ``server`` also accept connections to ``host_id``:``port`` over the ledger
    carrier: a :class:`LedgerListener` attached to it, each bridged connection handed
    over by what ``handing`` makes of the server's config for the ledger carrier
    (:func:`ledger_config`): the server's handshake, at once or on its event loop.
    LocalProtocolError when the server listens on the ledger already."""
    if server.attached is not None:
        raise LocalProtocolError("this server already listens on the ledger")
    on_accept = handing(ledger_config(server.connection_config))
    listener = LedgerListener(ledger, server.identity, host_id, port, on_accept, options=options)
    server.attach(listener)
    return listener
