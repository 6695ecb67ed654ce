"""Events a :class:`~dtp.protocol.connection.Connection` reports to the layer above.

Events are immutable facts about what already happened; the I/O adapters
(:mod:`dtp.socket`, :mod:`dtp.aio`) and the messaging layers turn them into reads,
wake-ups and errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dtp.identity._zklogin import ZkLoginCheck


class Event:
    """Base class of every connection event."""


@dataclass(frozen=True)
class HandshakeCompleted(Event):
    """The Noise handshake finished; records are encrypted from now on."""

    pattern: str
    """``"IK"`` (the client knew the server's static key) or ``"XX"``."""
    peer_static: bytes
    """The peer's X25519 Noise static public key, authenticated by the handshake."""
    handshake_hash: bytes
    """The Noise handshake hash: the value the client's identity proof is bound to."""


@dataclass(frozen=True)
class PeerAuthenticated(Event):
    """Server side: the client proved its Sui address over this connection's handshake.

    The connection now waits for :meth:`~dtp.protocol.connection.Connection.accept` or
    :meth:`~dtp.protocol.connection.Connection.refuse`; application data that arrives
    meanwhile is held, not delivered.
    """

    address: str
    """The client's Sui address (``0x`` + 64 hex digits)."""
    public_key: bytes
    """What stands for the client's key (docs/protocol.md 8.4): its Ed25519 public key
    (32 bytes); a Secp256k1, Secp256r1 or passkey key (33 bytes, compressed); a
    multisig's BCS ``MultiSigPublicKey``; a zkLogin public identifier."""
    scheme: str = "ed25519"
    """The proof's Sui signature scheme: ``ed25519``, ``secp256k1``, ``secp256r1``,
    ``passkey``, ``multisig`` or ``zklogin``."""
    zklogin: ZkLoginCheck | None = None
    """None when the proof is wholly verified; else what a Sui node must still confirm
    (a zkLogin proof, a multisig with zkLogin members) before the client is proven: the
    server's driver asks it (``ConnectionConfig.zklogin_verifier``) before it decides,
    and fails the handshake if the node does not confirm it."""


@dataclass(frozen=True)
class ConnectionAccepted(Event):
    """Both sides are ready for application data (client: the server accepted us;
    server: we accepted the client)."""

    peer_address: str | None
    """The client's Sui address on the server; ``None`` on the client."""


@dataclass(frozen=True)
class StreamOpened(Event):
    """The peer opened a new stream."""

    stream_id: int


@dataclass(frozen=True)
class StreamDataReceived(Event):
    """Bytes arrived on a stream, in order. Give them back to flow control with
    :meth:`~dtp.protocol.connection.Connection.acknowledge_read` once the application has
    consumed them."""

    stream_id: int
    data: bytes
    end_stream: bool
    """True when the peer half-closed the stream after these bytes."""


@dataclass(frozen=True)
class StreamResetReceived(Event):
    """The peer abandoned its sending side of a stream."""

    stream_id: int
    error_code: int


@dataclass(frozen=True)
class StopSendingReceived(Event):
    """The peer will not read a stream any more; our sending side was reset."""

    stream_id: int
    error_code: int


@dataclass(frozen=True)
class SendWindowOpened(Event):
    """Flow-control credit arrived: blocked writers may continue.

    ``stream_id`` is None for connection-level credit."""

    stream_id: int | None


@dataclass(frozen=True)
class ControlReceived(Event):
    """An application-level CONTROL frame (kinds >= 16 are for the layers above)."""

    kind: int
    data: bytes


@dataclass(frozen=True)
class ReceiptReceived(Event):
    """A RECEIPT frame (a client-signed cumulative fee receipt, see dtp.ledger.receipt)."""

    data: bytes


@dataclass(frozen=True)
class DatagramReceived(Event):
    """An unreliable DATAGRAM frame."""

    data: bytes


@dataclass(frozen=True)
class ConnectionTerminated(Event):
    """The connection is over. Always the last event."""

    error_code: int
    """A :class:`~dtp.protocol.connection.CloseCode` value, or an application code."""
    reason: str
    by_peer: bool
    """True when the peer closed (or misbehaved), False when we did."""
