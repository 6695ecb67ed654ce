"""The broadcaster's side, :class:`BroadcastStation`, one class read top to bottom (its
parts, in order: docs/architecture.md, "apps"); a listener's link is an object of its
own (:mod:`~dtp.messaging.broadcast._station_link`)."""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from dtp.errors import ChainError, DTPError, InvalidObjectId, ObjectNotFound
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger._objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging._framing import bytes_like, encode_frame
from dtp.messaging._protocol import _check_wait
from dtp.messaging.broadcast import _wire as wire
from dtp.messaging.broadcast._checks import _check_stream, _same_id
from dtp.messaging.broadcast._events import ListenerRequest, Tip
from dtp.messaging.broadcast._station_link import _StationLink
from dtp.messaging.broadcast._wire import (
    _FRAME_CAP,
    AIR,
    DENIED,
    HELLO,
    MAX_PAYLOAD,
    MESSAGE,
    REQUEST,
    TIP,
    TIP_SKEW_US,
    TIP_WINDOW,
    _verify,
    signed_hello,
    signed_message,
    signed_tip,
)

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import BlockingStream

# A ticketed station's read of its sale's holders, as the tips' reads of contributions:
# one showing a listener holding a ticket is taken as it is for this long (a refund
# after it is unseen so long), and reads begin at most this often (a flood of listeners
# with no ticket costs one read per gap, not one each)
_TICKET_READ_TRUST: Final = 1.0
_TICKET_READ_GAP: Final = 0.2

logger = logging.getLogger(__name__)

# Longest a tip waits for another tip of its tipper to be saved (seconds)
_TIP_SAVE_WAIT: Final = 30.0
# Least time (seconds) between the starts of two ledger reads that check tips: a tip the
# last read does not cover waits for the next one (which serves every tip waiting), so
# tips signed by fresh keys, free to make, cost one read per this, not one each
_TIP_READ_GAP: Final = 0.2
# How long (seconds) a read showing a tipper's contributions cover a tip is taken as it
# is: contributions only grow until a cancel or a leave (of an idle broadcast), after
# which a withdrawal or the leave is unseen so long
_TIP_READ_TRUST: Final = 1.0


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
        keep_alive: bool = True,
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
        restarted with the same path goes on from its predecessor's totals.

        ``keep_alive`` (on by default): while the station sends, it records a heartbeat
        on the ledger at most every half ``Broadcast.idle_ms`` (:meth:`heartbeat`), so
        its listeners cannot leave the broadcast as idle (docs/escrow.md §9). Off, the
        station's listeners may leave once it has been live on the ledger for none of
        that bound."""
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
        self.session = os.urandom(wire.SESSION_BYTES)
        #: When the station's session started (ms since the epoch, the host's clock; in the
        #: HELLO).
        self.session_started_ms = time.time_ns() // 1_000_000
        self._seq = 1
        self._on_air = False
        self._checked_slot = -1
        self._checked_ms = b.start_ms
        self._cancelled = b.cancelled
        # heartbeats: when the next is due (ledger ms), and the thread of the one under way
        self._keep_alive_on = bool(keep_alive)
        self._idle_ms = b.idle_ms
        self._next_beat_ms = b.last_live_ms + b.idle_ms // 2
        self._beat: threading.Thread | None = None
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

    def claim(self) -> int:
        """Claim everything the completed, covered slots earned; returns the amount."""
        return self.ledger.broadcast_claim(self.identity, self.broadcast_id)

    def cancel(self) -> None:
        """Cancel the broadcast on the ledger (listeners can then withdraw their share of
        the pool) and tell every listener."""
        self.ledger.broadcast_cancel(self.identity, self.broadcast_id)
        self._set_air(False, "cancelled", self._checked_slot)

    def close(self) -> None:
        """Stop the monitor, close every listener link and wait for a heartbeat under way;
        :meth:`attach` refuses from then on. The streams are left to their owners, and so
        are the links' reader threads: each ends when its stream does, or at the next
        bytes it receives (:meth:`_StationLink.close`)."""
        self._stop.set()
        with self._lock:
            self._closed = True
            links = list(self._links)
            beat = self._beat
        for link in links:
            link.close()
        if beat is not None:
            # (a heartbeat under way: the ledger may be closed by the caller next)
            beat.join()

    # -- listeners: attached (a ticketed broadcast admits ticket holders), sent to ---------

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
            try:
                holders = self.ledger.get_ticket_sale(self.ticket_sale).holders
            except ObjectNotFound:
                # its organizer deleted it, once every holder had left (docs/escrow.md
                # §15): nobody holds a ticket of it any more
                holders = {}
            self._ticket_read = (now, holders)
            return holders.get(address, 0) > 0

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

    # -- air time (docs/escrow.md §9): asked of the ledger, sending, heartbeats ------------

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
            self._checked_ms = now
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
                # before cancel() ran does not put the station back on air ("covered")
                # after its AIR "cancelled", or sends would go out for the rest of the
                # slot, which no one pays for (the slot in progress at a cancel never is)
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
                # less room for the payload, and send() refuses a frame above the cap,
                # which every listener would skip
                frame = encode_frame(message, _FRAME_CAP)
            except E.PayloadTooLarge:
                raise E.PayloadTooLarge(
                    f"a payload of {len(payload)} bytes does not fit a frame on this "
                    f"channel ({_FRAME_CAP} bytes with its {len(self.channel.encode())}-byte "
                    "name)"
                ) from None
            self._seq += 1
            self._fan_out(frame)
        self._keep_alive()
        return seq

    def heartbeat(self) -> None:
        """Record on the ledger that this station is transmitting (``broadcast::heartbeat``:
        its messages go over DTP streams, which the ledger does not see), so its
        listeners cannot leave it as idle for ``Broadcast.idle_ms``. :meth:`send` does it
        by itself, in the background, at most every half ``idle_ms``; raises the ledger's
        error (``ENotOnAir`` off air, ``EBroadcastCancelled``)."""
        now = self.ledger.clock_ms()
        self.ledger.broadcast_heartbeat(self.identity, self.broadcast_id)
        with self._lock:
            self._next_beat_ms = max(self._next_beat_ms, now + self._idle_ms // 2)

    def _keep_alive(self) -> None:
        """After a send: a heartbeat in a thread of its own when half the idle bound has
        passed since the last one (a ledger transaction, seconds on Sui, which no send
        waits for). One that fails is tried again after a twentieth of the bound."""
        with self._lock:
            now = self._checked_ms
            if (
                not self._keep_alive_on
                or self._cancelled
                or self._closed
                or now < self._next_beat_ms
                or (self._beat is not None and self._beat.is_alive())
            ):
                return
            # (set now: the sends meanwhile start no second one)
            self._next_beat_ms = now + self._idle_ms // 20

            def beat() -> None:
                try:
                    self.heartbeat()
                except DTPError as exc:
                    logger.warning("broadcast %s: heartbeat failed: %s", self.broadcast_id, exc)

            self._beat = threading.Thread(target=beat, name="bcast-heartbeat", daemon=True)
            self._beat.start()

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

    # -- the inbox: what listeners send, checked and queued, the oldest dropped when full --

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
            if len(message[1].encode()) > wire.MAX_REQUEST:
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

    # -- tips: signed for the current session, never replayed, covered by contributions ----

    def _check_tip(self, message: list[Any]) -> Tip:
        arrived = time.monotonic()
        _, tip_id, amount, text, public, signature = message
        if not (
            isinstance(tip_id, bytes)
            and len(tip_id) == 16
            and type(amount) is int
            and 0 < amount < 1 << 64
            and isinstance(text, str)
            and len(text.encode()) <= wire.MAX_TIP_MESSAGE
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
        shows ``need`` or more (contributions only grow until a cancel or a leave); else
        the tip waits for a read begun after it arrived, which serves every tip waiting then,
        and reads begin at most every ``_TIP_READ_GAP`` seconds, so that tips signed by
        fresh keys, free to make, cannot cost a read (a network call on Sui) each."""
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

    # -- the tip totals, and the tip state file that carries them to a restarted station ---

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
