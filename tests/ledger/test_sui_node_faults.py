"""SuiLedger against a misbehaving node.

The node here is real gRPC over 127.0.0.1: a grpclib server that answers the
``sui.rpc.v2`` methods SuiNode calls with whatever bytes a test hands it (well-formed
``sui.rpc.v2`` messages with missing or bad fields, bytes that are no protobuf at all,
gRPC error statuses), or a TCP listener that accepts and never answers. Each case must
end in a typed ChainError, promptly, never a traceback of pysui/betterproto or a caller
blocked for ever.

SuiNode's error statuses and the reference gas price.

The node is real over 127.0.0.1: the grpclib server of tests/support/grpc_nodes.py
(``GrpcNode``, its fixtures in tests/ledger/conftest.py) for gRPC statuses and answers,
and the bare HTTP/2 server there (``Http2Status``) for an HTTP status that is not 200 (a
rate-limiting proxy's 429 in front of a node)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest
from grpclib.const import Status

from dtp.errors import (
    ChainError,
    InsufficientFunds,
    InvalidArgument,
    InvalidObjectId,
    InvalidTransaction,
    WrongSigner,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Pipe
from dtp.ledger.sui import SuiConfig, SuiConfigError, SuiLedger
from dtp.ledger.sui._client import LedgerUnavailable, MalformedResponse, SuiNode
from dtp.ledger.sui._codec import encode_object
from dtp.ledger.sui._tx import OwnedRef
from tests.support.grpc_nodes import JOIN, NODE_TIMEOUT, Http2Status, constant_answer, error_answer

PACKAGE = "0x" + "d7" * 32
SIGNER = HostIdentity.from_private_bytes(bytes([0x52]) * 32, bytes([0x52]) * 32)
DIGEST = "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi"  # base58 of 32 bytes


# -- transport: close() while a call waits -------------------------------------------------------


def test_close_while_a_call_waits_ends_the_call() -> None:
    """close() while a call is pending cancels the call, which raises: the caller's
    future is resolved, never left waiting for ever under a stopped loop."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted: list[socket.socket] = []
    connected = threading.Event()

    def accept() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)  # never answered
        connected.set()

    threading.Thread(target=accept, daemon=True).start()
    node = SuiNode(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=NODE_TIMEOUT)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            node.get_object("0x5")
        except BaseException as exc:  # the test inspects whatever it is
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)  # if it hangs, not the run too
    try:
        caller.start()
        assert connected.wait(JOIN)
        node.close()
        caller.join(JOIN)
        assert not caller.is_alive(), "the call still waits after close()"
        assert len(outcome) == 1 and isinstance(outcome[0], LedgerUnavailable)
        assert "closed" in str(outcome[0])
    finally:
        node.close()
        caller.join(JOIN)
        for conn in accepted:
            conn.close()
        listener.close()


# -- answers that are not what was asked ---------------------------------------------------------


def test_undecodable_answer_is_a_typed_error(grpc_node: Any, sui_node: Any) -> None:
    """A truncated protobuf is MalformedResponse, not betterproto's EOFError."""
    node = grpc_node({"GetEpoch": lambda _r: b"\x0a\x05\x08"})
    with pytest.raises(MalformedResponse) as info:
        sui_node(node.url).epoch_info()
    assert isinstance(info.value, ChainError) and "GetEpoch" in str(info.value)


def test_object_without_an_id_is_the_nodes_fault(grpc_node: Any, sui_node: Any) -> None:
    """MalformedResponse, not InvalidObjectId (the error of a bad *caller* argument)."""
    answer = sui_prot.GetObjectResponse(object=sui_prot.Object(version=3, digest=DIGEST))
    node = grpc_node({"GetObject": constant_answer(answer)})
    with pytest.raises(MalformedResponse) as info:
        sui_node(node.url).get_object("0x5")
    assert not isinstance(info.value, InvalidObjectId)


def test_gas_coin_with_a_bad_digest_is_refused_when_read(grpc_node: Any, sui_node: Any) -> None:
    """Refused as the node's fault when read, not later in pysui (binascii.Error)."""
    coin = sui_prot.Object(object_id="0x5", version=4, digest="not-base58!!", balance=10**9)
    answer = sui_prot.ListOwnedObjectsResponse(objects=[coin])
    node = grpc_node({"ListOwnedObjects": constant_answer(answer)})
    with pytest.raises(MalformedResponse, match="digest"):
        sui_node(node.url).gas_coins(SIGNER.sui_address)


def test_good_gas_coins_still_read(grpc_node: Any, sui_node: Any) -> None:
    coins = [
        sui_prot.Object(object_id="0x5", version=4, digest=DIGEST, balance=10),
        sui_prot.Object(object_id="0x6", version=9, digest=DIGEST, balance=30),
    ]
    node = grpc_node(
        {"ListOwnedObjects": constant_answer(sui_prot.ListOwnedObjectsResponse(objects=coins))}
    )
    got = sui_node(node.url).gas_coins(SIGNER.sui_address)
    assert [(ref.object_id[-1], ref.version, value) for ref, value in got] == [
        ("6", 9, 30),
        ("5", 4, 10),
    ]


def test_owned_pipe_with_a_bad_digest_fails_before_any_transaction(grpc_node: Any) -> None:
    """pipe_send reads the Pipe (owned), then builds: the bad digest is refused as it is
    read, not as pysui's binascii.Error from inside the builder."""
    pipe = Pipe("0x" + "ab" * 32, 1, "0x" + "cd" * 32, SIGNER.sui_address, ())
    obj = sui_prot.Object(
        object_id=pipe.id,
        version=5,
        digest="0OIl",  # not base58
        owner=sui_prot.Owner(kind=sui_prot.OwnerOwnerKind.ADDRESS, address=SIGNER.sui_address),
        object_type=f"{PACKAGE}::pipe::Pipe",
        contents=sui_prot.Bcs(value=encode_object(pipe)),
    )
    node = grpc_node({"GetObject": constant_answer(sui_prot.GetObjectResponse(object=obj))})
    ledger = SuiLedger(SuiConfig(node.url, PACKAGE, timeout=NODE_TIMEOUT))
    try:
        assert ledger.get_pipe(pipe.id) == Pipe(pipe.id, 5, pipe.connection, pipe.owner, ())
        with pytest.raises(MalformedResponse, match="digest"):
            ledger.pipe_send(SIGNER, pipe.id, 0, b"x")
        assert "ExecuteTransaction" not in node.handlers.calls
    finally:
        ledger.close()


def test_a_repeated_page_token_is_refused(grpc_node: Any, sui_node: Any) -> None:
    """A node handing out the same page again was asked for it until the call timed out
    (then reported as unreachable), counting its entries again each time."""
    field = sui_prot.DynamicField(
        name=sui_prot.Bcs(value=bytes(32)), value=sui_prot.Bcs(value=(7).to_bytes(8, "little"))
    )
    page = sui_prot.ListDynamicFieldsResponse(dynamic_fields=[field], next_page_token=b"again")
    coin = sui_prot.Object(object_id="0x5", version=4, digest=DIGEST, balance=1)
    coins = sui_prot.ListOwnedObjectsResponse(objects=[coin], next_page_token=b"again")
    node = grpc_node(
        {"ListDynamicFields": constant_answer(page), "ListOwnedObjects": constant_answer(coins)}
    )
    client = sui_node(node.url)
    with pytest.raises(MalformedResponse, match="page token"):
        client.table_entries("0x77")
    with pytest.raises(MalformedResponse, match="page token"):
        client.gas_coins(SIGNER.sui_address)
    assert node.handlers.calls.count("ListDynamicFields") == 2


def test_paged_table_entries_are_joined(grpc_node: Any, sui_node: Any) -> None:
    def field(byte: int, value: int) -> Any:
        return sui_prot.DynamicField(
            name=sui_prot.Bcs(value=bytes([byte]) * 32),
            value=sui_prot.Bcs(value=value.to_bytes(8, "little")),
        )

    pages = [
        sui_prot.ListDynamicFieldsResponse(dynamic_fields=[field(1, 2)], next_page_token=b"p2"),
        sui_prot.ListDynamicFieldsResponse(dynamic_fields=[field(2, 5)]),
    ]
    node = grpc_node({"ListDynamicFields": lambda _r: bytes(pages.pop(0))})
    assert sui_node(node.url).table_entries("0x77") == {
        "0x" + "01" * 32: 2,
        "0x" + "02" * 32: 5,
    }


# -- gRPC statuses to error classes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text", "expected", "name"),
    [
        # sui-types UserInputError::GasBalanceTooLow, as the node words it
        (
            Status.INVALID_ARGUMENT,
            "Error checking transaction input objects: Balance of gas object 19305360 is "
            "lower than the needed amount: 30000000",
            InsufficientFunds,
            "InsufficientCoinBalance",
        ),
        (
            Status.INVALID_ARGUMENT,
            "Transaction was not signed by the correct sender: Object 0x5 is owned by "
            "account address 0x1, but given owner/signer address is 0x2",
            WrongSigner,
            None,
        ),
        (Status.INVALID_ARGUMENT, "Gas budget: 5 is lower than min: 9", InvalidTransaction, None),
        (Status.UNAVAILABLE, "overloaded", LedgerUnavailable, None),
    ],
)
def test_execute_rejections_map_to_their_class(
    grpc_node: Any, sui_node: Any, status: Status, text: str, expected: type, name: str | None
) -> None:
    node = grpc_node({"ExecuteTransaction": error_answer(status, text)})
    with pytest.raises(expected) as info:
        sui_node(node.url).execute(b"\x00" * 8, b"\x00" * 97)
    if name is not None:
        assert info.value.name == name
    if expected is LedgerUnavailable:  # the caller is told not to send it blindly again
        assert "may still have executed" in str(info.value)
    assert node.handlers.calls == ["ExecuteTransaction"]  # asked once, never retried


# -- configuration and builders ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_timeout_must_be_positive_and_finite(value: str) -> None:
    """NaN never fires in asyncio.wait_for and inf waits for ever: a silent node would
    hang every call; these were accepted."""
    env = {"DTP_SUI_RPC": "http://127.0.0.1:9", "DTP_SUI_PACKAGE": PACKAGE}
    with pytest.raises(SuiConfigError, match="DTP_SUI_TIMEOUT"):
        SuiConfig.from_env({**env, "DTP_SUI_TIMEOUT": value})
    with pytest.raises(ValueError):
        SuiNode("http://127.0.0.1:9", timeout=float(value))
    assert SuiConfig.from_env({**env, "DTP_SUI_TIMEOUT": "2.5"}).timeout == 2.5


@pytest.mark.parametrize("digest", ["abc", "", "not-base58!!", None, 5])
def test_owned_ref_with_a_bad_digest_is_invalid_argument(digest: Any) -> None:
    """pysui raised binascii.Error / TypeError / AttributeError for these."""
    with pytest.raises(InvalidArgument, match="digest"):
        OwnedRef("0x5", 1, digest).to_bcs()
    assert OwnedRef("0x5", 1, DIGEST).to_bcs().SequenceNumber == 1


#: One call per read SuiNode makes over a unary gRPC method.
READS: dict[str, Any] = {
    "GetEpoch": lambda node: node.epoch_info(),
    "GetObject": lambda node: node.get_object("0x5"),
    "GetBalance": lambda node: node.balance("0x5"),
    "ListOwnedObjects": lambda node: node.gas_coins("0x5"),
    "ListDynamicFields": lambda node: node.table_entries("0x5"),
    "GetCheckpoint": lambda node: node.checkpoint_timestamp_ms(5),
}


def _execute(node: SuiNode) -> Any:
    return node.execute(b"\x00" * 8, b"\x00" * 97)


# -- rate limiting: gRPC RESOURCE_EXHAUSTED -------------------------------------------------------


@pytest.mark.parametrize("method", sorted(READS))
def test_a_rate_limited_read_is_ledger_unavailable(
    grpc_node: Any, sui_node: Any, method: str
) -> None:
    """It was a plain ChainError named RESOURCE_EXHAUSTED, which no caller treats as the
    passing outage it is (LedgerUnavailable is what ledger_bridge rides out)."""
    node = grpc_node({method: error_answer(Status.RESOURCE_EXHAUSTED, "too many requests")})
    client = sui_node(node.url)
    client.retries = 0  # the error's class here; its retries: tests/ledger/test_sui_node_retries.py
    with pytest.raises(LedgerUnavailable) as info:
        READS[method](client)
    assert info.value.name == "LedgerUnavailable"
    assert "rate limiting" in str(info.value) and method in str(info.value)
    assert node.handlers.calls == [method]


def test_a_rate_limit_without_a_message_is_ledger_unavailable(
    grpc_node: Any, sui_node: Any
) -> None:
    node = grpc_node({"GetEpoch": error_answer(Status.RESOURCE_EXHAUSTED, "")})
    with pytest.raises(LedgerUnavailable, match="rate limiting"):
        sui_node(node.url).epoch_info()


@pytest.mark.parametrize(
    "text", ["too many requests", "Insufficient gas quota: balance of requests exhausted"]
)
def test_a_rate_limited_execution_is_not_sent_again(
    grpc_node: Any, sui_node: Any, text: str
) -> None:
    """A rate-limited ExecuteTransaction may or may not have run: LedgerUnavailable that
    says so, asked once; neither text is read as InsufficientFunds."""
    node = grpc_node({"ExecuteTransaction": error_answer(Status.RESOURCE_EXHAUSTED, text)})
    with pytest.raises(LedgerUnavailable) as info:
        _execute(sui_node(node.url))
    assert not isinstance(info.value, InsufficientFunds)
    assert "rate limiting" in str(info.value)
    assert "may still have executed" in str(info.value)
    assert node.handlers.calls == ["ExecuteTransaction"]


# -- rate limiting: HTTP 429 ---------------------------------------------------------------------


@pytest.fixture
def http_429() -> Any:
    server = Http2Status(429)
    yield server
    server.close()


def test_an_http_429_says_the_node_is_rate_limiting(http_429: Http2Status, sui_node: Any) -> None:
    """grpclib reports an HTTP 429 as UNAVAILABLE "Received :status = '429'": it was a
    LedgerUnavailable that said only "unavailable"."""
    client = sui_node(http_429.url)
    client.retries = 0  # the error's class here; its retries: tests/ledger/test_sui_node_retries.py
    with pytest.raises(LedgerUnavailable, match="rate limiting"):
        client.epoch_info()
    assert http_429.requests == ["/sui.rpc.v2.LedgerService/GetEpoch"]


def test_an_http_429_on_execution_is_sent_once(http_429: Http2Status, sui_node: Any) -> None:
    with pytest.raises(LedgerUnavailable) as info:
        _execute(sui_node(http_429.url))
    assert "rate limiting" in str(info.value) and "may still have executed" in str(info.value)
    assert http_429.requests == ["/sui.rpc.v2.TransactionExecutionService/ExecuteTransaction"]


def test_an_http_503_is_still_unavailable_not_rate_limiting(sui_node: Any) -> None:
    server = Http2Status(503)
    try:
        with pytest.raises(LedgerUnavailable) as info:
            sui_node(server.url).balance("0x5")
        assert "rate limiting" not in str(info.value)
    finally:
        server.close()


# -- other statuses ------------------------------------------------------------------------------


def test_a_read_refused_as_invalid_argument_is_not_an_invalid_transaction(
    grpc_node: Any, sui_node: Any
) -> None:
    """Every INVALID_ARGUMENT was InvalidTransaction ("transaction bytes are malformed"),
    also for a read (a node of another version refusing a field mask path)."""
    node = grpc_node(
        {"GetObject": error_answer(Status.INVALID_ARGUMENT, "invalid read_mask path: contents")}
    )
    with pytest.raises(ChainError) as info:
        sui_node(node.url).get_object("0x5")
    assert not isinstance(info.value, InvalidTransaction | LedgerUnavailable)
    assert info.value.name == "INVALID_ARGUMENT" and "read_mask" in str(info.value)


def test_an_execution_refused_as_invalid_argument_is_still_an_invalid_transaction(
    grpc_node: Any, sui_node: Any
) -> None:
    node = grpc_node({"ExecuteTransaction": error_answer(Status.INVALID_ARGUMENT, "Gas budget: 5")})
    with pytest.raises(InvalidTransaction):
        _execute(sui_node(node.url))


# -- the reference gas price ---------------------------------------------------------------------


def _epoch_answers(first: Any, system_state: Any = None) -> Any:
    """GetEpoch answers: ``first`` for the epoch's fields, ``system_state`` (an answer) for
    a request of ``system_state.reference_gas_price``."""
    plain = bytes(first)
    state = bytes(system_state) if system_state is not None else None

    def answer(request: bytes) -> bytes:
        mask = sui_prot.GetEpochRequest.parse(request).read_mask
        paths = list(mask.paths) if mask is not None else []
        if any(path.startswith("system_state") for path in paths):
            if state is None:
                raise AssertionError(f"system state asked for unexpectedly ({paths})")
            return state
        return plain

    return answer


def _system_price(price: int | None) -> Any:
    return sui_prot.GetEpochResponse(
        epoch=sui_prot.Epoch(system_state=sui_prot.SystemState(reference_gas_price=price))
    )


def test_the_price_comes_from_the_epoch_when_it_is_there(grpc_node: Any, sui_node: Any) -> None:
    first = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7, reference_gas_price=750))
    node = grpc_node({"GetEpoch": _epoch_answers(first)})
    assert sui_node(node.url).epoch_info() == (7, 750)
    assert node.handlers.calls == ["GetEpoch"]


@pytest.mark.parametrize("price", [None, 0])
def test_a_missing_price_is_read_from_the_system_state(
    grpc_node: Any, sui_node: Any, price: int | None
) -> None:
    """A node without its RPC indexes leaves the epoch's reference_gas_price out: it was
    taken as 0, and every transaction priced at 0 failed on the network."""
    first = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7, reference_gas_price=price))
    node = grpc_node({"GetEpoch": _epoch_answers(first, _system_price(1000))})
    assert sui_node(node.url).epoch_info() == (7, 1000)
    assert node.handlers.calls == ["GetEpoch", "GetEpoch"]


@pytest.mark.parametrize(
    "system_state",
    [
        _system_price(None),
        _system_price(0),
        sui_prot.GetEpochResponse(epoch=sui_prot.Epoch()),
        sui_prot.GetEpochResponse(),
    ],
)
def test_no_price_anywhere_is_malformed_response_naming_the_field(
    grpc_node: Any, sui_node: Any, system_state: Any
) -> None:
    first = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7))
    node = grpc_node({"GetEpoch": _epoch_answers(first, system_state)})
    with pytest.raises(MalformedResponse, match="reference_gas_price"):
        sui_node(node.url).epoch_info()


def test_an_epoch_answer_without_the_epoch_number_is_malformed(
    grpc_node: Any, sui_node: Any
) -> None:
    """It was taken as epoch 0 (a subscription read against it looks expired)."""
    first = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(reference_gas_price=750))
    node = grpc_node({"GetEpoch": _epoch_answers(first)})
    with pytest.raises(MalformedResponse, match="epoch"):
        sui_node(node.url).epoch_info()


def test_a_transaction_is_never_sent_with_a_gas_price_of_zero(grpc_node: Any) -> None:
    first = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7))
    node = grpc_node({"GetEpoch": _epoch_answers(first, _system_price(None))})
    ledger = SuiLedger(SuiConfig(node.url, PACKAGE, timeout=NODE_TIMEOUT))
    try:
        with pytest.raises(MalformedResponse, match="reference_gas_price"):
            ledger.create_host(SIGNER, SIGNER.noise_public)
        assert "ExecuteTransaction" not in node.handlers.calls
    finally:
        ledger.close()
