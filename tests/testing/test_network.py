"""The deterministic network (dtp.testing.network): DTP's asyncio API on it unchanged, each
link condition doing what it says on the virtual clock, partitions, crashes, refusals and
timeouts as TCP has them, the same seed replaying the same run, and blocking code on the
same links through the real-time relay."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionLost, InvalidArgument
from dtp.testing.identities import identity
from dtp.testing.network import (
    Link,
    Relay,
    SimNetwork,
    SimulationDeadlock,
    SimulationError,
    lossy,
)

SERVER, CLIENT = identity(1), identity(2)
SIZE = 300_000


def _network(link: Link, seed: int = 1, **kw: object) -> SimNetwork:
    net = SimNetwork(seed=seed, **kw)  # type: ignore[arg-type]
    net.add_hosts("client", "server")
    net.link("client", "server", link)
    return net


async def _echo_size(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    """Read everything, answer its length, close."""
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
    writer.write(str(total).encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def _transfer(net: SimNetwork, size: int = SIZE) -> tuple[bytes, float]:
    """Send ``size`` bytes from client to server over DTP; (the answer, virtual time)."""
    datagrams = net.conditions("client", "server").datagrams

    async def main() -> tuple[bytes, float]:
        server_cfg = lossy(SERVER, server=True) if datagrams else None
        server = await dtp.aio.start_server(
            _echo_size, "server", 7000, identity=SERVER, config=server_cfg
        )
        with net.host("client"):
            reader, writer = await dtp.aio.open_connection(
                "server",
                7000,
                server_key=SERVER.noise_public,
                identity=None if datagrams else CLIENT,
                config=lossy(CLIENT) if datagrams else None,
            )
        writer.write(b"x" * size)
        writer.write_eof()
        answer = await reader.read(100)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return answer, asyncio.get_running_loop().time()

    return net.run(main())


@pytest.mark.parametrize(
    "link",
    [
        Link(),
        Link(delay=0.05, jitter=0.01),
        Link(delay=0.01, bandwidth=1_000_000),
        Link(delay=0.02, loss=0.3),
        Link(delay=0.02, loss=0.2, duplicate=0.2, reorder=0.3, datagrams=True),
    ],
    ids=["perfect", "delay", "bandwidth", "lossy-stream", "lossy-datagrams"],
)
def test_dtp_crosses_every_kind_of_link_intact(link: Link) -> None:
    net = _network(link)
    started = time.perf_counter()
    answer, virtual = _transfer(net)
    assert answer == str(SIZE).encode()
    assert time.perf_counter() - started < 30  # (virtual seconds cost no real ones)
    if link.bandwidth:
        assert virtual >= SIZE / link.bandwidth  # the bytes took their time on the wire
    if link.delay:
        assert virtual >= 4 * link.delay  # at least the handshake's and the data's trips
    if link.datagrams:
        assert net.stats.chunks_lost and net.stats.chunks_duplicated


def test_the_same_seed_replays_the_same_run() -> None:
    link = Link(delay=0.01, jitter=0.02, loss=0.25, duplicate=0.1, reorder=0.2, datagrams=True)
    runs = []
    for seed in (5, 5, 6):
        net = _network(link, seed=seed, trace=True)
        answer, virtual = _transfer(net, 100_000)
        assert answer == b"100000"
        runs.append((virtual, net.stats, [e for e in net.events if "B arrives" in e]))
    assert runs[0] == runs[1]
    assert runs[0][2] != runs[2][2]  # (another seed, other draws)


def test_a_partition_holds_a_stream_and_the_connection_goes_on_after_it() -> None:
    net = _network(Link(delay=0.01))

    async def main() -> tuple[bytes, float]:
        server = await dtp.aio.start_server(_echo_size, "server", 7000, identity=SERVER)
        with net.host("client"):
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=SERVER.noise_public
            )
        net.partition({"client"}, {"server"})
        net.after(2.0, net.heal)
        writer.write(b"y" * 50_000)
        writer.write_eof()
        answer = await reader.read(100)
        writer.close()
        await writer.wait_closed()
        server.close()
        return answer, asyncio.get_running_loop().time()

    answer, virtual = net.run(main())
    assert answer == b"50000" and virtual >= 2.0


def test_dtp_recovers_what_a_partitioned_datagram_link_dropped() -> None:
    net = _network(Link(delay=0.01, datagrams=True))

    async def main() -> bytes:
        server = await dtp.aio.start_server(
            _echo_size, "server", 7000, identity=SERVER, config=lossy(SERVER, server=True)
        )
        with net.host("client"):
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=SERVER.noise_public, config=lossy(CLIENT)
            )
        net.partition({"server"})
        net.after(1.5, net.heal)
        writer.write(b"z" * 40_000)
        writer.write_eof()
        answer = await reader.read(100)
        assert net.stats.chunks_lost > 0
        writer.close()
        server.close()
        return answer

    assert net.run(main()) == b"40000"


def test_a_crash_resets_the_peers_and_a_restarted_server_is_reached() -> None:
    net = _network(Link(delay=0.005))

    async def stall(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(3600)

    async def main() -> bytes:
        await dtp.aio.start_server(stall, "server", 7000, identity=SERVER)
        with net.host("client"):
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=SERVER.noise_public
            )
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.1)
            net.crash("server")
            with pytest.raises(ConnectionLost):
                await reader.read(10)
            writer.close()
            assert not net.open_connections("server")
            # the program comes back on the same host and port
            await dtp.aio.start_server(_echo_size, "server", 7000, identity=SERVER)
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=SERVER.noise_public
            )
        writer.write(b"bcd")
        writer.write_eof()
        answer = await reader.read(10)
        writer.close()
        return answer

    assert net.run(main()) == b"3"
    assert net.stats.resets >= 1


def test_connects_are_refused_or_time_out_as_tcp_ones() -> None:
    net = _network(Link(delay=0.02))

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        with net.host("client"):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("server", 9)
            refused_after = loop.time()
            await asyncio.start_server(lambda r, w: None, "server", 9)
            net.partition({"client"}, {"server"})
            with pytest.raises(TimeoutError):
                await asyncio.open_connection("10.0.0.2", 9)  # (by its address too)
        return refused_after, loop.time() - refused_after

    refused_after, timed_out_after = net.run(main())
    assert refused_after == pytest.approx(0.04)  # a SYN there, a reset back
    assert timed_out_after == pytest.approx(127.0)  # 1 + 2 + ... + 64 s of SYNs


def test_a_listener_is_handed_a_connection_once_its_syn_is_answered() -> None:
    """A kernel queues a connection for accept() only once its handshake is complete,
    so a lost SYN-ACK costs the client its SYN retries, not the server's wait for a
    first message (which starts at the accept). Over a link that loses half of
    everything, each connection reaches the listener when its client's connect
    returns, never before (a retried answer took 1 s or more)."""
    net = _network(Link(delay=0.02, loss=0.5), seed=3)

    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        accepted: list[float] = []

        def arrived(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(loop.time())
            writer.close()

        await asyncio.start_server(arrived, "server", 9)
        times = []
        with net.host("client"):
            for _ in range(20):
                began = loop.time()
                try:
                    _, writer = await asyncio.open_connection("server", 9)
                except TimeoutError:
                    continue  # (every SYN or answer lost: the listener saw nothing)
                connected = loop.time()
                await asyncio.sleep(0)  # (the listener's callback runs)
                times.append((began, connected, accepted[-1]))
                writer.close()
        return [(connected - began, at - connected) for began, connected, at in times]

    runs = net.run(main())
    assert len(runs) >= 15
    assert any(took >= 1.0 for took, _ in runs)  # some SYN or its answer was sent again
    for took, accept_after_connect in runs:
        assert accept_after_connect == pytest.approx(0.0, abs=1e-9)
        assert took >= 0.04 - 1e-9  # (a SYN there and its answer back at the least)


@pytest.mark.parametrize(
    "event", ["client crash", "client crash early", "server crash", "listener closed", "cancel"]
)
def test_a_connect_whose_syn_answer_meets_an_end_leaves_nothing_behind(event: str) -> None:
    """What happens while a SYN's answer is on its way (the SYN in at 0.1 s, its answer
    back at 0.2 s): the client's host crashing aborts the connect (so does one while the
    SYN is on its way, at 0.05 s), the listener closing
    (its host crashed, a new server listening there since) resets it, a cancel drops it;
    none leaves an end open, and no listener is handed a connection whose SYN it never
    answered."""
    net = _network(Link(delay=0.1))

    async def main() -> tuple[str, int, int]:
        accepted: list[int] = []

        def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            writer.close()

        server = await asyncio.start_server(serve, "server", 9)

        def at_half_way() -> None:
            if event.startswith("client crash"):
                net.crash("client")
            elif event == "listener closed":
                server.close()
            elif event == "server crash":  # (restarted: a new server on the same port)
                net.crash("server")
                net.host("server").spawn(asyncio.start_server(serve, "server", 9))

        net.after(0.05 if event == "client crash early" else 0.15, at_half_way)
        with net.host("client"):
            connect = asyncio.ensure_future(asyncio.open_connection("server", 9))
            if event == "cancel":
                net.after(0.15, connect.cancel)
            try:
                await connect
                outcome = "connected"
            except (OSError, asyncio.CancelledError) as exc:
                outcome = type(exc).__name__
        await asyncio.sleep(1)
        return outcome, len(accepted), len(net.open_connections())

    outcome, accepted, still_open = net.run(main())
    assert (
        outcome
        == {
            "client crash": "ConnectionAbortedError",
            "client crash early": "ConnectionAbortedError",
            "server crash": "ConnectionResetError",
            "listener closed": "ConnectionResetError",
            "cancel": "CancelledError",
        }[event]
    )
    assert accepted == 0 and still_open == 0
    assert net.stats.connections == 0
    assert net.stats.resets == (1 if event.startswith(("server", "listener")) else 0)


def test_plain_asyncio_streams_and_flow_control() -> None:
    """A reader that stops reading holds its writer up (pause_writing past the kernel's
    buffers), and the writer goes on once it reads."""
    net = _network(Link(delay=0.001, bandwidth=10_000_000))
    taken = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await taken.wait()
        data = await reader.readexactly(2_000_000)
        writer.write(len(data).to_bytes(4, "big"))
        await writer.drain()
        writer.close()

    async def main() -> tuple[bool, int]:
        await asyncio.start_server(slow, "server", 80)
        with net.host("client"):
            reader, writer = await asyncio.open_connection("server", 80)
        writer.write(b"q" * 2_000_000)
        try:
            await asyncio.wait_for(writer.drain(), 5.0)
            held = False
        except TimeoutError:
            held = True
        taken.set()
        await writer.drain()
        answer = int.from_bytes(await reader.readexactly(4), "big")
        writer.close()
        return held, answer

    assert net.run(main()) == (True, 2_000_000)


def test_misuse_is_refused_clearly() -> None:
    for bad in (
        dict(loss=1.5),
        dict(delay=-1),
        dict(duplicate=0.1),  # (a stream link)
        dict(bandwidth=0),
        dict(loss=1.0),
    ):
        with pytest.raises(InvalidArgument):
            Link(**bad)  # type: ignore[arg-type]
    net = _network(Link())
    with pytest.raises(SimulationError):
        net.add_host("client")
    with pytest.raises(SimulationError):
        net.resolve("nowhere")

    async def nobody() -> None:
        await asyncio.open_connection("server", 1)

    with pytest.raises(SimulationError, match="which host connects"):
        net.run(nobody())

    async def stuck() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationDeadlock):
        SimNetwork().run(stuck())


def test_blocking_code_on_the_relay() -> None:
    """dtp.socket, unchanged, across a lossy datagram link and a partition: the relay's
    real sockets carry it."""
    net = _network(Link(delay=0.005, loss=0.1, reorder=0.1, datagrams=True), seed=2)
    with (
        Relay(net) as relay,
        dtp.socket.create_server(
            ("127.0.0.1", 0), identity=SERVER, config=lossy(SERVER, server=True)
        ) as srv,
    ):
        relay.expose("server", 7000, srv.address)
        where = relay.address("client", "server", 7000)
        assert relay.address("client", "server", 7000) == where

        def serve() -> None:
            sock, _ = srv.accept()
            with sock:
                data = bytearray()
                while chunk := sock.recv(65536):
                    data += chunk
                sock.sendall(str(len(data)).encode())

        thread = threading.Thread(target=serve)
        thread.start()
        with dtp.socket.create_connection(
            where, timeout=30, server_key=SERVER.noise_public, config=lossy(CLIENT)
        ) as sock:
            sock.sendall(b"r" * 100_000)
            relay.call(net.partition, {"client"}, {"server"})
            time.sleep(0.3)
            relay.call(net.heal)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"100000"
        thread.join(30)
        assert net.stats.chunks_lost > 0


def test_the_servers_admission_deadlines_run_on_the_virtual_clock() -> None:
    """A client that connects and never sends its first record, or sends only part of
    it, is cut off after the server's first_message_timeout (3 s) of virtual time. (The
    server's admission read time.monotonic, and the virtual loop's timer found its
    deadline always ahead: the silent client was cut off some 200,000 virtual seconds
    later, once 3 real ones had passed.)"""
    net = _network(Link(delay=0.001))

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        server = await dtp.aio.start_server(_echo_size, "server", 7000, identity=SERVER)
        ended = []
        with net.host("client"):
            for first in (b"", b"\x01\x00\x60\x00"):  # nothing; a record's header, cut
                reader, writer = await asyncio.open_connection("server", 7000)
                start = loop.time()
                writer.write(first)
                assert await reader.read() == b""  # closed by the server
                ended.append(loop.time() - start)
                writer.close()
        server.close()
        await server.wait_closed()
        return ended

    silent, half = net.run(main())
    assert 3.0 <= silent < 3.01
    assert 3.0 <= half < 3.01


def test_a_network_runs_again_from_a_clean_wire() -> None:
    """A second run of one network starts with nothing of the first on its links (a
    bandwidth-limited link's wire was busy until the first run's last virtual second)."""
    net = _network(Link(delay=0.01, bandwidth=100_000))
    first = _transfer(net, 200_000)
    second = _transfer(net, 200_000)
    assert first[0] == second[0] == b"200000"
    assert second[1] == pytest.approx(first[1], rel=0.05)


def test_what_a_closed_socket_had_sent_crosses_a_healed_partition() -> None:
    """Bytes a partition held on a stream link still go once it heals, also when their
    writer closed meanwhile (as a kernel sends what it was given); then the FIN."""
    net = _network(Link(delay=0.01))

    async def main() -> bytes:
        got = asyncio.get_running_loop().create_future()

        async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read())  # (to the FIN)
            writer.close()

        await asyncio.start_server(take, "server", 80)
        with net.host("client"):
            _, writer = await asyncio.open_connection("server", 80)
        net.partition({"client"}, {"server"})
        writer.write(b"held, then sent")
        writer.close()
        net.after(5.0, net.heal)
        return await got

    assert net.run(main()) == b"held, then sent"


def test_two_tasks_in_blocks_of_the_same_host_each_leave_their_own() -> None:
    """Each task's ``with net.host(...)`` block ends its own: a block's way back is kept
    in the task's context, not on the host, which two tasks may be in at once."""
    net = SimNetwork(seed=1)
    net.add_hosts("a", "b")
    left: list[str | None] = []

    async def inside(first: asyncio.Event, second: asyncio.Event) -> None:
        with net.host("b"):
            with net.host("a"):
                first.set()
                await second.wait()
            left.append(net.current_host().name)  # (back in "b")

    async def main() -> None:
        one, two = asyncio.Event(), asyncio.Event()
        # the first task enters, the second enters, the first leaves: interleaved
        t1 = asyncio.create_task(inside(one, two))
        await one.wait()
        t2 = asyncio.create_task(inside(asyncio.Event(), asyncio.Event()))
        await asyncio.sleep(0)
        two.set()
        await t1
        t2.cancel()
        await asyncio.gather(t2, return_exceptions=True)

    net.run(main())
    assert left == ["b"]
    with pytest.raises(SimulationError):
        net.current_host()  # (outside every block, after the run)
