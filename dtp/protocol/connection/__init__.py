"""The DTP connection: a sans-I/O state machine.

It never opens a socket, reads the clock or draws randomness: bytes go in with
:meth:`Connection.receive_data`, bytes to transmit come out of
:meth:`Connection.data_to_send`, what happened comes out of :meth:`Connection.next_event`,
and time is passed in (``now``, in seconds, from any monotonic clock). Timers are
:meth:`Connection.get_timer` / :meth:`Connection.handle_timer`.

Life of a connection (see :mod:`dtp.protocol._state`):

1. Noise handshake in handshake records (IK when the client knows the server's static
   key, XX otherwise); each side's first handshake payload carries its transport
   parameters (flow-control windows, stream limit, idle timeout).
2. The client proves its Sui address (:mod:`dtp.identity._noise`, channel binding). In IK the
   proof rides in message 1: the server reports :class:`~dtp.protocol._events.PeerAuthenticated`
   and answers only once the application calls :meth:`Connection.accept` (message 2
   and an ACCEPT in one flight) or :meth:`Connection.refuse` (message 2 and a CLOSE),
   so the client has its verdict after one round trip; the client's first stream (0)
   is then open on both sides without a frame of its own (its first
   :meth:`Connection.open_stream` returns it). In XX the client's first DATA
   record carries the proof (an AUTH control frame over the handshake hash) and the
   server holds any application data until it accepts or refuses.
3. Streams: ordered reliable byte streams with per-stream and per-connection flow
   control, half-close and reset; datagrams, control frames and receipts.
4. CLOSE with a code and reason, or an idle timeout.

Records are sealed and opened in batches by the C core (one call per batch). Over a
reliable, ordered carrier (TCP) records are not acknowledged; over any other carrier
(``reliable_carrier=False``) the connection acknowledges, detects loss and retransmits
(:mod:`dtp.protocol._recovery`), and reorders stream data with the C reassembly buffer.

Its parts: :mod:`~dtp.protocol.connection._config` (the config, limits and transport
parameters), :mod:`~dtp.protocol.connection._core` (:class:`Connection` itself: the state
machine, the sans-I/O interface, the handshake and the dispatch of what arrives),
:mod:`~dtp.protocol.connection._stream_table` (the streams by ID, the stream limits and
the connection-level flow-control counts) and :mod:`~dtp.protocol.connection._records`
(the record layer: records built, sealed, acknowledged and sent again), objects the
connection holds, and its mixins :mod:`~dtp.protocol.connection._streams` and
:mod:`~dtp.protocol.connection._fast_paths`.
Import from here.
"""

from __future__ import annotations

from dtp.protocol._events import ConnectionTerminated
from dtp.protocol._state import CloseCode, ConnState
from dtp.protocol.connection._config import (
    DATAGRAM_SEND_BACKLOG,
    FIRST_MESSAGE_COPIES,
    HANDSHAKE_RESEND_FIRST,
    MAX_CLOSE_REASON,
    MAX_PENDING_EARLY_RECORDS,
    MAX_RECEIPT,
    MAX_RECORD_PLAINTEXT,
    MAX_STREAM_FRAME_OVERHEAD,
    MIN_KEEPALIVE,
    TRANSPORT_VERSION,
    VARINT_MAX,
    ConnectionConfig,
    checked_noise_key,
    direct_client_config,
    first_message_window,
    ledger_client_config,
    with_handshake_timeout,
)
from dtp.protocol.connection._config import parse_params as _parse_params
from dtp.protocol.connection._core import Connection, _split_records, error_for_termination
from dtp.protocol.connection._streams import close_reason_bytes

__all__ = [
    "DATAGRAM_SEND_BACKLOG",
    "FIRST_MESSAGE_COPIES",
    "HANDSHAKE_RESEND_FIRST",
    "MAX_CLOSE_REASON",
    "MAX_PENDING_EARLY_RECORDS",
    "MAX_RECEIPT",
    "MAX_RECORD_PLAINTEXT",
    "MAX_STREAM_FRAME_OVERHEAD",
    "MIN_KEEPALIVE",
    "TRANSPORT_VERSION",
    "VARINT_MAX",
    "CloseCode",
    "ConnState",
    "Connection",
    "ConnectionConfig",
    "ConnectionTerminated",
    "checked_noise_key",
    "close_reason_bytes",
    "direct_client_config",
    "error_for_termination",
    "first_message_window",
    "ledger_client_config",
    "with_handshake_timeout",
]

# private names the tests import from here
__all__ += ["_parse_params", "_split_records"]
