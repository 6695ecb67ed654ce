"""A listener's reading of the station's stream (:class:`ListenerReading`): the HELLO and
every message verified, forged and replayed ones counted and never delivered, and what
is delivered queued within its bound (an air change never lost)."""

from __future__ import annotations

import logging
from typing import Any, Final

from dtp.errors import ChainError, DTPError, InvalidObjectId, ObjectNotFound
from dtp.identity.keys import sui_address_from_public_key
from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.broadcast.checks import _same_id
from dtp.messaging.broadcast.events import AirChange, BroadcastMessage
from dtp.messaging.broadcast.listener_state import ListenerState
from dtp.messaging.broadcast.wire import (
    _FRAME_CAP,
    AIR,
    DENIED,
    HELLO,
    MESSAGE,
    SESSION_BYTES,
    _verify,
    signed_hello,
    verify_message,
)
from dtp.messaging.framing import Oversized, decode_body, read_frames
from dtp.messaging.pubsub import _PatientReads

logger = logging.getLogger(__name__)

# AirChanges a listener queues beyond its bound: a full queue must not lose the air
# state, and a station (or relay) sending nothing but AIR frames must not fill memory
_AIR_SLACK: Final = 16


class ListenerReading(ListenerState):
    """The reading side of :class:`~dtp.messaging.broadcast.listener.BroadcastListener`."""

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
