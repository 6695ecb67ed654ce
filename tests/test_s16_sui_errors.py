"""SuiNode's error statuses and the reference gas price (QA, session 16).

The node is real over 127.0.0.1: the grpclib server of ``test_s15_sui`` (``GrpcNode``,
imported with its fixtures) for gRPC statuses and answers, and a bare HTTP/2 server here
for an HTTP status that is not 200 (a rate-limiting proxy's 429 in front of a node).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest
from grpclib.const import Status

from dtp.chain.sui import SuiConfig, SuiLedger
from dtp.chain.sui_client import LedgerUnavailable, MalformedResponse, SuiNode
from dtp.errors import ChainError, InsufficientFunds, InvalidTransaction
from tests.test_s15_sui import (
    JOIN,
    NODE_TIMEOUT,
    PACKAGE,
    SIGNER,
    _error,
    grpc_node,
    sui_node,
)

__all__ = ["grpc_node", "sui_node"]  # fixtures, used by name

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
    node = grpc_node({method: _error(Status.RESOURCE_EXHAUSTED, "too many requests")})
    client = sui_node(node.url)
    client.retries = 0  # the error's class here; its retries: test_s17_sui_retries
    with pytest.raises(LedgerUnavailable) as info:
        READS[method](client)
    assert info.value.name == "LedgerUnavailable"
    assert "rate limiting" in str(info.value) and method in str(info.value)
    assert node.handlers.calls == [method]


def test_a_rate_limit_without_a_message_is_ledger_unavailable(
    grpc_node: Any, sui_node: Any
) -> None:
    node = grpc_node({"GetEpoch": _error(Status.RESOURCE_EXHAUSTED, "")})
    with pytest.raises(LedgerUnavailable, match="rate limiting"):
        sui_node(node.url).epoch_info()


@pytest.mark.parametrize(
    "text", ["too many requests", "Insufficient gas quota: balance of requests exhausted"]
)
def test_a_rate_limited_execution_is_not_sent_again(
    grpc_node: Any, sui_node: Any, text: str
) -> None:
    """A rate-limited ExecuteTransaction may or may not have run: LedgerUnavailable that
    says so, asked once. The second text used to be read as InsufficientFunds."""
    node = grpc_node({"ExecuteTransaction": _error(Status.RESOURCE_EXHAUSTED, text)})
    with pytest.raises(LedgerUnavailable) as info:
        _execute(sui_node(node.url))
    assert not isinstance(info.value, InsufficientFunds)
    assert "rate limiting" in str(info.value)
    assert "may still have executed" in str(info.value)
    assert node.handlers.calls == ["ExecuteTransaction"]


# -- rate limiting: HTTP 429 ---------------------------------------------------------------------


class Http2Status:
    """An HTTP/2 (h2c) server on 127.0.0.1 that answers every request with ``status`` and
    no gRPC at all, as a rate-limiting proxy in front of a node does."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        paths: dict[int, str] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {
                            (k.decode() if isinstance(k, bytes) else k): (
                                v.decode() if isinstance(v, bytes) else v
                            )
                            for k, v in event.headers
                        }
                        paths[event.stream_id] = headers.get(":path", "")
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        self.requests.append(paths.get(event.stream_id, ""))
                        conn.send_headers(
                            event.stream_id,
                            [(":status", str(self.status)), ("content-type", "text/plain")],
                            end_stream=True,
                        )
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self.tasks.discard(task)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            # the connections still open end too (3.11's wait_closed does not wait for them)
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(JOIN)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(JOIN)
        self.loop.close()


@pytest.fixture
def http_429() -> Any:
    server = Http2Status(429)
    yield server
    server.close()


def test_an_http_429_says_the_node_is_rate_limiting(http_429: Http2Status, sui_node: Any) -> None:
    """grpclib reports an HTTP 429 as UNAVAILABLE "Received :status = '429'": it was a
    LedgerUnavailable that said only "unavailable"."""
    client = sui_node(http_429.url)
    client.retries = 0  # the error's class here; its retries: test_s17_sui_retries
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
        {"GetObject": _error(Status.INVALID_ARGUMENT, "invalid read_mask path: contents")}
    )
    with pytest.raises(ChainError) as info:
        sui_node(node.url).get_object("0x5")
    assert not isinstance(info.value, InvalidTransaction | LedgerUnavailable)
    assert info.value.name == "INVALID_ARGUMENT" and "read_mask" in str(info.value)


def test_an_execution_refused_as_invalid_argument_is_still_an_invalid_transaction(
    grpc_node: Any, sui_node: Any
) -> None:
    node = grpc_node({"ExecuteTransaction": _error(Status.INVALID_ARGUMENT, "Gas budget: 5")})
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
