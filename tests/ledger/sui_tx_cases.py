"""The fixed inputs of the golden Sui transactions (tests/golden/sui_transactions.json): the
package, the sender and its gas, the object references, and each builder's arguments
with the inputs it must produce (CASES)."""

from __future__ import annotations

import struct
from typing import Any

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.sui._tx import CLOCK_ID, GasData, OwnedRef, SharedRef, TxContext
from dtp.payments.receipts import Receipt, ReceiptScope, fee

PACKAGE = "0x" + "d7" * 32
SENDER = HostIdentity.from_private_bytes(bytes(range(32)), bytes(range(32, 64)))
OTHER = "0x" + "0c" * 32
HOST = SharedRef("0x" + "a1" * 32, 11)
CAP = SharedRef("0x" + "a2" * 32, 12)
CONN = SharedRef("0x" + "a3" * 32, 13)
ESCROW = SharedRef("0x" + "a4" * 32, 13)
BCAST = SharedRef("0x" + "a5" * 32, 14)
PIPE = OwnedRef("0x" + "a6" * 32, 21, "11111111111111111111111111111111")
GAS_COIN = OwnedRef("0x" + "9a" * 32, 7, "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi")
GAS_COIN_2 = OwnedRef("0x" + "9b" * 32, 8, "8qbHbw2BbbTHBW1sbeqakYXVKRQM8Ne7pLK7m6CVfeR")
CTX = TxContext(PACKAGE, SENDER.sui_address, GasData((GAS_COIN, GAS_COIN_2), 1000, 10_000_000))
SLA = Sla(10, 5, 1000)
SCOPE = ReceiptScope(PACKAGE, ESCROW.object_id, CONN.object_id)
RECEIPT = Receipt(SCOPE, 2048, 3, fee(SLA, 2048, 3), 4).sign(SENDER)


def u8(v: int) -> str:
    return struct.pack("<B", v).hex()


def u16(v: int) -> str:
    return struct.pack("<H", v).hex()


def u64(v: int) -> str:
    return struct.pack("<Q", v).hex()


def addr(v: str) -> str:
    return v[2:]


def vec(b: bytes) -> str:
    assert len(b) < 128
    return (bytes([len(b)]) + b).hex()


S, OWN = "shared", "owned"  # object argument kinds
SLA_PURE = [u64(10), u64(5), u64(1000)]
RECEIPT_PURE = [u64(2048), u64(3), u64(RECEIPT.total_amount), u64(4), vec(RECEIPT.signature)]
#: name -> (builder args, expected: target, the last MoveCall's argument kinds, pure values
#: in input order (hex), shared objects {id: mutable}, number of SplitCoins).
CASES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "create_host": (
        (b"\x01" * 32, ["tcp://203.0.113.7:7000", b"udp://x"]),
        {
            "args": ["pure", "pure"],
            "pure": [
                vec(b"\x01" * 32),
                "02" + vec(b"tcp://203.0.113.7:7000") + vec(b"udp://x"),
            ],
        },
    ),
    "set_authority": ((HOST, OTHER), {"args": [S, "pure"], "pure": [addr(OTHER)]}),
    "set_noise_static_key": (
        (HOST, b"\x02" * 32),
        {"args": [S, "pure"], "pure": [vec(b"\x02" * 32)]},
    ),
    "set_endpoints": ((HOST, []), {"args": [S, "pure"], "pure": ["00"]}),
    "set_firewall_mode": ((HOST, 1), {"args": [S, "pure"], "pure": [u8(1)]}),
    "allow": ((HOST, OTHER), {"args": [S, "pure"], "pure": [addr(OTHER)]}),
    "disallow": ((HOST, OTHER), {"args": [S, "pure"], "pure": [addr(OTHER)]}),
    "deny": ((HOST, OTHER), {"args": [S, "pure"], "pure": [addr(OTHER)]}),
    "undeny": ((HOST, OTHER), {"args": [S, "pure"], "pure": [addr(OTHER)]}),
    "set_client_limits": (
        (HOST, 0, 0, 2**64 - 1),
        {"args": [S, "pure", "pure", "pure"], "pure": [u64(0), u64(0), u64(2**64 - 1)]},
    ),
    "add_service": (
        (HOST, 7, "raw", SLA, 3),
        {
            "args": [S, "pure", "pure", "result", "pure"],
            "pure": [u16(7), vec(b"raw"), *SLA_PURE, u64(3)],
            "calls": 2,
        },
    ),
    "update_service": (
        (HOST, 65535, SLA, 0),
        {
            "args": [S, "pure", "result", "pure"],
            "pure": [u16(65535), *SLA_PURE, u64(0)],
            "calls": 2,
        },
    ),
    "remove_service": ((HOST, 7), {"args": [S, "pure"], "pure": [u16(7)]}),
    "create_spending_cap": ((1_000_000,), {"args": ["pure"], "pure": [u64(1_000_000)]}),
    "set_max_per_epoch": ((CAP, 5), {"args": [S, "pure"], "pure": [u64(5)]}),
    "open_connection": (
        (HOST, 7, CAP, 5000, SENDER.ed25519_public),
        {
            "args": [S, "pure", S, "pure", "coin", S],
            "pure": [u16(7), vec(SENDER.ed25519_public), u64(5000)],
            # the Host read-only: opens of one host run concurrently on Sui
            "mutable": {HOST.object_id: False, CAP.object_id: True, CLOCK_ID: False},
            "splits": 1,
        },
    ),
    "open_session_connection": (
        (HOST, 7, CAP, 5000, bytes(range(32))),
        {
            "args": [S, "pure", S, "pure", "coin", S],
            "pure": [u16(7), vec(bytes(range(32))), u64(5000)],
            "mutable": {HOST.object_id: False, CAP.object_id: True, CLOCK_ID: False},
            "splits": 1,
        },
    ),
    "top_up": (
        (ESCROW, CAP, 250),
        {
            "args": [S, S, "coin"],
            "pure": [u64(250)],
            "mutable": {ESCROW.object_id: True, CAP.object_id: True},
            "splits": 1,
        },
    ),
    "claim": (
        (ESCROW, RECEIPT),
        {
            "args": [S, "pure", "pure", "pure", "pure", "pure"],
            "pure": RECEIPT_PURE,
            "mutable": {ESCROW.object_id: True},
        },
    ),
    "close_connection": (
        (CONN,),
        {"args": [S, S], "pure": [], "mutable": {CONN.object_id: True, CLOCK_ID: False}},
    ),
    "finalize": (
        (CONN,),
        {"args": [S, S], "pure": [], "mutable": {CONN.object_id: True, CLOCK_ID: False}},
    ),
    "settle": (
        (CONN, ESCROW, CAP),
        {
            "args": [S, S, S, S],
            "pure": [],
            "mutable": {CONN.object_id: True, ESCROW.object_id: True, CAP.object_id: True},
        },
    ),
    "settle_with_receipt": (
        (CONN, ESCROW, CAP, RECEIPT),
        {
            "args": [S, S, S, "pure", "pure", "pure", "pure", "pure", S],
            "pure": RECEIPT_PURE,
            "mutable": {
                CONN.object_id: True,
                ESCROW.object_id: True,
                CAP.object_id: True,
                CLOCK_ID: False,
            },
        },
    ),
    "create_pipe": (
        (CONN, 2),
        {"args": [S, "pure"], "pure": [u64(2)], "mutable": {CONN.object_id: False}},
    ),
    "pipe_send": (
        (PIPE, 1, b"hello\x00"),
        {"args": [OWN, "pure", "pure"], "pure": [u64(1), vec(b"hello\x00")]},
    ),
    "pipe_sync": ((PIPE, 1, 9), {"args": [OWN, "pure", "pure"], "pure": [u64(1), u64(9)]}),
    "destroy_pipe": ((PIPE,), {"args": [OWN], "pure": []}),
    "create_broadcast": (
        ("news", 100, 60_000),
        {"args": ["pure", "pure", "pure", S], "pure": [vec(b"news"), u64(100), u64(60_000)]},
    ),
    "broadcast_contribute": (
        (BCAST, 300),
        {"args": [S, "coin", S], "pure": [u64(300)], "splits": 1},
    ),
    "broadcast_transmit": (
        (BCAST, b"\x00\x00"),
        {"args": [S, "pure", S], "pure": [vec(b"\x00\x00")]},
    ),
    "broadcast_claim": ((BCAST,), {"args": [S, S], "pure": []}),
    "broadcast_cancel": ((BCAST,), {"args": [S, S], "pure": []}),
    "broadcast_withdraw": ((BCAST,), {"args": [S], "pure": []}),
    "broadcast_leave": ((BCAST,), {"args": [S, S], "pure": []}),
    "broadcast_heartbeat": ((BCAST,), {"args": [S, S], "pure": []}),
}
