"""The node stand-in's gRPC-web front (dtp/testing/sui_node/_grpc_web.py) and
``BatchGetObjects``: what Mysten's TypeScript SDK calls (tests/web/test_sui_escrow.py runs
the SDK itself against it). Requests are made here by hand, as the gRPC-web protocol
frames them (binary and base64 text), and the answers read back with pysui's messages."""

from __future__ import annotations

import base64
import http.client
import struct
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pysui.sui.sui_grpc.suimsgs.google.protobuf as pb
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.testing.sui_node import SuiNodeStandIn
from dtp.testing.sui_node._grpc_web import frame

OWNER = "0x" + "11" * 32
MISSING = "0x" + "22" * 32


@pytest.fixture
def node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(grpc_web_port=0) as node:
        yield node


def post(
    node: SuiNodeStandIn,
    path: str,
    body: bytes,
    kind: str = "application/grpc-web+proto",
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(node.grpc_web_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        headers = {"Content-Type": kind, "Origin": "http://page.example"}
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        out.append((flag, body[5 : 5 + length]))
        body = body[5 + length :]
    return out


BATCH = "/sui.rpc.v2.LedgerService/BatchGetObjects"


def test_batch_get_objects_answers_each_object_or_its_error_in_order(
    node: SuiNodeStandIn,
) -> None:
    coin = node.faucet(OWNER, 10**9)
    request = sui_prot.BatchGetObjectsRequest(
        requests=[
            sui_prot.GetObjectRequest(object_id=MISSING),
            sui_prot.GetObjectRequest(object_id=coin),
        ],
        read_mask=pb.FieldMask(paths=["object_id", "version", "owner"]),
    )
    status, headers, body = post(node, BATCH, frame(bytes(request)))
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    (flag, message), (trailer_flag, trailers) = frames(body)
    assert flag == 0 and trailer_flag == 0x80
    assert b"grpc-status: 0" in trailers
    missing, found = sui_prot.BatchGetObjectsResponse.parse(message).objects
    assert missing.object is None and missing.error is not None
    assert missing.error.code == 5 and MISSING in missing.error.message  # NOT_FOUND
    assert found.object is not None and found.object.object_id == coin
    assert found.object.owner is not None and found.object.owner.address == OWNER
    # the mask holds: no digest, no contents
    assert found.object.digest is None and found.object.contents is None
    # a full node's default mask: object_id, version, digest
    bare = sui_prot.BatchGetObjectsRequest(requests=[sui_prot.GetObjectRequest(object_id=coin)])
    _, _, body = post(node, BATCH, frame(bytes(bare)))
    (only,) = sui_prot.BatchGetObjectsResponse.parse(frames(body)[0][1]).objects
    assert only.object is not None and only.object.digest and only.object.owner is None
    assert node.calls["BatchGetObjects"] == 2


def test_a_malformed_id_fails_the_whole_batch(node: SuiNodeStandIn) -> None:
    request = sui_prot.BatchGetObjectsRequest(
        requests=[sui_prot.GetObjectRequest(object_id="0xnot-hex")]
    )
    status, headers, body = post(node, BATCH, frame(bytes(request)))
    # trailers-only: the status in the headers, no body
    assert status == 200 and body == b""
    assert headers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "object_id" in unquote(headers["grpc-message"])


def test_the_text_form_is_base64_both_ways(node: SuiNodeStandIn) -> None:
    request = sui_prot.GetEpochRequest(read_mask=pb.FieldMask(paths=["reference_gas_price"]))
    status, headers, body = post(
        node,
        "/sui.rpc.v2.LedgerService/GetEpoch",
        base64.b64encode(frame(bytes(request))),
        kind="application/grpc-web-text",
    )
    assert status == 200 and headers["content-type"].startswith("application/grpc-web-text")
    (_, message), (_, trailers) = frames(base64.b64decode(body))
    answer = sui_prot.GetEpochResponse.parse(message)
    assert answer.epoch is not None and answer.epoch.reference_gas_price == 1000
    assert b"grpc-status: 0" in trailers


def test_refusals_and_knobs_come_back_as_grpc_statuses(node: SuiNodeStandIn) -> None:
    # an unknown method, a stream the front does not serve, a bad content type, bad frames
    for path, body, kind, code in [
        ("/sui.rpc.v2.LedgerService/NoSuchCall", frame(b""), "application/grpc-web", "12"),
        ("/sui.rpc.v2.LedgerService/ListEvents", frame(b""), "application/grpc-web", "12"),
        (BATCH, frame(b""), "application/json", "3"),
        (BATCH, b"\x01\x00\x00\x00\x00", "application/grpc-web", "3"),  # compressed
        (BATCH, b"\x00\x00\x00\x00\x09ab", "application/grpc-web", "3"),  # truncated
        (BATCH, b"!!", "application/grpc-web-text", "3"),  # not base64
    ]:
        status, headers, answer = post(node, path, body, kind)
        assert (status, headers["grpc-status"], answer) == (200, code, b""), path
    # the stand-in's knobs apply as over gRPC
    node.refuse_next(1, "GetEpoch")
    _, headers, _ = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert headers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    _, headers, body = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert "grpc-status" not in headers and b"grpc-status: 0" in frames(body)[-1][1]


def test_a_node_gone_away_is_unavailable_there_too(node: SuiNodeStandIn) -> None:
    node.go_away()
    _, headers, _ = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert headers["grpc-status"] == "14"  # UNAVAILABLE
    node.come_back()
    _, headers, body = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert "grpc-status" not in headers and b"grpc-status: 0" in frames(body)[-1][1]


def test_a_browser_preflight_is_allowed(node: SuiNodeStandIn) -> None:
    status, headers, body = post(node, BATCH, b"", method="OPTIONS")
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]
    assert "grpc-status" in headers["access-control-expose-headers"]


def test_without_the_front_there_is_no_url() -> None:
    with SuiNodeStandIn() as node:
        assert node.grpc_web_url is None


# -- SimulateTransaction (dtp/testing/sui_node/_simulate.py) ---------------------------------

SIMULATE = "/sui.rpc.v2.TransactionExecutionService/SimulateTransaction"
_ARG = sui_prot.ArgumentArgumentKind
_INPUT = sui_prot.InputInputKind


def structured(
    node: SuiNodeStandIn, sender: str, *commands: sui_prot.Command, inputs: list[sui_prot.Input]
) -> sui_prot.Transaction:
    """A transaction in the structured form the SDK sends, with no gas data."""
    return sui_prot.Transaction(
        version=1,
        kind=sui_prot.TransactionKind(
            kind=sui_prot.TransactionKindKind.PROGRAMMABLE_TRANSACTION,
            programmable_transaction=sui_prot.ProgrammableTransaction(
                inputs=inputs, commands=list(commands)
            ),
        ),
        sender=sender,
        gas_payment=sui_prot.GasPayment(objects=[], owner=sender),
    )


def create_cap(node: SuiNodeStandIn, sender: str, max_per_epoch: int) -> sui_prot.Transaction:
    return structured(
        node,
        sender,
        sui_prot.Command(
            move_call=sui_prot.MoveCall(
                package=node.package_id,
                module="spending_cap",
                function="create",
                arguments=[sui_prot.Argument(kind=_ARG.INPUT, input=0)],
            )
        ),
        inputs=[sui_prot.Input(kind=_INPUT.PURE, pure=max_per_epoch.to_bytes(8, "little"))],
    )


def simulated(
    node: SuiNodeStandIn, request: sui_prot.SimulateTransactionRequest
) -> sui_prot.SimulateTransactionResponse:
    status, headers, body = post(node, SIMULATE, frame(bytes(request)))
    assert status == 200 and "grpc-status" not in headers, headers
    (_, message), (_, trailers) = frames(body)
    assert b"grpc-status: 0" in trailers
    return sui_prot.SimulateTransactionResponse.parse(message)


def test_simulate_selects_the_gas_and_budgets_what_the_run_used_keeping_nothing(
    node: SuiNodeStandIn,
) -> None:
    small = node.faucet(OWNER, 10**8)
    large = node.faucet(OWNER, 5 * 10**9)
    before = {i: node.state.object(i) for i in (small, large)}
    answer = simulated(
        node,
        sui_prot.SimulateTransactionRequest(
            transaction=create_cap(node, OWNER, 10**6), do_gas_selection=True
        ),
    )
    executed = answer.transaction
    assert executed is not None and executed.transaction is not None
    assert executed.effects is not None and executed.effects.status is not None
    assert executed.effects.status.success, executed.effects.status
    gas = executed.transaction.gas_payment
    assert gas is not None and gas.price == 1000 and gas.owner == OWNER
    # the sender's coins, largest first
    assert [o.object_id for o in gas.objects] == [large, small]
    assert [o.version for o in gas.objects] == [before[large].version, before[small].version]
    used = executed.effects.gas_used
    assert used is not None and used.computation_cost and used.storage_cost
    margin = 1000 * 1000
    # the computation with its margin and the storage before rebates (what execution
    # requires the budget to cover)
    assert gas.budget == used.computation_cost + margin + used.storage_cost
    # the resolved transaction as the SDK reads it back; a created cap in the effects
    assert executed.transaction.sender == OWNER
    kind = executed.transaction.kind
    assert kind is not None and kind.programmable_transaction is not None
    assert kind.programmable_transaction.inputs[0].pure == (10**6).to_bytes(8, "little")
    assert executed.events is not None
    assert executed.events.events[0].event_type.endswith("::spending_cap::SpendingCapCreated")
    assert answer.suggested_gas_price == 1000
    # nothing was kept: the coins as they were, no cap, no gas paid, no transaction
    for object_id, row in before.items():
        assert node.state.object(object_id) == row
    assert node.state.gas_paid(OWNER) == 0
    assert node.state.transaction(executed.effects.transaction_digest or "") is None
    # the same transaction with that budget executes, and uses what was simulated
    # (tests/web/test_sui_escrow.py signs and executes SDK-built ones)


def test_simulate_with_a_read_mask_and_a_given_gas(node: SuiNodeStandIn) -> None:
    coin = node.faucet(OWNER, 10**9)
    row = node.state.object(coin)
    assert row is not None
    tx = create_cap(node, OWNER, 7)
    tx.gas_payment = sui_prot.GasPayment(
        objects=[sui_prot.ObjectReference(object_id=coin, version=row.version, digest=row.digest)],
        owner=OWNER,
        price=1000,
        budget=10**7,
    )
    answer = simulated(
        node,
        sui_prot.SimulateTransactionRequest(
            transaction=tx,
            read_mask=pb.FieldMask(
                paths=["transaction.effects.status", "transaction.transaction.gas_payment"]
            ),
        ),
    )
    executed = answer.transaction
    assert executed is not None and executed.effects is not None
    assert executed.effects.status is not None and executed.effects.status.success
    assert executed.effects.gas_used is None  # (not in the mask)
    assert executed.transaction is not None and executed.transaction.sender is None
    assert executed.transaction.gas_payment is not None
    assert executed.transaction.gas_payment.budget == 10**7  # (given: kept)


def test_a_failing_transaction_simulates_to_its_failed_effects(node: SuiNodeStandIn) -> None:
    node.faucet(OWNER, 10**9)
    tx = structured(
        node,
        OWNER,
        sui_prot.Command(
            split_coins=sui_prot.SplitCoins(
                coin=sui_prot.Argument(kind=_ARG.GAS),
                amounts=[sui_prot.Argument(kind=_ARG.INPUT, input=0)],
            )
        ),
        sui_prot.Command(
            transfer_objects=sui_prot.TransferObjects(
                objects=[sui_prot.Argument(kind=_ARG.RESULT, result=0, subresult=0)],
                address=sui_prot.Argument(kind=_ARG.INPUT, input=1),
            )
        ),
        inputs=[
            sui_prot.Input(kind=_INPUT.PURE, pure=(10**12).to_bytes(8, "little")),
            sui_prot.Input(kind=_INPUT.PURE, pure=bytes.fromhex(OWNER[2:])),
        ],
    )
    answer = simulated(
        node, sui_prot.SimulateTransactionRequest(transaction=tx, do_gas_selection=True)
    )
    executed = answer.transaction
    assert executed is not None and executed.effects is not None
    assert executed.effects.status is not None and not executed.effects.status.success
    assert executed.effects.status.error is not None
    assert node.state.gas_paid(OWNER) == 0


def test_simulate_refuses_what_it_cannot_run(node: SuiNodeStandIn) -> None:
    broke = "0x" + "33" * 32
    checks = sui_prot.SimulateTransactionRequestTransactionChecks
    for request, code in [
        # a sender with no SUI to pay gas with
        (
            sui_prot.SimulateTransactionRequest(
                transaction=create_cap(node, broke, 1), do_gas_selection=True
            ),
            "3",
        ),
        # no gas and no selection asked: MissingGasPayment, as at execution
        (sui_prot.SimulateTransactionRequest(transaction=create_cap(node, OWNER, 1)), "3"),
        # the checks disabled: not modelled
        (
            sui_prot.SimulateTransactionRequest(
                transaction=create_cap(node, OWNER, 1), checks=checks.DISABLED
            ),
            "12",
        ),
        # no transaction
        (sui_prot.SimulateTransactionRequest(), "3"),
    ]:
        _, headers, body = post(node, SIMULATE, frame(bytes(request)))
        assert (headers.get("grpc-status"), body) == (code, b""), unquote(
            headers.get("grpc-message", "")
        )
