"""What a sponsor pool holds, summed over its lanes (docs/escrow.md §14): the figures a
test compares where a pool used to hold its money itself."""

from __future__ import annotations

from typing import Any


def pool_totals(ledger: Any, pool_id: str) -> tuple[int, int]:
    """(funds, reserved) of the pool ``pool_id``: the sums of its lanes'."""
    lanes = ledger.get_sponsor_lanes(pool_id)
    return sum(one.funds for one in lanes), sum(one.reserved for one in lanes)


def pool_available(ledger: Any, pool_id: str) -> int:
    """MIST the pool's lanes hold unpledged, together."""
    funds, reserved = pool_totals(ledger, pool_id)
    return funds - reserved
