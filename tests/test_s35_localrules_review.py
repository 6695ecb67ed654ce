"""Session 35 review of LocalLedger's money rules: bad input to the transaction builder
is refused with a typed error (the rules themselves were compared with move/dtp and
found to match: see the review report)."""

from __future__ import annotations

import pytest

from dtp.chain.local import LocalLedger
from dtp.errors import InvalidArgument

SENDER = "0x" + "11" * 32


@pytest.mark.parametrize("field", ["module", "function"])
def test_a_name_with_a_lone_surrogate_is_invalid_argument(field: str) -> None:
    # such a name has no UTF-8 form: build_tx raised a bare UnicodeEncodeError
    ledger = LocalLedger(":memory:", clock_ms=0)
    names = {"module": "escrow", "function": "top_up", field: "top\udc80up"}
    with pytest.raises(InvalidArgument, match="not valid Unicode"):
        ledger.build_tx(SENDER, names["module"], names["function"], [])
