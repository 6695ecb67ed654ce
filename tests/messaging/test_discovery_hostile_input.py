"""Discovery and the JSON-RPC bridge under hostile input.

Discovery: ``list_services`` stopped at the first page without a ``ServiceAdded`` (a
SuiLedger page may hold none and not be the last) and answered with the hosts of the
first ``max_events`` events only, without a word; an announcement signed by a host's
former authority, issued a little ahead, shadowed the new authority's for minutes; one
host spelt two ways (``0xAB..``, ``0xab..``) was two cache records; a replayed
announcement cost a ledger look-up each time; the cache was bounded in count only
(about 80 MB of the largest announcements) and read the clock again to evict (a failure
there left the record in, past the bound); msgpack ``true`` passed as the version.

JSON-RPC: a backend's interim answer (``102 Processing``, ``103 Early Hints``) was taken
for the answer, and the real one, left on the kept-alive connection, went to the next
call (each answer then one call late); UTF-16 and UTF-32 documents were read (JSON
between parties is UTF-8); a method's RemoteError with a code that is no integer made
an error object of the wrong shape; the client read an answer without ``result`` as a
null result.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import dtp.socket
from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Event, EventFilter
from dtp.ledger.interface import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.discovery import (
    _DOMAIN,
    DEFAULT_TOPIC,
    MAX_CLOCK_SKEW_MS,
    DiscoveryGossip,
    ServiceRecord,
    encode_announcement,
    list_services,
    publish_service,
)
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHandler, JsonRpcHttpProxy, serve_jsonrpc
from dtp.messaging.pubsub import PubSubNode
from dtp.messaging.rpc import RpcClient, RpcServer
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=0)
NOW = 1_000_000_000
#: "Does not hang" bound (a loaded 2-core machine).
BOUND = 30.0


@pytest.fixture
def ledger(tmp_path: Any) -> Iterator[LocalLedger]:
    led = LocalLedger(str(tmp_path / "ledger.db"), clock_ms=NOW)
    yield led
    led.close()


@pytest.fixture
def node() -> Iterator[PubSubNode]:
    n = PubSubNode("node-a")
    yield n
    n.close()


def _signed(identity: HostIdentity, fields: list[Any]) -> bytes:
    """An announcement of ``fields`` as written, signed by ``identity`` (what another
    implementation, or a hand-made one, may send)."""
    body = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([body, identity.sign(_DOMAIN + body)], use_bin_type=True)


# -- list_services --------------------------------------------------------------------------------


class _PagedLikeSui(LocalLedger):
    """A LocalLedger whose ``events`` pages as SuiLedger's does: a page is the next
    ``limit`` events of the package, filtered afterwards, so it may hold no match and
    not be the last. (No Sui node can run here: only the paging is SuiLedger's.)"""

    def events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> tuple[list[Event], str | None]:
        page, after = super().events(cursor, None, limit)
        return [e for e in page if filter is None or filter.matches(e)], after


def test_list_services_reads_past_a_page_without_a_match(tmp_path: Any) -> None:
    led = _PagedLikeSui(str(tmp_path / "paged.db"), clock_ms=NOW)
    try:
        alice, bob = HostIdentity.generate(), HostIdentity.generate()
        ha = led.create_host(alice, alice.noise_public)
        # more than a page (1000) of events that are no ServiceAdded, then bob's service
        for i in range(1001):
            led.set_endpoints(alice, ha, [f"udp:127.0.0.1:{i}".encode()])
        hb = led.create_host(bob, bob.noise_public)
        publish_service(led, bob, hb, 80, "http", SLA)
        # the first page held no ServiceAdded: the old loop took it for the end ([])
        assert list_services(led) == [ServiceRecord(hb, 80, "http", ())]
    finally:
        led.close()


def test_list_services_never_answers_with_part_of_the_ledger(ledger: LocalLedger) -> None:
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    ha = ledger.create_host(alice, alice.noise_public)
    hb = ledger.create_host(bob, bob.noise_public)
    # alice churns one service (add, remove, re-add...) over more than a page of events
    for _ in range(1100):
        publish_service(ledger, alice, ha, 80, "http", SLA)
        ledger.remove_service(alice, ha, 80)
    publish_service(ledger, alice, ha, 80, "http", SLA)  # re-added: listed, once
    publish_service(ledger, bob, hb, 443, "https", SLA)
    assert sorted(list_services(ledger), key=lambda r: r.name) == [
        ServiceRecord(ha, 80, "http", ()),
        ServiceRecord(hb, 443, "https", ()),
    ]
    assert list_services(ledger, "https") == [ServiceRecord(hb, 443, "https", ())]
    # past max_events: an error, never a partial answer (alice's service only, bob's
    # unread)
    with pytest.raises(E.DiscoveryError, match="1000"):
        list_services(ledger, max_events=1000)


# -- gossip ---------------------------------------------------------------------------------------


def test_a_former_authority_does_not_shadow_the_new_one(
    ledger: LocalLedger, node: PubSubNode
) -> None:
    alice, bob = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(alice, alice.noise_public)
    gossip = DiscoveryGossip(node, ledger=ledger)
    try:
        # alice's key is stolen: the thief announces a little ahead of the clock (within
        # the skew allowed), then alice moves the host's authority to a new key
        ahead = NOW + MAX_CLOCK_SKEW_MS - 1
        stolen = encode_announcement(alice, host, [(6666, "evil")], [], ahead, 86_400_000)
        node.publish(DEFAULT_TOPIC, stolen)
        assert wait_for(lambda: gossip.host(host) is not None, BOUND)
        ledger.set_authority(alice, host, bob.sui_address)
        node.publish(
            DEFAULT_TOPIC, encode_announcement(bob, host, [(80, "http")], [], NOW, 600_000)
        )
        # the new authority's announcement (issued earlier) was a "duplicate" for 5 min
        assert wait_for(lambda: gossip.lookup() == [ServiceRecord(host, 80, "http", ())], BOUND)
        assert gossip.receive(stolen) is None and gossip.forged == 1
        assert gossip.lookup() == [ServiceRecord(host, 80, "http", ())]
    finally:
        gossip.close()


def test_one_host_spelt_two_ways_is_one_record(ledger: LocalLedger) -> None:
    alice = HostIdentity.generate()
    host = ledger.create_host(alice, alice.noise_public)
    upper = "0x" + host[2:].upper()
    gossip = DiscoveryGossip(PubSubNode("alone"), ledger=ledger)
    try:

        def ann(spelling: str, issued: int, service: str) -> bytes:
            return _signed(
                alice,
                [1, spelling, alice.ed25519_public, issued, issued + 600_000, [[1, service]], []],
            )

        old = ann(upper, NOW - 10, "old")
        assert gossip.receive(old) is not None
        new = gossip.receive(ann(host, NOW, "new"))
        assert new is not None and new.host_id == host
        # the older one under the other spelling no longer lives on beside it
        assert gossip.receive(old) is None
        assert gossip.lookup() == [ServiceRecord(host, 1, "new", ())]
        assert gossip.host(upper) == new and gossip.host(" " + host) == new
    finally:
        gossip.close()


def test_a_replayed_announcement_costs_no_ledger_look_up(
    ledger: LocalLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = HostIdentity.generate()
    host = ledger.create_host(alice, alice.noise_public)
    data = encode_announcement(alice, host, [(80, "http")], [], NOW, 600_000)
    looked = []
    real = ledger.get_host

    def counted(host_id: str) -> Any:
        looked.append(host_id)
        return real(host_id)

    monkeypatch.setattr(ledger, "get_host", counted)
    gossip = DiscoveryGossip(PubSubNode("alone"), ledger=ledger)
    try:
        assert gossip.receive(data) is not None and len(looked) == 1
        for _ in range(50):  # (a peer republishing it under fresh message ids)
            assert gossip.receive(data) is None
        assert gossip.duplicates == 50 and len(looked) == 1
    finally:
        gossip.close()


def test_the_cache_is_bounded_in_bytes(node: PubSubNode) -> None:
    gossip = DiscoveryGossip(node, clock_ms=lambda: NOW)
    alice = HostIdentity.generate()
    names = [(port, f"{port:05d}" + "s" * 59) for port in range(64)]
    endpoints = [bytes([i]) * 256 for i in range(16)]
    sent = 0
    try:
        for i in range(4096):  # each of the largest kind (~8.8 KB): ~36 MB in all
            data = encode_announcement(alice, f"0x{i:064x}", names, endpoints, NOW, 600_000 + i)
            sent += len(data)
            assert gossip.receive(data) is not None
        kept = {r.host_id for r in gossip.lookup()}
        assert sent > 32 << 20
        # the old cache kept all 4096 (the count was its only bound)
        assert len(kept) * len(data) <= 16 << 20 < len(kept) * len(data) + len(data)
        # the soonest to expire went first: the last one announced is kept
        assert f"0x{4095:064x}" in kept and f"0x{0:064x}" not in kept
    finally:
        gossip.close()


def test_a_clock_that_fails_while_evicting_leaves_the_cache_bounded(node: PubSubNode) -> None:
    reads = 0

    def clock() -> int:
        # the ledger's clock: up for the check of each announcement, down right after
        nonlocal reads
        reads += 1
        if reads % 2 == 0:
            raise ChainError("the node cannot be reached", name="LedgerUnavailable")
        return NOW

    gossip = DiscoveryGossip(node, clock_ms=clock, max_records=1)
    alice = HostIdentity.generate()
    try:
        for i in range(3):
            data = encode_announcement(alice, f"0x{i:064x}", [(1, "s")], [], NOW, 600_000 + i)
            reads = 0
            # the old eviction read the clock again: ChainError, the record left in
            assert gossip.receive(data) is not None
        reads = 0  # (lookup reads the clock once)
        assert [r.host_id for r in gossip.lookup()] == [f"0x{2:064x}"]
    finally:
        gossip.close()


def test_msgpack_true_is_no_version(node: PubSubNode) -> None:
    alice = HostIdentity.generate()
    gossip = DiscoveryGossip(node, clock_ms=lambda: NOW)
    try:
        fields = [True, "0x" + "ab" * 32, alice.ed25519_public, NOW, NOW + 1000, [], []]
        assert gossip.receive(_signed(alice, fields)) is None
        assert gossip.malformed == 1 and gossip.accepted == 0
    finally:
        gossip.close()


# -- JSON-RPC -------------------------------------------------------------------------------------


class _InterimBackend:
    """A raw HTTP/1.1 keep-alive backend on 127.0.0.1 that sends ``interim`` (1xx answers)
    before the answer to the first request, the final answer a moment later (so it is
    still on the wire when the proxy has read the interim); with ``close_after_interim``,
    it closes the connection after the interim answer of request ``close_after_interim``."""

    def __init__(self, interim: bytes, close_after_interim: int = 0) -> None:
        self.interim = interim
        self.close_after_interim = close_after_interim
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append(body)
                n = len(self.requests)
                if n == 1 or n == self.close_after_interim:
                    conn.sendall(self.interim)
                    if n == self.close_after_interim:
                        return
                    time.sleep(0.3)
                answer = b'{"jsonrpc":"2.0","result":"answer %d","id":1}' % n
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )

    def close(self) -> None:
        # (shut down first: a bare close leaves the accepting thread blocked in accept)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 102 Processing\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n",
    ],
)
def test_an_interim_answer_is_not_the_answer(interim: bytes) -> None:
    backend = _InterimBackend(interim, close_after_interim=3)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND)
    try:
        # the old proxy answered "backend HTTP 102", then every call got the one before's
        assert proxy(b'{"jsonrpc":"2.0","method":"a","id":1}') == (
            b'{"jsonrpc":"2.0","result":"answer 1","id":1}'
        )
        assert proxy(b'{"jsonrpc":"2.0","method":"b","id":1}') == (
            b'{"jsonrpc":"2.0","result":"answer 2","id":1}'
        )
        # a backend that has the request (it said 102) and closes: a failure, never
        # sent again as to a kept-alive connection closed while idle
        failed = proxy(b'{"jsonrpc":"2.0","method":"c","id":1}')
        assert failed is not None and b"-32603" in failed
        assert len(backend.requests) == 3
    finally:
        proxy.close()
        backend.close()


def test_json_that_is_not_utf8_is_a_parse_error() -> None:
    handler = JsonRpcHandler({"ok": lambda params: 1})
    text = '{"jsonrpc": "2.0", "method": "ok", "id": 1}'
    parse_error = (
        b'{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}'
    )
    for encoding in ("utf-16", "utf-16-le", "utf-32", "utf-32-be"):
        assert handler(text.encode(encoding)) == parse_error, encoding
    assert handler(b'{"jsonrpc": "2.0", "method": "ok", "id": "\xff"}') == parse_error
    ok = b'{"jsonrpc": "2.0", "result": 1, "id": 1}'
    assert handler(text.encode()) == ok
    assert handler(b"\xef\xbb\xbf" + text.encode()) == ok  # (a byte order mark is ignored)


def test_a_remote_error_that_is_no_error_object_is_an_internal_error() -> None:
    def raises(code: Any, message: Any) -> Any:
        def method(params: Any) -> Any:
            raise E.RemoteError(message, code)

        return method

    handler = JsonRpcHandler(
        {
            "str_code": raises("-32000", "text"),
            "float_code": raises(1.5, "text"),
            "bool_code": raises(True, "text"),
            "int_message": raises(-32000, 5),
            "fine": raises(-32000, "text"),
        }
    )
    for method in ("str_code", "float_code", "bool_code", "int_message"):
        raw = handler(b'{"jsonrpc": "2.0", "method": "%s", "id": 1}' % method.encode())
        assert raw == (
            b'{"jsonrpc": "2.0", "error": {"code": -32603, "message": '
            b'"Internal error (RemoteError)"}, "id": 1}'
        ), method
    assert handler(b'{"jsonrpc": "2.0", "method": "fine", "id": 1}') == (
        b'{"jsonrpc": "2.0", "error": {"code": -32000, "message": "text"}, "id": 1}'
    )


def test_the_client_refuses_an_answer_without_a_result() -> None:
    identity = HostIdentity.generate()
    answers = {
        b"none": b'{"jsonrpc": "2.0", "id": 1}',
        b"null": b'{"jsonrpc": "2.0", "result": null, "id": 1}',
    }
    rpc = RpcServer()
    serve_jsonrpc(rpc, lambda doc: next(a for k, a in answers.items() if k in doc))
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=BOUND
    )
    try:
        client = JsonRpcClient(RpcClient(sock, timeout=BOUND))
        with pytest.raises(E.MalformedMessage, match="neither result nor error"):
            client.call("none")
        # (a new client: its first call has id 1, the id of the answer)
        assert JsonRpcClient(client.client).call("null") is None
    finally:
        sock.close()
        server.close()
        rpc.close()
        thread.join(BOUND)
