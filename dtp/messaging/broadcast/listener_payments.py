"""What a listener sends the station and pays through the ledger
(:class:`ListenerPayments`): requests, contributions, signed tips and the way back: the
value of its shares of the pool after a cancel, or when it leaves an idle broadcast."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from dtp.messaging import errors as E
from dtp.messaging.broadcast.checks import _check_amount, _utf8
from dtp.messaging.broadcast.listener_state import ListenerState
from dtp.messaging.broadcast.wire import (
    _U64,
    MAX_REQUEST,
    MAX_TIP_MESSAGE,
    REQUEST,
    TIP,
    signed_tip,
)
from dtp.messaging.framing import encode_frame

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger


class ListenerPayments(ListenerState):
    """The sending side of :class:`~dtp.messaging.broadcast.listener.BroadcastListener`."""

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
