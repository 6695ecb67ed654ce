"""A listener (:class:`BroadcastListener`): made of its reading of the station's stream
(:mod:`~dtp.messaging.broadcast.listener_reading`) and what it sends and pays
(:mod:`~dtp.messaging.broadcast.listener_payments`); here are its start, the waits for
what it received, and its closing."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.errors import DTPError
from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.broadcast.checks import _check_stream
from dtp.messaging.broadcast.events import AirChange, BroadcastMessage
from dtp.messaging.broadcast.listener_payments import ListenerPayments
from dtp.messaging.broadcast.listener_reading import ListenerReading
from dtp.messaging.protocol import _check_wait

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import BlockingStream


class BroadcastListener(ListenerReading, ListenerPayments):
    """A listener: verifies the station's stream, and pays, tips and asks through it."""

    def __init__(
        self,
        stream: BlockingStream,
        *,
        ledger: Ledger | None = None,
        identity: HostIdentity | None = None,
        broadcast_id: str | None = None,
        broadcaster: str | None = None,
        queue_size: int = 1024,
    ) -> None:
        """``broadcast_id`` and ``broadcaster`` (a Sui address) pin what the station must
        announce; with a ledger and a broadcast ID the broadcaster is read from the
        ledger. ``identity`` signs contributions and tips. ``stream`` that is not a
        stream is a TypeError, and a ``broadcast_id`` or ``broadcaster`` that is not an
        ID :class:`~dtp.errors.InvalidObjectId`, here rather than in the reader thread."""
        _check_stream(stream, "BroadcastListener")
        # both compared as IDs (any case, short forms), as the ledger takes them: an
        # address spelt in upper case made the genuine station "an impostor station"
        if broadcast_id is not None:
            broadcast_id = normalize_id(broadcast_id, "broadcast ID")
        if broadcaster is not None:
            broadcaster = normalize_id(broadcaster, "broadcaster address")
        self.stream = stream
        self.ledger = ledger
        self.identity = identity
        self.broadcast_id = broadcast_id
        if broadcaster is None and ledger is not None and broadcast_id is not None:
            broadcaster = normalize_id(ledger.get_broadcast(broadcast_id).broadcaster)
        self.broadcaster = broadcaster
        self.channel: str | None = None
        self._public: bytes | None = None
        #: The nonce of the station's session, from its verified HELLO (None before).
        self.session: bytes | None = None
        #: When the station's session started (ms since the epoch, the station host's
        #: clock, signed in its HELLO; None before): how fresh the stream is, for the
        #: application to judge.
        self.session_started_ms: int | None = None
        self._last_tip_id = 0
        if type(queue_size) is not int or queue_size < 1:
            raise ValueError("a listener's queue holds at least 1 item")
        self._queue_size = queue_size
        # unbounded underneath, bounded by _put (the reader is the only producer): the
        # end-of-stream marker (None) must always fit, or a consumer blocked on a queue
        # that was full at close would never wake up
        self._queue: queue.Queue[BroadcastMessage | AirChange | None] = queue.Queue()
        self._queue_lock = threading.Lock()
        #: Why the listener stopped (None while it listens).
        self.close_reason: str | None = None
        self._last_seq = 0
        self._send_lock = threading.Lock()
        self.hello = threading.Event()
        self.closed = threading.Event()
        # set by an accepted HELLO or the close, whichever comes first: wait_hello()
        # ends at either
        self._settled = threading.Event()
        self.on_air = False
        self.received = 0
        self.forged = 0
        self.replayed = 0
        self.violations = 0
        self.missed = 0
        self.dropped = 0
        # messages dropped from the full queue since the last one queued (with the gaps
        # before them): the next queued message's missed_before includes them
        self._unreported = 0
        #: The last rejection (for diagnostics).
        self.last_error: DTPError | None = None
        #: The station's refusal of this listener (a ticketed broadcast's listener with
        #: no ticket), raised by :meth:`get` once what was queued has been taken.
        self.refusal: E.NoTicket | None = None
        self._on_error: Callable[[DTPError], None] | None = None
        self._reader = threading.Thread(target=self._read_loop, name="bcast-listener", daemon=True)
        self._reader.start()

    def wait_hello(self, timeout: float) -> bool:
        """Wait until the station introduced itself and was accepted (True), or at most
        ``timeout`` seconds; False at once when the listener closes first (an impostor
        station, the stream's end: :attr:`close_reason` says which).
        ``timeout`` is refused as ``socket.settimeout`` refuses it (ValueError for NaN
        or below 0, OverflowError past ``threading.TIMEOUT_MAX``, inf included;
        TypeError when not a number)."""
        # (inf overflowed the wait, a str failed inside it)
        _check_wait(timeout)
        self._settled.wait(timeout)
        return self.hello.is_set()

    def get(self, timeout: float | None = None) -> BroadcastMessage | AirChange:
        """The next message or air change (raises ``queue.Empty`` after ``timeout``).
        Once the listener is closed (:meth:`close`, the station's stream ended or an
        impostor station) and what was queued has been taken, raises
        :class:`~dtp.messaging.errors.StationError`; a ``get`` waiting then wakes up.
        ``timeout`` is None (no limit) or seconds, refused as by :meth:`wait_hello`."""
        if timeout is not None:
            # (a NaN wait never ended, inf overflowed it, a str failed inside it)
            _check_wait(timeout)
        item = self._queue.get(timeout=timeout)
        if item is None:
            self._queue.put_nowait(None)  # for the next get(), in this thread or another
            if self.refusal is not None:
                raise self.refusal
            raise E.StationError(f"the listener is closed ({self.close_reason})")
        return item

    def close(self) -> None:
        """Stop listening: :meth:`get` raises :class:`~dtp.messaging.errors.StationError`
        once the queue is drained, waiting calls included. The stream is left to its
        owner, so the reader thread, blocked in ``recv``, ends only when that returns:
        the next bytes arrive (they are discarded), the stream ends (closed by its
        owner or the station) or its timeout, if it has one, passes."""
        self._close("closed")
