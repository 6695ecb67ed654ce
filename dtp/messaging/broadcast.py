"""Broadcast stations and listeners over DTP streams (docs/messaging.md §5).

A :class:`BroadcastStation` is the broadcaster's side of an on-chain ``Broadcast`` object
(docs/escrow.md §9). Listeners connect to it over ordinary DTP streams; the station sends
every listener the same public stream of messages, each signed (raw Ed25519, by the
broadcaster's authority) over a domain-separated encoding of the broadcast ID, channel,
station session, sequence number and payload, so a message can be checked by anyone who
knows the broadcaster's Sui address, whoever relayed it. A *session* is one station
instance: a random 16-byte nonce and its start time, announced in a HELLO the broadcaster
signs (with the sequence number the listener starts from), so a restarted station, which
numbers its messages from 1 again, cannot have the messages of an earlier session passed
off as its own, nor can a relay rewind a listener that is listening. A HELLO carries no
time of its own, though: a relay that recorded one, and what followed it, can replay
that to a listener joining later (of the current session or an earlier one), as it can delay
anything; ``session_started_ms`` tells the listener how old the session is.
:class:`BroadcastListener`
verifies the HELLO and each message and rejects forged ones
(:class:`~dtp.messaging.errors.ForgedBroadcast`: the messages of another session too) and
replayed or out-of-order ones (:class:`~dtp.messaging.errors.ReplayedBroadcast`); it
counts both and never delivers them.

The station is *on air* only while the ledger says the listeners' pool covers the slot in
progress (``Broadcast.is_on_air``). It asks the ledger once per slot (a covered slot stays
covered until it ends: accrual only happens at slot boundaries), and again whenever it is
off air, so a top-up is seen at once. Off air it refuses to send (:class:`OffAir`) and
tells every listener (an AIR frame); back on air it tells them again.

A *ticketed* broadcast (``broadcast::create_ticketed``, docs/escrow.md §9) names a
``TicketSale``: its station admits a listener only while the ledger shows the listener's
address (the one its DTP connection proved) holding a ticket of that sale, and refuses
any other with a DENIED frame instead of the HELLO, which the listener raises as
:class:`~dtp.messaging.errors.NoTicket`.

Listeners pay through the ledger (:meth:`BroadcastListener.contribute`). A *tip* is a
contribution plus a short signed message to the station, which accepts it only while the
tipper's recorded contributions cover all its accepted tips (read from the ledger at most
every 0.2 s, whatever the number of tips); a tip is signed for the station's session, so
it is not accepted again by a restarted station. A *request* is a short message from a
listener to the station. The broadcaster claims what its slots earned
(:meth:`BroadcastStation.claim`); after :meth:`BroadcastStation.cancel`, listeners take
their pooled refunds (:meth:`BroadcastListener.withdraw`).

Nothing waits on a slow party: each listener link has a writer thread with a bounded
queue; when it is full the message is dropped for that listener only and counted, and
the listener sees the gap in sequence numbers (:attr:`BroadcastMessage.missed_before`).
An AIR frame (a change of air state) is never lost that way: it takes the place of the
newest queued message (dropped and counted), or of an older queued AIR frame.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dtp.errors import ChainError, DTPError, InvalidObjectId, ObjectNotFound
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.framing import Oversized, bytes_like, decode_body, encode_frame, read_frames
from dtp.messaging.protocol import _check_wait
from dtp.messaging.pubsub import _PatientReads

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import BlockingStream

__all__ = [
    "MAX_PAYLOAD",
    "MAX_REQUEST",
    "MAX_TIP_MESSAGE",
    "SESSION_BYTES",
    "TIP_SKEW_US",
    "TIP_WINDOW",
    "AirChange",
    "BroadcastListener",
    "BroadcastMessage",
    "BroadcastStation",
    "ListenerRequest",
    "Tip",
    "signed_hello",
    "signed_message",
    "signed_tip",
    "verify_message",
]

logger = logging.getLogger(__name__)

# [20, broadcast_id, channel, broadcaster_public, on_air, next_seq, session, started_ms,
#  signature]
HELLO: Final = 20
MESSAGE: Final = 21  # [21, channel, seq, payload, signature]
AIR: Final = 22  # [22, on_air, reason, next_seq]
REQUEST: Final = 23  # [23, text]
TIP: Final = 24  # [24, tip_id, amount, message, ed25519_public, signature]
DENIED: Final = 25  # [25, reason]: sent in place of HELLO to a listener refused

#: Largest payload of one broadcast message (bytes).
MAX_PAYLOAD: Final = 64 * 1024
#: Largest listener request (bytes of UTF-8).
MAX_REQUEST: Final = 1024
#: Largest tip message (bytes of UTF-8).
MAX_TIP_MESSAGE: Final = 280
#: Size of the nonce of a station session (bytes).
SESSION_BYTES: Final = 16
#: Tip IDs a station remembers per tipper at most (beyond, the oldest are forgotten and
#: every ID at or below them refused).
TIP_WINDOW: Final = 1024
#: How far (microseconds) a tip ID's time may lag the tipper's newest before the station
#: refuses it unseen: room for a second device's clock, or a tip overtaken in flight.
TIP_SKEW_US: Final = 300_000_000
_FRAME_CAP: Final = MAX_PAYLOAD + 1024
# Longest a tip waits for another tip of its tipper to be saved (seconds)
_TIP_SAVE_WAIT: Final = 30.0
# Least time (seconds) between the starts of two ledger reads that check tips: a tip the
# last read does not cover waits for the next one (which serves every tip waiting), so
# tips signed by fresh keys, free to make, cost one read per this, not one each
_TIP_READ_GAP: Final = 0.2
# How long (seconds) a read showing a tipper's contributions cover a tip is taken as it
# is: contributions only grow until a cancel, after which a withdrawal is unseen so long
_TIP_READ_TRUST: Final = 1.0
# A ticketed station's read of its sale's holders, as the tips' reads of contributions:
# one showing a listener holding a ticket is taken as it is for this long (a refund
# after it is unseen so long), and reads begin at most this often (a flood of listeners
# with no ticket costs one read per gap, not one each)
_TICKET_READ_TRUST: Final = 1.0
_TICKET_READ_GAP: Final = 0.2
_HELLO_DOMAIN: Final = b"DTP-BROADCAST-HELLO-V1\x00"
_MSG_DOMAIN: Final = b"DTP-BROADCAST-MSG-V2\x00"
_TIP_DOMAIN: Final = b"DTP-BROADCAST-TIP-V2\x00"
_U64: Final = struct.Struct(">Q")
# AirChanges a listener queues beyond its bound: a full queue must not lose the air
# state, and a station (or relay) sending nothing but AIR frames must not fill memory
_AIR_SLACK: Final = 16
# what a station link queues: its HELLO, messages (dropped when the queue is full) and
# AIR frames (never dropped, at most one beyond the bound)
_Q_HELLO: Final = 0
_Q_MESSAGE: Final = 1
_Q_AIR: Final = 2


def _field(data: bytes) -> bytes:
    """A length-prefixed field (so no two encodings share bytes)."""
    return struct.pack(">I", len(data)) + data


def signed_hello(
    broadcast_id: str, channel: str, session: bytes, started_ms: int, next_seq: int
) -> bytes:
    """The bytes a broadcaster signs for a HELLO: a domain tag, then the broadcast ID,
    channel, station session (its nonce and start time, ms since the epoch) and the
    sequence number the listener starts from, each length-prefixed or fixed-size."""
    return (
        _HELLO_DOMAIN
        + _field(broadcast_id.lower().encode())
        + _field(channel.encode())
        + _field(bytes(session))
        + _U64.pack(started_ms)
        + _U64.pack(next_seq)
    )


def signed_message(
    broadcast_id: str, channel: str, session: bytes, seq: int, payload: bytes
) -> bytes:
    """The bytes a broadcaster signs for one message: a domain tag, then the broadcast ID,
    channel, station session nonce, sequence number and payload, each length-prefixed or
    fixed-size. (The session is what keeps a restarted station's seq 1 from verifying
    as seq 1 of an earlier session.)"""
    return (
        _MSG_DOMAIN
        + _field(broadcast_id.lower().encode())
        + _field(channel.encode())
        + _field(bytes(session))
        + _U64.pack(seq)
        + _field(bytes(payload))
    )


def signed_tip(
    broadcast_id: str, session: bytes, tip_id: bytes, amount: int, message: str
) -> bytes:
    """The bytes a listener signs for a tip to the station session ``session`` (so no
    other station instance, a restarted one included, accepts it)."""
    return (
        _TIP_DOMAIN
        + _field(broadcast_id.lower().encode())
        + _field(bytes(session))
        + _field(bytes(tip_id))
        + _U64.pack(amount)
        + _field(message.encode())
    )


def _check_amount(amount: object) -> None:
    """An amount of MIST: an int (a bool or a float is a TypeError, not a count the
    ledger may round or take as 1) in 0..2**64-1 (ValueError), checked before anything
    is paid or sent."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"an amount is an int of MIST, not {type(amount).__name__!r}")
    if not 0 <= amount < 1 << 64:
        raise ValueError(f"an amount is 0..2**64-1 MIST, not {amount!r}")


def _utf8(text: object, what: str) -> bytes:
    """The UTF-8 of ``text``: TypeError when it is not a str, ValueError when it is not
    valid text (a lone surrogate; ``str.encode`` raised AttributeError or
    UnicodeEncodeError), checked before anything is paid or sent."""
    if not isinstance(text, str):
        raise TypeError(f"{what} is a str, not {type(text).__name__!r}")
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid text (a lone surrogate)") from None


def _check_stream(stream: object, what: str) -> None:
    """A station's or listener's stream has what the link threads use (``recv``,
    ``sendall``), as :meth:`PubSubNode.attach <dtp.messaging.pubsub.PubSubNode.attach>`
    checks: None or a bytes object was taken, then the reader thread died with an
    AttributeError and the listener said the station's stream had ended."""
    if not all(callable(getattr(stream, m, None)) for m in ("recv", "sendall")):
        raise TypeError(f"{what} needs a stream (recv, sendall), not {type(stream).__name__!r}")


def _same_id(a: str, b: str) -> bool:
    """Whether two IDs or addresses are the same one, as the ledger compares them (any
    case, short forms); text that is no ID is the same as nothing."""
    try:
        return normalize_id(a) == normalize_id(b)
    except InvalidObjectId:
        return False


def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from dtp.identity.ed25519 import verify_memoized

    return verify_memoized(public_key, signature, message)


def verify_message(
    broadcaster_public: bytes,
    broadcast_id: str,
    channel: str,
    session: bytes,
    seq: int,
    payload: bytes,
    signature: bytes,
) -> None:
    """Raise :class:`ForgedBroadcast` unless ``signature`` is the broadcaster's over this
    message of the station session ``session``."""
    if not _verify(
        broadcaster_public,
        signature,
        signed_message(broadcast_id, channel, session, seq, payload),
    ):
        raise E.ForgedBroadcast()


@dataclass(frozen=True, slots=True)
class BroadcastMessage:
    """A verified broadcast message."""

    #: The broadcast's channel name.
    channel: str
    #: Sequence number (strictly increasing; gaps are messages this listener missed).
    seq: int
    payload: bytes
    #: Messages missed just before this one (the gap in sequence numbers since the last
    #: message :meth:`BroadcastListener.get` returned: the station's drops and the
    #: listener's own, when its queue was full).
    missed_before: int


@dataclass(frozen=True, slots=True)
class AirChange:
    """The station went on or off air."""

    on_air: bool
    #: Why (``"covered"``, ``"pool exhausted"``, ``"cancelled"``…).
    reason: str
    #: The sequence number the next message will carry.
    next_seq: int


@dataclass(frozen=True, slots=True)
class Tip:
    """A tip the station accepted."""

    #: The tipper's Sui address (proven by its signature).
    address: str
    amount: int
    message: str
    tip_id: bytes


@dataclass(frozen=True, slots=True)
class ListenerRequest:
    """A listener's message to the station."""

    #: The station's name for the listener's link.
    listener: str
    text: str


class _StationLink:
    """One listener of a station: a reader thread (tips, requests) and a writer thread with
    a bounded queue of frames."""

    def __init__(
        self, station: BroadcastStation, stream: BlockingStream, name: str, maxsize: int
    ) -> None:
        self.station = station
        self.stream = stream
        self.name = name
        self._maxsize = maxsize
        # (kind, frame): the kind says what may be dropped or replaced when it is full
        self._out: deque[tuple[int, bytes]] = deque()
        self._cond = threading.Condition(threading.Lock())
        #: Frames dropped for this listener because it was slow (messages only: an AIR
        #: frame takes the place of one, which is counted here).
        self.dropped = 0
        self.violations = 0
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"bcast-r-{name}")
        self._writer = threading.Thread(target=self._write_loop, name=f"bcast-w-{name}")
        self._reader.daemon = self._writer.daemon = True

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def queue_hello(self, frame: bytes) -> None:
        """Queue the HELLO (the first frame, into an empty queue)."""
        with self._cond:
            self._out.append((_Q_HELLO, frame))
            self._cond.notify()

    def offer(self, frame: bytes) -> bool:
        """Queue a message frame; False (and counted) when the queue is full."""
        with self._cond:
            if self.closed.is_set():
                return False
            if len(self._out) >= self._maxsize:
                self.dropped += 1
                return False
            self._out.append((_Q_MESSAGE, frame))
            self._cond.notify()
            return True

    def offer_air(self, frame: bytes) -> None:
        """Queue an AIR frame, full queue or not: dropped, it would never be sent again
        and the listener would stay on air after a cancel. In a full queue it takes the place of
        the newest message (counted in :attr:`dropped`, which the listener sees as a gap
        in sequence numbers), else of the newest AIR frame (older news of the air state),
        else (the HELLO and AIR frames only) goes in above the bound: at most once, since
        the next one replaces it."""
        with self._cond:
            if self.closed.is_set():
                return
            if len(self._out) >= self._maxsize:
                for want in (_Q_MESSAGE, _Q_AIR):
                    index = next(
                        (i for i in range(len(self._out) - 1, -1, -1) if self._out[i][0] == want),
                        None,
                    )
                    if index is not None:
                        del self._out[index]
                        if want == _Q_MESSAGE:
                            self.dropped += 1
                        break
            self._out.append((_Q_AIR, frame))
            self._cond.notify()

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._out and not self.closed.is_set():
                        self._cond.wait()
                    if self.closed.is_set():
                        return
                    _, frame = self._out.popleft()
                self.stream.sendall(frame)
        except (DTPError, OSError) as exc:
            logger.debug("broadcast link %s: writing failed: %s", self.name, exc)
            self.close()

    def _read_loop(self) -> None:
        try:
            # (reads wait through the stream's timeout: a listener may stay quiet)
            for item in read_frames(_PatientReads(self.stream, self.closed), 4096, self.closed):
                if self.closed.is_set():
                    return  # a closed link takes no more tips or requests
                if isinstance(item, Oversized):
                    self.violations += 1
                    continue
                try:
                    self.station._handle(self, decode_body(item))
                except E.MessagingProtocolError:
                    self.violations += 1
        except E.MessagingProtocolError as exc:
            # the stream ended inside a frame (read_frames): a message cut off, counted
            # (it ended the link as a clean end of stream does, with nothing counted)
            self.violations += 1
            logger.debug("broadcast link %s: reading failed: %s", self.name, exc)
        except (DTPError, OSError) as exc:
            logger.debug("broadcast link %s: reading failed: %s", self.name, exc)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the writer thread and forget the link. The stream is left to its owner,
        so the reader thread, blocked in ``recv``, ends only when that returns: the next
        bytes arrive (they are discarded), the stream ends or its timeout passes."""
        with self._cond:
            if self.closed.is_set():
                return
            self.closed.set()
            self._out.clear()
            self._cond.notify_all()
        self.station._detach(self)


class BroadcastStation:
    """The broadcaster's side: signs and fans out messages while the ledger says it is on
    air, collects tips and requests, claims earnings."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        broadcast_id: str,
        *,
        link_queue: int = 256,
        max_listeners: int = 1024,
        inbox_size: int = 256,
        tipped: Mapping[str, int] | None = None,
        tip_state: str | os.PathLike[str] | None = None,
    ) -> None:
        """``link_queue`` (frames per listener) and ``inbox_size`` (tips, requests) are
        at least 1 and ``max_listeners`` at least 0 (ValueError; TypeError when not ints):
        a queue of 0 was unbounded, so listeners' tips and requests could fill memory.

        Each station is a new session (:attr:`session`): tips signed for another one
        are refused, but the rule "a tipper's accepted tips never exceed its recorded
        contributions" counts only what this instance accepted unless it is told what
        earlier ones did: ``tipped`` (tipper address → MIST accepted, e.g. an earlier
        station's :attr:`tipped`) and/or ``tip_state``, a JSON file read at start (when
        it exists) and rewritten, atomically, at every accepted tip, so a station
        restarted with the same path goes on from its predecessor's totals."""
        for name, value, low in (
            ("link_queue", link_queue, 1),
            ("max_listeners", max_listeners, 0),
            ("inbox_size", inbox_size, 1),
        ):
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {type(value).__name__!r}")
            if value < low:
                raise ValueError(f"{name} must be at least {low}")
        b = ledger.get_broadcast(broadcast_id)
        if b.broadcaster != identity.sui_address:
            raise E.StationError("this identity is not the broadcaster")
        self.ledger = ledger
        self.identity = identity
        self.broadcast_id = b.id
        self.channel = b.channel
        self._start_ms = b.start_ms
        self._slot_ms = b.slot_ms
        #: The TicketSale whose holders alone are admitted (None: anyone may listen).
        self.ticket_sale = b.ticket_sale
        # the last read of the sale's holders: (when it began, monotonic; the holders)
        self._ticket_lock = threading.Lock()
        self._ticket_read: tuple[float, Mapping[str, int]] | None = None
        #: Listeners refused for holding no ticket.
        self.refused_listeners = 0
        self.link_queue = link_queue
        self.max_listeners = max_listeners
        self._lock = threading.Lock()
        self._links: list[_StationLink] = []
        # links attached so far: a default name counted the links open, so a newcomer
        # took the name of one still listening once another had left
        self._attached = 0
        #: This station's session nonce (random; in the HELLO and every signature).
        self.session = os.urandom(SESSION_BYTES)
        #: When the station's session started (ms since the epoch, the host's clock; in the
        #: HELLO).
        self.session_started_ms = time.time_ns() // 1_000_000
        self._seq = 1
        self._on_air = False
        self._checked_slot = -1
        self._cancelled = b.cancelled
        self._tip_state = None if tip_state is None else os.fspath(tip_state)
        self._tipped: dict[str, int] = {}
        for source in (self._load_tip_state(), tipped or {}):
            for address, total in source.items():
                if type(total) is not int or total < 0:
                    raise ValueError(f"a tipped total is an int of MIST >= 0, not {total!r}")
                key = normalize_id(address, "tipper address")
                self._tipped[key] = max(self._tipped.get(key, 0), total)
        # per tipper, the tip IDs (as 128-bit numbers) accepted in the station's session,
        # a bounded window of them (a set of every ID would grow by one entry per 1-MIST
        # tip for the station's life)
        self._tip_ids: dict[str, _TipIds] = {}
        # held while the tip state file is written (not _lock: send() needs that one,
        # and a slow disk must not stall the broadcast)
        self._save_lock = threading.Lock()
        # per tipper, tips counted whose save is under way (and notified as each ends)
        self._saving: dict[str, int] = {}
        self._tip_saved = threading.Condition(self._lock)
        # the last ledger read of the broadcast for tips, (when it began, monotonic;
        # whether cancelled; the contributions), and when the last one began and whether
        # it is still under way (see _contributed)
        self._reads = threading.Condition(threading.Lock())
        self._read: tuple[float, bool, Mapping[str, int]] | None = None
        self._read_began = -math.inf
        self._reading = False
        self._inbox_lock = threading.Lock()
        #: Accepted tips (bounded; the oldest are dropped when full and counted in
        #: :attr:`inbox_dropped` and :attr:`tips_dropped`).
        self.tips: queue.Queue[Tip] = queue.Queue(inbox_size)
        #: Listener requests (bounded likewise, counted in :attr:`inbox_dropped`).
        self.requests: queue.Queue[ListenerRequest] = queue.Queue(inbox_size)
        self.invalid_tips = 0
        #: Tips that could not be checked because the ledger (or the tip state file)
        #: failed (not accepted).
        self.unchecked_tips = 0
        #: Tips and requests dropped (the oldest) from a full :attr:`tips` or
        #: :attr:`requests` queue.
        self.inbox_dropped = 0
        #: Accepted (paid) tips among those: the money is in the pool, unseen (logged).
        self.tips_dropped = 0
        self._monitor: threading.Thread | None = None
        self._stop = threading.Event()
        # set by close() (under _lock): a link attached after it, or while it ran, was
        # started and broadcast to for good, its threads never stopped
        self._closed = False

    # -- listeners -----------------------------------------------------------------------------

    @property
    def listeners(self) -> int:
        """Listener links open now."""
        with self._lock:
            return len(self._links)

    def attach(
        self, stream: BlockingStream, name: str = "", *, listener: str | None = None
    ) -> None:
        """Start broadcasting to the listener at the other end of ``stream`` (TypeError
        when it is not a stream; :class:`~dtp.messaging.errors.StationError` once the
        station is closed). On a ticketed broadcast the listener must hold a ticket of
        its sale: ``listener`` is its Sui address, by default the one its DTP connection
        proved (``stream.peer_address``); one holding none is sent a DENIED frame and
        :class:`~dtp.messaging.errors.NoTicket` is raised (a ChainError when the ledger
        cannot say)."""
        _check_stream(stream, "attach()")
        if self.ticket_sale is not None:
            self._admit_ticket_holder(stream, listener)
        with self._lock:
            if self._closed:
                raise E.StationError("the station is closed")
            if len(self._links) >= self.max_listeners:
                raise E.StationError("too many listeners")
            link = _StationLink(self, stream, name or f"listener-{self._attached}", self.link_queue)
            self._attached += 1
            signature = self.identity.sign(
                signed_hello(
                    self.broadcast_id,
                    self.channel,
                    self.session,
                    self.session_started_ms,
                    self._seq,
                )
            )
            hello = encode_frame(
                [
                    HELLO,
                    self.broadcast_id,
                    self.channel,
                    self.identity.ed25519_public,
                    self._on_air,
                    self._seq,
                    self.session,
                    self.session_started_ms,
                    signature,
                ]
            )
            # queued before the link is visible to send(): a message sent meanwhile went
            # out before HELLO, and the listener refused it as a frame before HELLO
            link.queue_hello(hello)
            if self._cancelled:
                # the HELLO's off air alone reads as "pool exhausted": a listener that
                # joined after the cancel never heard of it, so topped up (refused) and
                # never knew to withdraw its share of the pool
                link.offer_air(encode_frame([AIR, False, "cancelled", self._seq]))
            self._links.append(link)
        link.start()

    def _admit_ticket_holder(self, stream: BlockingStream, listener: str | None) -> None:
        """Refuse the listener at ``stream`` unless the ledger shows ``listener`` (or
        the address its connection proved) holding a ticket of the broadcast's sale."""
        address = listener if listener is not None else getattr(stream, "peer_address", None)
        if not isinstance(address, str):
            why = "a ticketed broadcast admits ticket holders, and this listener proved no address"
        else:
            address = normalize_id(address, "listener address")
            if self._holds_ticket(address):
                return
            why = f"{address} holds no ticket of sale {self.ticket_sale}"
        with self._lock:
            self.refused_listeners += 1
        try:
            stream.sendall(encode_frame([DENIED, why]))
        except (DTPError, OSError) as exc:  # it may be gone already: refused all the same
            logger.debug("broadcast: the refusal did not reach the listener: %s", exc)
        raise E.NoTicket(why)

    def _holds_ticket(self, address: str) -> bool:
        """Whether the ledger shows ``address`` holding a ticket of the sale: a read less
        than ``_TICKET_READ_TRUST`` old that shows one is taken as it is; otherwise the
        sale is read again, unless a read began less than ``_TICKET_READ_GAP`` ago."""
        assert self.ticket_sale is not None
        with self._ticket_lock:
            now = time.monotonic()
            if self._ticket_read is not None:
                began, holders = self._ticket_read
                held = holders.get(address, 0) > 0
                if (held and now - began < _TICKET_READ_TRUST) or now - began < _TICKET_READ_GAP:
                    return held
            sale = self.ledger.get_ticket_sale(self.ticket_sale)
            self._ticket_read = (now, sale.holders)
            return sale.holders.get(address, 0) > 0

    def _detach(self, link: _StationLink) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)

    def _fan_out(self, frame: bytes, air: bool = False) -> None:
        """(lock held) Queue a frame for every listener, in order; an AIR frame
        (``air``) even into a full queue (:meth:`_StationLink.offer_air`)."""
        for link in self._links:
            if air:
                link.offer_air(frame)
            else:
                link.offer(frame)

    # -- air time ------------------------------------------------------------------------------

    @property
    def on_air(self) -> bool:
        """The last decision of :meth:`check`."""
        return self._on_air

    def check(self) -> bool:
        """Whether the station is on air now, asking the ledger when the slot changed or
        the station is off air (docs/escrow.md §9). Listeners are told of any change."""
        now = self.ledger.clock_ms()
        slot = 0 if now < self._start_ms else (now - self._start_ms) // self._slot_ms
        with self._lock:
            if self._cancelled:
                return False
            if self._on_air and slot == self._checked_slot:
                return True
        b = self.ledger.get_broadcast(self.broadcast_id)
        on = b.is_on_air(now)
        if b.cancelled:
            reason = "cancelled"
        elif on:
            reason = "covered"
        else:
            reason = "pool exhausted"
        return self._set_air(on, reason, slot)

    def _set_air(self, on: bool, reason: str, slot: int) -> bool:
        """Record a decision (telling listeners of a change); returns whether the station
        is on air now, which is not ``on`` once the broadcast was cancelled."""
        with self._lock:
            if self._cancelled:
                # a cancel is final on the ledger: a check that read the broadcast just
                # before cancel() ran put the station back on air ("covered") after its
                # AIR "cancelled", and sends went out for the rest of the slot, which
                # no one pays for (the slot in progress at a cancel is never paid)
                return False
            self._checked_slot = slot
            cancelled = reason == "cancelled"
            if on != self._on_air or cancelled:
                self._on_air = on
                self._cancelled = cancelled
                self._fan_out(encode_frame([AIR, on, reason, self._seq]), air=True)
            return on

    def send(self, payload: bytes) -> int:
        """Sign ``payload`` and send it to every listener; returns its sequence number.
        Raises :class:`OffAir` (nothing sent) when the pool does not cover this slot,
        :class:`PayloadTooLarge` above :data:`MAX_PAYLOAD` or when the frame would not fit
        the listeners' cap (a channel name over about 900 bytes leaves less room), and
        TypeError for a payload that is not bytes-like."""
        payload = bytes_like(payload)
        if len(payload) > MAX_PAYLOAD:
            raise E.PayloadTooLarge(f"a broadcast payload is at most {MAX_PAYLOAD} bytes")
        if not self.check():
            raise E.OffAir("the broadcast is off air")
        with self._lock:
            if self._cancelled:
                # cancel() ran since check() said yes: nothing goes out after its AIR
                raise E.OffAir("the broadcast is cancelled")
            seq = self._seq
            signature = self.identity.sign(
                signed_message(self.broadcast_id, self.channel, self.session, seq, payload)
            )
            message = [MESSAGE, self.channel, seq, payload, signature]
            try:
                # the listeners' cap: a long channel name (it is in every frame) leaves
                # less room for the payload, and a frame above the cap was skipped by
                # every listener while send() returned as if it had gone
                frame = encode_frame(message, _FRAME_CAP)
            except E.PayloadTooLarge:
                raise E.PayloadTooLarge(
                    f"a payload of {len(payload)} bytes does not fit a frame on this "
                    f"channel ({_FRAME_CAP} bytes with its {len(self.channel.encode())}-byte "
                    "name)"
                ) from None
            self._seq += 1
            self._fan_out(frame)
        return seq

    def start_monitor(self, interval: float = 0.1) -> None:
        """Check the ledger every ``interval`` seconds in a thread, so listeners learn of
        air changes even while nothing is sent. ``interval`` is seconds above 0, refused
        as a wait's timeout (:meth:`BroadcastListener.wait_hello`) and for 0 (ValueError)."""
        # (NaN, 0 or a negative had the thread ask the ledger in a tight loop)
        _check_wait(interval)
        if interval == 0:
            raise ValueError("an interval must be seconds above 0, not 0")
        if self._monitor is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.check()
                except DTPError as exc:
                    logger.debug("broadcast monitor: %s", exc)

        self._monitor = threading.Thread(target=run, name="bcast-monitor", daemon=True)
        self._monitor.start()

    # -- money ---------------------------------------------------------------------------------

    def claim(self) -> int:
        """Claim everything the completed, covered slots earned; returns the amount."""
        return self.ledger.broadcast_claim(self.identity, self.broadcast_id)

    def cancel(self) -> None:
        """Cancel the broadcast on the ledger (listeners can then withdraw their share of
        the pool) and tell every listener."""
        self.ledger.broadcast_cancel(self.identity, self.broadcast_id)
        self._set_air(False, "cancelled", self._checked_slot)

    # -- from listeners ------------------------------------------------------------------------

    def _inbox(self, box: queue.Queue[Any], item: object) -> None:
        """Queue a tip or request, dropping the oldest when the queue is full: dropping
        the newest let one listener's flood shut every other one out."""
        with self._inbox_lock:  # (one link's reader at a time: evict, then put)
            while True:
                try:
                    box.put_nowait(item)
                    return
                except queue.Full:
                    pass
                try:
                    old = box.get_nowait()
                except queue.Empty:
                    continue  # the application took one meanwhile
                self.inbox_dropped += 1
                if isinstance(old, Tip):
                    # paid for and accepted: not silently lost (counted, and logged, but
                    # not once per tip: a flood of 1-MIST tips would flood the log too)
                    self.tips_dropped += 1
                    if self.tips_dropped == 1 or self.tips_dropped % 100 == 0:
                        logger.warning(
                            "broadcast: tips queue full, accepted tips dropped unseen: "
                            "%d so far (the last of %d MIST from %s)",
                            self.tips_dropped,
                            old.amount,
                            old.address,
                        )

    def _handle(self, link: _StationLink, message: Any) -> None:
        if not isinstance(message, list) or not message:
            raise E.MalformedMessage("a broadcast frame is an array")
        kind = message[0]
        if kind == REQUEST and len(message) == 2 and isinstance(message[1], str):
            if len(message[1].encode()) > MAX_REQUEST:
                raise E.MalformedMessage("request too long")
            self._inbox(self.requests, ListenerRequest(link.name, message[1]))
            return
        if kind == TIP and len(message) == 6:
            try:
                self._inbox(self.tips, self._check_tip(message))
            except E.InvalidTip:
                self.invalid_tips += 1
            except (ChainError, OSError) as exc:
                # the ledger failed to say what the tipper contributed (or the tip state
                # could not be saved): the listener did nothing wrong, so its link stays
                # up and its reader goes on
                self.unchecked_tips += 1
                logger.warning("broadcast: a tip could not be checked: %s", exc)
            return
        raise E.MalformedMessage("not a broadcast frame for the station")

    def _check_tip(self, message: list[Any]) -> Tip:
        arrived = time.monotonic()
        _, tip_id, amount, text, public, signature = message
        if not (
            isinstance(tip_id, bytes)
            and len(tip_id) == 16
            and type(amount) is int
            and 0 < amount < 1 << 64
            and isinstance(text, str)
            and len(text.encode()) <= MAX_TIP_MESSAGE
            and isinstance(public, bytes)
            and isinstance(signature, bytes)
        ):
            raise E.InvalidTip("malformed tip")
        if not _verify(
            public, signature, signed_tip(self.broadcast_id, self.session, tip_id, amount, text)
        ):
            raise E.InvalidTip("tip signature does not verify")
        address = sui_address_from_public_key(public)
        number = int.from_bytes(tip_id, "big")
        with self._lock:
            need = self._tipped.get(address, 0) + amount
        contributed, fresh = self._contributed(address, need, arrived)
        if not self._take_tip(address, number, amount, contributed, fresh):
            # a read from before the tip arrived covered it, but another tip of the
            # tipper was counted meanwhile: a contribution since may pay for this one
            contributed, _ = self._contributed(address, None, arrived)
            self._take_tip(address, number, amount, contributed, True)
        if self._tip_state is not None:
            saved = False
            try:
                self._save_tip_state()
                saved = True
            finally:
                with self._lock:
                    if not saved:  # refused: not counted (the ID stays used)
                        self._tipped[address] -= amount
                    left = self._saving[address] - 1
                    if left:
                        self._saving[address] = left
                    else:
                        del self._saving[address]
                    self._tip_saved.notify_all()
        return Tip(address, amount, text, tip_id)

    def _contributed(self, address: str, need: int | None, arrived: float) -> tuple[int, bool]:
        """What ``address`` has contributed to the broadcast, and whether the ledger read
        that says so began after ``arrived`` (when its tip came in: the contribution that
        pays for a tip is made before the tip is sent). A read less than
        ``_TIP_READ_TRUST`` old of the broadcast not cancelled is taken as it is when it
        shows ``need`` or more (contributions only grow until a cancel); else the tip
        waits for a read begun after it arrived, which serves every tip waiting then,
        and reads begin at most every ``_TIP_READ_GAP`` seconds. (Each tip cost a read,
        a network call on Sui, before it was refused: tips signed by fresh keys, free to
        make, kept the ledger busy.)"""
        with self._reads:
            while True:
                now = time.monotonic()
                if self._read is not None:
                    began, cancelled, contributions = self._read
                    have = contributions.get(address, 0)
                    if began > arrived:
                        return have, True
                    if (
                        need is not None
                        and have >= need
                        and not cancelled
                        and now - began < _TIP_READ_TRUST
                    ):
                        return have, False
                if self._reading:
                    self._reads.wait()  # (notified when that read ends)
                    continue
                wait = self._read_began + _TIP_READ_GAP - now
                if wait <= 0:
                    break
                self._reads.wait(wait)
            self._reading = True
            began = self._read_began = time.monotonic()
        b = None
        try:
            b = self.ledger.get_broadcast(self.broadcast_id)
        finally:
            with self._reads:
                self._reading = False
                if b is not None:
                    self._read = (began, b.cancelled, b.contributions)
                self._reads.notify_all()
        return b.contributions.get(address, 0), True

    def _take_tip(
        self, address: str, number: int, amount: int, contributed: int, final: bool
    ) -> bool:
        """Count tip ``number`` of ``amount`` from ``address``, whose contributions are
        ``contributed``, or raise :class:`InvalidTip`; False (nothing counted) when they
        do not cover it and they may be out of date (not ``final``)."""
        with self._lock:
            while True:
                ids = self._tip_ids.get(address)
                if ids is not None and not ids.fresh(number):
                    raise E.InvalidTip("tip replayed (or older than the tipper's last ones)")
                total = self._tipped.get(address, 0) + amount
                if total <= contributed:
                    break
                if not final:
                    return False
                if not self._saving.get(address):
                    raise E.InvalidTip("tip not covered by the tipper's contributions")
                # counted with tips of this tipper still being saved: one whose save
                # fails is taken back, and then this one may be covered (a disk that
                # hangs: unchecked, not the listener's fault)
                if not self._tip_saved.wait(_TIP_SAVE_WAIT):
                    raise TimeoutError("the tip state file is still being written")
            if ids is None:  # (only now: a refused tip leaves nothing behind)
                ids = self._tip_ids[address] = _TipIds()
            # taken now (a concurrent replay of the ID, or a tip beyond the
            # contributions, is refused while the file is written)
            ids.take(number)
            self._tipped[address] = total
            if self._tip_state is not None:
                self._saving[address] = self._saving.get(address, 0) + 1
            return True

    @property
    def tipped(self) -> dict[str, int]:
        """MIST of tips accepted per tipper address (this station's and the totals it
        was started with): what a replacement station takes as ``tipped``."""
        with self._lock:
            return dict(self._tipped)

    def _load_tip_state(self) -> dict[str, int]:
        """The totals in the tip state file (none when there is no file yet). A file
        that cannot be read, is damaged or is another broadcast's raises
        :class:`~dtp.messaging.errors.StationError` naming it, as the sealed inbox's
        state file raises SealedError (a damaged one raised a bare JSONDecodeError,
        UnicodeDecodeError or ValueError)."""
        path = self._tip_state
        if path is None:
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:  # JSON and UTF-8 errors too
            raise E.StationError(f"tip state file {path!r} cannot be read ({exc})") from None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("tipped"), dict)
            or not _same_id(str(state.get("broadcast_id")), self.broadcast_id)
        ):
            raise E.StationError(f"tip state file {path!r} is not this broadcast's tip state")
        tipped: dict[str, int] = {}
        for address, total in state["tipped"].items():
            try:
                key: str | None = normalize_id(address, "tipper address")
            except InvalidObjectId:
                key = None
            if key is None or type(total) is not int or total < 0:
                raise E.StationError(
                    f"tip state file {path!r} is damaged (a total of {total!r} for "
                    f"{address!r}, not an int of MIST >= 0 for an address)"
                )
            tipped[key] = max(tipped.get(key, 0), total)
        return tipped

    def _save_tip_state(self) -> None:
        """Write the totals to the tip state file, atomically (a crash leaves the old
        file or the new one), before the tip counts as accepted. The totals are read
        under the save lock, so a later write never holds older totals (one may hold
        a tip whose own write then failed: a total too high refuses tips, never
        accepts one twice)."""
        assert self._tip_state is not None
        tmp = f"{self._tip_state}.tmp"
        with self._save_lock:
            with self._lock:
                tipped = dict(self._tipped)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"broadcast_id": self.broadcast_id, "tipped": tipped}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._tip_state)

    def close(self) -> None:
        """Stop the monitor and close every listener link; :meth:`attach` refuses from
        then on. The streams are left to their owners, and so are the links' reader
        threads: each ends when its stream does, or at the next bytes it receives
        (:meth:`_StationLink.close`)."""
        self._stop.set()
        with self._lock:
            self._closed = True
            links = list(self._links)
        for link in links:
            link.close()


class _TipIds:
    """A tipper's tip IDs accepted by a station (128-bit numbers, the top 64 bits the
    tipper's microsecond clock): refused at or below ``floor``, which trails the
    newest ID's time by :data:`TIP_SKEW_US` and rises past any ID forgotten to keep
    at most :data:`TIP_WINDOW`. (A floor kept by count alone refused a second
    device's tip once the first sent 64 newer ones.)"""

    __slots__ = ("floor", "newest", "order", "recent")

    def __init__(self) -> None:
        self.floor = -1
        self.newest = -1
        self.recent: set[int] = set()
        self.order: list[int] = []  # (a heap of ``recent``: the oldest first)

    def fresh(self, number: int) -> bool:
        return number > self.floor and number not in self.recent

    def take(self, number: int) -> None:
        self.recent.add(number)
        heapq.heappush(self.order, number)
        if number > self.newest:
            self.newest = number
            lag = ((number >> 64) - TIP_SKEW_US) << 64
            self.floor = max(self.floor, lag - 1)
        while self.order and (self.order[0] <= self.floor or len(self.order) > TIP_WINDOW):
            oldest = heapq.heappop(self.order)
            self.recent.discard(oldest)
            self.floor = max(self.floor, oldest)


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
            # signed: unsigned, a relay rewrote next_seq (replaying what was sent before
            # the listener joined) or passed another session off as this one
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

    # -- to the station and the ledger --------------------------------------------------------

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
        """After a cancel: take this listener's share of the pool; returns it."""
        ledger, identity, b_id = self._need()
        return ledger.broadcast_withdraw(identity, b_id)

    def close(self) -> None:
        """Stop listening: :meth:`get` raises :class:`~dtp.messaging.errors.StationError`
        once the queue is drained, waiting calls included. The stream is left to its
        owner, so the reader thread, blocked in ``recv``, ends only when that returns:
        the next bytes arrive (they are discarded), the stream ends (closed by its
        owner or the station) or its timeout, if it has one, passes."""
        self._close("closed")
