"""A station's listeners (:class:`StationListeners`): attaching one (on a ticketed
broadcast, only a ticket holder), forgetting it, and queueing a frame for every one."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from dtp.errors import DTPError
from dtp.ledger.objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging.broadcast.checks import _check_stream
from dtp.messaging.broadcast.inbox import StationInbox
from dtp.messaging.broadcast.station_link import _StationLink
from dtp.messaging.broadcast.wire import AIR, DENIED, HELLO, signed_hello
from dtp.messaging.framing import encode_frame

if TYPE_CHECKING:
    from dtp.messaging.rpc import BlockingStream

logger = logging.getLogger(__name__)

# A ticketed station's read of its sale's holders, as the tips' reads of contributions:
# one showing a listener holding a ticket is taken as it is for this long (a refund
# after it is unseen so long), and reads begin at most this often (a flood of listeners
# with no ticket costs one read per gap, not one each)
_TICKET_READ_TRUST: Final = 1.0
_TICKET_READ_GAP: Final = 0.2


class StationListeners(StationInbox):
    """The listeners of :class:`~dtp.messaging.broadcast.station.BroadcastStation`."""

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
