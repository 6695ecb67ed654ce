"""Bad arguments to the public messaging API are refused at once with a typed error
(TypeError for a wrong type, ValueError or the module's own error for a bad value),
before anything is sent, queued, registered or paid, and the client, server or node
stays usable: each case below is followed by a normal call on the same object.

What was wrong: ``RpcServer.register`` and ``JsonRpcHandler.register`` took a handler
that is not callable, a name no request can carry, and silently replaced a handler
already registered; ``RpcCall.result(nan)`` waited as if there were no deadline, and a
str timeout failed inside the wait; ``RpcClient(timeout=nan)`` was accepted and every
call failed later; ``Subscription.get(nan)`` and ``wait_for_interest(timeout=nan)``
waited for good; ``JsonRpcClient.call`` sent a request with a method that is not a str
(answered "invalid request"); ``send_sealed`` sent a str body or one over MAX_SEALED
to the recipient and took a recipient host ID that is not a str; ``list_services``
took a bool or negative ``max_events``; a ``DiscoveryGossip`` with ``max_records=0``
failed in its reader thread at the first announcement. Real DTP connections on
127.0.0.1 and a real LocalLedger file."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging._protocol import _check_wait
from dtp.messaging.broadcast import BroadcastStation
from dtp.messaging.discovery import DiscoveryGossip, list_services
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHandler, JsonRpcHttpProxy, serve_jsonrpc
from dtp.messaging.pubsub import PubSubNode
from dtp.messaging.rpc import (
    AsyncRpcClient,
    AsyncRpcServer,
    RequestPayments,
    ResponseFeePolicy,
    RpcClient,
    RpcServer,
)
from dtp.messaging.sealed import MAX_SEALED, SealedInbox, seal, send_sealed
from tests.messaging.radio import CASTERS, FANS, Radio, radio_on_air
from tests.messaging.rpc_world import Served
from tests.messaging.sealed_world import SealedWorld, sealed_world
from tests.support.polling import raised_within
from tests.support.scopes import scope_of

#: Bound on a refusal, which is at once: a NaN deadline taken would wait for good.
PROMPT = 60.0


def _echo(params: Any) -> Any:
    return params


class Rpc:
    """An RpcServer with ``echo`` (and the JSON-RPC service) over a DTP connection."""

    def __init__(self) -> None:
        self.rpc = RpcServer(workers=2)
        self.rpc.register("echo", _echo)
        self.handler = JsonRpcHandler({"add": lambda p: sum(p)})
        serve_jsonrpc(self.rpc, self.handler)
        self.served = Served(self.rpc)
        self.client = self.served.connect(timeout=PROMPT)
        self.sock = self.served.socks[-1]
        self.json = JsonRpcClient(self.client)

    def works(self) -> None:
        assert self.client.call("echo", [1, "a"]) == [1, "a"]
        assert self.json.call("add", [1, 2]) == 3


@pytest.fixture(scope="module")
def rpc() -> Iterator[Rpc]:
    setting = Rpc()
    yield setting
    setting.served.close()


class Foo:
    """Not encodable by msgpack."""


RPC_CASES: list[tuple[str, Callable[[Rpc], Any], type[BaseException]]] = [
    # the blocking client (refused before: kept as they are)
    ("call timeout nan", lambda r: r.client.call("echo", 1, timeout=math.nan), ValueError),
    ("call timeout inf", lambda r: r.client.call("echo", 1, timeout=math.inf), ValueError),
    ("call timeout -1", lambda r: r.client.call("echo", 1, timeout=-1), ValueError),
    ("call timeout str", lambda r: r.client.call("echo", 1, timeout="5"), TypeError),
    ("call timeout bool", lambda r: r.client.call("echo", 1, timeout=True), TypeError),
    ("call method int", lambda r: r.client.call(5, 1), TypeError),
    ("call method empty", lambda r: r.client.call("", 1), ValueError),
    ("call method huge", lambda r: r.client.call("m" * 100_000, 1), ValueError),
    ("call params set", lambda r: r.client.call("echo", {1, 2}), TypeError),
    ("call params object", lambda r: r.client.call("echo", Foo()), TypeError),
    ("notify params set", lambda r: r.client.notify("echo", {1}), TypeError),
    ("notify method int", lambda r: r.client.notify(7), TypeError),
    # RpcCall.result: a NaN wait ignored, a str one failed inside the wait
    ("result nan", lambda r: r.client.start("echo", 1).result(timeout=math.nan), ValueError),
    ("result str", lambda r: r.client.start("echo", 1).result(timeout="1"), TypeError),
    ("result -1", lambda r: r.client.start("echo", 1).result(timeout=-1), ValueError),
    # a client whose every call would fail (on the same stream: nothing was sent)
    ("client timeout nan", lambda r: RpcClient(r.sock, timeout=math.nan), ValueError),
    ("client timeout str", lambda r: RpcClient(r.sock, timeout="9"), TypeError),
    ("client on_notification", lambda r: RpcClient(r.sock, on_notification=3), TypeError),
    # registration: found out at the first call, or silently replacing a handler
    ("register not callable", lambda r: r.rpc.register("x", 5), TypeError),
    ("register duplicate", lambda r: r.rpc.register("echo", lambda p: "replaced"), ValueError),
    ("register name int", lambda r: r.rpc.register(5, _echo), TypeError),
    ("register name empty", lambda r: r.rpc.register("", _echo), ValueError),
    ("register notification dup", lambda r: _register_notification_twice(r.rpc), ValueError),
    # JSON-RPC: sent, then answered "invalid request"; replaced a method
    ("jsonrpc method int", lambda r: r.json.call(5, [1]), TypeError),
    ("jsonrpc params str", lambda r: r.json.call("add", "1,2"), TypeError),
    ("jsonrpc notify method", lambda r: r.json.notify(None), TypeError),  # type: ignore[arg-type]
    ("jsonrpc register dup", lambda r: r.handler.register("add", len), ValueError),
    ("jsonrpc register 5", lambda r: r.handler.register("five", 5), TypeError),
    (
        "jsonrpc proxy timeout nan",
        lambda r: JsonRpcHttpProxy("http://127.0.0.1:9/", timeout=math.nan),
        ValueError,
    ),
]


def _register_notification_twice(rpc: RpcServer) -> None:
    rpc.register("note.once", _echo, notification=True)
    rpc.register("note.once", _echo, notification=True)


@pytest.mark.parametrize(
    ("action", "error"), [c[1:] for c in RPC_CASES], ids=[c[0] for c in RPC_CASES]
)
def test_rpc_bad_arguments_are_refused_and_the_client_goes_on(
    rpc: Rpc, action: Callable[[Rpc], Any], error: type[BaseException]
) -> None:
    raised = raised_within(lambda: action(rpc), PROMPT)
    assert isinstance(raised, error), f"expected {error.__name__}, got {raised!r}"
    rpc.works()


# -- pub/sub ------------------------------------------------------------------------------------

PUBSUB_CASES: list[tuple[str, Callable[[PubSubNode, Any], Any], type[BaseException]]] = [
    ("get nan", lambda n, s: s.get(timeout=math.nan), ValueError),
    ("get -1", lambda n, s: s.get(timeout=-1), ValueError),
    ("get str", lambda n, s: s.get(timeout="1"), TypeError),
    ("interest nan", lambda n, s: n.wait_for_interest("t", timeout=math.nan), ValueError),
    ("interest count str", lambda n, s: n.wait_for_interest("t", "1", 0.1), TypeError),
    ("interest topic int", lambda n, s: n.wait_for_interest(5, timeout=0.1), E.PubSubError),
    ("subscribe int", lambda n, s: n.subscribe(5), E.PubSubError),
    ("subscribe empty", lambda n, s: n.subscribe(""), E.PubSubError),
    ("subscribe huge", lambda n, s: n.subscribe("t" * 10_000), E.PubSubError),
    ("publish str", lambda n, s: n.publish("t", "text"), TypeError),
    ("publish object", lambda n, s: n.publish("t", Foo()), TypeError),
    ("publish hops bool", lambda n, s: n.publish("t", b"x", hops=True), TypeError),
    ("publish too large", lambda n, s: n.publish("t", bytes(300_000)), E.PayloadTooLarge),
    ("attach None", lambda n, s: n.attach(None), TypeError),
    ("attach bytes", lambda n, s: n.attach(b"stream"), TypeError),
]


@pytest.mark.parametrize(
    ("action", "error"), [c[1:] for c in PUBSUB_CASES], ids=[c[0] for c in PUBSUB_CASES]
)
def test_pubsub_bad_arguments_are_refused_and_the_node_goes_on(
    action: Callable[[PubSubNode, Any], Any], error: type[BaseException]
) -> None:
    node = PubSubNode()
    try:
        sub = node.subscribe("t")
        raised = raised_within(lambda: action(node, sub), PROMPT)
        assert isinstance(raised, error), f"expected {error.__name__}, got {raised!r}"
        node.publish("t", b"ok")
        assert sub.get(timeout=PROMPT).data == b"ok"
        assert sub.qsize() == 0  # the refused publish delivered nothing
    finally:
        node.close()


# -- sealed messages ----------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SealedWorld]:
    with sealed_world(tmp_path) as setting:
        yield setting


SEALED_CASES: list[tuple[str, Callable[[bytes, str, RpcClient], Any], type[BaseException]]] = [
    ("body str", lambda m, hb, c: send_sealed("text", recipient_host=hb, client=c), TypeError),
    ("body None", lambda m, hb, c: send_sealed(None, recipient_host=hb, client=c), TypeError),
    (
        "body too large",
        lambda m, hb, c: send_sealed(bytes(MAX_SEALED + 1), recipient_host=hb, client=c),
        E.PayloadTooLarge,
    ),
    ("host int", lambda m, hb, c: send_sealed(m, recipient_host=5, client=c), TypeError),
    ("host empty", lambda m, hb, c: send_sealed(m, recipient_host="", client=c), ValueError),
    (
        "timeout nan",
        lambda m, hb, c: send_sealed(m, recipient_host=hb, client=c, timeout=math.nan),
        ValueError,
    ),
]


@pytest.mark.parametrize(
    ("action", "error"), [c[1:] for c in SEALED_CASES], ids=[c[0] for c in SEALED_CASES]
)
def test_send_sealed_bad_arguments_send_nothing(
    world: SealedWorld,
    action: Callable[[bytes, str, RpcClient], Any],
    error: type[BaseException],
) -> None:
    ledger, _alice, bob, hb = world
    inbox = SealedInbox(bob, hb, ledger)
    received: list[Any] = []
    server = RpcServer(workers=0)
    inbox.register(server, received.append)
    served = Served(server)
    try:
        client = served.connect(timeout=PROMPT)
        good = seal(bob.noise_public, b"hello", recipient_host=hb)
        raised = raised_within(lambda: action(good, hb, client), PROMPT)
        assert isinstance(raised, error), f"expected {error.__name__}, got {raised!r}"
        assert received == []  # nothing reached the recipient
        assert send_sealed(good, recipient_host=hb, client=client) == "direct"
        assert [m.body for m in received] == [b"hello"]
    finally:
        served.close()
        inbox.close()


# -- discovery ----------------------------------------------------------------------------------


def test_discovery_bad_counts_and_timeouts_are_refused(tmp_path: Path) -> None:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    node = PubSubNode()
    try:
        for bad, error in ((True, TypeError), (1.5, TypeError), (-1, ValueError)):
            with pytest.raises(error):
                list_services(ledger, max_events=bad)
            with pytest.raises(error):
                DiscoveryGossip(node, ledger=ledger, max_records=bad)
            with pytest.raises(error):
                DiscoveryGossip(node, ledger=ledger, max_bytes=bad)
        with pytest.raises(ValueError):
            DiscoveryGossip(node, ledger=ledger, max_records=0)
        assert list_services(ledger) == []
        gossip = DiscoveryGossip(node, ledger=ledger)
        try:
            # (inf: OverflowError, as socket.settimeout; it was ValueError)
            for timeout, error in ((math.nan, ValueError), (math.inf, OverflowError)):
                raised = raised_within(lambda t=timeout: gossip.wait_for("0x1", t), PROMPT)
                assert isinstance(raised, error), raised
            raised = raised_within(lambda: gossip.wait_for("0x1", "1"), PROMPT)  # type: ignore[arg-type]
            assert isinstance(raised, TypeError), raised
            assert gossip.wait_for("0x1", 0.01) is None
        finally:
            gossip.close()
    finally:
        node.close()
        ledger.close()


# -- broadcast ----------------------------------------------------------------------------------


@pytest.fixture
def radio(tmp_path: Path) -> Iterator[Radio]:
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    try:
        yield from radio_on_air(ledger)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (True, TypeError),
        (1.5, TypeError),
        ("5", TypeError),
        (-1, ValueError),
        (1 << 64, ValueError),
    ],
)
def test_broadcast_bad_amounts_pay_and_send_nothing(
    radio: Radio, amount: Any, error: type[BaseException]
) -> None:
    # a bool was taken by the ledger's own check as a bad value (InvalidArgument), not
    # as the wrong type it is; now both are refused before the ledger is asked
    station = BroadcastStation(radio.ledger, CASTERS[0], radio.b_id)
    listener = radio.tune_in(station)
    try:
        fan = FANS[1].sui_address
        before = radio.ledger.balance(fan)
        with pytest.raises(error):
            listener.contribute(amount)
        with pytest.raises(error):
            listener.tip(amount, "hi")
        assert radio.ledger.balance(fan) == before
        listener.contribute(10)
        assert radio.ledger.balance(fan) == before - 10
    finally:
        listener.close()
        station.close()


def test_a_bool_timeout_is_refused_after_a_call_with_the_same_value() -> None:
    """The request encoder reuses the last timeout's conversion when the next one is
    equal: True == 1, so after a call with timeout=1 a timeout=True passed unchecked."""
    from dtp.messaging._protocol import RpcProtocol

    protocol = RpcProtocol()
    protocol.begin_request("echo", b"x", 0.0, 1)
    with pytest.raises(TypeError):
        protocol.begin_request("echo", b"x", 0.0, True)
    protocol.begin_request("echo", b"x", 0.0, 1.0)  # an equal float is a timeout


def test_a_method_name_checked_once_does_not_let_another_through() -> None:
    """The request encoder skips the name check for the name it checked last (the same
    object): other names, and a name refused before, are still checked each time."""
    from dtp.messaging._protocol import RpcProtocol

    protocol = RpcProtocol()
    long_ok = "é" * 128  # 256 UTF-8 bytes: past the quick check, within the limit
    too_long = "é" * 129
    for _ in range(2):
        protocol.begin_request(long_ok, None, 0.0, 1.0)
        for bad in (too_long, "", b"echo", None):
            with pytest.raises((TypeError, ValueError)):
                protocol.begin_request(bad, None, 0.0, 1.0)  # type: ignore[arg-type]
        protocol.begin_request("echo", None, 0.0, 1.0)
    timeout = 2.5
    protocol.begin_request("echo", None, 0.0, timeout)
    protocol.begin_request("echo", None, 0.0, timeout)  # the same object: its value kept
    _, frame = protocol.begin_request("echo", None, 0.0, 0.25)
    assert frame.endswith(b"\xcc\xfa\xc0")  # 250 ms on the wire, not 2,500


@pytest.mark.parametrize("bad", [None, "", b"echo"], ids=["None", "empty", "bytes"])
def test_a_fresh_protocol_checks_its_first_method_name(bad: object) -> None:
    """Before any name passed the check there is no last name to match: ``None`` and
    ``""`` are refused as the first name, not framed and sent."""
    from dtp.messaging._protocol import RpcProtocol

    with pytest.raises((TypeError, ValueError)):
        RpcProtocol().begin_request(bad, None, 0.0, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_in_flight": 0}, ValueError),
        ({"max_in_flight": "8"}, TypeError),
        ({"max_in_flight": True}, TypeError),
        ({"max_message_size": -1}, ValueError),
    ],
    ids=["in-flight 0", "in-flight str", "in-flight bool", "message size -1"],
)
def test_rpc_client_limits_are_refused_up_front(
    rpc: Rpc, options: dict[str, Any], error: type[BaseException]
) -> None:
    """RpcClient(max_in_flight=0) was taken and every call then failed with
    LocalProtocolError; a str failed at the first call's comparison."""
    with pytest.raises(error):
        RpcClient(rpc.sock, **options)
    rpc.works()


SERVER_CASES: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "max_pending 0": ({"max_pending": 0}, ValueError),
    "max_pending -1": ({"max_pending": -1}, ValueError),
    "max_pending bool": ({"max_pending": True}, TypeError),
    "max_pending float": ({"max_pending": 8.0}, TypeError),
    "max_pending str": ({"max_pending": "8"}, TypeError),
    "max_message_size 0": ({"max_message_size": 0}, ValueError),
    "max_message_size bool": ({"max_message_size": True}, TypeError),
    "max_message_size str": ({"max_message_size": "65536"}, TypeError),
    "payments int": ({"payments": 5}, TypeError),
    "response_fees object": ({"response_fees": object()}, TypeError),
}


#: The blocking server's own option: the size of its handler pool (0: inline).
WORKER_CASES: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "workers bool": ({"workers": True}, TypeError),
    "workers float": ({"workers": 2.0}, TypeError),
    "workers str": ({"workers": "2"}, TypeError),
    "workers -1": ({"workers": -1}, ValueError),  # (refused before, by the pool: kept)
}


@pytest.mark.parametrize("name", sorted(SERVER_CASES | WORKER_CASES))
def test_rpc_server_refuses_bad_options_when_made(name: str) -> None:
    options, error = (SERVER_CASES | WORKER_CASES)[name]
    threads = set(threading.enumerate())
    with pytest.raises(error, match=next(iter(options))):
        RpcServer(**options)
    assert not set(threading.enumerate()) - threads  # nothing started (others may end)


@pytest.mark.parametrize("name", sorted(SERVER_CASES))
def test_async_rpc_server_refuses_bad_options_when_made(name: str) -> None:
    options, error = SERVER_CASES[name]
    threads = set(threading.enumerate())
    with pytest.raises(error, match=next(iter(options))):
        AsyncRpcServer(**options)
    assert not set(threading.enumerate()) - threads


def test_rpc_server_at_the_lowest_limits_serves(tmp_path: Path) -> None:
    """The smallest values the checks let through serve a real connection: one request
    pending, an inline server, a real fee policy (prepaying optional: served free)."""
    ledger = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=0)
    try:
        policy = ResponseFeePolicy(ledger, HostIdentity.generate(), 10, required=False)
        rpc = RpcServer(workers=0, max_pending=1, payments=None, response_fees=policy)
        rpc.register("echo", _echo)
        served = Served(rpc)
        try:
            client = served.connect(timeout=PROMPT)
            assert client.call("echo", [1, "a"]) == [1, "a"]
            assert client.call("echo", "b") == "b"
        finally:
            served.close()
    finally:
        ledger.close()


def test_async_rpc_server_at_the_lowest_limits_serves() -> None:
    identity = HostIdentity.generate()

    async def main() -> None:
        rpc = AsyncRpcServer(max_pending=1, payments=lambda connection_id: None)
        rpc.register("echo", _echo)
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        try:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            async with AsyncRpcClient(reader, writer, timeout=PROMPT) as client:
                assert await client.call("echo", [1, "a"]) == [1, "a"]
                assert await client.call("echo", "b") == "b"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), PROMPT * 2))


_CID = "0x" + "ab" * 32


_SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=10)


_KEY = bytes(32)


_BAD_PAYMENTS: dict[str, tuple[type[Exception], dict[str, Any]]] = {
    "sla None": (TypeError, {"sla": None}),
    "key short": (TypeError, {"client_public_key": bytes(31)}),
    "key str": (TypeError, {"client_public_key": "00" * 32}),
    "deposited negative": (ValueError, {"deposited": -1}),
    "deposited float": (TypeError, {"deposited": 1.5}),
    "credit negative": (ValueError, {"credit_requests": -1}),
    "credit bool": (TypeError, {"credit_requests": True}),
    "on_receipt not callable": (TypeError, {"on_receipt": 5}),
    "scope a connection id": (TypeError, {"scope": _CID}),
}


@pytest.mark.parametrize("case", list(_BAD_PAYMENTS))
def test_request_payments_refuses_bad_options(case: str) -> None:
    error, change = _BAD_PAYMENTS[case]
    args: dict[str, Any] = {
        "scope": scope_of(_CID),
        "sla": _SLA,
        "client_public_key": _KEY,
        "deposited": 100,
    }
    args.update(change)
    with pytest.raises(error):
        RequestPayments(**args)


def test_request_payments_takes_good_options() -> None:
    payments = RequestPayments(scope_of("0x" + "AB" * 32), _SLA, _KEY, 0, credit_requests=3)
    assert payments.connection_id == _CID  # (as receipts name it)
    assert payments.scope == scope_of(_CID)
    assert payments.credit_requests == 3


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"min_amount": -1}, ValueError),
        ({"min_amount": "5"}, TypeError),
        ({"required": "yes"}, TypeError),
    ],
)
def test_response_fee_policy_refuses_bad_options(
    tmp_path: Any, change: dict[str, Any], error: type[Exception]
) -> None:
    args: dict[str, Any] = {"min_amount": 5}
    args.update(change)
    with LocalLedger(str(tmp_path / "ledger.db")) as ledger, pytest.raises(error):
        ResponseFeePolicy(ledger, HostIdentity.generate(), **args)


WAITS: list[Any] = [
    math.inf,
    -math.inf,
    math.nan,
    -1,
    -0.5,
    threading.TIMEOUT_MAX * 2,
    2**64,
    -(2**64),
    threading.TIMEOUT_MAX,
    0,
    1.5,
]


def _raised(call: Callable[[], object]) -> type[BaseException] | None:
    try:
        call()
    except Exception as exc:
        return type(exc)
    return None


def test_a_messaging_wait_refuses_a_timeout_as_socket_settimeout_does() -> None:
    with socket.socket() as sock:
        expected = {repr(t): _raised(lambda t=t: sock.settimeout(t)) for t in WAITS}
    got = {repr(t): _raised(lambda t=t: _check_wait(t)) for t in WAITS}
    assert got == expected  # (inf and -inf: ValueError before)
    assert expected["inf"] is OverflowError
