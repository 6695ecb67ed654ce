"""Per-method access and prices (docs/messaging.md §2.5): the rules themselves
(:class:`MethodRules`, sans-I/O), then JSON-RPC and plain RPC behind DTP over real
sockets, paid per request through a LocalLedger file: a method allowed for one client
address and refused for another (the JSON-RPC error -32006, MethodNotAllowed at the
client, nothing charged), methods at different prices billed exactly (the receipts'
totals, then the provider's balance after the claim), a batch with a refused entry,
and a client metering a dear method as one request refused with what it counts as.
The blocking and the asyncio servers both."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import AccessDenied, ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHandler, serve_jsonrpc
from dtp.messaging.method_rules import LedgerList, MethodRule, MethodRules, requests_for
from dtp.messaging.rpc import (
    AsyncRpcClient,
    AsyncRpcServer,
    RpcClient,
    RpcServer,
    ledger_payments,
)
from dtp.payments.receipts import Meter
from tests.messaging.rpc_world import OFF

SLA = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
PORT = 8545
DEPOSIT = 10_000
ALICE_KEY, BOB_KEY = HostIdentity.generate(), HostIdentity.generate()
ALICE, BOB = ALICE_KEY.sui_address, BOB_KEY.sui_address

#: eth_call at the SLA's price, eth_sendRawTransaction at five times it for partners only,
#: debug_* refused to everyone; anything else refused (default "deny").
RULES = MethodRules.from_config(
    {
        "default": "deny",
        "lists": {"partners": [ALICE]},
        "method": [
            {"name": "eth_call"},
            {"name": "eth_sendRawTransaction", "allow": ["@partners"], "price": 125},
            {"name": "eth_chainId", "price": 0},
            {"name": "debug_*", "deny": ["*"]},
        ],
    }
)


# -- the rules ---------------------------------------------------------------------------------


def test_the_first_matching_rule_decides_and_deny_wins() -> None:
    rules = MethodRules(
        [
            MethodRule("eth_get*", allow=[ALICE, BOB], deny=[BOB], price=50),
            MethodRule("eth_*", price=None),
        ],
        default="deny",
    )
    assert rules.check("eth_getBalance", ALICE) == 50
    with pytest.raises(E.MethodNotAllowed) as refused:
        rules.check("eth_getBalance", BOB)
    assert refused.value.code == E.METHOD_NOT_ALLOWED == -32006
    assert refused.value.data == {"method": "eth_getBalance"}
    assert isinstance(refused.value, AccessDenied) and isinstance(refused.value, PermissionError)
    assert rules.check("eth_call", BOB) is None  # (the second rule: the SLA's price)
    assert not rules.allowed("net_version", ALICE)  # (no rule: default deny)
    assert MethodRules().check("anything", None) is None  # (default allow)


def test_an_anonymous_client_matches_only_everyone() -> None:
    rules = MethodRules([MethodRule("a", allow=[ALICE]), MethodRule("b")])
    assert not rules.allowed("a", None)
    assert rules.allowed("b", None)
    # an address in another spelling is the same client
    assert rules.allowed("a", ALICE.upper().replace("0X", "0x"))


def test_named_lists_take_addresses_or_functions() -> None:
    asked: list[str] = []

    def vip(address: str) -> bool:
        asked.append(address)
        return address == BOB

    rules = MethodRules([MethodRule("m", allow=["@vip"])], lists={"vip": vip})
    assert rules.allowed("m", BOB) and not rules.allowed("m", ALICE)
    assert asked == [BOB, ALICE]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"method": [{"name": "m", "alow": ["*"]}]}, "unknown key"),  # a misspelt key
        ({"method": [{"name": "m", "allow": ["@nobody"]}]}, "unknown list"),
        ({"method": [{"name": "m", "allow": ["alice"]}]}, "no Sui address"),
        ({"method": [{"name": "m", "price": -1}]}, "price"),
        ({"method": [{"allow": ["*"]}]}, "name is required"),
        ({"default": "maybe"}, "default"),
        ({"lists": {"x": "host.allow"}}, "needs a ledger"),
        ({"lists": {"x": "somewhere"}}, "host.allow"),
        ({"rules": []}, "unknown key"),
    ],
)
def test_the_config_vocabulary_refuses_mistakes(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MethodRules.from_config(doc)


def test_prices_count_as_requests_of_the_sla() -> None:
    assert requests_for(SLA, None) == 1
    assert requests_for(SLA, 0) == 0
    assert requests_for(SLA, 125) == 5
    with pytest.raises(ValueError, match="multiple"):
        requests_for(SLA, 30)
    with pytest.raises(ValueError, match="multiple"):
        requests_for(Sla(price_per_kib=1, price_per_request=0, min_deposit=0), 10)


def test_host_firewall_lists_are_read_from_the_ledger_and_fail_closed(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.db")
    provider = HostIdentity.generate()
    host = ledger.create_host(provider, provider.noise_public)
    ledger.allow(provider, host, ALICE)
    ledger.deny(provider, host, BOB)
    now = [0.0]
    rules = MethodRules.from_config(
        {
            "lists": {"fw_allow": "host.allow", "fw_deny": "host.deny"},
            "method": [{"name": "m", "allow": ["@fw_allow"], "deny": ["@fw_deny"]}],
        },
        ledger=ledger,
        host_id=host,
    )
    for test in rules.lists.values():
        assert isinstance(test, LedgerList)
        test.clock = lambda: now[0]
    assert rules.allowed("m", ALICE) and not rules.allowed("m", BOB)
    ledger.disallow(provider, host, ALICE)
    assert rules.allowed("m", ALICE)  # (the answer kept for ttl seconds)
    now[0] = 5.0
    assert not rules.allowed("m", ALICE)  # (read again)

    class Away:
        def is_allowed(self, host_id: str, client: str) -> bool:
            raise ChainError("the node is down")

        is_denied = is_allowed

    assert not LedgerList(Away(), host, "allow")(ALICE)  # type: ignore[arg-type]
    assert LedgerList(Away(), host, "deny")(ALICE)  # type: ignore[arg-type]


# -- over DTP, paid per request ------------------------------------------------------------------


def _backend() -> JsonRpcHandler:
    return JsonRpcHandler(
        {
            "eth_call": lambda p: {"called": p},
            "eth_sendRawTransaction": lambda p: "0xhash",
            "eth_chainId": lambda p: "0x1",
            "debug_traceCall": lambda p: "secret",
        }
    )


class World:
    """A LocalLedger file, the provider's Host with a JSON-RPC service on PORT, the
    clients funded; a server of either kind on a real socket; clients connecting by
    host ID, paying per request."""

    def __init__(self, tmp_path: Path, kind: str) -> None:
        self.ledger = LocalLedger(tmp_path / "ledger.db")
        self.provider = HostIdentity.generate()
        self.host = self.ledger.create_host(self.provider, self.provider.noise_public)
        self.ledger.add_service(self.provider, self.host, PORT, "jsonrpc", SLA)
        for key in (ALICE_KEY, BOB_KEY):
            self.ledger.faucet(key.sui_address, 100_000)
        self.kind = kind
        self.rpc: Any = None
        self._stop: Any = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def start_blocking(self, rpc: RpcServer) -> None:
        server = dtp.socket.create_server(("127.0.0.1", 0), identity=self.provider)
        thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
        thread.start()
        self.rpc, self.address = rpc, server.address

        def stop() -> None:
            server.close()
            rpc.close()
            thread.join(10)

        self._stop = stop
        self._publish()

    def start_asyncio(self, rpc: AsyncRpcServer) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def main() -> None:
            server = await dtp.aio.start_server(
                rpc.serve_connection, "127.0.0.1", 0, identity=self.provider
            )
            holder["server"] = server
            ready.set()
            await server.wait_closed()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(10)
        self.rpc, self.address = rpc, holder["server"].address

        def stop() -> None:
            loop.call_soon_threadsafe(holder["server"].close)
            thread.join(10)
            loop.close()

        self._stop = stop
        self._publish()

    def _publish(self) -> None:
        self.ledger.set_endpoints(self.provider, self.host, [f"tcp://127.0.0.1:{self.address[1]}"])

    def serve(self, rules: MethodRules | None = None, *, plain: bool = False) -> None:
        payments = ledger_payments(self.ledger)
        if self.kind == "blocking":
            rpc: Any = RpcServer(workers=4, payments=payments, rules=rules if plain else None)
        else:
            rpc = AsyncRpcServer(payments=payments, rules=rules if plain else None)
        if plain:
            for name in ("eth_call", "eth_sendRawTransaction", "eth_chainId", "debug_traceCall"):
                fn = _backend().methods[name]
                rpc.register(name, fn)
        else:
            serve_jsonrpc(rpc, _backend(), rules=rules)
        if self.kind == "blocking":
            self.start_blocking(rpc)
        else:
            self.start_asyncio(rpc)

    def connect(self, key: HostIdentity) -> tuple[RpcClient, Meter, dtp.socket.DTPSocket]:
        sock = dtp.socket.create_connection(
            f"dtp://{self.host}:{PORT}",
            ledger=self.ledger,
            identity=key,
            deposit=DEPOSIT,
            timeout=10,
            metering=OFF,
        )
        assert sock.connection_id is not None
        meter = Meter(
            key, self.ledger.receipt_scope(sock.connection_id), SLA, DEPOSIT, every_requests=1
        )
        return RpcClient(sock, timeout=10, meter=meter), meter, sock

    def claim(self, sock: dtp.socket.DTPSocket, meter: Meter) -> int:
        """Claim the meter's latest receipt: the provider's balance grows by its amount."""
        before = self.ledger.balance(self.provider.sui_address)
        latest = meter.latest
        assert latest is not None and sock.escrow_id is not None
        paid = self.ledger.claim(self.provider, sock.escrow_id, latest)
        assert self.ledger.balance(self.provider.sui_address) - before == paid
        return paid

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
        self.ledger.close()


@pytest.fixture(params=["blocking", "asyncio"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, request.param)
    try:
        yield w
    finally:
        w.stop()


def test_methods_are_allowed_per_client_and_billed_at_their_prices(world: World) -> None:
    world.serve(RULES)
    alice, alice_meter, alice_sock = world.connect(ALICE_KEY)
    bob, bob_meter, bob_sock = world.connect(BOB_KEY)
    try:
        a, b = JsonRpcClient(alice, prices=RULES), JsonRpcClient(bob, prices=RULES)
        assert a.call("eth_call", [1]) == {"called": [1]}
        assert a.call("eth_sendRawTransaction", ["0xf8"]) == "0xhash"
        assert a.call("eth_sendRawTransaction", ["0xf9"]) == "0xhash"
        assert a.call("eth_chainId") == "0x1"  # (free)
        assert b.call("eth_call", [2]) == {"called": [2]}
        # refused: as a typed error at the client, with the JSON-RPC code
        for client, method in ((b, "eth_sendRawTransaction"), (a, "debug_traceCall"), (b, "x")):
            with pytest.raises(E.MethodNotAllowed) as refused:
                client.call(method, [], requests=0)
            assert refused.value.code == -32006
            assert refused.value.data == {"method": method}
        # exactly: 1 + 5 + 5 + 0 requests for alice, 1 for bob (nothing for the refusals)
        assert alice_meter.latest is not None and alice_meter.latest.total_requests == 11
        assert bob_meter.latest is not None and bob_meter.latest.total_requests == 1
        assert world.claim(alice_sock, alice_meter) == 11 * 25
        assert world.claim(bob_sock, bob_meter) == 25
    finally:
        for c, s in ((alice, alice_sock), (bob, bob_sock)):
            c.close()
            s.close()


def test_a_dear_method_metered_as_one_request_is_refused_with_its_count(world: World) -> None:
    world.serve(RULES)
    alice, meter, sock = world.connect(ALICE_KEY)
    try:
        plain = JsonRpcClient(alice)  # (no prices: every call metered as one request)
        with pytest.raises(E.PaymentRequired) as refused:
            plain.call("eth_sendRawTransaction", ["0xf8"])
        # what it counts as, and that it was counted as nothing: its receipt is not
        # kept, and the meter takes it back -- the next call pays for itself alone
        assert refused.value.data == {"requests": 5, "counted": 0}
        assert meter.latest is None and meter.total_requests == 0
        assert plain.call("eth_call", [1]) == {"called": [1]}
        assert meter.latest is not None and meter.latest.total_requests == 1
        assert JsonRpcClient(alice, prices={"eth_call": 25}).call("eth_call", [3]) == {
            "called": [3]
        }
        assert world.claim(sock, meter) == 2 * 25
    finally:
        alice.close()
        sock.close()


def test_a_batch_answers_its_refused_entries_and_pays_for_the_rest(world: World) -> None:
    world.serve(RULES)
    bob, meter, sock = world.connect(BOB_KEY)
    try:
        batch = [
            {"jsonrpc": "2.0", "method": "eth_call", "params": [1], "id": 1},
            {"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "params": ["0x"], "id": 2},
            {"jsonrpc": "2.0", "method": "eth_call", "params": [2], "id": 3},
            {"jsonrpc": "2.0", "method": "debug_traceCall"},  # (a refused notification)
        ]
        raw = bob.call("jsonrpc", json.dumps(batch).encode(), requests=2)
        answers = {a["id"]: a for a in json.loads(raw)}
        assert answers[1]["result"] == {"called": [1]}
        assert answers[3]["result"] == {"called": [2]}
        assert answers[2]["error"] == {
            "code": -32006,
            "message": "Method not allowed",
            "data": {"method": "eth_sendRawTransaction"},
        }
        assert len(answers) == 3
        # a document the rules refuse whole costs nothing, and reaches no backend
        lone = {"jsonrpc": "2.0", "method": "debug_traceCall", "id": 9}
        raw = bob.call("jsonrpc", json.dumps(lone).encode(), requests=0)
        assert json.loads(raw)["error"]["code"] == -32006
        assert meter.latest is not None and meter.latest.total_requests == 2
        assert world.claim(sock, meter) == 50
    finally:
        bob.close()
        sock.close()


def test_plain_rpc_methods_take_the_same_rules(world: World) -> None:
    world.serve(RULES, plain=True)
    alice, alice_meter, alice_sock = world.connect(ALICE_KEY)
    bob, bob_meter, bob_sock = world.connect(BOB_KEY)
    try:
        assert alice.call("eth_sendRawTransaction", [], requests=5) == "0xhash"
        with pytest.raises(E.MethodNotAllowed):
            bob.call("eth_sendRawTransaction", [], requests=0)
        assert bob.call("eth_call", 1) == {"called": 1}
        assert alice_meter.latest is not None and alice_meter.latest.total_requests == 5
        assert bob_meter.latest is not None and bob_meter.latest.total_requests == 1
        assert world.claim(alice_sock, alice_meter) == 125
    finally:
        for c, s in ((alice, alice_sock), (bob, bob_sock)):
            c.close()
            s.close()


def test_an_asyncio_client_meters_by_the_price_too(tmp_path: Path) -> None:
    world = World(tmp_path, "blocking")
    try:
        world.serve(RULES)
        seen: dict[str, Any] = {}

        async def main() -> None:
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{world.host}:{PORT}",
                ledger=world.ledger,
                identity=ALICE_KEY,
                deposit=DEPOSIT,
                metering=OFF,
            )
            cid = writer.connection_id
            assert cid is not None
            meter = Meter(ALICE_KEY, world.ledger.receipt_scope(cid), SLA, DEPOSIT)
            async with AsyncRpcClient(reader, writer, timeout=10, meter=meter) as client:
                doc = {"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "id": 1}
                seen["answer"] = await client.call("jsonrpc", json.dumps(doc).encode(), requests=5)
            seen["total"] = meter.latest.total_requests if meter.latest else None
            writer.close()

        asyncio.run(main())
        assert json.loads(seen["answer"])["result"] == "0xhash"
        assert seen["total"] == 5
    finally:
        world.stop()


def test_the_example_rules_file_loads(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "jsonrpc_rules.toml"
    ledger = LocalLedger(tmp_path / "ledger.db")
    provider = HostIdentity.generate()
    host = ledger.create_host(provider, provider.noise_public)
    rules = MethodRules.load(example, ledger=ledger, host_id=host)
    partner = "0x" + "0" * 59 + "a11ce"
    assert rules.check("eth_sendRawTransaction", partner) == 5_000_000
    assert not rules.allowed("eth_sendRawTransaction", BOB)
    assert rules.check("eth_getBalance", BOB) is None
    carol = HostIdentity.generate().sui_address
    ledger.deny(provider, host, carol)
    assert not rules.allowed("eth_call", carol)  # (the Host's deny list on the ledger)
    assert not rules.allowed("debug_traceCall", partner)
    assert not rules.allowed("net_version", partner)  # (default deny)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[method]]\nname = "m"\nalow = ["*"]\n')
    with pytest.raises(ValueError, match=r"bad\.toml: method\[0\]: unknown key\(s\) alow"):
        MethodRules.load(bad)
    ledger.close()


def test_a_refused_notification_is_dropped(world: World) -> None:
    heard: list[Any] = []
    rules = MethodRules([MethodRule("tick", allow=[ALICE])])
    if world.kind == "blocking":
        rpc: Any = RpcServer(workers=0, rules=rules)
    else:
        rpc = AsyncRpcServer(rules=rules)
    rpc.register("tick", heard.append, notification=True)
    rpc.register("echo", lambda p: p)
    if world.kind == "blocking":
        world.start_blocking(rpc)
    else:
        world.start_asyncio(rpc)
    clients = []
    for key in (BOB_KEY, ALICE_KEY):
        sock = dtp.socket.create_connection(
            world.address, server_key=world.provider.noise_public, identity=key, timeout=10
        )
        client = RpcClient(sock, timeout=10)
        client.notify("tick", key.sui_address)
        assert client.call("echo", 1) == 1  # (read after the notification, in order)
        clients.append((client, sock))
    assert heard == [ALICE]
    for client, sock in clients:
        client.close()
        sock.close()


def test_a_server_without_workers_or_fees_still_applies_the_rules(world: World) -> None:
    """A blocking server with no worker pool and no fees answered plain handlers in
    its inline loop without asking the rules: a denied method was served."""
    rules = MethodRules([MethodRule("secret", allow=[ALICE])])
    if world.kind == "blocking":
        rpc: Any = RpcServer(workers=0, rules=rules)
    else:
        rpc = AsyncRpcServer(rules=rules)
    rpc.register("secret", lambda p: "served")
    if world.kind == "blocking":
        world.start_blocking(rpc)
    else:
        world.start_asyncio(rpc)
    for key, allowed in ((BOB_KEY, False), (ALICE_KEY, True)):
        sock = dtp.socket.create_connection(
            world.address, server_key=world.provider.noise_public, identity=key, timeout=10
        )
        client = RpcClient(sock, timeout=10)
        if allowed:
            assert client.call("secret", None) == "served"
        else:
            with pytest.raises(E.MethodNotAllowed):
                client.call("secret", None)
        client.close()
        sock.close()


def test_what_was_charged_is_what_is_forwarded(world: World) -> None:
    """A named list that changes its answer between the request's pricing and its
    handler (a Host list read anew) does not make a charged request refused."""
    answers = iter([True, False, False])
    rules = MethodRules(
        [MethodRule("eth_call", allow=["@flip"])], lists={"flip": lambda a: next(answers)}
    )
    world.serve(rules)
    alice, meter, sock = world.connect(ALICE_KEY)
    try:
        client = JsonRpcClient(alice)
        assert client.call("eth_call", [1]) == {"called": [1]}  # (priced allowed: served)
        with pytest.raises(E.MethodNotAllowed):
            client.call("eth_call", [2], requests=0)  # (priced refused: not forwarded)
        assert meter.latest is not None and meter.latest.total_requests == 1
    finally:
        alice.close()
        sock.close()


def test_what_was_priced_free_is_not_forwarded_when_the_rules_change_their_mind(
    world: World,
) -> None:
    """A batch entry the rules refused as the batch was priced (so nothing was charged
    for it) stays refused when the list allows it by the time the handler runs: the
    handler forwards what the pricing's verdicts say, handed to it with the request,
    never what the rules answer later (uncharged, it would have been served free)."""
    answers = iter([False, True, True])
    rules = MethodRules(
        [MethodRule("eth_call", allow=["@flip"]), MethodRule("eth_chainId")],
        lists={"flip": lambda a: next(answers)},
    )
    world.serve(rules)
    alice, meter, sock = world.connect(ALICE_KEY)
    try:
        batch = [
            {"jsonrpc": "2.0", "method": "eth_call", "params": [1], "id": 1},
            {"jsonrpc": "2.0", "method": "eth_chainId", "id": 2},
        ]
        raw = alice.call("jsonrpc", json.dumps(batch).encode(), requests=1)
        answers_by_id = {a["id"]: a for a in json.loads(raw)}
        assert answers_by_id[1]["error"]["code"] == -32006
        assert answers_by_id[2]["result"] == "0x1"
        assert meter.latest is not None and meter.latest.total_requests == 1
    finally:
        alice.close()
        sock.close()
