"""A fee receipt's wire format (docs/escrow.md §3 and §6): what a client signs, what a
RECEIPT frame carries, and the fee it must state. The ledger's claim rule checks receipts
by these bytes; the off-chain checks and the client's meter are in
:mod:`dtp.payments.receipts`.

- :func:`fee` — the fee of a usage under an SLA, exactly as Move computes it.
- :class:`ReceiptScope` — what a receipt is bound to: the dtp package, the escrow and the
  connection it pays for.
- :func:`receipt_message` — the 143 bytes a client signs for a receipt (version 2).
- :class:`Receipt` — a signed cumulative receipt, with a fixed-size binary encoding for
  RECEIPT frames (:meth:`Receipt.encode` / :meth:`Receipt.decode`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from dtp.errors import MalformedReceipt, UnsupportedReceiptVersion
from dtp.identity._ed25519 import verify_memoized
from dtp.ledger._objects import _NORMALIZED, U64_MAX, Sla, is_whole, normalize_id

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "RECEIPT_DOMAIN",
    "RECEIPT_ENCODED_SIZE",
    "RECEIPT_ENCODING_VERSION",
    "RECEIPT_MESSAGE_SIZE",
    "U64_MAX",
    "Receipt",
    "ReceiptScope",
    "fee",
    "object_id_bytes",
    "receipt_message",
]

#: Domain tag at the start of every receipt message (the version is part of it: a
#: receipt of one version can never verify as another's).
RECEIPT_DOMAIN: Final = b"DTP-RECEIPT-V2"
#: Size of :func:`receipt_message`'s output.
RECEIPT_MESSAGE_SIZE: Final = 143
#: Version byte of :meth:`Receipt.encode`: the receipt format, the same number as the
#: domain tag's (docs/escrow.md §6).
RECEIPT_ENCODING_VERSION: Final = 2
_ENCODING: Final = struct.Struct("<B32s32s32sQQQQ64s")
#: Size of :meth:`Receipt.encode`'s output (fits a RECEIPT frame's 1024 bytes).
RECEIPT_ENCODED_SIZE: Final = _ENCODING.size
_MESSAGE: Final = struct.Struct("<15s32s32s32sQQQQ")


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
    if type(value) is int and 0 <= value <= U64_MAX:  # (the common case, no call)
        return
    if not is_whole(value, 0, U64_MAX):
        raise ValueError(f"{name} must be an integer in 0..2**64-1, got {value!r}")


def _check_nonce(value: int) -> None:
    # nonces start at 1: an escrow's latest_nonce is 0 before any claim and a claim
    # needs a nonce above it, so a receipt with nonce 0 could never be claimed
    if type(value) is int and 1 <= value <= U64_MAX:  # (the common case, no call)
        return
    if not is_whole(value, 1, U64_MAX):
        raise ValueError(
            f"nonce must be an integer in 1..2**64-1 (0 is never claimable), got {value!r}"
        )


@dataclass(frozen=True)
class ReceiptScope:
    """What a receipt is bound to (docs/escrow.md §6): the dtp package that runs the
    escrow (its original ID, :attr:`dtp.ledger.interface.Ledger.package_id`), the
    escrow that pays, and the connection it pays for. A receipt signed for one scope
    verifies in no other: not for another escrow, another deployment of the package, or
    another chain (whose escrows and packages have other IDs).

    The three IDs are kept normalized (``0x`` + 64 lowercase hex); a malformed one
    raises :class:`dtp.errors.InvalidObjectId`."""

    package: str
    escrow_id: str
    connection_id: str

    def __post_init__(self) -> None:
        # (a paid connection makes several: an ID normalize_id met before is looked up
        # here, as it would look it up, without the call; a get, as another thread may
        # clear the table meanwhile)
        known = _NORMALIZED
        package, escrow, connection = self.package, self.escrow_id, self.connection_id
        normal = known.get(package) if type(package) is str else None
        package = normalize_id(package, "package ID") if normal is None else normal
        normal = known.get(escrow) if type(escrow) is str else None
        escrow = normalize_id(escrow, "escrow ID") if normal is None else normal
        normal = known.get(connection) if type(connection) is str else None
        connection = normalize_id(connection, "connection ID") if normal is None else normal
        object.__setattr__(self, "package", package)
        object.__setattr__(self, "escrow_id", escrow)
        object.__setattr__(self, "connection_id", connection)

    def raw(self) -> bytes:
        """The 96 bytes the scope takes in a message and an encoding: package, escrow,
        connection (32 raw bytes each)."""
        # (normalized: 64 hex digits each, so one fromhex of the three reads the same)
        return bytes.fromhex(self.package[2:] + self.escrow_id[2:] + self.connection_id[2:])


def receipt_message(
    scope: ReceiptScope,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
) -> bytes:
    """The exact 143 bytes a client signs (docs/escrow.md §6): BCS of the domain tag,
    the scope's package, escrow and connection IDs (32 raw bytes each) and four u64
    little-endian. ``nonce`` is from 1: 0 raises ValueError, as a value out of range."""
    if not isinstance(scope, ReceiptScope):
        raise TypeError(f"scope must be a ReceiptScope, got {type(scope).__name__}")
    for name, value in (
        ("total_bytes", total_bytes),
        ("total_requests", total_requests),
        ("total_amount", total_amount),
    ):
        _check_u64(name, value)
    _check_nonce(nonce)
    domain = bytes([len(RECEIPT_DOMAIN)]) + RECEIPT_DOMAIN
    raw = scope.raw()
    return _MESSAGE.pack(
        domain,
        raw[:32],
        raw[32:64],
        raw[64:],
        total_bytes,
        total_requests,
        total_amount,
        nonce,
    )


@dataclass(frozen=True)
class Receipt:
    """A cumulative receipt for one connection's escrow, signed by its client (raw
    Ed25519)."""

    #: The package, escrow and connection the receipt is bound to.
    scope: ReceiptScope
    total_bytes: int
    total_requests: int
    #: Cumulative MIST; must equal ``fee(sla, total_bytes, total_requests)``.
    total_amount: int
    #: Strictly increasing per connection, from 1.
    nonce: int
    #: 64-byte Ed25519 signature over :meth:`message` (empty until signed).
    signature: bytes = b""

    @property
    def connection_id(self) -> str:
        """The connection (TransportControl) ID, ``0x`` + 64 hex."""
        return self.scope.connection_id

    @property
    def escrow_id(self) -> str:
        """The escrow that pays, ``0x`` + 64 hex."""
        return self.scope.escrow_id

    @property
    def package(self) -> str:
        """The dtp package's original ID, ``0x`` + 64 hex."""
        return self.scope.package

    def message(self) -> bytes:
        """The 143 bytes to sign."""
        return receipt_message(
            self.scope,
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
        """Fixed-size binary form for RECEIPT frames: version (1, = 2) || package (32) ||
        escrow ID (32) || connection ID (32) || total_bytes, total_requests,
        total_amount, nonce (u64 LE each) || signature (64); :data:`RECEIPT_ENCODED_SIZE`
        bytes."""
        if len(self.signature) != 64:
            raise ValueError("only a signed receipt (64-byte signature) can be encoded")
        message = self.message()  # validates the scope and the ranges
        return bytes([RECEIPT_ENCODING_VERSION]) + message[15:] + bytes(self.signature)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Receipt:
        """Inverse of :meth:`encode`. Raises :class:`dtp.errors.UnsupportedReceiptVersion`
        for a receipt of another format version (a peer that speaks version 1, say),
        whatever its size, and :class:`dtp.errors.MalformedReceipt` for bytes that are
        no receipt of this version (wrong size, nonce 0)."""
        raw = bytes(data)
        if raw and raw[0] != RECEIPT_ENCODING_VERSION:
            raise UnsupportedReceiptVersion.of(raw[0], RECEIPT_ENCODING_VERSION)
        if len(raw) != RECEIPT_ENCODED_SIZE:
            raise MalformedReceipt(
                f"An encoded receipt is {RECEIPT_ENCODED_SIZE} bytes, got {len(raw)}."
            )
        _, package, escrow, conn, total_bytes, total_requests, amount, nonce, sig = (
            _ENCODING.unpack(raw)
        )
        if nonce == 0:
            raise MalformedReceipt("A receipt's nonce is from 1; this one has 0.")
        scope = ReceiptScope("0x" + package.hex(), "0x" + escrow.hex(), "0x" + conn.hex())
        return cls(scope, total_bytes, total_requests, amount, nonce, sig)
