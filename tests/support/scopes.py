"""Receipt scopes (package, escrow, connection: docs/escrow.md §6) in tests that check
receipts without a ledger: a fixed package and, for each connection ID, an escrow ID of
its own, so that the signer's and the checker's scopes agree without either reading one.
Tests on a ledger take the real one: ``ledger.receipt_scope(connection_id)``."""

from __future__ import annotations

import hashlib
import struct

from dtp.identity.keys import HostIdentity
from dtp.ledger.receipt import RECEIPT_DOMAIN, RECEIPT_ENCODING_VERSION, ReceiptScope

#: The package the scopes here name (no ledger's: every LocalLedger file draws its own).
TEST_PACKAGE = "0x" + "d7" * 32


def escrow_of(connection_id: str) -> str:
    """The escrow ID :func:`scope_of` pairs with ``connection_id``."""
    raw = bytes.fromhex(ReceiptScope(TEST_PACKAGE, "0x0", connection_id).connection_id[2:])
    return "0x" + hashlib.blake2b(b"escrow of " + raw, digest_size=32).hexdigest()


def scope_of(
    connection_id: str, *, escrow_id: str | None = None, package: str = TEST_PACKAGE
) -> ReceiptScope:
    """The scope of ``connection_id``'s receipts in a test without a ledger."""
    escrow = escrow_of(connection_id) if escrow_id is None else escrow_id
    return ReceiptScope(package, escrow, connection_id)


def any_receipt_bytes(
    scope: ReceiptScope,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
    signer: HostIdentity,
) -> bytes:
    """An encoded receipt as a client could send it, signed as it says, whatever its
    values (a nonce of 0, which :class:`~dtp.ledger.receipt.Receipt` refuses to sign)."""
    body = scope.raw() + struct.pack("<QQQQ", total_bytes, total_requests, total_amount, nonce)
    message = bytes([len(RECEIPT_DOMAIN)]) + RECEIPT_DOMAIN + body
    return bytes([RECEIPT_ENCODING_VERSION]) + body + signer.sign(message)


def v1_receipt_bytes(
    connection_id: str,
    total_bytes: int,
    total_requests: int,
    total_amount: int,
    nonce: int,
    signer: HostIdentity,
) -> bytes:
    """A version-1 receipt as a peer of the release before format version 2 sends it
    (docs/escrow.md §6): 0x01 || connection || four u64 || the signature over
    ``DTP-RECEIPT-V1`` || connection || the same u64; 129 bytes."""
    cid = ReceiptScope(TEST_PACKAGE, "0x0", connection_id).connection_id
    body = bytes.fromhex(cid[2:]) + struct.pack(
        "<QQQQ", total_bytes, total_requests, total_amount, nonce
    )
    return b"\x01" + body + signer.sign(bytes([14]) + b"DTP-RECEIPT-V1" + body)
