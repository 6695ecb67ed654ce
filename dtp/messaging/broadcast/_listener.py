"""A listener, :class:`BroadcastListener`, one class read top to bottom (its parts, in
order: docs/architecture.md, "apps")."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from dtp.errors import ChainError, DTPError, InvalidObjectId, ObjectNotFound
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger._objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging._framing import Oversized, decode_body, encode_frame, read_frames
from dtp.messaging._protocol import _check_wait
from dtp.messaging.broadcast._checks import _check_amount, _check_stream, _same_id, _utf8
from dtp.messaging.broadcast._events import AirChange, BroadcastMessage
from dtp.messaging.broadcast._wire import (
    _FRAME_CAP,
    _U64,
    AIR,
    DENIED,
    HELLO,
    MAX_REQUEST,
    MAX_TIP_MESSAGE,
    MESSAGE,
    REQUEST,
    SESSION_BYTES,
    TIP,
    _verify,
    signed_hello,
    signed_tip,
    verify_message,
)
from dtp.messaging.pubsub import _PatientReads

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import BlockingStream

logger = logging.getLogger(__name__)

# AirChanges a listener queues beyond its bound: a full queue must not lose the air
# state, and a station (or relay) sending nothing but AIR frames must not fill memory
_AIR_SLACK: Final = 16


class BroadcastListener:
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

    # -- reading the station's stream: every frame verified, what is delivered queued ------

    def _put(self, item: BroadcastMessage | AirChange) -> None:
        with self._queue_lock:
            if self.close_reason is not None:
                return  # the marker stays last
            # an AirChange goes in over the bound (a little): dropped, the application
            # never heard of an off air or a cancel
            limit = self._queue_size + (_AIR_SLACK if isinstance(item, AirChange) else 0)
            if self._queue.qsize() >= limit:
                self.dropped += 1
                if isinstance(item, AirChange):
                    self._replace_air(item)
                    return
                if isinstance(item, BroadcastMessage):
                    self._unreported += 1 + item.missed_before
                return
            if self._unreported and isinstance(item, BroadcastMessage):
                missed = item.missed_before + self._unreported
                item = BroadcastMessage(item.channel, item.seq, item.payload, missed)
                self._unreported = 0
            self._queue.put_nowait(item)

    def _replace_air(self, item: AirChange) -> None:
        """(queue lock held) Put ``item`` in place of the newest queued AirChange (older
        news of the air state), as a station link does with AIR frames: dropping the
        newest past the slack would leave the application on a stale state (there are
        at least ``_AIR_SLACK`` queued: messages go in only below the bound)."""
        with self._queue.mutex:  # (the consumer's get() takes it)
            items = self._queue.queue
            for i in range(len(items) - 1, -1, -1):
                if isinstance(items[i], AirChange):
                    del items[i]
                    break
            items.append(item)

    def _close(self, reason: str) -> None:
        with self._queue_lock:
            if self.close_reason is not None:
                return
            self.close_reason = reason
            self.closed.set()
            self._settled.set()
            self._queue.put_nowait(None)

    def _read_loop(self) -> None:
        reason = "the station's stream ended"
        try:
            # (reads wait through the stream's timeout: an off-air station sends nothing)
            reads = _PatientReads(self.stream, self.closed)
            for item in read_frames(reads, _FRAME_CAP, self.closed, 256 * 1024):
                if self.closed.is_set():
                    return  # closed locally: what still arrives is not delivered
                if isinstance(item, Oversized):
                    self.violations += 1
                    continue
                try:
                    self._handle(decode_body(item))
                except E.NoTicket as exc:
                    self.refusal = exc
                    self.last_error = exc
                    reason = f"refused by the station: {exc}"
                    return
                except E.ForgedBroadcast as exc:
                    self.forged += 1
                    self.last_error = exc
                    if self._public is None:
                        reason = "an impostor station"
                        return  # stop listening
                except ChainError as exc:
                    # the ledger could not say whose broadcast the station names: the
                    # station is not believed, and the listener cannot go on without it
                    self.last_error = exc
                    reason = f"the station could not be checked: {type(exc).__name__}"
                    return
                except E.ReplayedBroadcast as exc:
                    self.replayed += 1
                    self.last_error = exc
                except E.MessagingProtocolError as exc:
                    self.violations += 1
                    self.last_error = exc
        except E.MessagingProtocolError as exc:
            # the stream ended inside a frame (read_frames): a message cut off, counted
            self.violations += 1
            self.last_error = exc
            logger.debug("broadcast listener: reading failed: %s", exc)
            reason = f"reading failed: {type(exc).__name__}"
        except (DTPError, OSError) as exc:
            logger.debug("broadcast listener: reading failed: %s", exc)
            reason = f"reading failed: {type(exc).__name__}"
        except Exception as exc:
            # a fault of no known kind (in the stream, the ledger, a bug): the listener
            # cannot go on, and says so, rather than leave a thread traceback and the
            # reason "the station's stream ended", which would send one looking at the peer
            logger.exception("broadcast listener: stopped by an unexpected error")
            reason = f"the listener failed: {type(exc).__name__}: {exc}"[:300]
        finally:
            self._close(reason)

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or not message:
            raise E.MalformedMessage("a broadcast frame is an array")
        kind = message[0]
        if kind == DENIED and len(message) == 2 and self._public is None:
            # (unsigned: a relay could forge one, as it could drop the stream)
            reason = message[1]
            raise E.NoTicket(reason if isinstance(reason, str) else "refused by the station")
        if kind == HELLO and len(message) == 9 and self._public is None:
            _, b_id, channel, public, on_air, next_seq, session, started, signature = message
            if not (
                isinstance(b_id, str)
                and isinstance(channel, str)
                and isinstance(public, bytes)
                and len(public) == 32
                and isinstance(on_air, bool)
                and type(next_seq) is int
                and 1 <= next_seq < 1 << 64
                and isinstance(session, bytes)
                and len(session) == SESSION_BYTES
                and type(started) is int
                and 0 <= started < 1 << 64
                and isinstance(signature, bytes)
            ):
                raise E.MalformedMessage("invalid HELLO")
            if self.broadcast_id is not None and not _same_id(b_id, self.broadcast_id):
                raise E.ForgedBroadcast("the station announces another broadcast")
            broadcaster = self.broadcaster
            if broadcaster is None and self.ledger is not None:
                # nothing pinned, but a ledger at hand: the broadcast the station names
                # must be its own (an impostor naming a real broadcast was believed, and
                # the listener's contributions paid for the impostor's messages)
                try:
                    broadcaster = self.ledger.get_broadcast(b_id).broadcaster
                except (ObjectNotFound, InvalidObjectId):
                    raise E.ForgedBroadcast("the station announces no broadcast") from None
            # (as IDs: a pinned address is canonical, a ledger's answer may be spelt
            # its own way)
            if broadcaster is not None and not _same_id(
                sui_address_from_public_key(public), broadcaster
            ):
                raise E.ForgedBroadcast("the station's key is not the broadcaster's")
            # signed: unsigned, a relay could rewrite next_seq (replaying what was sent
            # before the listener joined) or pass another session off as this one
            if not _verify(
                public, signature, signed_hello(b_id, channel, session, started, next_seq)
            ):
                raise E.ForgedBroadcast("the station's HELLO is not signed by its key")
            self.broadcaster = None if broadcaster is None else normalize_id(broadcaster)
            self.broadcast_id, self.channel, self._public = b_id, channel, public
            self.session, self.session_started_ms = session, started
            self._last_seq = next_seq - 1
            self.on_air = on_air
            self.hello.set()
            self._settled.set()
            return
        if self._public is None or self.broadcast_id is None or self.session is None:
            raise E.MalformedMessage("a frame before HELLO")
        if kind == MESSAGE and len(message) == 5:
            _, channel, seq, payload, signature = message
            if not (
                isinstance(channel, str)
                and type(seq) is int
                and 0 < seq < 1 << 64
                and isinstance(payload, bytes)
                and isinstance(signature, bytes)
            ):
                raise E.MalformedMessage("invalid MESSAGE")
            if channel != self.channel:
                raise E.ForgedBroadcast("message for another channel")
            # (a message of another session, an earlier station's seq 1 for one, does
            # not verify: ForgedBroadcast)
            verify_message(
                self._public, self.broadcast_id, channel, self.session, seq, payload, signature
            )
            if seq <= self._last_seq:
                raise E.ReplayedBroadcast(f"sequence {seq} after {self._last_seq}")
            missed = seq - self._last_seq - 1
            self._last_seq = seq
            self.missed += missed
            self.received += 1
            self._put(BroadcastMessage(channel, seq, payload, missed))
            return
        if kind == AIR and len(message) == 4:
            _, on_air, reason, next_seq = message
            if isinstance(on_air, bool) and isinstance(reason, str) and type(next_seq) is int:
                self.on_air = on_air
                self._put(AirChange(on_air, reason[:256], next_seq))
                return
        raise E.MalformedMessage("not a broadcast frame")

    # -- what the listener sends the station and pays through the ledger -------------------

    def _send(self, message: list[Any]) -> None:
        with self._send_lock:
            self.stream.sendall(encode_frame(message, 4096))

    def _need(self) -> tuple[Ledger, HostIdentity, str]:
        if self.ledger is None or self.identity is None or self.broadcast_id is None:
            raise E.StationError("a ledger, an identity and a broadcast ID are needed")
        return self.ledger, self.identity, self.broadcast_id

    def request(self, text: str) -> None:
        """Send the station a short message (at most :data:`MAX_REQUEST` bytes)."""
        if len(_utf8(text, "a request")) > MAX_REQUEST:
            raise E.PayloadTooLarge(f"a request is at most {MAX_REQUEST} bytes")
        self._send([REQUEST, text])

    def contribute(self, amount: int) -> None:
        """Add ``amount`` MIST to the broadcast's pool (through the ledger)."""
        _check_amount(amount)
        ledger, identity, b_id = self._need()
        ledger.broadcast_contribute(identity, b_id, amount)

    def _next_tip_id(self) -> bytes:
        """A tip ID: stations take each once per tipper, and none whose time lags the
        tipper's newest by more than :data:`TIP_SKEW_US` (as 128-bit numbers,
        remembering at most :data:`TIP_WINDOW`), so the top 64 bits are microseconds
        since the epoch, kept increasing, and the rest random (two listeners with one
        identity do not collide)."""
        with self._send_lock:
            self._last_tip_id = max(self._last_tip_id + 1, time.time_ns() // 1000)
            return _U64.pack(self._last_tip_id) + os.urandom(8)

    def tip(self, amount: int, message: str) -> bytes:
        """Contribute ``amount`` and send the station a signed tip with ``message``;
        returns the tip's id. A closed listener, or one that has no HELLO yet (the tip
        is signed for the station's session), refuses (StationError) before paying."""
        _check_amount(amount)
        if len(_utf8(message, "a tip message")) > MAX_TIP_MESSAGE:
            raise E.PayloadTooLarge(f"a tip message is at most {MAX_TIP_MESSAGE} bytes")
        ledger, identity, b_id = self._need()
        if self.close_reason is not None:
            # the tip could not reach the station: its contribution was paid, then the
            # send failed (or went to a stream nobody reads)
            raise E.StationError(f"the listener is closed ({self.close_reason})")
        session = self.session
        if session is None:
            raise E.StationError("the station has not introduced itself (no HELLO yet)")
        ledger.broadcast_contribute(identity, b_id, amount)
        tip_id = self._next_tip_id()
        signature = identity.sign(signed_tip(b_id, session, tip_id, amount, message))
        self._send([TIP, tip_id, amount, message, identity.ed25519_public, signature])
        return tip_id

    def withdraw(self) -> int:
        """After a cancel: take back the value of this listener's shares of the pool;
        returns it."""
        ledger, identity, b_id = self._need()
        return ledger.broadcast_withdraw(identity, b_id)

    def leave(self) -> int:
        """Leave an idle broadcast: one not cancelled whose broadcaster has shown no sign
        of transmitting (a message on the ledger, or its station's heartbeat) for
        ``Broadcast.idle_ms`` (docs/escrow.md §9). The slots its pool covered until now
        are paid first; this listener takes back the value of its shares and returns
        it. Before then the ledger refuses (:class:`~dtp.errors.BroadcastError`
        ``EBroadcastLive``; :meth:`leave_opens_ms` says when); after a cancel,
        :meth:`withdraw`. The listener keeps listening: leaving is about the money."""
        ledger, identity, b_id = self._need()
        return ledger.broadcast_leave(identity, b_id)

    def refund_value(self) -> int:
        """What :meth:`withdraw` or :meth:`leave` would pay this listener now: the value
        of its shares once the slots completed so far are paid (0 with none)."""
        ledger, identity, b_id = self._need()
        b = ledger.get_broadcast(b_id)
        return b.refund_value(identity.sui_address, ledger.clock_ms())

    def leave_opens_ms(self) -> int | None:
        """When (ledger clock, ms) this listener may :meth:`leave` unless the broadcaster
        shows it is live before; None once the broadcast is cancelled (:meth:`withdraw`
        then)."""
        ledger, _, b_id = self._need()
        b = ledger.get_broadcast(b_id)
        return None if b.cancelled else b.leave_opens_ms
