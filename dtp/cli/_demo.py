"""``dtp demo``: a guided tour of what DTP can do, runnable with no set-up.

Every number printed is measured or computed in this run; nothing is canned.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dtp.errors import ConnectionRefused, DecryptionError, MissingExtra
from dtp.native import core as _core
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    HAM_APPLIED,
    HAM_DEFERRED,
    HAM_HISTORICAL,
    HAM_SAME,
    HamUpdate,
    RawFrame,
)

_TTY = sys.stdout.isatty()


def _style(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _TTY else text


def bold(text: str) -> str:
    return _style("1", text)


def green(text: str) -> str:
    return _style("32", text)


def dim(text: str) -> str:
    return _style("2", text)


class Tour:
    """Prints numbered steps (with their count and timing) and remembers the summary
    lines."""

    def __init__(self, total: int = 0) -> None:
        self.step_no = 0
        self.total = total
        self.summary: list[str] = []
        self.title = ""
        self._step_started = time.perf_counter()

    def step(self, title: str) -> None:
        self.finish_step()
        self.step_no += 1
        self.title = title
        count = f"{self.step_no}/{self.total}" if self.total else str(self.step_no)
        print(f"\n{bold(f'[{count}] {title}')}", flush=True)
        self._step_started = time.perf_counter()

    def finish_step(self) -> None:
        if self.step_no:
            print(dim(f"    ({time.perf_counter() - self._step_started:.1f} s)"), flush=True)

    def say(self, text: str) -> None:
        print(f"    {text}")

    def ok(self, text: str) -> None:
        print(f"    {green('✓')} {text}")

    def remember(self, line: str) -> None:
        self.summary.append(line)

    @contextmanager
    def timed(self) -> Iterator[list[float]]:
        box: list[float] = []
        start = time.perf_counter()
        yield box
        box.append(time.perf_counter() - start)


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else float("inf")


def demo_frames(tour: Tour) -> None:
    tour.step("Frames: what travels inside an encrypted record")
    frames = [
        RawFrame(FRAME_STREAM, 4, 0, 0, b"GET /balance HTTP/1.1\r\n\r\n"),
        RawFrame(FRAME_ACK, c=250, ranges=((40, 57), (10, 30))),
        RawFrame(FRAME_STREAM_FIN, 4, 25, 0, b""),
        RawFrame(FRAME_CLOSE, 0, 0, 0, b"done"),
    ]
    wire = _core.encode_frames(frames)
    tour.say(f"4 frames (STREAM, ACK with 2 ranges, STREAM+FIN, CLOSE) → {len(wire)} bytes:")
    tour.say(dim(wire.hex(" ", 8)))
    decoded = list(_core.decode_frames(wire))
    assert decoded == frames, "frames did not round-trip"
    tour.ok("decoded back to the same 4 frames")


def demo_records(tour: Tour, quick: bool) -> None:
    tour.step("Records: ChaCha20-Poly1305 in batches, one C call per batch")
    key = os.urandom(32)
    sender, receiver = _core.Aead(key), _core.Aead(key)
    total = (16 if quick else 128) << 20
    chunk = os.urandom(1 << 20)
    counter = 0
    sealed_parts = []
    with tour.timed() as seal_time:
        for _ in range(total >> 20):
            sealed, n = sender.seal_chunks(counter, chunk)
            counter += n
            sealed_parts.append(sealed)
    opened_bytes = 0
    with tour.timed() as open_time:
        for sealed in sealed_parts:
            result = receiver.open(sealed)
            assert result.error is None
            opened_bytes += sum(len(r.plaintext) for r in result.records)
    assert opened_bytes == total
    seal_mbs = _rate(total / 1e6, seal_time[0])
    open_mbs = _rate(total / 1e6, open_time[0])
    tour.say(f"sealed {total >> 20} MiB as {counter:,} records of 16 KiB: {seal_mbs:,.0f} MB/s")
    tour.say(f"opened and authenticated them all:            {open_mbs:,.0f} MB/s")
    tour.remember(f"records: seal {seal_mbs:,.0f} MB/s, open {open_mbs:,.0f} MB/s")

    replay = receiver.open(sealed_parts[0][: 12 + 16 + 16384])
    assert replay.records and replay.records[0].replayed
    tour.ok(f"a replayed record (counter {replay.records[0].counter}) is recognised and dropped")

    fresh, _ = sender.seal_chunks(counter, b"pay 5 SUI to 0xb0b")
    tampered = bytearray(fresh)
    tampered[20] ^= 0x01
    bad = receiver.open(bytes(tampered))
    assert isinstance(bad.error, DecryptionError)
    tour.ok(f"one flipped bit → {type(bad.error).__name__}: {bad.error}")


def demo_reassembly(tour: Tour) -> None:
    tour.step("Reassembly: out-of-order, duplicated chunks come out in order")
    message = os.urandom(64 * 1024)
    chunks = [(i, message[i : i + 1000]) for i in range(0, len(message), 1000)]
    rng = random.Random(1)
    delivered = chunks + rng.sample(chunks, 20)  # 20 duplicates
    rng.shuffle(delivered)
    reasm = _core.Reassembler(window=256 * 1024)
    reasm.push_many(delivered)
    out = reasm.pop()
    assert out == message
    tour.ok(f"{len(delivered)} chunks, shuffled with 20 duplicates → {len(out):,} bytes in order")


def demo_ham(tour: Tour, quick: bool) -> None:
    tour.step("Graph CRDT (HAM): replicas converge whatever the delivery order")
    now = time.time() * 1000
    alice = [
        HamUpdate(b"user/ada", b"name", now - 50, b'"Ada"'),
        HamUpdate(b"user/ada", b"city", now - 40, b'"London"'),
    ]
    bob = [
        HamUpdate(b"user/ada", b"city", now - 20, b'"Paris"'),  # later write wins
        HamUpdate(b"user/ada", b"name", now - 50, b'"Ada L."'),  # same state: tie-break
    ]
    future = [HamUpdate(b"user/ada", b"city", now + 60_000, b'"Mars"')]  # clock skew
    names = {
        HAM_APPLIED: "applied",
        HAM_HISTORICAL: "historical",
        HAM_DEFERRED: "deferred",
        HAM_SAME: "same",
    }

    def replica(order: list[list[HamUpdate]]) -> tuple[_core.HamGraph, list[str]]:
        graph = _core.HamGraph()
        outcomes: list[str] = []
        for part in order:
            result = graph.merge(_core.encode_ham_batch(part), now)
            outcomes.extend(names.get(s, str(s)) for s in result.statuses)
        return graph, outcomes

    g1, o1 = replica([alice, bob, future])
    g2, o2 = replica([future, bob, alice])
    tour.say(f"replica 1 (alice, bob, future): {', '.join(o1)}")
    tour.say(f"replica 2 (future, bob, alice): {', '.join(o2)}")
    for field in (b"name", b"city"):
        v1 = g1.get(b"user/ada", field)
        v2 = g2.get(b"user/ada", field)
        assert v1 is not None and v1 == v2
        tour.say(f"user/ada.{field.decode()} = {v1[1].decode()} on both replicas")
    tour.ok("same graph on both; the write from 60 s in the future is held, not applied")

    n = 50_000 if quick else 200_000
    rng = random.Random(2)
    updates = [
        HamUpdate(
            b"soul/%d" % rng.randrange(10_000),
            b"f%d" % rng.randrange(4),
            now - rng.randrange(1000),
            b"v%d" % i,
        )
        for i in range(n)
    ]
    batch = _core.encode_ham_batch(updates)
    graph = _core.HamGraph()
    with tour.timed() as t:
        result = graph.merge(batch, now)
    rate = _rate(n, t[0])
    tour.say(f"merged {n:,} conflicting updates over 10,000 souls in one call: {rate:,.0f}/s")
    tour.say(f"{result.statuses.count(HAM_APPLIED):,} applied, {len(graph):,} fields now")
    tour.remember(f"graph: {rate:,.0f} merges/s")


def demo_connection(tour: Tour, quick: bool, shared: dict[str, object]) -> None:
    tour.step("From code: an encrypted DTP connection over 127.0.0.1")
    import threading

    import dtp.socket
    from dtp.identity.keys import HostIdentity

    server_id, client_id, stranger = (HostIdentity.generate() for _ in range(3))

    def accept(address: str) -> str | None:
        return "not on this server's allow list" if address == stranger.sui_address else None

    total = (16 if quick else 64) << 20
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id, accept=accept) as server:
        seen: list[str] = []

        def serve() -> None:
            sock, address = server.accept(timeout=30)
            seen.append(address)
            with sock:
                sock.sendall(sock.recv(100).upper())
                received = 0
                while received < total:
                    data = sock.recv(1 << 20)
                    if not data:
                        return  # the client went away (an interrupted demo): no spinning
                    received += len(data)
                sock.sendall(str(received).encode())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        key = server.noise_public_key
        with dtp.socket.create_connection(
            server.address, timeout=30, server_key=key, identity=client_id
        ) as sock:
            tour.say(f"server key (by host ID it comes from the Host object): {key.hex()[:16]}…")
            sock.sendall(b"hello, dtp")
            reply = sock.recv(100)
            tour.ok(f"Noise IK handshake; sent b'hello, dtp', got back {reply!r}")
            chunk = os.urandom(1 << 20)
            start = time.perf_counter()
            for _ in range(total >> 20):
                sock.sendall(chunk)
            confirmed = int(sock.recv(100))
            seconds = time.perf_counter() - start
            assert confirmed == total
            rate = _rate(total / 1e6, seconds)
            tour.say(
                f"{total >> 20} MiB sent and confirmed: {rate:,.0f} MB/s, encrypted end to end"
            )
            tour.remember(f"connection: {rate:,.0f} MB/s over loopback")
            shared["bytes_used"] = total
        thread.join(10)
        tour.ok(f"the server saw the client's verified Sui address {seen[0][:18]}…")
        try:
            dtp.socket.create_connection(
                server.address, timeout=30, server_key=key, identity=stranger
            )
        except ConnectionRefused as exc:
            tour.ok(f"a stranger is turned away before any data: ConnectionRefused({exc.reason!r})")


def demo_ledger(tour: Tour, shared: dict[str, object]) -> None:
    tour.step("Connecting by host ID to a paid service: escrow, receipts and the refund")
    import tempfile
    import time
    from pathlib import Path

    import dtp.socket
    from dtp.hostid.paid import PaidSocket
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Sla
    from dtp.ledger.local import LocalLedger
    from dtp.ledger.receipt import fee
    from dtp.payments.metering import MeteringConfig
    from dtp.payments.receipt_store import ReceiptStore

    provider, client = HostIdentity.generate(), HostIdentity.generate()
    sui = 1_000_000_000
    total = int(shared.get("bytes_used", 16 << 20))  # type: ignore[call-overload]
    with tempfile.TemporaryDirectory() as tmp:
        ledger = LocalLedger(Path(tmp) / "localnet.sqlite")
        ledger.faucet(provider.sui_address, 1 * sui)
        ledger.faucet(client.sui_address, 2 * sui)
        who = (("provider", provider), ("client", client))
        before = {name: ledger.balance(i.sui_address) for name, i in who}
        sla = Sla(price_per_kib=1_000, price_per_request=0, min_deposit=50_000_000)
        host = ledger.create_host(provider, provider.noise_public, [])
        ledger.add_service(provider, host, 7000, "sink", sla)

        def sink(sock: PaidSocket) -> None:
            received = 0
            while received < total:
                data = sock.recv(1 << 20)
                if not data:
                    # the client closed early (an interrupted demo): end now, so that the
                    # connection is settled and the client's close does not wait for it
                    return
                received += len(data)
            sock.sendall(str(received).encode())
            sock.recv(1)  # until the client closes (after its final receipt)

        store = ReceiptStore(Path(tmp) / "receipts.db")
        service = None
        try:
            service = dtp.socket.serve(
                host, 7000, sink, ledger=ledger, identity=provider, receipts=store
            )
            tour.say(f"host {host[:18]}… serves port 7000 at {sla.price_per_kib:,} MIST/KiB")
            tour.say(f"(min deposit {sla.min_deposit:,}); serve() published its endpoint and key")
            deposit = 200_000_000
            address = f"dtp://{host}:7000"
            with dtp.socket.create_connection(
                address,
                timeout=30,
                ledger=ledger,
                identity=client,
                deposit=deposit,
                metering=MeteringConfig(every_bytes=4 << 20),
            ) as sock:
                connection_id = sock.connection_id
                assert connection_id is not None and sock.escrow_id is not None
                tour.ok(f"connected to dtp://{host[:10]}…:7000 with {deposit:,} MIST in escrow")
                chunk = os.urandom(1 << 20)
                for _ in range(total >> 20):
                    sock.sendall(chunk)
                reply = sock.recv(100)
                assert int(reply) == total
            deadline = time.monotonic() + 10
            while not ledger.get_connection(connection_id).settled:
                if time.monotonic() > deadline:
                    raise RuntimeError("the provider did not settle the connection")
                time.sleep(0.02)
            service.close()
            tour.ok(f"the server admitted us only after checking connection {connection_id[:12]}…")
            escrow = ledger.get_escrow(ledger.get_connection(connection_id).escrow)
            # both directions are metered: the data sent and the server's short reply
            used = total + len(reply)
            due = fee(sla, used, 0)
            if escrow.claimed != due or escrow.claimed + escrow.refunded != deposit:
                raise RuntimeError(
                    f"the escrow does not add up: claimed {escrow.claimed:,} for {used:,} "
                    f"bytes (due {due:,}), refunded {escrow.refunded:,} of {deposit:,}"
                )
            stored = store.latest(connection_id)
            tour.say(
                "the client signed receipts in-band as it went (about every 4 MiB) and a "
                "final one on close"
                + (
                    f"; the provider stored each as it came (the latest stored: nonce "
                    f"{stored.receipt.nonce}, {stored.receipt.total_amount:,} MIST)"
                    if stored is not None and stored.receipt.nonce < escrow.latest_nonce
                    else ""
                )
            )
            tour.ok(
                f"on close the provider claimed the final receipt (nonce {escrow.latest_nonce}): "
                f"{escrow.claimed:,} MIST for {used:,} bytes both ways at "
                f"{sla.price_per_kib:,} MIST/KiB; the client was refunded {escrow.refunded:,} "
                f"of its {deposit:,}"
            )
            after = {name: ledger.balance(i.sui_address) for name, i in who}
            for name, _ in who:
                delta = after[name] - before[name]
                tour.say(f"{name:<8} {before[name]:>15,} → {after[name]:>15,} MIST ({delta:+,})")
            audit = ledger.audit()
            held = audit["balances"] + audit["escrows"] + audit["broadcasts"]
            assert audit["minted"] == held, audit
            tour.ok(f"conservation: {audit['minted']:,} MIST minted = {held:,} MIST held")
            tour.remember(
                f"escrow: paid {escrow.claimed:,} MIST for {used:,} bytes, "
                f"refunded {escrow.refunded:,}"
            )
        finally:
            # (an interrupt mid-transfer: the server's threads are stopped, and the store
            # and ledger closed, before their directory goes)
            if service is not None:
                service.close()
            store.close()
            ledger.close()


def demo_daemon(tour: Tour, quick: bool) -> None:
    tour.step("An existing TCP server behind DTP: the services daemon and a forwarder")
    from dtp.cli._demo_daemon import PRICE_PER_KIB, PRICE_PER_TUNNEL, run_daemon_step
    from dtp.ledger._objects import Sla
    from dtp.ledger.receipt import fee

    result = run_daemon_step(quick=quick, say=tour.say)
    if not (result.intact and result.conserved and result.denied):
        raise RuntimeError(f"the daemon story went wrong: {result}")
    moved = 2 * result.bytes_each_way  # (echoed: every byte went there and back)
    due = fee(Sla(PRICE_PER_KIB, PRICE_PER_TUNNEL, 0), moved, result.tunnels)
    if result.fees_claimed != due:
        raise RuntimeError(f"the daemon's fees do not add up: {result} (due {due:,})")
    tour.ok(
        f"every byte came back intact: {moved:,} bytes over "
        f"{result.tunnels} tunnels at {result.megabytes_per_second:,.0f} MB/s"
    )
    tour.ok(
        f"the forwarder signed receipts as the tunnels ran; on shutdown the provider "
        f"claimed {result.fees_claimed:,} MIST ({moved:,} bytes at {PRICE_PER_KIB} MIST/KiB "
        f"+ {result.tunnels} tunnels at {PRICE_PER_TUNNEL}) and {result.refunded:,} went back"
    )
    (p0, p1), (c0, c1) = result.provider_balance, result.client_balance
    tour.say(f"provider {p0:>15,} → {p1:>15,} MIST ({p1 - p0:+,})")
    tour.say(f"client   {c0:>15,} → {c1:>15,} MIST ({c1 - c0:+,})")
    if result.denied_paid_nothing:
        tour.ok("the denied client's TCP connection was closed and it paid nothing")
    tour.ok("conservation: every MIST minted is still accounted for")
    tour.remember(
        f"daemon: an ordinary TCP echo server reached as {result.service[:18]}…:7000 "
        f"through a forwarder, {result.megabytes_per_second:,.0f} MB/s, "
        f"{result.fees_claimed:,} MIST earned"
    )


def demo_udp(tour: Tour) -> None:
    tour.step("UDP through DTP: DNS-style queries, paid per datagram")
    import functools
    import socket
    import struct
    import tempfile
    import threading
    from pathlib import Path

    import dtp.socket
    from dtp.hostid.udp import UdpBilling, UdpForwarder, billing_from_ledger, relay_udp
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Sla
    from dtp.ledger.local import LocalLedger
    from dtp.ledger.receipt import Receipt, fee
    from dtp.payments.metering import MeteringConfig
    from dtp.payments.receipts import Meter, ReceiptScope

    provider, client = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=8, price_per_request=3, min_deposit=10_000)
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    names = {b"ledger.example": b"\x0a\x00\x00\x07", b"dtp.example": b"\x0a\x00\x00\x2a"}

    def answer() -> None:
        while True:
            try:
                query, peer = resolver.recvfrom(512)
            except OSError:
                return
            resolver.sendto(query + names.get(query[2:], b"\x00" * 4), peer)

    threading.Thread(target=answer, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = LocalLedger(Path(tmp) / "localnet.sqlite")
        ledger.faucet(client.sui_address, 1_000_000)
        host = ledger.create_host(provider, provider.noise_public)
        ledger.add_service(provider, host, 53, "udp", sla)
        kept: list[Receipt] = []
        bills: list[UdpBilling] = []

        def relay(sock: dtp.socket.DTPSocket) -> None:
            assert sock.peer_connection_id is not None
            billing = billing_from_ledger(ledger, sock.peer_connection_id, on_receipt=kept.append)
            bills.append(billing)
            relay_udp(sock, resolver.getsockname(), billing=billing, idle_timeout=10)

        server = dtp.socket.create_server(
            ("127.0.0.1", 0), identity=provider, ledger=ledger, host_id=host, port=53
        )
        ledger.set_endpoints(provider, host, [f"tcp://127.0.0.1:{server.address[1]}"])
        threading.Thread(target=server.serve_forever, args=(relay,), daemon=True).start()
        tour.say(
            f"a UDP resolver sits behind dtp://{host[:10]}…:53 at {sla.price_per_request} "
            f"MIST per datagram + {sla.price_per_kib} MIST/KiB"
        )
        connect = functools.partial(
            dtp.socket.create_connection,
            f"dtp://{host}:53",
            ledger=ledger,
            identity=client,
            deposit=10_000,
            timeout=10,
            metering=MeteringConfig(enabled=False),  # billed per datagram instead
        )
        meters: list[Meter] = []

        def meter_for(sock: dtp.socket.DTPSocket) -> Meter:
            assert sock.connection_id is not None and sock.escrow_id is not None
            scope = ReceiptScope(ledger.package_id, sock.escrow_id, sock.connection_id)
            meters.append(Meter(client, scope, sla, 10_000))
            return meters[-1]

        with UdpForwarder(("127.0.0.1", 0), connect, meter_for=meter_for) as fwd:
            asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            asker.settimeout(2)
            answered = 0
            for i, name in enumerate([b"ledger.example", b"dtp.example"] * 10):
                asker.sendto(struct.pack(">H", i) + name, fwd.address)
                try:
                    reply = asker.recv(512)
                except TimeoutError:
                    continue
                if answered == 0:
                    ip = ".".join(str(b) for b in reply[-4:])
                    tour.say(f"an ordinary UDP client asks for {name.decode()}: {ip}")
                answered += 1
            asker.close()
        deadline = time.monotonic() + 5
        while (not kept or kept[-1] != meters[0].latest) and time.monotonic() < deadline:
            time.sleep(0.02)
        server.close()
        resolver.close()
        billing, latest = bills[0], kept[-1]
        assert latest.total_amount == fee(sla, billing.bytes, billing.datagrams)
        tour.ok(f"{answered} of 20 queries answered through one DTP connection")
        tour.ok(
            f"the relay counted {billing.datagrams} datagrams and {billing.bytes} bytes; the "
            f"client's final receipt pays exactly that: {latest.total_amount} MIST"
        )
        escrow = ledger.get_connection(billing.connection_id).escrow
        paid = ledger.claim(provider, escrow, latest)
        tour.ok(f"the provider claims {paid} MIST with it")
        tour.remember(f"udp: {answered} DNS-style queries, {paid} MIST billed per datagram")
        ledger.close()


def demo_graph_sync(tour: Tour) -> None:
    tour.step("Graph sync: two peers edit the same node offline, then meet over DTP")
    from dtp.graph._demo import demo_graph_story

    demo_graph_story(tour.say)


def demo_browser(
    tour: Tour, wait: float | None = None, screenshots: str | os.PathLike[str] | None = None
) -> None:
    tour.step("A browser on the graph: a gun.js page and a Python peer edit the same chat")
    try:
        from dtp.cli._demo_browser import interactive, run_browser_step
    except MissingExtra as exc:
        # (an install without dtp-sui[gun]: the Gun endpoint and the browser's driver run on
        # its websockets)
        tour.say(f"skipped: {exc}; the rest of the demo goes on")
        tour.remember(f"browser: skipped (the '{exc.extra}' extra is needed)")
        return
    stdin = sys.stdin if interactive() else None
    result = run_browser_step(tour.say, tour.ok, wait=wait, stdin=stdin, screenshots=screenshots)
    if result.skipped is not None:
        tour.remember("browser: skipped (node, npm and the gun package are needed)")
    elif result.headless is not None:
        tour.remember(f"browser: the page served at {result.url}; no headless browser here")
    else:
        tour.remember(
            f"browser: a gun.js page and a Python peer chatted through the Gun endpoint and "
            f"DTP sync ({result.to_python_seconds:.2f} s to Python, "
            f"{result.to_page_seconds:.2f} s back)"
        )


def demo_dapp(
    tour: Tour, wait: float | None = None, screenshots: str | os.PathLike[str] | None = None
) -> None:
    tour.step("A dApp: a wallet-identified page calls a paid JSON-RPC backend over DTP")
    try:
        from dtp.cli._demo_dapp import run_dapp_step
        from dtp.cli._person import interactive

        stdin = sys.stdin if interactive() else None
        result = run_dapp_step(tour.say, tour.ok, wait=wait, stdin=stdin, screenshots=screenshots)
    except MissingExtra as exc:
        # (an install without websockets: the WebSocket carrier and the browser's driver)
        tour.say(f"skipped: {exc}; the rest of the demo goes on")
        tour.remember(f"dapp: skipped (the '{exc.extra}' extra is needed)")
        return
    if result.report is None:
        tour.remember(f"dapp: skipped ({result.skipped})")
    else:
        tour.remember(
            f"dapp: a wallet-identified page (run by {result.runner}) made three paid "
            f"JSON-RPC calls over DTP's WebSocket carrier; the provider claimed "
            f"{result.claimed} MIST; a wallet off the allow list was refused"
        )


def demo_messaging(tour: Tour) -> None:
    tour.step("Messaging: a paid JSON-RPC call and a sealed message to an offline host")
    from dtp.messaging._demo import demo_messaging_story

    demo_messaging_story(tour.say)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _say_interrupted(tour: Tour) -> None:
    """Say on stderr where an interrupted tour stopped and that nothing is left."""
    where = (
        f"in step {tour.step_no}/{tour.total} ({tour.title})"
        if tour.step_no
        else "before the first step"  # (it said "in step 0/10 ()")
    )
    # The step's lines first: to a pipe or a file (`dtp demo 2>&1 | tee log`) stdout is
    # block-buffered, and they came out after this message, at exit. Neither write may
    # replace the interrupt (a stream closed, the reader gone): the exit stays 130.
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        print(
            f"\nInterrupted {where}: the servers and daemons it started are stopped and "
            "its temporary files (ledgers, throwaway keys) removed; nothing is left behind.",
            file=sys.stderr,
            flush=True,
        )


def run_demo(
    quick: bool = False,
    browser_wait: float | None = None,
    screenshots: str | os.PathLike[str] | None = None,
) -> int:
    """Run the tour; returns a process exit code. ``browser_wait``: seconds the browser
    step keeps its page up for a person (None: until Enter at a terminal, else a few
    seconds); ``screenshots``: a folder for its screenshot of the page (None: none)."""
    shared: dict[str, object] = {}
    story: list[Callable[[Tour], None]] = [
        lambda t: demo_daemon(t, quick),
        lambda t: demo_connection(t, quick, shared),
        lambda t: demo_ledger(t, shared),
        demo_udp,
        demo_messaging,
        demo_graph_sync,
        lambda t: demo_browser(t, browser_wait, screenshots),
        lambda t: demo_dapp(t, browser_wait, screenshots),
    ]
    steps: list[Callable[[Tour], None]] = [
        *story,
        lambda t: demo_frames(t),
        lambda t: demo_records(t, quick),
        lambda t: demo_reassembly(t),
        lambda t: demo_ham(t, quick),
    ]
    tour = Tour(total=len(steps))
    print(bold("DTP demo") + f"  (core: {_core.BACKEND})")
    print(
        dim(
            "Everything runs for real on this machine, on an embedded ledger in a temporary\n"
            "file (no Sui node, no set-up); every number is measured now. Steps "
            f"1-{len(story)} tell\n"
            f"the story; steps {len(story) + 1}-{len(steps)} look under the hood."
        )
    )
    started = time.perf_counter()
    # SIGTERM (`timeout`, a supervisor) ends the tour as Ctrl-C does, through the steps'
    # finally blocks: the daemons they started are stopped and their temporary
    # directories (ledger, keys) removed, which the default action skipped. So does
    # SIGHUP (the terminal closed, the SSH session gone: the browser step may be waiting
    # there for Enter), unless it is ignored (`nohup`).
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _exit_on_sigterm)
    try:
        for step in steps:
            step(tour)
    except (KeyboardInterrupt, SystemExit):
        # (Ctrl-C, or SIGTERM or SIGHUP through _exit_on_sigterm) the steps' finally blocks have
        # run by now: tell the user what is left, not just a bare prompt
        _say_interrupted(tour)
        raise
    finally:
        for number, handler in previous.items():
            # (None: a handler not set from Python, the default to the interpreter)
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    tour.finish_step()
    print(f"\n{bold('Summary')}  ({time.perf_counter() - started:.0f} s)")
    for line in tour.summary:
        print(f"  • {line}")
    print(
        "\n  What happened: hosts are named by ledger object IDs (dtp://0x…:port); their\n"
        "  endpoints, Noise keys, prices and firewalls are on the ledger. Clients put a\n"
        "  deposit in escrow, prove who they are in the encrypted handshake, sign receipts\n"
        "  for what they use, and get back what they did not use. Money is never created\n"
        "  or lost: each step checked it. Graph peers, in Python or gun.js in a browser,\n"
        "  edit one replicated graph, synced over DTP.\n"
        "  Next: README.md (Using it), docs/daemon.md to run your own services and\n"
        "  docs/graph.md for the graph and its Gun peer."
    )
    return 0
