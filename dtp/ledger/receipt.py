"""A fee receipt's wire format (docs/escrow.md §3 and §6): what a client signs, what a
RECEIPT frame carries, and the fee it must state. The ledger's claim rule checks receipts
by these bytes; the off-chain checks and the client's meter are in
:mod:`dtp.payments.receipts`.

- :func:`fee` — the fee of a usage under an SLA, exactly as Move computes it.
- :func:`receipt_message` — the 79 bytes a client signs for a receipt.
- :class:`Receipt` — a signed cumulative receipt, with a fixed-size binary encoding for
  RECEIPT frames (:meth:`Receipt.encode` / :meth:`Receipt.decode`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from dtp.errors import MalformedReceipt
from dtp.identity.ed25519 import verify_memoized
from dtp.ledger.objects import Sla, normalize_id

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "RECEIPT_DOMAIN",
    "RECEIPT_ENCODED_SIZE",
    "RECEIPT_ENCODING_VERSION",
    "RECEIPT_MESSAGE_SIZE",
    "U64_MAX",
    "Receipt",
    "fee",
    "object_id_bytes",
    "receipt_message",
]

#: Domain tag at the start of every receipt message.
RECEIPT_DOMAIN: Final = b"DTP-RECEIPT-V1"
#: Size of :func:`receipt_message`'s output.
RECEIPT_MESSAGE_SIZE: Final = 79
#: Version byte of :meth:`Receipt.encode`.
RECEIPT_ENCODING_VERSION: Final = 1
_ENCODING: Final = struct.Struct("<B32sQQQQ64s")
#: Size of :meth:`Receipt.encode`'s output (fits a RECEIPT frame's 1024 bytes).
RECEIPT_ENCODED_SIZE: Final = _ENCODING.size
U64_MAX: Final = 2**64 - 1
_MESSAGE: Final = struct.Struct("<15s32sQQQQ")


def fee(sla: Sla, total_bytes: int, total_requests: int) -> int:
    """``ceil(total_bytes * price_per_kib / 1024) + total_requests * price_per_request``.

    Exact integer arithmetic (Move uses u256). With 10/KiB and 5/request:
    fee(0, 0) = 0, fee(1, 0) = 1, fee(1024, 0) = 10, fee(1025, 1) = 16.
    """
    if total_bytes < 0 or total_requests < 0:
        raise ValueError("usage cannot be negative")
    byte_part = (total_bytes * sla.price_per_kib + 1023) // 1024
    return byte_part + total_requests * sla.price_per_request


def object_id_bytes(object_id: str) -> bytes:
    """The 32 raw bytes of an object ID given as ``0x`` + hex (short forms are left-padded
    with zeros, as Sui does). Raises :class:`dtp.errors.InvalidObjectId`."""
    return bytes.fromhex(normalize_id(object_id)[2:])


def _check_u64(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be an integer in 0..2**64-1, got {value!r}")


def receipt_message(
    connection_id: str | bytes,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
) -> bytes:
    """The exact 79 bytes a client signs (docs/escrow.md §6): BCS of the domain tag, the
    connection ID (32 raw bytes) and four u64 little-endian."""
    raw = object_id_bytes(connection_id) if isinstance(connection_id, str) else connection_id
    if len(raw) != 32:
        raise ValueError("a connection ID is 32 bytes")
    for name, value in (
        ("total_bytes", total_bytes),
        ("total_requests", total_requests),
        ("total_amount", total_amount),
        ("nonce", nonce),
    ):
        _check_u64(name, value)
    domain = bytes([len(RECEIPT_DOMAIN)]) + RECEIPT_DOMAIN
    return _MESSAGE.pack(domain, bytes(raw), total_bytes, total_requests, total_amount, nonce)


@dataclass(frozen=True)
class Receipt:
    """A cumulative receipt for one connection, signed by its client (raw Ed25519)."""

    #: The connection (TransportControl) ID, ``0x`` + 64 hex.
    connection_id: str
    total_bytes: int
    total_requests: int
    #: Cumulative MIST; must equal ``fee(sla, total_bytes, total_requests)``.
    total_amount: int
    #: Strictly increasing per connection.
    nonce: int
    #: 64-byte Ed25519 signature over :meth:`message` (empty until signed).
    signature: bytes = b""

    def message(self) -> bytes:
        """The 79 bytes to sign."""
        return receipt_message(
            self.connection_id,
            self.total_bytes,
            self.total_requests,
            self.total_amount,
            self.nonce,
        )

    def sign(self, identity: HostIdentity) -> Receipt:
        """A copy signed with ``identity``'s Ed25519 key."""
        return replace(self, signature=identity.sign(self.message()))

    def verify(self, public_key: bytes) -> bool:
        """Whether the signature verifies against ``public_key`` (32 raw bytes)."""
        return verify_memoized(public_key, self.signature, self.message())

    def encode(self) -> bytes:
        """Fixed-size binary form for RECEIPT frames: version (1) || connection ID (32) ||
        total_bytes, total_requests, total_amount, nonce (u64 LE each) || signature (64);
        :data:`RECEIPT_ENCODED_SIZE` bytes."""
        if len(self.signature) != 64:
            raise ValueError("only a signed receipt (64-byte signature) can be encoded")
        self.message()  # validates the ID and the ranges
        return _ENCODING.pack(
            RECEIPT_ENCODING_VERSION,
            object_id_bytes(self.connection_id),
            self.total_bytes,
            self.total_requests,
            self.total_amount,
            self.nonce,
            bytes(self.signature),
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Receipt:
        """Inverse of :meth:`encode`; raises :class:`dtp.errors.MalformedReceipt`."""
        raw = bytes(data)
        if len(raw) != RECEIPT_ENCODED_SIZE:
            raise MalformedReceipt(
                f"An encoded receipt is {RECEIPT_ENCODED_SIZE} bytes, got {len(raw)}."
            )
        version, conn, total_bytes, total_requests, amount, nonce, sig = _ENCODING.unpack(raw)
        if version != RECEIPT_ENCODING_VERSION:
            raise MalformedReceipt(f"Unknown receipt encoding version {version}.")
        return cls("0x" + conn.hex(), total_bytes, total_requests, amount, nonce, sig)
