"""SuiLedger decoding: a malformed object ID or address in the node's answer is the
node's fault (MalformedResponse naming the field), not the caller's InvalidObjectId."""

from __future__ import annotations

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.chain.sui import event_from_proto, parse_executed
from dtp.chain.sui_client import MalformedResponse
from dtp.errors import InvalidObjectId
from tests.test_ledger_s12_sui_decoding import OK, PACKAGE, dtp_event

HOST = "0x" + "a1" * 32


@pytest.mark.parametrize("bad", ["not-an-id", "0x" + "zz" * 32, "0x" + "11" * 33])
def test_a_created_object_with_a_malformed_id_is_a_malformed_response(bad: str) -> None:
    executed = sui_prot.ExecutedTransaction(
        digest="Digest111",
        effects=sui_prot.TransactionEffects(
            status=OK,
            changed_objects=[
                sui_prot.ChangedObject(
                    object_id=bad,
                    object_type=f"{PACKAGE}::host::Host",
                    id_operation=sui_prot.ChangedObjectIdOperation.CREATED,
                )
            ],
        ),
    )
    with pytest.raises(MalformedResponse, match="created object ID") as caught:
        parse_executed(executed, [PACKAGE], "host::create")
    assert not isinstance(caught.value, InvalidObjectId)


@pytest.mark.parametrize("bad", ["bogus", "0x" + "zz" * 32])
def test_an_event_with_a_malformed_sender_is_a_malformed_response(bad: str) -> None:
    ev = dtp_event("host", "HostCreated", bytes.fromhex(HOST[2:]) + b"\x00" * 32)
    ev.sender = bad
    with pytest.raises(MalformedResponse, match="event sender address") as caught:
        event_from_proto(ev, [PACKAGE])
    assert not isinstance(caught.value, InvalidObjectId)
    executed = sui_prot.ExecutedTransaction(
        digest="Digest111",
        effects=sui_prot.TransactionEffects(status=OK),
        events=sui_prot.TransactionEvents(events=[ev]),
    )
    with pytest.raises(MalformedResponse, match="event sender address"):
        parse_executed(executed, [PACKAGE], "host::create")


def test_well_formed_ids_still_decode() -> None:
    ev = dtp_event("host", "HostCreated", bytes.fromhex(HOST[2:]) + b"\x00" * 32)
    event = event_from_proto(ev, [PACKAGE])
    assert event is not None and event["host"] == HOST
