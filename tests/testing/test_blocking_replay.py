"""Blocking code on the simulated network replays exactly from its seed
(dtp.testing.network._blocking, docs/testing.md §3): a dtp.socket client and server, each
with its threads and the blocking engine's, over a lossy, reordering datagram link."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dtp.socket
from dtp.errors import DTPError
from dtp.testing.identities import identity
from dtp.testing.network import (
    Link,
    NetworkStats,
    SimNetwork,
    SimulationDeadlock,
    SimulationEnded,
    lossy,
)
from dtp.transport.blocking import sched
from dtp.transport.carriers._tcp import wait_ready

SERVER_KEY = identity(1)
CLIENT_KEY = identity(2)
LINK = Link(delay=0.02, jitter=0.01, loss=0.15, duplicate=0.05, reorder=0.2, datagrams=True)


Outcome = tuple[list[bytes], float, NetworkStats]


@contextlib.contextmanager
def echo_pair(net: SimNetwork, *, close_may_be_lost: bool) -> Iterator[dtp.socket.DTPSocket]:
    """In a program of ``net.run_blocking`` on host "client": a dtp.socket echo server
    (upper case) on host "server", in a thread of its own, and a client connected to it,
    both configured for a datagram link (``lossy``); the server's thread is joined once
    the client closed. ``close_may_be_lost``: a DTPError ends the server quietly."""

    def serve(srv: dtp.socket.DTPServer) -> None:
        sock, _ = srv.accept()
        with sock:
            try:
                while data := sock.recv(100):
                    sock.sendall(data.upper())
            except DTPError:
                if not close_may_be_lost:
                    raise
                # (the link lost each copy of the client's CLOSE)

    with net.host("server"):
        srv = dtp.socket.create_server(
            ("server", 7000), identity=SERVER_KEY, config=lossy(SERVER_KEY, server=True)
        )
        server = sched.Thread(target=serve, args=(srv,), name="serve")
        server.start()
    with (
        srv,
        dtp.socket.create_connection(
            ("server", 7000), server_key=SERVER_KEY.noise_public, config=lossy(CLIENT_KEY)
        ) as sock,
    ):
        yield sock
    server.join()


def exchange(seed: int, rounds: int = 4) -> tuple[Outcome, list[str]]:
    """A blocking echo exchange on a network seeded with ``seed``: (what the client got,
    when it was done, the network's counts), and the network's trace."""
    net = SimNetwork(seed=seed, trace=True)
    net.add_hosts("client", "server")
    net.link("client", "server", LINK)

    def main() -> tuple[list[bytes], float]:
        got = []
        with echo_pair(net, close_may_be_lost=True) as sock:
            for i in range(rounds):
                sock.sendall(b"hello %d" % i)
                got.append(sock.recv(100))
        return got, sched.monotonic()

    got, done = net.run_blocking(main, host="client")
    return (got, done, net.stats), net.events


def test_one_seed_replays_exactly_and_another_differs() -> None:
    first, trace = exchange(5)
    got, done, stats = first
    assert got == [b"HELLO %d" % i for i in range(4)]
    assert done > 4 * 2 * LINK.delay  # (virtual seconds: four round trips at least)
    assert stats.chunks_lost > 0 and stats.connections == 1
    assert any("runs" in line for line in trace)  # the threads' turns are in the trace
    again, trace_again = exchange(5)
    assert trace_again == trace  # every event, at the same virtual time, in the same order
    assert again == first
    other, other_trace = exchange(6)
    assert other[0] == first[0]
    assert other_trace != trace


def test_the_default_scheduler_is_back_afterwards() -> None:
    exchange(1, rounds=1)
    assert sched.installed() is sched.REAL
    # the operating system's own functions and classes, called as they were before
    # the seam (no extra work per call on the default path)
    for name in sched.NAMES:
        assert getattr(sched, name) is getattr(sched.REAL, name), name
    assert sched.monotonic is time.monotonic and sched.lending
    assert sched.Lock is threading.Lock and sched.wait_ready is wait_ready
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER_KEY) as srv:
        assert srv.address[0] == "127.0.0.1"


def test_a_failing_property_replays_from_its_seed() -> None:
    failures: list[tuple[int, Outcome, list[str]]] = []

    @settings(max_examples=5, database=None, deadline=None, derandomize=True)
    @given(st.integers(0, 2**16))
    def nothing_is_lost(seed: int) -> None:
        outcome, trace = exchange(seed, rounds=2)
        if outcome[2].chunks_lost:
            failures.append((seed, outcome, trace))
            raise AssertionError(f"seed {seed}: chunks lost")

    with pytest.raises(AssertionError, match="chunks lost"):
        nothing_is_lost()
    seed, outcome, trace = failures[-1]  # the example hypothesis reported
    replayed, replayed_trace = exchange(seed, rounds=2)
    assert replayed == outcome and replayed_trace == trace


def test_a_program_that_waits_for_ever_ends_at_the_virtual_limit() -> None:
    net = SimNetwork(seed=1)
    net.add_hosts("server")

    def main() -> None:
        srv = dtp.socket.create_server(("server", 7000), identity=SERVER_KEY)
        with srv:
            srv.accept()  # nobody connects (the server's threads poll, the clock goes on)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"after 600\.0 s of virtual time"):
        net.run_blocking(main, host="server", limit=600.0)
    assert time.monotonic() - started < 60  # (generous: virtual minutes, real seconds)
    assert sched.installed() is sched.REAL


def test_threads_that_wait_for_each_other_are_a_deadlock() -> None:
    net = SimNetwork(seed=1)
    net.add_hosts("a")

    def main() -> None:
        lock = sched.Lock()
        lock.acquire()
        lock.acquire()  # never released

    with pytest.raises(SimulationDeadlock, match="main"):
        net.run_blocking(main, host="a")
    assert sched.installed() is sched.REAL


def race(seed: int) -> tuple[list[bytes], list[str]]:
    """Two client threads connect to one server at the same virtual moment, on perfect
    links: the order the server hears them in is the threads' turns' (the seed's)."""
    net = SimNetwork(seed=seed, trace=True)
    net.add_hosts("a", "b", "server")

    def client(name: bytes) -> None:
        with dtp.socket.create_connection(
            ("server", 7000), server_key=SERVER_KEY.noise_public
        ) as sock:
            sock.sendall(name)
            sock.recv(1)

    def main() -> list[bytes]:
        heard = []
        with dtp.socket.create_server(("server", 7000), identity=SERVER_KEY) as srv:
            threads = []
            for host in ("a", "b"):
                with net.host(host):
                    threads.append(sched.Thread(target=client, args=(host.encode(),)))
            for thread in threads:
                thread.start()
            for _ in threads:
                sock, _ = srv.accept()
                with sock:
                    heard.append(sock.recv(10))
                    sock.sendall(b"k")
            for thread in threads:
                thread.join()
        return heard

    return net.run_blocking(main, host="server"), net.events


def test_the_seed_orders_the_threads_turns() -> None:
    orders = {}
    for seed in range(8):
        heard, trace = race(seed)
        assert sorted(heard) == [b"a", b"b"]
        assert race(seed) == (heard, trace)
        orders[seed] = heard
    assert len({tuple(heard) for heard in orders.values()}) == 2  # both orders, by seed


def test_a_partition_holds_a_blocking_exchange_until_it_heals() -> None:
    net = SimNetwork(seed=1)
    net.add_hosts("client", "server")
    net.link("client", "server", Link(delay=0.02, datagrams=True))

    def main() -> tuple[list[bytes], float]:
        got = []
        with echo_pair(net, close_may_be_lost=False) as sock:
            sock.sendall(b"one")
            got.append(sock.recv(100))
            net.partition({"client"}, {"server"})  # (the program changes the network)
            net.after(5.0, net.heal)
            start = sched.monotonic()
            sock.sendall(b"two")
            got.append(sock.recv(100))  # (the records lost meanwhile are sent again)
            waited = sched.monotonic() - start
        return got, waited

    got, waited = net.run_blocking(main, host="client")
    assert got == [b"ONE", b"TWO"]
    assert waited > 5.0  # virtual seconds: the answer came after the heal
    assert net.stats.chunks_lost > 0


def test_threads_left_waiting_are_ended_with_the_run() -> None:
    net = SimNetwork(seed=1)
    net.add_hosts("a")
    ended: list[str] = []

    def wait_for_ever(jobs: queue.SimpleQueue[None]) -> None:
        try:
            jobs.get()
        except SimulationEnded:
            ended.append("ended")
            raise

    def main() -> str:
        jobs = sched.SimpleQueue()
        sched.Thread(target=wait_for_ever, args=(jobs,), name="worker").start()
        sched.sleep(1.0)
        return "done"

    assert net.run_blocking(main, host="a", settle=10.0) == "done"
    assert ended == ["ended"]
    assert sched.installed() is sched.REAL


def test_a_thread_that_keeps_its_turn_fails_the_run() -> None:
    net = SimNetwork(seed=1)
    net.add_hosts("a")
    release = threading.Event()

    def main() -> None:
        release.wait(30)  # a wait of its own: no other thread may run meanwhile

    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="the thread main kept its turn"):
            net.run_blocking(main, host="a", turn_limit=0.5)
    finally:
        release.set()
    assert time.monotonic() - started < 20  # (generous: the limit is half a second)
    assert sched.installed() is sched.REAL
