"""Broadcast stations and listeners over DTP streams (docs/messaging.md §5: the frames,
sessions, air, tickets, tips and heartbeats, and why each rule holds).

A :class:`BroadcastStation` is the broadcaster's side of an on-chain ``Broadcast`` object
(docs/escrow.md §9). Listeners connect to it over ordinary DTP streams; the station sends
every listener the same public stream of messages, each signed by the broadcaster's
authority for the broadcast, channel, station *session* (one station instance: a
restarted one cannot have an earlier instance's messages passed off as its own) and
sequence number, so anyone who knows the broadcaster's Sui address can check a message,
whoever relayed it. :class:`BroadcastListener` verifies the HELLO and each message and
counts, never delivers, forged ones (:class:`~dtp.messaging.errors.ForgedBroadcast`)
and replayed or out-of-order ones (:class:`~dtp.messaging.errors.ReplayedBroadcast`).

The station is *on air* only while the ledger says the listeners' pool covers what is
left of the slot in progress; off air it refuses to send (:class:`OffAir`) and tells
every listener. A *ticketed* broadcast's station admits only listeners whose address
holds a ticket of its sale (else :class:`~dtp.messaging.errors.NoTicket`). Listeners pay
through the ledger (:meth:`BroadcastListener.contribute`, tips), the broadcaster claims
what its slots earned (:meth:`BroadcastStation.claim`), and after a cancel, or once a
station shows no sign of life (its heartbeats), listeners take back their shares
(:meth:`BroadcastListener.withdraw`, :meth:`BroadcastListener.leave`).

Nothing waits on a slow party: each listener link has a writer thread with a bounded
queue; what does not fit is dropped for that listener only and counted (the listener
sees the gap, :attr:`BroadcastMessage.missed_before`), an AIR frame never.
"""

from __future__ import annotations

# (the frame kinds and _StationLink, each imported as itself, are no public API: tests
# build and watch frames with them)
from dtp.messaging.broadcast._events import AirChange, BroadcastMessage, ListenerRequest, Tip
from dtp.messaging.broadcast._listener import BroadcastListener
from dtp.messaging.broadcast._station import BroadcastStation
from dtp.messaging.broadcast._station_link import _StationLink as _StationLink
from dtp.messaging.broadcast._wire import AIR as AIR
from dtp.messaging.broadcast._wire import DENIED as DENIED
from dtp.messaging.broadcast._wire import HELLO as HELLO
from dtp.messaging.broadcast._wire import (
    MAX_PAYLOAD,
    MAX_REQUEST,
    MAX_TIP_MESSAGE,
    SESSION_BYTES,
    TIP_SKEW_US,
    TIP_WINDOW,
    signed_hello,
    signed_message,
    signed_tip,
    verify_message,
)
from dtp.messaging.broadcast._wire import MESSAGE as MESSAGE
from dtp.messaging.broadcast._wire import REQUEST as REQUEST
from dtp.messaging.broadcast._wire import TIP as TIP

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
