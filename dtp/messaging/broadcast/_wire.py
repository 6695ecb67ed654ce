"""The broadcast's wire: its frame kinds and limits, and the bytes a broadcaster signs for a
HELLO and a message and a listener for a tip, and their check (docs/messaging.md §5)."""

from __future__ import annotations

import struct
from typing import Final

from dtp.messaging import errors as E

# [20, broadcast_id, channel, broadcaster_public, on_air, next_seq, session, started_ms,
#  signature]
HELLO: Final = 20
MESSAGE: Final = 21  # [21, channel, seq, payload, signature]
AIR: Final = 22  # [22, on_air, reason, next_seq]
REQUEST: Final = 23  # [23, text]
TIP: Final = 24  # [24, tip_id, amount, message, ed25519_public, signature]
DENIED: Final = 25  # [25, reason]: sent in place of HELLO to a listener refused

#: Largest payload of one broadcast message (bytes).
MAX_PAYLOAD: Final = 64 * 1024
#: Largest listener request (bytes of UTF-8).
MAX_REQUEST: Final = 1024
#: Largest tip message (bytes of UTF-8).
MAX_TIP_MESSAGE: Final = 280
#: Size of the nonce of a station session (bytes).
SESSION_BYTES: Final = 16
#: Tip IDs a station remembers per tipper at most (beyond, the oldest are forgotten and
#: every ID at or below them refused).
TIP_WINDOW: Final = 1024
#: How far (microseconds) a tip ID's time may lag the tipper's newest before the station
#: refuses it unseen: room for a second device's clock, or a tip overtaken in flight.
TIP_SKEW_US: Final = 300_000_000
_FRAME_CAP: Final = MAX_PAYLOAD + 1024
_HELLO_DOMAIN: Final = b"DTP-BROADCAST-HELLO-V1\x00"
_MSG_DOMAIN: Final = b"DTP-BROADCAST-MSG-V2\x00"
_TIP_DOMAIN: Final = b"DTP-BROADCAST-TIP-V2\x00"
_U64: Final = struct.Struct(">Q")


def _field(data: bytes) -> bytes:
    """A length-prefixed field (so no two encodings share bytes)."""
    return struct.pack(">I", len(data)) + data


def signed_hello(
    broadcast_id: str, channel: str, session: bytes, started_ms: int, next_seq: int
) -> bytes:
    """The bytes a broadcaster signs for a HELLO: a domain tag, then the broadcast ID,
    channel, station session (its nonce and start time, ms since the epoch) and the
    sequence number the listener starts from, each length-prefixed or fixed-size."""
    return (
        _HELLO_DOMAIN
        + _field(broadcast_id.lower().encode())
        + _field(channel.encode())
        + _field(bytes(session))
        + _U64.pack(started_ms)
        + _U64.pack(next_seq)
    )


def signed_message(
    broadcast_id: str, channel: str, session: bytes, seq: int, payload: bytes
) -> bytes:
    """The bytes a broadcaster signs for one message: a domain tag, then the broadcast ID,
    channel, station session nonce, sequence number and payload, each length-prefixed or
    fixed-size. (The session nonce is what keeps a restarted station's seq 1 from
    verifying as seq 1 of an earlier instance of the station.)"""
    return (
        _MSG_DOMAIN
        + _field(broadcast_id.lower().encode())
        + _field(channel.encode())
        + _field(bytes(session))
        + _U64.pack(seq)
        + _field(bytes(payload))
    )


def signed_tip(
    broadcast_id: str, session: bytes, tip_id: bytes, amount: int, message: str
) -> bytes:
    """The bytes a listener signs for a tip to the station session ``session`` (so no
    other station instance, a restarted one included, accepts it)."""
    return (
        _TIP_DOMAIN
        + _field(broadcast_id.lower().encode())
        + _field(bytes(session))
        + _field(bytes(tip_id))
        + _U64.pack(amount)
        + _field(message.encode())
    )


def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from dtp.identity._ed25519 import verify_memoized

    return verify_memoized(public_key, signature, message)


def verify_message(
    broadcaster_public: bytes,
    broadcast_id: str,
    channel: str,
    session: bytes,
    seq: int,
    payload: bytes,
    signature: bytes,
) -> None:
    """Raise :class:`ForgedBroadcast` unless ``signature`` is the broadcaster's over this
    message of the station session ``session``."""
    if not _verify(
        broadcaster_public,
        signature,
        signed_message(broadcast_id, channel, session, seq, payload),
    ):
        raise E.ForgedBroadcast()
