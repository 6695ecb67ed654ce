"""A refused request costs nothing on the ledger (docs/messaging.md §2.5): what the
provider claims at the end of a connection billed per request is the sum of the prices
of the requests its method rules allowed, to the MIST, and the client gets the rest of
its deposit back. Over real sockets and a LocalLedger file, with the paid servers
(``dtp.socket.serve`` and ``dtp.aio.serve``, ``billing="requests"``) claiming and
settling as each connection ends: five clients whose JSON-RPC calls the rules partly
refuse, a client whose calls they all refuse, a batch with refused entries, a call
metered for less than its price and then paid right, and plain RPC refusals from the
blocking and the asyncio clients. Each case checks conservation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHandler, serve_jsonrpc
from dtp.messaging.method_rules import MethodRule, MethodRules
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcClient, RpcServer
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Meter
from tests.support.paid_top_ups import conserved
from tests.support.paid_twins import ident
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=0, price_per_request=500, min_deposit=1_000)
PORT = 8545
DEPOSIT = 20_000
PROVIDER = ident(0xE1)
ALICE, BOB, CAROL, DAVE, ERIN = (ident(seed) for seed in (0xE2, 0xE3, 0xE4, 0xE5, 0xE6))
PARTNERS = [ALICE.sui_address, DAVE.sui_address]

#: eth_call 1,000 MIST (two requests of the SLA), eth_sendRawTransaction 5,000 for
#: partners only, eth_chainId free, debug_* refused to everyone (priced, so that a
#: client metering by the rules' prices alone would pay for it), anything else refused.
RULES = MethodRules(
    [
        MethodRule("eth_call", price=1_000),
        MethodRule("eth_sendRawTransaction", allow=["@partners"], price=5_000),
        MethodRule("eth_chainId", price=0),
        MethodRule("debug_*", deny=["*"], price=1_000),
    ],
    lists={"partners": PARTNERS},
    default="deny",
)
METHODS: dict[str, Callable[[Any], Any]] = {
    "eth_call": lambda p: {"called": p},
    "eth_sendRawTransaction": lambda p: "0xhash",
    "eth_chainId": lambda p: "0x1",
    "debug_traceCall": lambda p: "secret",
    "net_version": lambda p: "1",
}


class World:
    """A LocalLedger file; the provider's Host with one service on PORT billed per
    request, served by a paid server of ``kind`` (its own ledger connection and receipt
    store), which answers JSON-RPC documents (method ``jsonrpc``) and the same methods
    as plain RPC methods, under RULES; the clients funded."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        self.kind = kind
        self.ledger = LocalLedger(tmp_path / "ledger.db")
        self.host = self.ledger.create_host(PROVIDER, PROVIDER.noise_public)
        self.ledger.add_service(PROVIDER, self.host, PORT, "jsonrpc", SLA)
        for key in (ALICE, BOB, CAROL, DAVE, ERIN):
            self.ledger.faucet(key.sui_address, 100_000)
        self._server_ledger = LocalLedger(tmp_path / "ledger.db")
        paid: dict[str, Any] = {
            "ledger": self._server_ledger,
            "identity": PROVIDER,
            "receipts": tmp_path / "receipts.db",
            "billing": "requests",
        }
        if kind == "blocking":
            rpc: Any = RpcServer(workers=2, rules=RULES)
            self._setup(rpc)
            self.server: Any = dtp.socket.serve(self.host, PORT, rpc, **paid)
            self._rpc = rpc
        else:
            rpc = AsyncRpcServer(rules=RULES)
            self._setup(rpc)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
            self.server = self._on_loop(dtp.aio.serve(self.host, PORT, rpc, **paid))
        self.minted = self.ledger.audit()["minted"]
        self.provider_before = self.ledger.balance(PROVIDER.sui_address)

    @staticmethod
    def _setup(rpc: Any) -> None:
        for name, fn in METHODS.items():
            rpc.register(name, fn)
        serve_jsonrpc(rpc, JsonRpcHandler(dict(METHODS)), rules=RULES)

    def _on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def dialing(self, key: HostIdentity) -> dict[str, Any]:
        """How ``key`` connects (either API): by host ID, paying per request."""
        return {
            "ledger": self.ledger,
            "identity": key,
            "deposit": DEPOSIT,
            "timeout": 10,
            "metering": MeteringConfig(enabled=False),
        }

    def connect(self, key: HostIdentity) -> Client:
        before = self.ledger.balance(key.sui_address)
        sock = dtp.socket.create_connection(f"dtp://{self.host}:{PORT}", **self.dialing(key))
        assert sock.connection_id is not None
        meter = Meter(key, self.ledger.receipt_scope(sock.connection_id), SLA, DEPOSIT)
        return Client(self, key, sock, RpcClient(sock, timeout=10, meter=meter), meter, before)

    def settled(self, connection_id: str) -> bool:
        return wait_for(lambda: any(c == connection_id for c, _ in self.server.settlements), 20)

    @property
    def provider_earned(self) -> int:
        return self.ledger.balance(PROVIDER.sui_address) - self.provider_before

    def conserved(self) -> bool:
        return conserved(self.ledger) and self.ledger.audit()["minted"] == self.minted

    def stop(self) -> None:
        if self.kind == "blocking":
            self.server.close()
            self.server.wait_released(10)
            self._rpc.close()
        else:
            self._loop.call_soon_threadsafe(self.server.close)
            self._on_loop(self.server.wait_released(10))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
        self._server_ledger.close()
        self.ledger.close()


@dataclass
class Client:
    world: World
    key: HostIdentity
    sock: Any
    rpc: RpcClient
    meter: Meter
    balance_before: int

    def json(self, **kw: Any) -> JsonRpcClient:
        return JsonRpcClient(self.rpc, prices=RULES, **kw)

    def end(self) -> int:
        """Close the connection, wait for the server's settlement; what it cost."""
        cid = self.sock.connection_id
        self.rpc.close()
        self.sock.close()
        assert self.world.settled(cid)
        return self.balance_before - self.world.ledger.balance(self.key.sui_address)


@pytest.fixture(params=["blocking", "asyncio"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, request.param)
    try:
        yield w
    finally:
        w.stop()


def _refused(call: Callable[[], Any]) -> None:
    with pytest.raises(E.MethodNotAllowed) as refused:
        call()
    assert refused.value.code == E.METHOD_NOT_ALLOWED


def test_five_clients_pay_for_the_calls_the_rules_allow_and_nothing_else(world: World) -> None:
    """19,000 MIST of allowed calls and 21,000 of refused ones (at the prices a client
    metering by the rules' prices alone would sign for): the provider claims 19,000."""
    calls = {
        ALICE: ["eth_call", "eth_call", "eth_sendRawTransaction", "debug_traceCall"],
        BOB: ["eth_call", "eth_call", "eth_call", "eth_sendRawTransaction"],
        CAROL: ["eth_sendRawTransaction", "debug_traceCall"],
        DAVE: ["eth_sendRawTransaction", "eth_call", "debug_traceCall", "eth_chainId"],
        ERIN: ["eth_call"] * 3
        + ["eth_sendRawTransaction"]
        + ["debug_traceCall", "debug_traceBlock", "debug_x"],
    }
    allowed = {ALICE: 7_000, BOB: 3_000, CAROL: 0, DAVE: 6_000, ERIN: 3_000}
    spent = {}
    for key, methods in calls.items():
        client = world.connect(key)
        jsonrpc = client.json()
        for method in methods:
            if RULES.allowed(method, key.sui_address):
                jsonrpc.call(method, [1])
            else:
                with pytest.raises(E.MethodNotAllowed):
                    jsonrpc.call(method, [1])
        spent[key] = client.end()
    assert spent == allowed
    assert spent[CAROL] == 0  # (only refused calls: nothing)
    assert world.provider_earned == sum(allowed.values()) == 19_000
    assert world.conserved()


def test_a_document_whose_requests_are_all_refused_costs_nothing(world: World) -> None:
    client = world.connect(CAROL)
    lone = {"jsonrpc": "2.0", "method": "debug_traceCall", "id": 1}
    raw = client.rpc.call("jsonrpc", json.dumps(lone).encode(), requests=2)
    assert json.loads(raw)["error"]["code"] == E.METHOD_NOT_ALLOWED
    batch = [
        {"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "id": 2},
        {"jsonrpc": "2.0", "method": "net_version", "id": 3},
    ]
    raw = client.rpc.call("jsonrpc", json.dumps(batch).encode(), requests=11)
    assert [a["error"]["code"] for a in json.loads(raw)] == [E.METHOD_NOT_ALLOWED] * 2
    # the rules say so at the client, which meters nothing for them
    assert client.json().requests_of("debug_traceCall") == 0
    _refused(lambda: client.json().call("eth_sendRawTransaction", ["0x"]))
    assert client.end() == 0
    assert world.provider_earned == 0
    assert world.conserved()


def test_a_batch_pays_only_for_the_requests_the_rules_allow(world: World) -> None:
    client = world.connect(BOB)
    answers = client.json().batch(
        [
            ("eth_call", [1]),
            ("eth_sendRawTransaction", ["0x"]),  # (partners only)
            ("eth_call", [2]),
            ("debug_traceCall", []),
            ("eth_chainId", None),
        ]
    )
    assert answers[0] == {"called": [1]} and answers[2] == {"called": [2]}
    assert answers[4] == "0x1"
    for refused in (answers[1], answers[3]):
        assert isinstance(refused, E.MethodNotAllowed)
    assert client.end() == 2_000
    assert world.provider_earned == 2_000
    assert world.conserved()


def test_a_call_metered_for_less_than_its_price_costs_its_price_once(world: World) -> None:
    """One 1,000-MIST call, first metered as one request of 500 (refused -32004, its
    receipt not kept), then metered right: the provider claims 1,000, not 1,500."""
    client = world.connect(ALICE)
    with pytest.raises(E.PaymentRequired) as short:
        JsonRpcClient(client.rpc).call("eth_call", [1])  # (no prices: one request)
    assert short.value.data["requests"] == 2
    assert client.json().call("eth_call", [1]) == {"called": [1]}
    assert client.meter.latest is not None and client.meter.latest.total_amount == 1_000
    assert client.end() == 1_000
    assert world.provider_earned == 1_000
    assert world.conserved()


def test_plain_rpc_refusals_cost_nothing(world: World) -> None:
    client = world.connect(BOB)
    # refused by the rules, metered at the price the client thought (not a partner)
    _refused(lambda: client.rpc.call("eth_sendRawTransaction", [], requests=10))
    with pytest.raises(E.MethodNotFound):
        client.rpc.call("no_such_method", [], requests=1)
    assert client.rpc.call("eth_call", 1, requests=2) == {"called": 1}
    _refused(lambda: client.rpc.call("debug_traceCall", [], requests=2))
    assert client.rpc.call("eth_call", 2, requests=2) == {"called": 2}
    assert client.end() == 2_000
    assert world.provider_earned == 2_000
    assert world.conserved()


def test_calls_in_flight_together_pay_only_for_the_allowed_ones(world: World) -> None:
    """Calls sent before the answers to the earlier ones came (pipelined): a refused
    one's receipt was covered by the next receipts already, and the client's next calls
    spend what it paid for it, signing nothing more until it is spent."""
    client = world.connect(BOB)
    first = client.rpc.start("eth_call", 1, requests=2)
    refused = client.rpc.start("debug_traceCall", [], requests=2)
    second = client.rpc.start("eth_call", 2, requests=2)
    assert first.result() == {"called": 1} and second.result() == {"called": 2}
    with pytest.raises(E.MethodNotAllowed):
        refused.result()
    signed = client.meter.latest
    assert signed is not None and signed.total_requests == 6  # (paid ahead: 2 requests)
    # the next call is paid by the receipt already sent: nothing more is signed for it
    assert client.rpc.call("eth_call", 3, requests=2) == {"called": 3}
    assert client.meter.latest is signed
    assert client.end() == 3_000
    assert world.provider_earned == 3_000
    assert world.conserved()


def test_the_asyncio_client_takes_back_what_a_refused_call_signed(world: World) -> None:
    seen: dict[str, Any] = {}

    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{world.host}:{PORT}", **world.dialing(BOB)
        )
        cid = writer.connection_id
        meter = Meter(BOB, world.ledger.receipt_scope(cid), SLA, DEPOSIT)
        async with AsyncRpcClient(reader, writer, timeout=10, meter=meter) as client:
            with pytest.raises(E.MethodNotAllowed):
                await client.call("eth_sendRawTransaction", [], requests=10)
            with pytest.raises(E.PaymentRequired):
                await client.call("eth_call", 1, requests=1)  # (counts as two)
            doc = {"jsonrpc": "2.0", "method": "debug_traceCall", "id": 1}
            raw = await client.call("jsonrpc", json.dumps(doc).encode(), requests=2)
            assert json.loads(raw)["error"]["code"] == E.METHOD_NOT_ALLOWED
            assert await client.call("eth_call", 1, requests=2) == {"called": 1}
        seen["latest"] = meter.latest
        seen["cid"] = cid
        writer.close()
        with contextlib.suppress(DTPError, OSError):
            await asyncio.wait_for(writer.wait_closed(), 10)

    before = world.ledger.balance(BOB.sui_address)
    asyncio.run(main())
    assert seen["latest"] is not None and seen["latest"].total_amount == 1_000
    assert world.settled(seen["cid"])
    assert before - world.ledger.balance(BOB.sui_address) == 1_000
    assert world.provider_earned == 1_000
    assert world.conserved()
