"""The sans-I/O RPC core: messages in, events out (docs/messaging.md §2).

:class:`RpcProtocol` is symmetric — either side may send requests and notifications on
one stream — and never touches a socket, the clock or randomness: callers pass ``now``
(seconds, any monotonic clock) and move bytes with :meth:`RpcProtocol.receive_data` /
:meth:`RpcProtocol.data_to_send`. Timers: :meth:`RpcProtocol.get_timer` /
:meth:`RpcProtocol.handle_timer`.

Bad input never raises out of :meth:`RpcProtocol.receive_data`: a frame that is not a
message becomes a :class:`ProtocolViolation` event and, when the peer could be waiting for
an answer, an error frame back; the stream stays usable (frames are length-prefixed, so
the next one is found regardless).

:class:`RpcProtocol` is made of its parts: ``protocol_state`` (what it knows, its output
queue and framing), ``protocol_sending``, ``protocol_fast_path``, ``protocol_receiving``
and ``protocol_timers``; the message format is ``protocol_messages``, the events
``protocol_events``, the checks of a caller's arguments ``protocol_arguments``.
"""

from __future__ import annotations

from dtp.messaging.protocol_arguments import _check_count as _check_count
from dtp.messaging.protocol_arguments import _check_our_method as _check_our_method
from dtp.messaging.protocol_arguments import _check_our_timeout as _check_our_timeout
from dtp.messaging.protocol_arguments import _check_wait as _check_wait
from dtp.messaging.protocol_events import (
    AckReceived,
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RpcEvent,
)
from dtp.messaging.protocol_fast_path import RpcFastPath
from dtp.messaging.protocol_messages import (
    ACK,
    CANCEL,
    ERROR,
    MAX_COMPLAINTS,
    MAX_METHOD_LENGTH,
    NOTIFY,
    REQUEST,
    RESPONSE,
)
from dtp.messaging.protocol_messages import MAX_ID as MAX_ID
from dtp.messaging.protocol_messages import MAX_TIMEOUT_MS as MAX_TIMEOUT_MS
from dtp.messaging.protocol_receiving import RpcReceiving
from dtp.messaging.protocol_sending import RpcSending
from dtp.messaging.protocol_timers import RpcTimers

__all__ = [
    "ACK",
    "CANCEL",
    "ERROR",
    "MAX_COMPLAINTS",
    "MAX_METHOD_LENGTH",
    "NOTIFY",
    "REQUEST",
    "RESPONSE",
    "AckReceived",
    "ErrorReceived",
    "NotificationReceived",
    "ProtocolViolation",
    "RequestCancelled",
    "RequestReceived",
    "RequestTimedOut",
    "ResponseReceived",
    "RpcEvent",
    "RpcProtocol",
]


class RpcProtocol(RpcSending, RpcFastPath, RpcReceiving, RpcTimers):
    """One side of an RPC stream.

    ``max_message_size`` caps frames both ways; ``max_outgoing`` caps our requests in
    flight (:class:`~dtp.messaging.errors.PayloadTooLarge` /
    :class:`~dtp.errors.LocalProtocolError` beyond); ``max_incoming`` caps the peer's
    requests we have not answered yet — beyond it, requests are answered at once with
    ``SERVER_BUSY`` (requests that ended but whose work the caller still holds count
    too: ``held_incoming``). Complaints about frames whose id cannot be read (ERROR with
    a nil id) stop after :data:`MAX_COMPLAINTS`, so that a peer which sends junk and
    never reads cannot make us queue output without bound. ``first_id``: the id of our
    first request (default: a random one, so that a client on a stream another one used
    does not take that one's answers still on the way for its own).
    """
