"""SuiLedger reading odd or hostile node answers: events of a type this version does not
know (a later package's) are skipped, not a failure of a transaction that succeeded or a
reader stuck at them; objects whose BCS holds a value the typed view has no member for;
aborts located in a package the node names oddly; an answer missing the event a call
reads its result from; table entries and epochs that are not what they claim. Every one
is a typed ChainError, never a KeyError/ValueError/AttributeError traceback. The fakes
stand where the node answers (SuiNode._unary, SuiNode.scan_events).

SuiLedger decoding: a malformed object ID or address in the node's answer is the
node's fault (MalformedResponse naming the field), not the caller's InvalidObjectId."""

from __future__ import annotations

from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.errors import ChainError, FirewallDenied, InvalidArgument, InvalidObjectId
from dtp.identity.keys import HostIdentity
from dtp.ledger.sui import SuiConfig, SuiLedger, event_from_proto, execution_error, parse_executed
from dtp.ledger.sui._client import EventPage, LedgerUnavailable, MalformedResponse, SuiNode
from dtp.ledger.sui._codec import OBJECT_LAYOUTS, BcsDecodeError, decode_object, encode
from dtp.ledger.sui._tx import OwnedRef

PACKAGE = "0x" + "d7" * 32
SIGNER = HostIdentity.from_private_bytes(bytes([0x71]) * 32, bytes([0x71]) * 32)
GAS = OwnedRef("0x" + "9a" * 32, 7, "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi")
OK = sui_prot.ExecutionStatus(success=True)


class FakeNode(SuiNode):
    """A SuiNode whose node answers each unary request with the next canned response."""

    def __init__(self, answers: list[Any], frames: list[tuple[Any, bytes]] | None = None) -> None:
        super().__init__("http://127.0.0.1:9", timeout=5)
        self.answers = list(answers)
        self.frames = list(frames or [])

    async def _unary(self, request: Any) -> Any:
        return self.answers.pop(0)

    def scan_events(self, package: str, after: bytes | None, limit: int) -> EventPage:
        return EventPage(self.frames, self.frames[-1][1] if self.frames else after, None)


def ledger_on(node: FakeNode) -> SuiLedger:
    ledger = SuiLedger(SuiConfig("http://127.0.0.1:9", PACKAGE, timeout=5))
    ledger._node.close()
    ledger._node = node
    return ledger


def dtp_event(module: str, name: str, value: bytes) -> Any:
    return sui_prot.Event(
        sender=SIGNER.sui_address,
        event_type=f"{PACKAGE}::{module}::{name}",
        contents=sui_prot.Bcs(value=value),
        transaction_digest="Digest111",
    )


def test_a_successful_transaction_with_an_unknown_dtp_event_is_not_a_failure() -> None:
    executed = sui_prot.ExecutedTransaction(
        digest="Digest111",
        effects=sui_prot.TransactionEffects(status=OK),
        events=sui_prot.TransactionEvents(
            events=[
                dtp_event("host", "SomethingNewer", b"\x01\x02"),
                dtp_event("newer_module", "Thing", b""),
                dtp_event("host", "HostCreated<u64>", b""),
            ]
        ),
    )
    outcome = parse_executed(executed, [PACKAGE], "host::create")
    assert outcome.digest == "Digest111" and outcome.events == ()


def test_events_read_past_an_unknown_dtp_event() -> None:
    host = "0x" + "a1" * 32
    created = dtp_event("host", "HostCreated", bytes.fromhex(host[2:]) + b"\x00" * 32)
    node = FakeNode(
        [], [(dtp_event("host", "SomethingNewer", b"\x07"), b"\x01"), (created, b"\x02")]
    )
    ledger = ledger_on(node)
    try:
        events, cursor = ledger.events()
    finally:
        ledger.close()
    assert cursor == "02"
    assert [e.name for e in events] == ["HostCreated"]
    assert events[0].cursor == "02"


def test_an_object_value_without_a_typed_member_is_a_decode_error() -> None:
    fields = {
        "id": "0x" + "a1" * 32, "version": 1, "authority": SIGNER.sui_address,
        "noise_static_key": b"\x01" * 32,
        "endpoints": [], "services": {"id": "0x" + "a4" * 32, "size": 0},
        "firewall": {
            "mode": 0, "allow": {"id": "0x" + "a2" * 32, "size": 3},
            "deny": {"id": "0x" + "a3" * 32, "size": 0}, "max_connections_per_client": 0,
            "max_bytes_per_sec": 0, "max_requests_per_sec": 0,
        },
    }  # fmt: skip
    firewall = decode_object("Host", 3, encode(OBJECT_LAYOUTS["Host"], fields)).firewall
    assert (firewall.mode, firewall.allow_count, firewall.deny_count) == (0, 3, 0)
    fields["firewall"]["mode"] = 2  # no FirewallMode has it
    with pytest.raises(BcsDecodeError):
        decode_object("Host", 3, encode(OBJECT_LAYOUTS["Host"], fields))


def test_an_abort_in_a_package_the_node_names_oddly_is_a_move_abort() -> None:
    error = sui_prot.ExecutionError(
        kind=sui_prot.ExecutionErrorExecutionErrorKind.MOVE_ABORT,
        abort=sui_prot.MoveAbort(
            abort_code=8, location=sui_prot.MoveLocation(package="not-an-id", module="coin")
        ),
    )
    exc = execution_error(error, [PACKAGE], "x")
    assert type(exc) is ChainError and exc.name == "MoveAbort" and exc.code == 8
    # ours (8 is host::EFirewallDenied), and ours when the node names no package
    ours = sui_prot.MoveAbort(abort_code=8, location=sui_prot.MoveLocation(package=PACKAGE))
    error = sui_prot.ExecutionError(kind=error.kind, abort=ours)
    assert isinstance(execution_error(error, [PACKAGE], "x"), FirewallDenied)


def test_an_answer_without_the_event_a_call_reads_is_typed() -> None:
    executed = sui_prot.ExecutedTransaction(
        digest="Digest111", effects=sui_prot.TransactionEffects(status=OK)
    )
    node = FakeNode(
        [
            sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=1, reference_gas_price=1000)),
            sui_prot.ListOwnedObjectsResponse(
                objects=[
                    sui_prot.Object(
                        object_id=GAS.object_id,
                        version=GAS.version,
                        digest=GAS.digest,
                        balance=10**12,
                    )
                ]
            ),
            sui_prot.ExecuteTransactionResponse(transaction=executed),
        ]
    )
    ledger = ledger_on(node)
    try:
        with pytest.raises(ChainError, match="HostCreated") as caught:
            ledger.create_host(SIGNER, b"\x01" * 32)
    finally:
        ledger.close()
    assert caught.value.name == "MissingEvent"
    assert isinstance(caught.value, KeyError)  # what TxOutcome.event raised before


@pytest.mark.parametrize(
    "field",
    [
        sui_prot.DynamicField(),
        sui_prot.DynamicField(
            name=sui_prot.Bcs(value=b"\x01"), value=sui_prot.Bcs(value=b"\x05" * 8)
        ),
        sui_prot.DynamicField(
            name=sui_prot.Bcs(value=b"\x01" * 32), value=sui_prot.Bcs(value=b"\x05")
        ),
    ],
)
def test_table_entries_that_are_not_an_address_and_a_u64_are_refused(field: Any) -> None:
    node = FakeNode([sui_prot.ListDynamicFieldsResponse(dynamic_fields=[field])])
    try:
        with pytest.raises(BcsDecodeError):
            node.table_entries("0x" + "ab" * 32)
    finally:
        node.close()


def test_an_epoch_answer_without_the_epoch_is_typed() -> None:
    node = FakeNode([sui_prot.GetEpochResponse()])
    try:
        with pytest.raises(LedgerUnavailable):
            node.epoch_info()
    finally:
        node.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"cursor": 5}, {"cursor": "zz"}, {"limit": "10"}, {"limit": None}, {"filter": "host"}],
)
def test_event_reads_refuse_bad_arguments_typed(kwargs: dict[str, Any]) -> None:
    ledger = ledger_on(FakeNode([], [(dtp_event("host", "SomethingNewer", b""), b"\x01")]))
    try:
        with pytest.raises(InvalidArgument):
            ledger.events(**kwargs)
        with pytest.raises(InvalidArgument):
            cursor, filter_, limit = (kwargs.get(k) for k in ("cursor", "filter", "limit"))
            ledger.wait_events(
                cursor, 0.0, filter_, 1 if limit is None and "limit" not in kwargs else limit
            )
    finally:
        ledger.close()


@pytest.mark.parametrize("timeout", ["1", None, float("nan")])
def test_wait_events_refuses_a_timeout_that_is_not_seconds(timeout: Any) -> None:
    ledger = ledger_on(FakeNode([]))
    try:
        with pytest.raises(InvalidArgument):
            ledger.wait_events(None, timeout)
    finally:
        ledger.close()


def test_checkpoint_timestamps_read_for_events_are_not_all_kept() -> None:
    class Clocked(FakeNode):
        asked = 0

        def checkpoint_timestamp_ms(self, sequence: int) -> int:
            self.asked += 1
            return 1_000 * sequence

    node = Clocked([])
    ledger = ledger_on(node)
    try:
        for sequence in range(5_000):
            # a known event: the timestamp is read for the events returned only
            event = dtp_event("host", "HostCreated", b"\xa1" * 32 + b"\x00" * 32)
            event.checkpoint = sequence
            node.frames = [(event, sequence.to_bytes(4, "big"))]
            ledger.events()
        assert node.asked == 5_000
        assert len(ledger._checkpoint_ms) <= 1024
        # the latest one is still known
        assert ledger._timestamp(4_999) == 4_999_000 and node.asked == 5_000
    finally:
        ledger.close()


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
