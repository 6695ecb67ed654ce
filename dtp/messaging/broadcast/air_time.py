"""A station's air time (:class:`StationAirTime`): whether the listeners' pool covers the
slot in progress (docs/escrow.md §9), asked of the ledger once per slot and whenever off
air, the sending of messages, which only an on-air station does, and the heartbeats that
tell the ledger it sends (so its listeners cannot leave it as idle)."""

from __future__ import annotations

import logging
import threading

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.broadcast.station_listeners import StationListeners
from dtp.messaging.broadcast.wire import (
    _FRAME_CAP,
    AIR,
    MAX_PAYLOAD,
    MESSAGE,
    signed_message,
)
from dtp.messaging.framing import bytes_like, encode_frame
from dtp.messaging.protocol import _check_wait

logger = logging.getLogger(__name__)


class StationAirTime(StationListeners):
    """The air time of :class:`~dtp.messaging.broadcast.station.BroadcastStation`."""

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
