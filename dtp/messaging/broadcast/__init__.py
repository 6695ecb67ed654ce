"""Broadcast stations and listeners over DTP streams (docs/messaging.md §5).

A :class:`BroadcastStation` is the broadcaster's side of an on-chain ``Broadcast`` object
(docs/escrow.md §9). Listeners connect to it over ordinary DTP streams; the station sends
every listener the same public stream of messages, each signed (raw Ed25519, by the
broadcaster's authority) over a domain-separated encoding of the broadcast ID, channel,
station session, sequence number and payload, so a message can be checked by anyone who
knows the broadcaster's Sui address, whoever relayed it. A *session* is one station
instance: a random 16-byte nonce and its start time, announced in a HELLO the broadcaster
signs (with the sequence number the listener starts from), so a restarted station, which
numbers its messages from 1 again, cannot have the messages of an earlier station instance
passed off as its own, nor can a relay rewind a listener that is listening. A HELLO carries no
time of its own, though: a relay that recorded one, and what followed it, can replay
that to a listener joining later (of the current station instance or an earlier one), as it
can delay anything; ``session_started_ms`` tells the listener how long the station has run.
:class:`BroadcastListener`
verifies the HELLO and each message and rejects forged ones
(:class:`~dtp.messaging.errors.ForgedBroadcast`: the messages of another station instance too) and
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
back the value of their shares of the pool (:meth:`BroadcastListener.withdraw`). A
station that sends records heartbeats on the ledger (:meth:`BroadcastStation.heartbeat`,
at most every half ``Broadcast.idle_ms``); once a broadcast has shown no sign of life for
that bound, its listeners may leave it and take back their shares' value
(:meth:`BroadcastListener.leave`; docs/escrow.md §9).

Nothing waits on a slow party: each listener link has a writer thread with a bounded
queue; when it is full the message is dropped for that listener only and counted, and
the listener sees the gap in sequence numbers (:attr:`BroadcastMessage.missed_before`).
An AIR frame (a change of air state) is never lost that way: it takes the place of the
newest queued message (dropped and counted), or of an older queued AIR frame.
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
