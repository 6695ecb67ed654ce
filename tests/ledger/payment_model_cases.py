"""The fixed inputs of the golden payment-model transactions
(tests/golden/economics_transactions.json): the object references and each builder's
arguments with the inputs it must produce (CASES)."""

from __future__ import annotations

from typing import Any

from dtp.identity.keys import HostIdentity
from dtp.ledger.sui._tx import CLOCK_ID, SharedRef

# the connection's objects are those of the transport's golden transactions
from tests.ledger.sui_tx_cases import CAP, CONN, ESCROW, HOST, PIPE, SENDER


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT, OTHER = ident(0x33), ident(0x11), ident(0x44)
OFFER = SharedRef("0x" + "b1" * 32, 31)
SUB = SharedRef("0x" + "b2" * 32, 32)
POOL = SharedRef("0x" + "b3" * 32, 33)
SALE = SharedRef("0x" + "b4" * 32, 34)
TERMS = SharedRef("0x" + "b5" * 32, 35)
RECORD = SharedRef("0x" + "b6" * 32, 36)
LANE = SharedRef("0x" + "b7" * 32, 33)
S, OWN = "shared", "owned"
KEY = SENDER.ed25519_public
#: name -> (builder args, the Move call's argument kinds, {shared object: mutable}).
CASES: dict[str, tuple[tuple[Any, ...], list[str], dict[str, bool]]] = {
    "create_subscription_offer": (
        (HOST, 7, 100, 2),
        [S, "pure", "pure", "pure"],
        {HOST.object_id: False},
    ),
    # the Host read-only: the offer sells only while its provider is the host's authority
    "subscribe": (
        (OFFER, HOST, 4, 400),
        [S, S, "pure", "coin"],
        {OFFER.object_id: False, HOST.object_id: False},
    ),
    "renew_subscription": (
        (SUB, OFFER, HOST, 2, 200),
        [S, S, S, "pure", "coin"],
        {SUB.object_id: True, OFFER.object_id: False, HOST.object_id: False},
    ),
    "claim_subscription": ((SUB, OFFER), [S, S], {SUB.object_id: True, OFFER.object_id: False}),
    "withdraw_subscription_offer": (
        (OFFER, HOST),
        [S, S],
        {OFFER.object_id: True, HOST.object_id: False},
    ),
    "refund_subscription": ((SUB, OFFER), [S, S], {SUB.object_id: True}),
    "open_subscribed_connection": (
        (SUB, OFFER, HOST, CAP, 0, KEY),
        [S, S, S, S, "pure", "coin", S],
        # the Host read-only (opens of one host run concurrently), the cap reserved on
        {SUB.object_id: False, HOST.object_id: False, CAP.object_id: True, CLOCK_ID: False},
    ),
    "end_subscribed_connection": (
        (SUB, OFFER, CONN, ESCROW, CAP),
        [S, S, S, S, S, S],
        # the subscription and offer read-only; the connection closed and settled, the
        # deposit released on the cap
        {
            SUB.object_id: False,
            OFFER.object_id: False,
            CONN.object_id: True,
            ESCROW.object_id: True,
            CAP.object_id: True,
            CLOCK_ID: False,
        },
    ),
    "create_sponsor_pool": (
        (HOST, 7, 2_500, 400, 8),
        [S, "pure", "pure", "pure", "pure"],
        {HOST.object_id: False},
    ),
    # the pool read-only (its terms), the lane written (its money and pledges): sponsored
    # opens and reimbursements on different lanes are not ordered with each other
    "fund_sponsor_pool": (
        (POOL, LANE, 5_000),
        [S, S, "coin"],
        {POOL.object_id: False, LANE.object_id: True},
    ),
    "set_sponsor_max_pledge": ((POOL, 300), [S, "pure"], {POOL.object_id: True}),
    "withdraw_sponsor_pool": (
        (POOL, LANE, 70),
        [S, S, "pure"],
        {POOL.object_id: False, LANE.object_id: True},
    ),
    "open_sponsored_connection": (
        (POOL, LANE, HOST, CAP, 1_000, KEY),
        [S, S, S, S, "pure", "coin", S],
        {POOL.object_id: False, LANE.object_id: True, HOST.object_id: False, CAP.object_id: True},
    ),
    "reimburse": (
        (POOL, LANE, CONN, ESCROW),
        [S, S, S, S],
        {
            POOL.object_id: False,
            LANE.object_id: True,
            CONN.object_id: False,
            ESCROW.object_id: False,
        },
    ),
    "create_ticket_sale": (("launch", 50, 3, 0, 10_000), ["pure"] * 5 + [S], {CLOCK_ID: False}),
    "buy_tickets": ((SALE, 2, 100), [S, "pure", "coin", S], {SALE.object_id: True}),
    "go_on_air": ((SALE,), [S, S], {SALE.object_id: True}),
    "cancel_ticket_sale": ((SALE,), [S], {SALE.object_id: True}),
    "refund_tickets": ((SALE,), [S, S], {SALE.object_id: True}),
    "create_retention_terms": (
        (HOST, 7, 60_000, 2),
        [S, "pure", "pure", "pure"],
        {HOST.object_id: False},
    ),
    "retire_retention_terms": (
        (TERMS, HOST),
        [S, S],
        {TERMS.object_id: True, HOST.object_id: False},
    ),
    "replace_retention_terms": (
        (TERMS, HOST, 120_000, 3),
        [S, S, "pure", "pure"],
        {TERMS.object_id: True, HOST.object_id: False},
    ),
    "send_retained": (
        (PIPE, CONN, TERMS, 1, b"hello world", 22),
        [OWN, S, S, "pure", "pure", "coin", S],
        {CONN.object_id: False, TERMS.object_id: False},
    ),
    "confirm_consumed": ((RECORD,), [S], {RECORD.object_id: True}),
    "delete_retained": ((RECORD,), [S, S], {RECORD.object_id: True}),
    "create_ticketed_broadcast": (
        (SALE, "launch", 100, 1_000),
        [S, "pure", "pure", "pure", S],
        {SALE.object_id: False, CLOCK_ID: False},
    ),
    "pay": ((OTHER.sui_address, 300, b"tip #1"), ["coin", "pure", "pure"], {}),
}
