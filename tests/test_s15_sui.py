"""SuiLedger against a misbehaving node (QA, session 15).

The node here is real gRPC over 127.0.0.1: a grpclib server that answers the
``sui.rpc.v2`` methods SuiNode calls with whatever bytes a test hands it (well-formed
``sui.rpc.v2`` messages with missing or bad fields, bytes that are no protobuf at all,
gRPC error statuses), or a TCP listener that accepts and never answers. Each case must
end in a typed ChainError, promptly, never a traceback of pysui/betterproto or a caller
blocked for ever.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from dtp.chain.objects import Pipe
from dtp.chain.sui import SuiConfig, SuiConfigError, SuiLedger
from dtp.chain.sui_client import LedgerUnavailable, MalformedResponse, SuiNode
from dtp.chain.sui_codec import encode_object
from dtp.chain.sui_tx import OwnedRef
from dtp.errors import (
    ChainError,
    InsufficientFunds,
    InvalidArgument,
    InvalidObjectId,
    InvalidTransaction,
    WrongSigner,
)
from dtp.keys import HostIdentity
from tests.sui_node.server import RawCodec

PACKAGE = "0x" + "d7" * 32
SIGNER = HostIdentity.from_private_bytes(bytes([0x52]) * 32, bytes([0x52]) * 32)
DIGEST = "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi"  # base58 of 32 bytes
#: Long enough that a test finishing means the fix worked, not that a timeout fired.
NODE_TIMEOUT = 120.0
#: "Does not hang" bound for joins (slow, loaded CI machine).
JOIN = 60.0

Answer = Callable[[bytes], bytes]

_METHODS = {
    "LedgerService": ("GetObject", "GetEpoch", "GetCheckpoint"),
    "StateService": ("GetBalance", "ListDynamicFields", "ListOwnedObjects"),
    "TransactionExecutionService": ("ExecuteTransaction",),
}


class _Handlers:
    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"/sui.rpc.v2.{service}/{name}": Handler(
                self._handler(name), Cardinality.UNARY_UNARY, bytes, bytes
            )
            for service, names in _METHODS.items()
            for name in names
        }

    def _handler(self, name: str) -> Callable[[Any], Any]:
        async def handle(stream: Any) -> None:
            request = await stream.recv_message()
            self.calls.append(name)
            answer = self.answers.get(name)
            if answer is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not played here")
            await stream.send_message(answer(request))

        return handle


class GrpcNode:
    """A gRPC server on 127.0.0.1 answering from ``answers`` (method name -> bytes)."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.handlers = _Handlers(answers)
        self.loop = asyncio.new_event_loop()

        async def start() -> Server:
            server = Server([self.handlers], codec=RawCodec())
            await server.start("127.0.0.1", 0)
            return server

        self.server = self.loop.run_until_complete(start())
        self.port = self.server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(JOIN)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(JOIN)
        self.loop.close()


@pytest.fixture
def grpc_node() -> Iterator[Callable[[dict[str, Answer]], GrpcNode]]:
    nodes: list[GrpcNode] = []

    def make(answers: dict[str, Answer]) -> GrpcNode:
        nodes.append(GrpcNode(answers))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def sui_node() -> Iterator[Callable[[str], SuiNode]]:
    made: list[SuiNode] = []

    def make(url: str) -> SuiNode:
        made.append(SuiNode(url, timeout=NODE_TIMEOUT))
        return made[-1]

    yield make
    for node in made:
        node.close()


def _const(message: Any) -> Answer:
    data = bytes(message)
    return lambda _request: data


def _error(status: Status, text: str) -> Answer:
    def answer(_request: bytes) -> bytes:
        raise GRPCError(status, text)

    return answer


# -- transport: close() while a call waits -------------------------------------------------------


def test_close_while_a_call_waits_ends_the_call() -> None:
    """close() used to stop the loop under a pending call: the caller's future was never
    resolved and it waited for ever. Now the call is cancelled and raises."""
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
    """A truncated protobuf used to escape as betterproto's EOFError."""
    node = grpc_node({"GetEpoch": lambda _r: b"\x0a\x05\x08"})
    with pytest.raises(MalformedResponse) as info:
        sui_node(node.url).epoch_info()
    assert isinstance(info.value, ChainError) and "GetEpoch" in str(info.value)


def test_object_without_an_id_is_the_nodes_fault(grpc_node: Any, sui_node: Any) -> None:
    """It used to raise InvalidObjectId, the error of a bad *caller* argument."""
    answer = sui_prot.GetObjectResponse(object=sui_prot.Object(version=3, digest=DIGEST))
    node = grpc_node({"GetObject": _const(answer)})
    with pytest.raises(MalformedResponse) as info:
        sui_node(node.url).get_object("0x5")
    assert not isinstance(info.value, InvalidObjectId)


def test_gas_coin_with_a_bad_digest_is_refused_when_read(grpc_node: Any, sui_node: Any) -> None:
    """It used to be accepted, and failed later in pysui (binascii.Error) while building."""
    coin = sui_prot.Object(object_id="0x5", version=4, digest="not-base58!!", balance=10**9)
    answer = sui_prot.ListOwnedObjectsResponse(objects=[coin])
    node = grpc_node({"ListOwnedObjects": _const(answer)})
    with pytest.raises(MalformedResponse, match="digest"):
        sui_node(node.url).gas_coins(SIGNER.sui_address)


def test_good_gas_coins_still_read(grpc_node: Any, sui_node: Any) -> None:
    coins = [
        sui_prot.Object(object_id="0x5", version=4, digest=DIGEST, balance=10),
        sui_prot.Object(object_id="0x6", version=9, digest=DIGEST, balance=30),
    ]
    node = grpc_node({"ListOwnedObjects": _const(sui_prot.ListOwnedObjectsResponse(objects=coins))})
    got = sui_node(node.url).gas_coins(SIGNER.sui_address)
    assert [(ref.object_id[-1], ref.version, value) for ref, value in got] == [
        ("6", 9, 30),
        ("5", 4, 10),
    ]


def test_owned_pipe_with_a_bad_digest_fails_before_any_transaction(grpc_node: Any) -> None:
    """pipe_send reads the Pipe (owned), then builds: the bad digest used to surface as
    pysui's binascii.Error from inside the builder."""
    pipe = Pipe("0x" + "ab" * 32, 1, "0x" + "cd" * 32, SIGNER.sui_address, ())
    obj = sui_prot.Object(
        object_id=pipe.id,
        version=5,
        digest="0OIl",  # not base58
        owner=sui_prot.Owner(kind=sui_prot.OwnerOwnerKind.ADDRESS, address=SIGNER.sui_address),
        object_type=f"{PACKAGE}::pipe::Pipe",
        contents=sui_prot.Bcs(value=encode_object(pipe)),
    )
    node = grpc_node({"GetObject": _const(sui_prot.GetObjectResponse(object=obj))})
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
    node = grpc_node({"ListDynamicFields": _const(page), "ListOwnedObjects": _const(coins)})
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
    node = grpc_node({"ExecuteTransaction": _error(status, text)})
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
