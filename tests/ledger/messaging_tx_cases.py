"""The fixed inputs of the golden messaging transactions
(tests/golden/messaging_transactions.json): the mailbox's host and a response escrow, and
each builder's arguments (SUI_CASES)."""

from __future__ import annotations

from typing import Any

from dtp.ledger.sui._tx import SharedRef
from tests.ledger.sui_tx_cases import SENDER

ESCROW_REF = SharedRef("0x" + "a7" * 32, 15)
HOST_REF = SharedRef("0x" + "a1" * 32, 11)
SUI_CASES: dict[str, tuple[Any, ...]] = {
    "mailbox_send": (HOST_REF, b"\x01\x02sealed"),
    "response_escrow_deposit": (
        "0x" + "0c" * 32,
        b"req-1",
        SENDER.ed25519_public,
        123_456,
        40,
    ),
    "response_escrow_claim": (ESCROW_REF, b"\x09" * 32, b"\x05" * 64),
    "response_escrow_deliver": (ESCROW_REF, b"answer"),
    "response_escrow_refund": (ESCROW_REF,),
}
