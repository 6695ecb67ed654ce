"""SuiNode retries reads that fail transiently.

The node is real over 127.0.0.1: the grpclib server of ``tests/support/grpc_nodes.py``
(``GrpcNode``) answering gRPC statuses as the error tests of
tests/ledger/test_sui_node_faults.py do, its bare HTTP/2 server (``Http2Status``) for an
HTTP 429, and here a TCP proxy that resets connections in front of the grpclib server:
one UNAVAILABLE, reset connection or rate limit must not fail the caller at once."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from dtp.errors import ChainError, ObjectNotFound
from dtp.ledger.sui import SuiConfig, SuiConfigError, SuiLedger
from dtp.ledger.sui import _client as sui_client
from dtp.ledger.sui._client import LedgerUnavailable, MalformedResponse, SuiNode
from tests.ledger.sui_tx_cases import PACKAGE
from tests.support.grpc_nodes import (
    JOIN,
    NODE_TIMEOUT,
    Answer,
    Http2Status,
    constant_answer,
    error_answer,
)
from tests.support.sui_proxies import ResettingProxy

EPOCH = sui_prot.GetEpochResponse(epoch=sui_prot.Epoch(epoch=7, reference_gas_price=750))
LOGGER = "dtp.ledger.sui._client"


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff sleeps of a millisecond: the tests using it are about what is retried."""
    monkeypatch.setattr(sui_client, "_RETRY_DELAY", 0.001)
    monkeypatch.setattr(sui_client, "_RATE_LIMITED_DELAY", 0.001)


def _fails_then(status: Status, text: str, times: int, then: Answer) -> Answer:
    """Raises ``status`` for the first ``times`` requests, then answers as ``then``."""
    left = [times]

    def answer(request: bytes) -> bytes:
        if left[0] > 0:
            left[0] -= 1
            raise GRPCError(status, text)
        return then(request)

    return answer


def _execute(node: SuiNode) -> Any:
    return node.execute(b"\x00" * 8, b"\x00" * 97)


# -- transient failures are retried --------------------------------------------------------------


@pytest.mark.usefixtures("fast_backoff")
def test_a_read_unavailable_twice_then_answered_returns_the_value(
    grpc_node: Any, sui_node: Any
) -> None:
    node = grpc_node(
        {"GetEpoch": _fails_then(Status.UNAVAILABLE, "starting up", 2, constant_answer(EPOCH))}
    )
    assert sui_node(node.url).epoch_info() == (7, 750)
    assert node.handlers.calls == ["GetEpoch"] * 3


@pytest.mark.usefixtures("fast_backoff")
def test_a_rate_limited_read_then_answered_returns_the_value(grpc_node: Any, sui_node: Any) -> None:
    answer = sui_prot.GetBalanceResponse(balance=sui_prot.Balance(balance=5000))
    node = grpc_node(
        {
            "GetBalance": _fails_then(
                Status.RESOURCE_EXHAUSTED, "too many requests", 1, constant_answer(answer)
            )
        }
    )
    assert sui_node(node.url).balance("0x5") == 5000
    assert node.handlers.calls == ["GetBalance"] * 2


@pytest.mark.usefixtures("fast_backoff")
@pytest.mark.parametrize("retries", [None, 4])
def test_a_node_always_unavailable_is_asked_retries_plus_one_times(
    grpc_node: Any, retries: int | None
) -> None:
    """The last error is the one a single attempt gave before (class and message)."""
    node = grpc_node({"GetObject": error_answer(Status.UNAVAILABLE, "node is syncing")})
    kwargs = {} if retries is None else {"retries": retries}
    client = SuiNode(node.url, timeout=NODE_TIMEOUT, **kwargs)
    try:
        with pytest.raises(LedgerUnavailable) as info:
            client.get_object("0x5")
    finally:
        client.close()
    assert str(info.value).startswith(f"Sui node {node.url} is unavailable (GetObject 0x")
    assert "node is syncing" in str(info.value)
    assert node.handlers.calls == ["GetObject"] * ((2 if retries is None else retries) + 1)


@pytest.mark.usefixtures("fast_backoff")
def test_an_http_429_is_retried_then_reported_as_rate_limiting(sui_node: Any) -> None:
    server = Http2Status(429)
    try:
        with pytest.raises(LedgerUnavailable, match="rate limiting"):
            sui_node(server.url).epoch_info()
        assert server.requests == ["/sui.rpc.v2.LedgerService/GetEpoch"] * 3
    finally:
        server.close()


def test_rate_limiting_backs_off_longer_and_the_backoff_is_capped() -> None:
    """Defaults: about 0.2 s then doubling, from 1 s for a rate limit, never over 2 s
    (half of each is random), even after very many retries (no float overflow)."""
    for _ in range(50):
        assert 0.1 <= sui_client._backoff(1, False) <= 0.2
        assert 0.2 <= sui_client._backoff(2, False) <= 0.4
        assert 0.5 <= sui_client._backoff(1, True) <= 1.0
        assert 1.0 <= sui_client._backoff(5000, False) <= 2.0


# -- a reset connection: the retry gets a working one --------------------------------------------


@pytest.mark.usefixtures("fast_backoff")
def test_a_reset_connection_is_retried_on_a_new_one(grpc_node: Any, sui_node: Any) -> None:
    """grpclib's Channel marks a reset connection lost and opens another on the next
    request: the retry reaches the node through the same SuiNode."""
    node = grpc_node({"GetEpoch": constant_answer(EPOCH)})
    proxy = ResettingProxy(node.port, resets=2)
    try:
        client = sui_node(proxy.url)
        assert client.epoch_info() == (7, 750)
        assert proxy.connections == 3
        assert node.handlers.calls == ["GetEpoch"]
        assert client.epoch_info() == (7, 750)  # and the new connection stays usable
        assert proxy.connections == 3
    finally:
        proxy.close()


# -- what is not retried -------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_backoff")
@pytest.mark.parametrize(
    ("answer", "expected", "name"),
    [
        (error_answer(Status.NOT_FOUND, "no such object"), ObjectNotFound, None),
        (
            error_answer(Status.INVALID_ARGUMENT, "invalid read_mask"),
            ChainError,
            "INVALID_ARGUMENT",
        ),
        (error_answer(Status.PERMISSION_DENIED, "no"), ChainError, "PERMISSION_DENIED"),
        (lambda _r: b"\x0a\x05\x08", MalformedResponse, None),  # a truncated protobuf
    ],
)
def test_errors_that_are_not_transient_are_not_retried(
    grpc_node: Any, sui_node: Any, answer: Answer, expected: type, name: str | None
) -> None:
    node = grpc_node({"GetObject": answer})
    with pytest.raises(expected) as info:
        sui_node(node.url).get_object("0x5")
    assert not isinstance(info.value, LedgerUnavailable)
    if name is not None:
        assert info.value.name == name
    assert node.handlers.calls == ["GetObject"]


@pytest.mark.usefixtures("fast_backoff")
def test_a_ledger_unavailable_raised_on_an_answer_is_not_retried(
    grpc_node: Any, sui_node: Any
) -> None:
    """An answer without an epoch is the node's, not the transport's: asked once."""
    node = grpc_node({"GetEpoch": constant_answer(sui_prot.GetEpochResponse())})
    with pytest.raises(LedgerUnavailable, match="without one"):
        sui_node(node.url).epoch_info()
    assert node.handlers.calls == ["GetEpoch"]


@pytest.mark.usefixtures("fast_backoff")
@pytest.mark.parametrize("status", [Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED])
def test_an_execution_is_never_retried(grpc_node: Any, sui_node: Any, status: Status) -> None:
    """It may have run before the answer was lost: sending it again could pay twice."""
    node = grpc_node({"ExecuteTransaction": error_answer(status, "overloaded")})
    with pytest.raises(LedgerUnavailable, match="may still have executed"):
        _execute(sui_node(node.url))
    assert node.handlers.calls == ["ExecuteTransaction"]


@pytest.mark.usefixtures("fast_backoff")
def test_retries_zero_asks_once(grpc_node: Any) -> None:
    node = grpc_node(
        {"GetEpoch": _fails_then(Status.UNAVAILABLE, "busy", 1, constant_answer(EPOCH))}
    )
    client = SuiNode(node.url, timeout=NODE_TIMEOUT, retries=0)
    try:
        with pytest.raises(LedgerUnavailable, match="unavailable"):
            client.epoch_info()
        assert node.handlers.calls == ["GetEpoch"]
        assert client.epoch_info() == (7, 750)  # the node is fine: it was not retried
    finally:
        client.close()


@pytest.mark.parametrize("value", [-1, 1.5, 2.0, "2", None, True])
def test_retries_must_be_a_non_negative_int(value: Any) -> None:
    with pytest.raises(ValueError, match="retries"):
        SuiNode("http://127.0.0.1:9", retries=value)
    assert SuiNode("http://127.0.0.1:9", retries=0).retries == 0
    assert SuiNode("http://127.0.0.1:9").retries == 2


@pytest.mark.usefixtures("fast_backoff")
def test_a_call_that_used_up_its_timeout_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A node that accepts and never answers: the caller's time budget is spent."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    client = SuiNode(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=1.0)
    try:
        with pytest.raises(LedgerUnavailable, match=r"did not answer GetEpoch within 1\.0 s"):
            client.epoch_info()
        assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    finally:
        client.close()
        for conn in accepted:
            conn.close()
        listener.close()


# -- each retry is logged; close() ends a backoff sleep ------------------------------------------


@pytest.mark.usefixtures("fast_backoff")
def test_each_retry_is_logged_at_debug(
    grpc_node: Any, sui_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    node = grpc_node(
        {"GetEpoch": _fails_then(Status.UNAVAILABLE, "busy", 2, constant_answer(EPOCH))}
    )
    sui_node(node.url).epoch_info()
    retries = [r for r in caplog.records if r.name == LOGGER and "retrying" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.DEBUG] * 2
    assert "GetEpoch" in retries[0].getMessage() and "busy" in retries[0].getMessage()


def test_close_during_a_backoff_sleep_ends_the_call(
    grpc_node: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A backoff of 300-600 s: only close() cutting the sleep short lets the call end."""
    monkeypatch.setattr(sui_client, "_RETRY_DELAY", 600.0)
    monkeypatch.setattr(sui_client, "_RETRY_DELAY_CAP", 600.0)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    node = grpc_node({"GetEpoch": error_answer(Status.UNAVAILABLE, "busy")})
    client = SuiNode(node.url, timeout=NODE_TIMEOUT)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.epoch_info()
        except BaseException as exc:  # the test inspects whatever it is
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)  # if it hangs, not the run too
    try:
        caller.start()
        waited = time.monotonic() + JOIN
        while not any("retrying" in r.getMessage() for r in caplog.records):
            assert caller.is_alive(), f"the call ended without a retry: {outcome}"
            assert time.monotonic() < waited, "no retry was logged"
            time.sleep(0.01)
        client.close()  # the call now sleeps before its second attempt
        caller.join(JOIN / 2)
        assert not caller.is_alive(), "the call still sleeps after close()"
        assert len(outcome) == 1 and isinstance(outcome[0], LedgerUnavailable)
        assert "closed" in str(outcome[0])
        assert node.handlers.calls == ["GetEpoch"]
    finally:
        client.close()
        caller.join(JOIN)


def test_sui_config_sets_the_retries_of_its_ledgers_node() -> None:
    """``DTP_SUI_RETRIES`` / ``SuiConfig.retries`` reach the SuiLedger's node (it was
    built with the default whatever the configuration); a bad value is SuiConfigError."""
    env = {"DTP_SUI_RPC": "http://127.0.0.1:9", "DTP_SUI_PACKAGE": PACKAGE}
    assert SuiConfig.from_env(env).retries == 2
    config = SuiConfig.from_env({**env, "DTP_SUI_RETRIES": "0"})
    assert config.retries == 0
    ledger = SuiLedger(config)
    try:
        assert ledger._node.retries == 0
    finally:
        ledger.close()
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(SuiConfigError, match="DTP_SUI_RETRIES"):
            SuiConfig.from_env({**env, "DTP_SUI_RETRIES": bad})
    with pytest.raises(SuiConfigError, match="DTP_SUI_RETRIES"):
        SuiConfig("http://127.0.0.1:9", PACKAGE, retries=True)
