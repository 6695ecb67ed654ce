"""The services daemon end to end: real backends, a real daemon process exposing them
and a real forwarder process, driven by ordinary TCP and HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from dtp.payments.receipt_store import ReceiptStore
from tests.daemon.tunnel_setup import (
    PAID,
    Setup,
    conserved,
    echo_roundtrip,
    fwd_row,
    ledger_connections,
    service,
    status,
    svc_row,
)
from tests.support.daemon_procs import wait_until
from tests.support.settlements import settled_escrow


def test_large_transfer_integrity_and_status(setup: Setup) -> None:
    b = setup.backend()
    d, f, address = setup.pair(service([b.info["port"]]))
    data = os.urandom(24 << 20)
    assert echo_roundtrip(address, data) == data
    row = wait_until(lambda: svc_row(setup)["bytes_out"] == len(data) and svc_row(setup))
    assert row["bytes_in"] == len(data) and row["tunnels"] == 1 and row["connections"] == 1
    assert wait_until(lambda: fwd_row(setup)["bytes_in"] == len(data))
    assert f.stop() == 0 and d.stop() == 0
    ledger = setup.ledger()
    # both sides closed and settled: the deposit went back, nothing is held in escrow
    assert ledger.audit()["escrows"] == 0
    assert conserved(ledger)


def test_many_concurrent_tunnels(setup: Setup) -> None:
    b1, b2 = setup.backend(), setup.backend()
    _, _, address = setup.pair(service([b1.info["port"], b2.info["port"]]))

    async def one(i: int) -> bool:
        reader, writer = await asyncio.open_connection(*address)
        payload = os.urandom(1000 + 97 * i)
        writer.write(payload)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        return got == payload

    async def run() -> list[bool]:
        # more than the 128 streams a DTP connection allows by default
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert all(asyncio.run(run()))
    row = wait_until(
        lambda: (r := svc_row(setup))["tunnels"] == 200 and r["active_tunnels"] == 0 and r
    )
    assert row["connections"] == 1 and row["bytes_in"] == sum(1000 + 97 * i for i in range(200))
    assert conserved(setup.ledger())


def test_http_jsonrpc_keepalive_spread_over_backends(setup: Setup) -> None:
    h1, h2 = setup.backend("http"), setup.backend("http")
    _, _, address = setup.pair(service([h1.info["port"], h2.info["port"]], extra='kind = "http"'))
    seen = set()
    for _ in range(4):
        conn = http.client.HTTPConnection(*address, timeout=10)
        for i in range(5):  # five requests on one kept-alive connection = one tunnel
            body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "add", "params": [i, 40]})
            conn.request("POST", "/", body, {"Content-Type": "application/json"})
            reply = json.loads(conn.getresponse().read())
            assert reply == {"jsonrpc": "2.0", "id": i, "result": i + 40}
        conn.request("POST", "/", json.dumps({"jsonrpc": "2.0", "id": 9, "method": "whoami"}))
        seen.add(json.loads(conn.getresponse().read())["result"])
        conn.close()
    # round robin: the four tunnels went to both backends
    assert seen == {h1.info["port"], h2.info["port"]}


def test_firewall_denial(setup: Setup) -> None:
    b = setup.backend()
    extra = f'deny = ["{setup.client.sui_address}"]'
    d, f, address = setup.pair(service([b.info["port"]], extra=extra))
    assert echo_roundtrip(address, b"hello", timeout=10) == b""
    assert wait_until(lambda: svc_row(setup)["denials"] >= 1)
    assert wait_until(lambda: fwd_row(setup)["errors"] >= 1)
    assert wait_until(lambda: fwd_row(setup)["denials"] >= 1)
    assert svc_row(setup)["tunnels"] == 0
    assert '"denied"' in d.log() and "denies" in d.log()
    # the refused connection was settled at once: its deposit is back with the client
    ledger = setup.ledger()
    assert wait_until(lambda: ledger.audit()["escrows"] == 0)
    assert conserved(ledger)
    f.stop()
    d.stop()
    assert conserved(ledger)


def test_host_firewall_on_the_ledger_denies_before_money_moves(setup: Setup) -> None:
    b = setup.backend()
    ledger = setup.ledger()
    d = setup.daemon(
        setup.write_daemon(
            service([b.info["port"]]), extra=f'\n[firewall]\ndeny = ["{setup.client.sui_address}"]'
        )
    )
    f = setup.daemon(setup.write_forwarder(d.info["host_id"], 7000))
    before = ledger.balance(setup.client.sui_address)
    address = f.info["forwards"]["svc"].rsplit(":", 1)
    assert echo_roundtrip((address[0], int(address[1])), b"x", timeout=10) == b""
    assert wait_until(lambda: fwd_row(setup)["denials"] == 1)
    assert f"refuses {setup.client.sui_address}" in f.log()
    assert ledger.balance(setup.client.sui_address) == before
    assert conserved(ledger)


def test_host_rate_limits_hold_tunnels_back(setup: Setup) -> None:
    b = setup.backend()
    rate = 1 << 20  # bytes per second, both directions of the client's tunnels together
    d = setup.daemon(
        setup.write_daemon(
            service([b.info["port"]]),
            extra=f"\n[firewall]\nmax_bytes_per_sec = {rate}\nmax_requests_per_sec = 2",
        )
    )
    host = setup.ledger().get_host(d.info["host_id"])
    assert (host.firewall.max_bytes_per_sec, host.firewall.max_requests_per_sec) == (rate, 2)
    f = setup.daemon(setup.write_forwarder(d.info["host_id"], 7000))
    address = f.info["forwards"]["svc"].rsplit(":", 1)
    data = os.urandom(600_000)
    start = time.monotonic()
    assert echo_roundtrip((address[0], int(address[1])), data) == data
    # 1.2 MB counted at 1 MiB/s, less a quarter second of burst: held back, not dropped
    assert time.monotonic() - start >= 0.8
    # requests: one tunnel each, 2 per second (after a burst of a quarter second's worth)
    start = time.monotonic()
    for _ in range(4):
        assert echo_roundtrip((address[0], int(address[1])), b"x") == b"x"
    assert time.monotonic() - start >= 1.0


def test_a_deny_on_the_ledger_reaches_open_tunnels(setup: Setup) -> None:
    b = setup.backend()
    d, _, address = setup.pair(service([b.info["port"]]))
    sock = socket.create_connection(address, timeout=10)
    with sock:
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"
        setup.ledger().deny(setup.provider, d.info["host_id"], setup.client.sui_address)
        # the daemon re-reads its Host every couple of seconds and cuts the connection
        sock.settimeout(10)
        start = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(16) == b""
        assert time.monotonic() - start < 8
    assert wait_until(lambda: svc_row(setup)["denials"] >= 1)


def test_backend_failover_then_clean_error(setup: Setup) -> None:
    b1, b2 = setup.backend(), setup.backend()
    _, _, address = setup.pair(service([b1.info["port"], b2.info["port"]]))
    assert echo_roundtrip(address, b"both up") == b"both up"
    b1.kill()
    for i in range(4):  # every tunnel still works: the dead backend is skipped
        assert echo_roundtrip(address, b"one up %d" % i) == b"one up %d" % i
    b2.kill()
    assert echo_roundtrip(address, b"none up", timeout=10) == b""
    row = wait_until(lambda: svc_row(setup)["unavailable"] >= 1 and svc_row(setup))
    assert row["backend_errors"] >= 2
    assert wait_until(lambda: svc_row(setup)["healthy_backends"] == 0)
    assert wait_until(lambda: fwd_row(setup)["errors"] >= 1)
    # a backend coming back is used again
    b3 = setup.backend("echo", b2.info["port"])
    assert b3.info["port"] == b2.info["port"]
    assert echo_roundtrip(address, b"back") == b"back"


def test_paid_service_fees_survive_a_daemon_crash(setup: Setup) -> None:
    b = setup.backend()
    ledger = setup.ledger()
    paid = service([b.info["port"]], extra=PAID)
    d, f, address = setup.pair(paid, forward_extra="receipt_every = 65536")
    host_id = d.info["host_id"]
    data = os.urandom(3 << 20)
    assert echo_roundtrip(address, data) == data
    # 6 MiB both ways at 10 MIST/KiB and the tunnel as one request: the last receipt
    # (on disk once it counts here) covers every byte; wait for it, not for less, as
    # the assertions below hold the store to that
    everything = 2 * len(data) // 1024 * 10 + 3
    assert wait_until(lambda: svc_row(setup)["fees_earned"] >= everything)
    d.kill()  # SIGKILL: no drain, no claim
    store = ReceiptStore(setup.tmp / "daemon-state" / "receipts.sqlite")
    held = list(store.unclaimed())
    store.close()
    assert len(held) == 1 and held[0].unclaimed > 0
    receipt = held[0].receipt
    # the receipt covers every byte both ways plus the tunnel as one request
    assert receipt.total_bytes == 2 * len(data) and receipt.total_requests == 1
    provider_before = ledger.balance(setup.provider.sui_address)
    d2 = setup.daemon(setup.tmp / "daemon.toml")
    assert d2.info["host_id"] == host_id
    wait_until(lambda: ledger.balance(setup.provider.sui_address) > provider_before)
    gained = ledger.balance(setup.provider.sui_address) - provider_before
    assert gained == receipt.total_amount
    escrow = settled_escrow(ledger, receipt.connection_id)
    assert escrow.claimed == receipt.total_amount
    claimed = receipt.total_amount
    row = wait_until(lambda: svc_row(setup)["fees_claimed"] == claimed and svc_row(setup))
    assert row["fees_earned"] >= claimed
    # the forwarder reconnects to the restarted daemon (at its new endpoint)
    assert echo_roundtrip(address, b"again") == b"again"
    assert wait_until(lambda: fwd_row(setup)["connections"] == 2)
    f.stop()
    d2.stop()
    assert conserved(ledger)


def test_reload_on_sighup_keeps_open_tunnels(setup: Setup) -> None:
    b1, b2 = setup.backend(), setup.backend()
    d, _, address = setup.pair(service([b1.info["port"]]))
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"before ")
    assert sock.recv(100) == b"before "
    config = setup.tmp / "daemon.toml"
    config.write_text(config.read_text() + service([b2.info["port"]], port=7001))
    d.send(signal.SIGHUP)
    wait_until(lambda: "svc7001" in status(setup.tmp / "daemon-state")["services"])  # type: ignore[operator]
    sock.sendall(b"after")
    assert sock.recv(100) == b"after"
    sock.close()
    assert 7001 in setup.ledger().get_host(d.info["host_id"]).services
    # a broken file is refused and changes nothing
    config.write_text("[daemon\n")
    d.send(signal.SIGHUP)
    wait_until(lambda: "reload refused" in d.log())
    assert echo_roundtrip(address, b"still") == b"still"


def test_graceful_shutdown_drains_open_tunnels(setup: Setup) -> None:
    b = setup.backend()
    d, f, address = setup.pair(service([b.info["port"]]))
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"one")
    assert sock.recv(10) == b"one"
    d.send(signal.SIGTERM)
    wait_until(lambda: '"draining"' in d.log())
    sock.sendall(b"two")  # the open tunnel still works while draining
    assert sock.recv(10) == b"two"
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(10) == b""
    sock.close()
    assert d.stop() == 0
    assert status(setup.tmp / "daemon-state").get("stopped")
    # structured logs: one JSON object per line, with the fields of the event
    entries = [json.loads(line) for line in d.log().splitlines()]
    assert {"ts", "level", "logger", "msg"} <= set(entries[0])
    opened = next(e for e in entries if e["msg"] == "connection open")
    assert opened["service"] == "svc7000" and opened["client"] == setup.client.sui_address
    assert entries[-1]["msg"] == "stopped"
    f.stop()
    assert setup.ledger().audit()["escrows"] == 0
    assert conserved(setup.ledger())


def test_forwarder_reload_adds_a_forward_and_keeps_open_tunnels(setup: Setup) -> None:
    b1, b2 = setup.backend(), setup.backend()
    services = service([b1.info["port"]]) + service([b2.info["port"]], port=7001)
    d, f, address = setup.pair(services)
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"open ")
    assert sock.recv(100) == b"open "
    config = setup.tmp / "forwarder.toml"
    config.write_text(
        config.read_text() + f'\n[[forward]]\nname = "second"\nlisten = "127.0.0.1:0"\n'
        f'target = "dtp://{d.info["host_id"]}:7001"\n'
    )
    f.send(signal.SIGHUP)

    def second() -> str | None:
        rows = status(setup.tmp / "forwarder-state")["forwards"]
        return rows.get("second", {}).get("listen") or None  # type: ignore[attr-defined,no-any-return]

    host, port = wait_until(second, what="the new forward").rsplit(":", 1)
    assert echo_roundtrip((host, int(port)), b"via 7001") == b"via 7001"
    assert wait_until(lambda: svc_row(setup, "svc7001")["tunnels"] == 1)
    sock.sendall(b"still open")
    assert sock.recv(100) == b"still open"
    sock.close()


def test_a_reload_whose_listen_port_is_taken_keeps_the_old_listener(setup: Setup) -> None:
    b = setup.backend()
    _, f, address = setup.pair(service([b.info["port"]]))
    config = setup.tmp / "forwarder.toml"
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    with busy:
        config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        f.send(signal.SIGHUP)
        wait_until(lambda: "forward keeps its old listener" in f.log(), what="the error")
        assert "Traceback" not in f.log()
        assert echo_roundtrip(address, b"still here") == b"still here"
    # the port is free now: the same file, reloaded again, moves the forward to it
    f.send(signal.SIGHUP)
    wait_until(lambda: fwd_row(setup)["listen"] == f"127.0.0.1:{port}", what="the move")  # type: ignore[comparison-overlap]
    assert echo_roundtrip(("127.0.0.1", port), b"moved") == b"moved"
    # another change on the same fixed port: the old listener gives the port up first
    config.write_text(config.read_text() + "deposit = 3000000\n")
    f.send(signal.SIGHUP)
    wait_until(lambda: f.log().count('"reloaded"') == 3, what="the third reload")
    assert "cannot be bound" not in f.log().split('"reloaded"')[-2]
    assert echo_roundtrip(("127.0.0.1", port), b"same port") == b"same port"


def test_used_up_deposit_rolls_over_to_a_new_connection(setup: Setup) -> None:
    b = setup.backend()
    per_tunnel = "price_per_request = 1000\nmin_deposit = 2500"
    d, f, address = setup.pair(service([b.info["port"]], extra=per_tunnel))
    for i in range(5):  # the deposit pays for two tunnels per connection
        assert echo_roundtrip(address, b"tunnel %d" % i) == b"tunnel %d" % i
    assert wait_until(lambda: fwd_row(setup)["connections"] == 3)
    assert wait_until(lambda: fwd_row(setup)["fees_paid"] == 5000)
    f.stop()
    d.stop()
    ledger = setup.ledger()
    row = svc_row(setup)
    assert row["connections"] == 3 and row["tunnels"] == 5
    assert row["fees_earned"] == row["fees_claimed"] == 5000
    assert ledger.audit()["escrows"] == 0
    assert conserved(ledger)


@pytest.mark.parametrize("setup", ["local", "sui"], indirect=True)
def test_udp_service_and_forward_paid_per_datagram(setup: Setup) -> None:
    """``protocol = "udp"`` on both sides: DNS-style datagrams through a forwarder
    process → DTP → daemon process → UDP backend, billed per datagram; the daemon claims
    exactly the final receipt and the client is refunded the rest. On the embedded
    ledger and on Sui (the stand-in) alike."""
    b = setup.backend("udp")
    ledger = setup.any_ledger()
    udp_service = service(
        [b.info["port"]],
        port=5300,
        extra='protocol = "udp"\nprice_per_kib = 4\nprice_per_request = 2\nmin_deposit = 100000',
    )
    d = setup.daemon(setup.write_daemon(udp_service))
    f = setup.daemon(
        setup.write_forwarder(d.info["host_id"], 5300, 'protocol = "udp"\nidle_timeout = 1')
    )
    host, port = f.info["forwards"]["svc"].rsplit(":", 1)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answers: set[int] = set()
    for i in range(60):
        query = i.to_bytes(2, "big") + b"example.org"
        client.sendto(query, (host, int(port)))
        # the first datagram waits for the flow's connection to open on the ledger (on
        # a loaded machine, seconds on Sui): its answer is waited for as long; an answer
        # that comes after its query's wait (the queries behind it then held too) is
        # counted when it comes, instead of being taken for the next query's
        deadline = time.monotonic() + (30 if i == 0 else 2)
        while i not in answers and (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            try:
                answer = client.recv(65535)
            except TimeoutError:
                break
            n = int.from_bytes(answer[:2], "big")
            assert n <= i and answer == n.to_bytes(2, "big") + b"example.orgOK", answer
            answers.add(n)
    client.close()
    answered = len(answers)
    assert answered >= 55

    # the flow goes idle: the forwarder settles the final count, the daemon claims it
    def claimed() -> dict[str, int] | None:
        found = status(setup.tmp / "daemon-state").get("services", {})
        row = found.get("svc5300") if isinstance(found, dict) else None
        return row if row and row["fees_claimed"] else None

    # (the forwarder's settlement and the daemon's claim: two transactions, slow on a
    # loaded machine on Sui)
    row = wait_until(claimed, 60, "the daemon's claim")
    assert row["tunnels"] == 1 and row["bytes_in"] >= answered * 13
    store = ReceiptStore(setup.tmp / "daemon-state" / "receipts.sqlite")
    (held,) = [store.latest(c) for c in ledger_connections(ledger, setup)]
    store.close()
    assert held is not None
    receipt = held.receipt
    datagrams = receipt.total_requests
    assert answered <= datagrams <= 60
    # bytes: each query (13 B) in, each answer (15 B) out, as the relay counted them
    assert receipt.total_bytes == 13 * datagrams + 15 * datagrams
    assert (
        row["fees_claimed"]
        == receipt.total_amount
        == (28 * datagrams * 4 + 1023) // 1024 + 2 * datagrams
    )
    escrow = settled_escrow(ledger, receipt.connection_id)  # (deleted once settled)
    assert escrow.settled and escrow.claimed == receipt.total_amount
    assert escrow.refunded == escrow.deposited - receipt.total_amount
    f.stop()
    d.stop()
    assert setup.conserved(ledger)
    ledger.close()


def test_udp_flows_keep_the_hosts_request_rate(setup: Setup) -> None:
    """The firewall's requests/s holds for UDP flows too: a burst beyond it is dropped at
    the daemon and counted (a datagram cannot wait), and never billed."""
    b = setup.backend("udp")
    udp_service = service(
        [b.info["port"]],
        port=5301,
        extra='protocol = "udp"\nprice_per_kib = 4\nprice_per_request = 2\nmin_deposit = 100000',
    )
    d = setup.daemon(
        setup.write_daemon(udp_service, extra="\n[firewall]\nmax_requests_per_sec = 8")
    )
    f = setup.daemon(
        setup.write_forwarder(d.info["host_id"], 5301, 'protocol = "udp"\nidle_timeout = 1')
    )
    host, port = f.info["forwards"]["svc"].rsplit(":", 1)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(0.5)
    # the first datagram opens the flow; the burst follows once it is answered
    client.sendto(b"\x00\x00example.org", (host, int(port)))
    assert client.recv(65535) == b"\x00\x00example.org" + b"OK"
    time.sleep(0.5)  # the bucket refills (a quarter second of burst: 2)
    for i in range(1, 31):
        client.sendto(i.to_bytes(2, "big") + b"example.org", (host, int(port)))
    answered = 0
    with contextlib.suppress(TimeoutError):
        while True:
            client.recv(65535)
            answered += 1
    client.close()
    assert 1 <= answered <= 8

    def settled() -> dict[str, int] | None:
        found = status(setup.tmp / "daemon-state").get("services", {})
        row = found.get("svc5301") if isinstance(found, dict) else None
        return row if row and row["fees_claimed"] else None

    row = wait_until(settled, 20, "the daemon's claim")
    assert row["rate_limited"] == 30 - answered
    store = ReceiptStore(setup.tmp / "daemon-state" / "receipts.sqlite")
    ledger = setup.ledger()
    (held,) = [store.latest(c) for c in ledger_connections(ledger, setup)]
    store.close()
    assert held is not None and held.receipt.total_requests == 1 + answered
    f.stop()
    d.stop()
    assert conserved(ledger)


def test_a_limit_lifted_on_the_ledger_reaches_a_held_tunnel(setup: Setup) -> None:
    # a tunnel held back at a low byte rate waited out the whole hold worked out at that
    # rate (a minute for one 64 KiB chunk at 1 kB/s) after the Host lifted the limit:
    # now each hold is looked at again every POLICY_REFRESH (2 s) under the limits then
    b = setup.backend()
    d = setup.daemon(
        setup.write_daemon(
            service([b.info["port"]]),
            extra="\n[firewall]\nmax_bytes_per_sec = 1000\nmax_requests_per_sec = 0",
        )
    )
    f = setup.daemon(setup.write_forwarder(d.info["host_id"], 7000))
    host, port = f.info["forwards"]["svc"].rsplit(":", 1)
    data = os.urandom(200_000)  # at 1 kB/s both ways: over six minutes
    result: list[bytes] = []
    roundtrip = threading.Thread(
        target=lambda: result.append(echo_roundtrip((host, int(port)), data, timeout=60))
    )
    roundtrip.start()
    time.sleep(1.0)  # the tunnel is in its hold by now (its first chunks are over the rate)
    assert roundtrip.is_alive()
    chain = setup.ledger()
    per_client = chain.get_host(d.info["host_id"]).firewall.max_connections_per_client
    chain.set_client_limits(setup.provider, d.info["host_id"], per_client, 0, 0)  # no rate
    lifted = time.monotonic()
    roundtrip.join(30)
    assert not roundtrip.is_alive() and result == [data]
    # the daemon reads the Host within 2 s and the hold within 2 s more
    assert time.monotonic() - lifted < 12
