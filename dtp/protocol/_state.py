"""Connection and stream states, their allowed transitions, and the codes on the wire.

Everything that governs *when* something may happen lives here, on one screen; the
connection asks :func:`transition` and never changes state any other way.
"""

from __future__ import annotations

import enum
from typing import Final

from dtp.errors import LocalProtocolError


class ConnState(enum.Enum):
    """Where a connection is in its life."""

    CLIENT_HELLO = "client-hello"  # client: first handshake message sent, waiting
    SERVER_WAIT = "server-wait"  # server: waiting for the first handshake message
    SERVER_FINAL = "server-final"  # server (XX): waiting for the third message
    SERVER_DECIDING = "server-deciding"  # server (IK): client proven; accept() or refuse()
    AUTHENTICATING = "authenticating"  # keys ready; identity proof / accept pending
    ESTABLISHED = "established"  # application data flows
    CLOSED = "closed"  # terminal; ConnectionTerminated was reported

    # members are singletons compared by identity, so identity hashing agrees with
    # equality; Enum's own __hash__ (of the name) is a Python call at every transition
    __hash__ = object.__hash__


_TRANSITIONS: dict[ConnState, set[ConnState]] = {
    ConnState.CLIENT_HELLO: {ConnState.AUTHENTICATING, ConnState.CLOSED},
    ConnState.SERVER_WAIT: {
        ConnState.SERVER_FINAL,
        ConnState.SERVER_DECIDING,
        ConnState.AUTHENTICATING,
        ConnState.CLOSED,
    },
    # IK: message 2 goes out with the verdict (ACCEPT, or a CLOSE right behind it)
    ConnState.SERVER_DECIDING: {
        ConnState.ESTABLISHED,
        ConnState.AUTHENTICATING,
        ConnState.CLOSED,
    },
    ConnState.SERVER_FINAL: {ConnState.AUTHENTICATING, ConnState.CLOSED},
    ConnState.AUTHENTICATING: {ConnState.ESTABLISHED, ConnState.CLOSED},
    ConnState.ESTABLISHED: {ConnState.CLOSED},
    ConnState.CLOSED: set(),
}


def transition(current: ConnState, new: ConnState) -> ConnState:
    """Return ``new`` if the move is allowed; raise LocalProtocolError otherwise."""
    if new not in _TRANSITIONS[current]:
        raise LocalProtocolError(f"connection cannot go from {current.value} to {new.value}")
    return new


class CloseCode(enum.IntEnum):
    """Codes carried by CLOSE frames. Values >= APPLICATION belong to applications;
    paid connections' 0x1402-0x1404 are :data:`dtp.errors.CLOSE_PAYMENT_REQUIRED` and its
    neighbours, defined with the errors they map to."""

    NO_ERROR = 0
    INTERNAL_ERROR = 1
    PROTOCOL_VIOLATION = 2
    FRAME_ENCODING_ERROR = 3
    FLOW_CONTROL_ERROR = 4
    # reserved, like QUIC's: a stream beyond the limit, or a frame a stream's state does
    # not allow, closes with PROTOCOL_VIOLATION (docs/protocol.md)
    STREAM_LIMIT_ERROR = 5
    STREAM_STATE_ERROR = 6
    DECRYPT_ERROR = 7
    REPLAY_DETECTED = 8
    IDLE_TIMEOUT = 9
    HANDSHAKE_FAILED = 10
    REFUSED = 11
    AUTH_REQUIRED = 12
    CONNECTION_LOST = 13  # local only, never sent: the carrier failed or the peer vanished
    APPLICATION = 0x1000


class ControlKind(enum.IntEnum):
    """Kinds of CONTROL frames. Kinds >= 16 are passed up as ControlReceived events."""

    AUTH = 1  # client -> server (XX): the Sui identity proof bound to the handshake hash
    ACCEPT = 2  # server -> client: application data may flow
    APPLICATION = 16


class SendState(enum.Enum):
    """The sending half of a stream."""

    OPEN = "open"
    FIN_QUEUED = "fin-queued"  # end of stream requested; data before it may be pending
    FIN_SENT = "fin-sent"
    RESET = "reset"


class RecvState(enum.Enum):
    """The receiving half of a stream."""

    OPEN = "open"
    FIN_RECEIVED = "fin-received"  # final size known; data may still be missing
    DONE = "done"  # every byte up to the final size was delivered
    RESET = "reset"


# The states the per-call paths compare with (a send, a read, their timers and credit),
# as module names: on Python 3.11 reading an attribute of an Enum class
# (ConnState.ESTABLISHED) goes through EnumType.__getattr__'s slow hook and makes a
# method-wrapper, about 175 ns where a global takes 18 (3.12 dropped the hook).
CONN_ESTABLISHED: Final = ConnState.ESTABLISHED
CONN_CLOSED: Final = ConnState.CLOSED
SEND_OPEN: Final = SendState.OPEN
RECV_OPEN: Final = RecvState.OPEN
