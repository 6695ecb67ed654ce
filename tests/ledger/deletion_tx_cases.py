"""The fixed inputs of the golden deletion transactions
(tests/golden/deletion_transactions.json): each builder of
:mod:`dtp.ledger.sui._tx_deletion`, its arguments and the Move calls it makes, in order."""

from __future__ import annotations

from typing import Any

from tests.ledger.messaging_tx_cases import ESCROW_REF
from tests.ledger.payment_model_cases import LANE, POOL, SALE
from tests.ledger.sui_tx_cases import CAP, CONN, ESCROW

#: builder -> (its arguments, the (module, function) of each of its Move calls)
CASES: dict[str, tuple[tuple[Any, ...], list[tuple[str, str]]]] = {
    "destroy_connection": ((CONN, ESCROW), [("transport_control", "destroy")]),
    "settle_and_destroy": (
        (CONN, ESCROW, CAP),
        [("transport_control", "settle"), ("transport_control", "destroy")],
    ),
    "reimburse_and_destroy": (
        (POOL, LANE, CONN, ESCROW),
        [("sponsor", "reimburse_and_destroy")],
    ),
    "settle_reimburse_and_destroy": (
        (CONN, ESCROW, CAP, POOL, LANE),
        [("transport_control", "settle"), ("sponsor", "reimburse_and_destroy")],
    ),
    "destroy_response_escrow": ((ESCROW_REF,), [("response_escrow", "destroy")]),
    "refund_and_destroy_response_escrow": (
        (ESCROW_REF,),
        [("response_escrow", "refund"), ("response_escrow", "destroy")],
    ),
    "leave_ticket_sale": ((SALE,), [("tickets", "leave")]),
    "destroy_ticket_sale": ((SALE,), [("tickets", "destroy")]),
}
