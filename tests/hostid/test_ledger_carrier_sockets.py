"""The ledger carrier under the blocking and asyncio APIs: connecting by host ID to a
host that publishes no endpoint (IP-hiding), on a LocalLedger file, with faults injected
at the ledger edge (tests/support/ledger_faults.py)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import (
    ConnectionRefused,
    DTPTimeoutError,
    FirewallDenied,
    LocalProtocolError,
    NotAuthorized,
    ObjectNotFound,
)
from dtp.hostid._address import HostAddress
from dtp.hostid._connect import prepare_host_connection
from dtp.hostid.ledger_carrier._bridge import (
    LEDGER_HANDSHAKE_TIMEOUT,
    LedgerCarrierOptions,
    _cut_records,
    _valid_record,
    connect_ledger_carrier,
)
from dtp.hostid.ledger_carrier._carrier import KIND_RECORD
from dtp.ledger._objects import ConnectionState, EventFilter
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.transport.blocking import _connect as blocking_connect
from tests.support.ledger_carrier_world import (
    CLIENT,
    DEPOSIT,
    MALLORY,
    PORT,
    SERVER,
    SERVER_SEED,
    Host,
    bridge_threads,
    echo,
    echo_exchange,
    server_in_thread,
)
from tests.support.ledger_carrier_world import host as host
from tests.support.ledger_faults import impair
from tests.support.paths import ROOT
from tests.support.polling import thread_stacks, wait_for


@contextmanager
def server_process(host: Host, mode: str, *faults: str) -> Iterator[subprocess.Popen[str]]:
    cmd = [sys.executable, "-m", "tests.support.ledger_server", str(host.path), str(SERVER_SEED)]
    cmd += [host.host_id, str(PORT), mode, *faults]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"ledger server failed: {proc.stderr.read() if proc.stderr else ''}")
        assert json.loads(line)["address"] == SERVER.sui_address
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def pipe_gone(host: Host, pipe: str) -> bool:
    try:
        host.ledger.get_pipe(pipe)
    except ObjectNotFound:
        return True
    return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the bridge's record handling ----------------------------------------------------------


def test_records_are_cut_at_their_boundaries() -> None:
    def record(kind: int, body: bytes) -> bytes:
        return bytes([kind, 0]) + len(body).to_bytes(2, "little") + bytes(8) + body

    a, b = record(16, os.urandom(40)), record(1, os.urandom(96))
    buf = bytearray(a + b[:20])
    assert _cut_records(buf) == [a] and bytes(buf) == b[:20]
    buf += b[20:]
    assert _cut_records(buf) == [b] and not buf
    assert _valid_record(a) and _valid_record(b)
    assert not _valid_record(a[:-1])  # truncated: would desynchronise the stream
    assert not _valid_record(a + b"x")  # trailing bytes
    assert not _valid_record(record(99, bytes(40)))  # unknown kind
    assert not _valid_record(record(16, bytes(8)))  # DATA body below the tag size
    assert not _valid_record(bytes([16, 1]) + a[2:])  # flags must be 0


# -- end to end, separate processes -------------------------------------------------------


def test_echo_across_processes_with_loss_duplication_reordering(host: Host) -> None:
    """Client here, host in another process, both reading through a faulty ledger edge
    (10 % of the data events lost, 10 % duplicated, reordered): several MB come back
    intact, and the money is conserved."""
    faults = ("--loss", "0.1", "--duplicate", "0.1", "--reorder", "0.3")
    wrap, wrappers = impair(seed=7, loss=0.1, duplicate=0.1, reorder=0.3)
    payload = random.Random(1).randbytes(3 << 20)
    # 6 MiB both ways at 10 MIST per KiB (61,440 MIST and the request): a write the
    # deposit cannot pay ends the connection at the client (docs/escrow.md §6.1)
    deposit = 70_000
    before = host.ledger.balance(CLIENT.sui_address)
    with server_process(host, "echo", *faults):
        sock = dtp.socket.create_connection(
            host.address,
            timeout=LEDGER_HANDSHAKE_TIMEOUT,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=deposit,
            ledger_options=LedgerCarrierOptions(ledger_filter=wrap),
        )
        assert sock.getpeername() == ("ledger", sock.connection_id)
        got = echo_exchange(sock, payload)
        sock.close()
        assert wait_for(lambda: not bridge_threads()), thread_stacks()
        # the records went through pipes, one per side, both destroyed once closed
        created, _ = host.ledger.events(filter=EventFilter(type="PipeCreated"), limit=100)
        owners = {e["owner"] for e in created if e["connection"] == sock.connection_id}
        assert owners == {CLIENT.sui_address, SERVER.sui_address}
        assert wait_for(lambda: all(pipe_gone(host, e["pipe"]) for e in created))
    assert got == payload
    assert sum(w.dropped for w in wrappers) > 0 and sum(w.duplicated for w in wrappers) > 0
    assert host.ledger.balance(CLIENT.sui_address) == before - deposit
    assert host.conserved()


def test_asyncio_client_over_the_ledger_against_the_blocking_server(host: Host) -> None:
    payload = random.Random(2).randbytes(300_000)

    async def main() -> bytes:
        reader, writer = await dtp.aio.open_connection(
            host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
        )
        assert writer.get_extra_info("peername") is not None
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        got = bytearray()
        while data := await reader.read(1 << 20):
            got.extend(data)
        writer.close()
        await writer.wait_closed()
        return bytes(got)

    with server_process(host, "echo"):
        assert asyncio.run(main()) == payload
    assert wait_for(lambda: not bridge_threads())
    assert host.conserved()


# -- in-process -------------------------------------------------------------------------------


def test_handshake_survives_15_percent_loss(host: Host) -> None:
    """The lossy handshake resends (0.5 s doubling) within the ledger handshake timeout.
    Each event's fate is its own draw (``per_event``): the handshake's few events, drawn
    from one stream in whatever batches the reads took them, fell on a run of losses
    in about one run in forty."""
    lost = 0
    for seed in range(3):
        wrap, wrappers = impair(
            seed=100 * seed, loss=0.15, duplicate=0.05, reorder=0.2, per_event=True
        )
        options = LedgerCarrierOptions(ledger_filter=wrap)
        with (
            server_in_thread(host, ledger_options=options),
            dtp.socket.create_connection(
                host.address,
                timeout=LEDGER_HANDSHAKE_TIMEOUT,
                ledger=host.ledger,
                identity=CLIENT,
                deposit=DEPOSIT,
                ledger_options=options,
            ) as sock,
        ):
            assert echo_exchange(sock, b"x" * 50_000) == b"x" * 50_000
        assert len(wrappers) == 2
        lost += sum(w.dropped for w in wrappers)
    assert lost > 0
    assert host.conserved()


def test_lost_handshake_records_are_resent_through_the_bridge(host: Host) -> None:
    """The host's carrier misses the client's first two records (its handshake message
    and the first resend): the resend after 1.5 s gets through."""
    wrap, wrappers = impair(seed=5, drop_first=2)
    start = time.monotonic()
    with (
        server_in_thread(host, ledger_options=LedgerCarrierOptions(ledger_filter=wrap)),
        dtp.socket.create_connection(
            host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
        ) as sock,
    ):
        assert time.monotonic() - start >= 1.4
        assert echo_exchange(sock, b"hello") == b"hello"
    assert [w.dropped for w in wrappers] == [2]


def test_close_leaks_no_threads_or_fds_and_destroys_the_pipes(host: Host) -> None:
    with server_in_thread(host) as server:
        assert wait_for(lambda: not bridge_threads())
        fds = open_fds()
        threads = {t.ident for t in threading.enumerate()}
        for _ in range(3):
            sock = dtp.socket.create_connection(
                host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
            )
            assert len(bridge_threads()) == 2  # ours and the server's
            assert echo_exchange(sock, b"ping" * 1000) == b"ping" * 1000
            sock.close()
            assert wait_for(lambda: not bridge_threads())
        assert wait_for(lambda: open_fds() <= fds)
        pipes, _ = host.ledger.events(filter=EventFilter(type="PipeCreated"), limit=100)
        destroyed, _ = host.ledger.events(filter=EventFilter(type="PipeDestroyed"), limit=100)
        assert len(pipes) == 6 and {e["pipe"] for e in destroyed} == {e["pipe"] for e in pipes}
        with pytest.raises(LocalProtocolError):
            _ = server.address  # no TCP listener at all
    # the listener's thread ends with the server; only the process-wide timer service
    # (started by the first connection) may remain, and the client's refund collector:
    # this server settles nothing, so the client half-closed its connections, whose
    # deposits it takes back once their timeout has passed (dtp.payments._refunds)
    assert wait_for(
        lambda: (
            {t.name for t in threading.enumerate() if t.ident not in threads}
            <= {"dtp-timers", "dtp-refunds"}
        )
    )
    assert not any(t.name == "dtp-ledger-listener" for t in threading.enumerate())
    assert host.conserved()


def test_firewall_refusal_over_the_ledger_carrier(host: Host) -> None:
    with server_in_thread(host) as server:
        # denied before money moves: the client's pre-check reads the firewall
        host.ledger.deny(SERVER, host.host_id, MALLORY.sui_address)
        before = host.ledger.balance(MALLORY.sui_address)
        with pytest.raises(FirewallDenied):
            dtp.socket.create_connection(
                host.address, ledger=host.ledger, identity=MALLORY, deposit=DEPOSIT
            )
        assert host.ledger.balance(MALLORY.sui_address) == before
        # denied after the connection opened: the server's ledger admission refuses the
        # handshake that came over the ledger carrier
        address = HostAddress.parse(host.address)
        prepared = prepare_host_connection(host.ledger, address, CLIENT, deposit=DEPOSIT)
        assert prepared.carrier == "ledger"
        host.ledger.deny(SERVER, host.host_id, CLIENT.sui_address)
        bridge = connect_ledger_carrier(
            host.ledger, CLIENT, prepared.connection_id, prepared.server_address
        )
        with pytest.raises(ConnectionRefused, match="firewall"):
            blocking_connect.connect(bridge.peername, 30, prepared.config, "denied", bridge.socket)
        assert wait_for(lambda: server.refused == 1)
        assert wait_for(lambda: not bridge.running)
    assert host.conserved()


def test_carrier_ledger_is_used_even_when_an_endpoint_is_published(host: Host) -> None:
    tcp = dtp.socket.create_server(
        ("127.0.0.1", 0),
        identity=SERVER,
        ledger=host.ledger,
        host_id=host.host_id,
        port=PORT,
        carriers=("tcp", "ledger"),
    )
    thread = threading.Thread(target=tcp.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        host.ledger.set_endpoints(SERVER, host.host_id, [f"tcp://127.0.0.1:{tcp.address[1]}"])
        for carrier, peer in (("auto", "127.0.0.1"), ("tcp", "127.0.0.1"), ("ledger", "ledger")):
            with dtp.socket.create_connection(
                host.address,
                ledger=host.ledger,
                identity=CLIENT,
                deposit=DEPOSIT,
                carrier=carrier,  # type: ignore[arg-type]
                timeout=30,
            ) as sock:
                assert sock.getpeername()[0] == peer
                assert echo_exchange(sock, b"hello") == b"hello"
    finally:
        tcp.close()
        thread.join(5)
    assert host.conserved()


def test_junk_on_the_peer_pipe_does_not_end_the_connection(host: Host) -> None:
    """A payload that is no valid record (the client's own pipe, so only the client
    could post it) is dropped by the bridge instead of breaking the byte stream."""
    with (
        server_in_thread(host),
        dtp.socket.create_connection(
            host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
        ) as sock,
    ):
        assert echo_exchange_partial(sock, b"one")
        pipes, _ = host.ledger.events(filter=EventFilter(type="PipeCreated"), limit=10)
        mine = next(e["pipe"] for e in pipes if e["owner"] == CLIENT.sui_address)
        junk = bytes([KIND_RECORD, 16, 0, 0xFF, 0x00]) + bytes(30)  # length lies
        host.ledger.pipe_send(CLIENT, mine, 0, junk)
        assert echo_exchange_partial(sock, b"two")


def echo_exchange_partial(sock: dtp.socket.DTPSocket, data: bytes) -> bool:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        got += sock.recv(100)
    return got == data


def test_server_arguments() -> None:
    ledger = LocalLedger(":memory:")
    with pytest.raises(ValueError, match="needs ledger"):
        dtp.socket.create_server(None, identity=SERVER)
    with pytest.raises(ValueError, match="address"):
        dtp.socket.create_server(
            None, identity=SERVER, ledger=ledger, host_id="0x1", port=1, carriers=("tcp",)
        )
    with pytest.raises(ValueError, match="carriers"):
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, carriers=("udp",))
    with pytest.raises(ValueError, match="need a DTP address"):
        dtp.socket.create_connection(("127.0.0.1", 1), carrier="ledger")
    ledger.close()


def test_a_listener_for_a_host_it_cannot_serve_fails_at_start(host: Host) -> None:
    # the server does not start (its clients would see only a handshake timeout), and
    # leaves nothing behind. (The Host publishes Mallory's Noise key: the ledger
    # listener's own check is what refuses her, not the servers' check of the key)
    host.ledger.set_noise_static_key(SERVER, host.host_id, MALLORY.noise_public)
    fds = open_fds()
    threads = {t.ident for t in threading.enumerate()}
    for address, carriers in ((None, ("ledger",)), (("127.0.0.1", 0), ("tcp", "ledger"))):
        with pytest.raises(NotAuthorized, match="not the authority"):
            dtp.socket.create_server(
                address,
                identity=MALLORY,
                ledger=host.ledger,
                host_id=host.host_id,
                port=PORT,
                carriers=carriers,
            )
        with pytest.raises(ObjectNotFound):
            dtp.socket.create_server(
                address,
                identity=SERVER,
                ledger=host.ledger,
                host_id="0x" + "ab" * 32,
                port=PORT,
                carriers=carriers,
            )

    async def start_aio() -> None:
        with pytest.raises(NotAuthorized, match="not the authority"):
            await dtp.aio.start_server(
                lambda r, w: None,
                None,
                None,
                identity=MALLORY,
                ledger=host.ledger,
                host_id=host.host_id,
                dtp_port=PORT,
            )

    asyncio.run(start_aio())
    assert wait_for(lambda: open_fds() <= fds)
    assert wait_for(lambda: {t.ident for t in threading.enumerate()} <= threads)


def test_head_cursor_is_after_the_newest_event(host: Host) -> None:
    head = host.ledger.head_cursor()
    assert head is not None and host.ledger.events(head)[0] == []
    assert Ledger.head_cursor(host.ledger) == head  # the generic default agrees
    host.ledger.create_spending_cap(CLIENT, 10)
    events, _ = host.ledger.events(head)
    assert [e.name for e in events] == ["SpendingCapCreated"]
    assert LocalLedger(":memory:").head_cursor() is None


def test_no_ack_only_records_while_blocked_by_flow_control() -> None:
    """A lossy-carrier sender whose stream waits for credit sends nothing on further
    flushes (an ACK-only record on every one would be a storm on the ledger)."""
    from tests.support.pairs import connect, run

    c, s, link = connect(reliable_carrier=False, stream_window=32 * 1024)
    s.auto_read = False  # the server's application reads nothing: no credit comes back
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, os.urandom(200_000))
    assert run(link, c, s)  # until quiet
    assert c.conn.send_buffered() > 0  # blocked by flow control
    assert len(s.data[sid]) == 32 * 1024
    now = link.now
    assert [c.conn.datagrams_to_send(now + i * 1e-6) for i in range(50)] == [[]] * 50


def test_no_listener_times_out_and_cleans_up(host: Host) -> None:
    """Nobody serves the host on the ledger: the handshake times out, our bridge ends
    and the ledger connection is half-closed so the deposit can be refunded later."""
    with pytest.raises(DTPTimeoutError):
        dtp.socket.create_connection(
            host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=0.5
        )
    assert wait_for(lambda: not bridge_threads())
    opened, _ = host.ledger.events(filter=EventFilter(type="ConnectionOpened"), limit=10)
    (event,) = opened
    assert host.ledger.get_connection(event["connection"]).state == ConnectionState.HALF_CLOSED
    assert host.conserved()


def test_asyncio_server_on_the_ledger_carrier(host: Host) -> None:
    """dtp.aio.start_server with no TCP listener: asyncio and blocking clients reach it
    by host ID over the ledger carrier."""
    payload = random.Random(3).randbytes(200_000)

    async def echo_cb(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await reader.read(1)  # until the client closes

    async def main() -> tuple[bytes, bytes]:
        server_ledger = LocalLedger(host.path)
        server = await dtp.aio.start_server(
            echo_cb,
            None,
            None,
            identity=SERVER,
            ledger=server_ledger,
            host_id=host.host_id,
            dtp_port=PORT,
        )
        serving = asyncio.ensure_future(server.serve_forever())
        try:
            with pytest.raises(LocalProtocolError):
                _ = server.address
            reader, writer = await dtp.aio.open_connection(
                host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
            )
            writer.write(payload)
            writer.write_eof()
            got = bytearray()
            while data := await reader.read(1 << 20):
                got.extend(data)
            writer.close()
            await writer.wait_closed()

            def blocking() -> bytes:
                with dtp.socket.create_connection(
                    host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
                ) as sock:
                    return echo_exchange(sock, payload[:50_000])

            got_blocking = await asyncio.to_thread(blocking)
            await asyncio.to_thread(wait_for, lambda: not bridge_threads())
            return bytes(got), got_blocking
        finally:
            server.close()
            await serving
            server_ledger.close()

    got, got_blocking = asyncio.run(main())
    assert got == payload and got_blocking == payload[:50_000]
    assert not bridge_threads()
    assert host.conserved()


def test_bridge_stop_destroys_the_pipe_and_ends_the_pair(host: Host) -> None:
    cap = host.ledger.create_spending_cap(CLIENT, DEPOSIT)
    opened = host.ledger.open_connection(CLIENT, host.host_id, PORT, cap, DEPOSIT)
    bridge = connect_ledger_carrier(host.ledger, CLIENT, opened.connection_id, SERVER.sui_address)
    assert bridge.running and bridge.peername == ("ledger", opened.connection_id)
    pipe = bridge.carrier.pipe_id
    assert not pipe_gone(host, pipe)
    bridge.stop()
    assert not bridge.running and bridge.error is None
    assert pipe_gone(host, pipe)
    bridge.socket.settimeout(5)
    assert bridge.socket.recv(10) == b""  # the adapter sees the carrier end
    bridge.socket.close()


def test_datagrams_over_the_ledger_carrier(host: Host) -> None:
    """Unreliable datagrams ride the same bridge (whole, each in one pipe payload)."""

    def echo_datagrams(sock: dtp.socket.DTPSocket) -> None:
        for _ in range(3):
            sock.send_datagram(sock.recv_datagram(10).upper())
        sock.recv(1)

    with (
        server_in_thread(host, echo_datagrams),
        dtp.socket.create_connection(
            host.address, ledger=host.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=30
        ) as sock,
    ):
        big = b"d" * sock.max_datagram_size
        for message in (b"one", b"two", big):
            sock.send_datagram(message)
            assert sock.recv_datagram(10) == message.upper()
