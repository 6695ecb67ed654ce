"""Bad input to dtp.payments.receipts: an object ID with whitespace between its
digits was read as a shorter ID (bytes.fromhex skips whitespace; the chain's parser
refuses it), and a meter past the last receipt nonce (a typed error, not a bare
ValueError)."""

from __future__ import annotations

import pytest

from dtp.errors import InvalidArgument, InvalidObjectId
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla, normalize_id
from dtp.payments.receipts import U64_MAX, Meter, ReceiptScope, object_id_bytes
from tests.support.scopes import scope_of

CID = "0x" + "0" * 58 + "c0ffee"
SLA = Sla(10, 5, 0)


@pytest.mark.parametrize("bad", ["0x  ab", "0x\n\nab", "0x" + "ab" * 15 + "  " + "ab" * 16, "0x٣"])
def test_an_object_id_with_anything_but_hex_digits_is_refused(bad: str) -> None:
    with pytest.raises(InvalidObjectId):
        normalize_id(bad)  # (as the chain's own parser does)
    with pytest.raises(InvalidObjectId):
        object_id_bytes(bad)
    with pytest.raises(InvalidObjectId):
        ReceiptScope("0x1", "0x2", bad)
    with pytest.raises(InvalidArgument, match="ReceiptScope"):
        Meter(HostIdentity.generate(), bad, SLA, 10**6)  # type: ignore[arg-type]


def test_short_and_padded_ids_still_read() -> None:
    assert object_id_bytes(" 0xAB ") == bytes(31) + b"\xab"
    assert object_id_bytes(CID) == bytes.fromhex(CID[2:])


def test_a_meter_past_the_last_nonce_refuses_with_a_dtp_error_and_counts_nothing() -> None:
    meter = Meter(
        HostIdentity.generate(), scope_of(CID), SLA, 10**6, every_bytes=1, start_nonce=U64_MAX
    )
    receipt = meter.record(0, 10)
    assert receipt is not None and receipt.nonce == U64_MAX
    with pytest.raises(InvalidArgument, match="every receipt nonce"):
        meter.record(0, 10)
    assert meter.total_bytes == 10  # (the refused usage is not counted)
