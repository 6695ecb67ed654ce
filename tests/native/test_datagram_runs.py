"""A run of DATAGRAM frames framed in one call (``dtp_datagram_frames_encode``), and a
run of UDP datagrams sent (``dtp_udp_send_run``) or read (``dtp_udp_recv_run``) in
one: both backends give the same bytes, results and error codes; whether a socket
takes a segmented send (``dtp_udp_takes_gso``) is answered alike, and asked once per
kind of socket."""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native import core as _core
from dtp.native._datagrams import native_encode_datagram_run
from dtp.native._udpio import native_recv_datagram_run, native_send_datagram_run, native_takes_gso
from dtp.native.reference._datagrams import encode_datagram_run as twin_encode
from dtp.native.reference._limits import MAX_FRAME_DATA, MAX_RECORD_PLAINTEXT
from dtp.native.reference._udpio import recv_datagram_run as twin_recv
from dtp.native.reference._udpio import send_datagram_run as twin_send
from dtp.native.reference._udpio import takes_gso as twin_takes_gso
from dtp.native.types import FRAME_DATAGRAM

Encode = Callable[[Sequence[bytes | bytearray | memoryview], int], list[bytes]]
ENCODERS: list[Encode] = [twin_encode, *([native_encode_datagram_run] if _core.HAVE_NATIVE else [])]
SENDERS: list[Callable[..., tuple[int, int, int]]] = [
    twin_send,
    *([native_send_datagram_run] if _core.HAVE_NATIVE else []),
]


def _outcome(encode: Encode, run: Sequence[Any], limit: int) -> list[bytes] | ErrorCode:
    try:
        return encode(run, limit)
    except LocalProtocolError as exc:
        return exc.code


def _datagrams_of(plaintexts: list[bytes]) -> list[bytes]:
    """Decode each plaintext with the frame decoder: DATAGRAM frames only."""
    out = []
    for plaintext in plaintexts:
        for frame in _core.decode_frames(plaintext, True):
            assert frame.type == FRAME_DATAGRAM
            out.append(bytes(frame.data))
    return out


@given(
    st.lists(st.binary(max_size=700), max_size=60),
    st.integers(min_value=1, max_value=MAX_RECORD_PLAINTEXT),
)
def test_both_backends_frame_a_run_alike_and_within_the_limit(run: list[bytes], limit: int) -> None:
    outcomes = [_outcome(encode, run, limit) for encode in ENCODERS]
    assert all(o == outcomes[0] for o in outcomes)
    plaintexts = outcomes[0]
    if isinstance(plaintexts, ErrorCode):
        # only a datagram whose frame fits no record is refused
        assert plaintexts == ErrorCode.FRAME_SIZE
        assert any(1 + (1 if len(d) < 64 else 2) + len(d) > limit for d in run)
        return
    assert all(0 < len(p) <= limit for p in plaintexts)
    assert _datagrams_of(plaintexts) == run
    # packed greedily: the next record's first frame did not fit the one before
    for before, after in pairwise(plaintexts):
        first = _core.encode_frames([_core.decode_frames(after, True)[0]])
        assert len(before) + len(first) > limit


@pytest.mark.parametrize("encode", ENCODERS)
def test_the_bounds_of_a_run(encode: Encode) -> None:
    assert encode([], MAX_RECORD_PLAINTEXT) == []  # an empty run: no record
    assert encode([b""], 2) == [bytes((FRAME_DATAGRAM, 0))]  # an empty datagram: 2 bytes
    # the largest frame data, alone in a record of the largest size it fits
    big = bytes(MAX_FRAME_DATA - 3)
    assert _datagrams_of(encode([big, b"x"], MAX_RECORD_PLAINTEXT)) == [big, b"x"]
    assert len(encode([big, b"x"], MAX_RECORD_PLAINTEXT)) == 2
    for run, limit in (
        ([bytes(MAX_FRAME_DATA + 1)], MAX_RECORD_PLAINTEXT),  # beyond a frame's data cap
        ([bytes(MAX_FRAME_DATA - 2)], MAX_RECORD_PLAINTEXT),  # its frame fits no record
        ([b"ok", bytes(600)], 600),  # one of the run fits no record: nothing is framed
    ):
        with pytest.raises(LocalProtocolError) as info:
            encode(run, limit)
        assert info.value.code == ErrorCode.FRAME_SIZE
    for limit in (0, -1, MAX_RECORD_PLAINTEXT + 1):  # the record size limit itself
        with pytest.raises(LocalProtocolError) as info:
            encode([b"x"], limit)
        assert info.value.code == ErrorCode.ARG


@pytest.mark.parametrize("encode", ENCODERS)
def test_a_run_of_buffers_is_framed_as_their_bytes(encode: Encode) -> None:
    wide = memoryview(bytes(range(8))).cast("I")  # len() 2 items, 8 bytes
    run = [bytearray(b"ab"), memoryview(b"cd"), wide]
    assert _datagrams_of(encode(run, 100)) == [b"ab", b"cd", bytes(range(8))]


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.mark.parametrize("send", SENDERS)
def test_a_run_reaches_its_address_in_order(
    send: Callable[..., tuple[int, int, int]], receiver: socket.socket, sender: socket.socket
) -> None:
    run = [b"%d" % i * (i % 7) for i in range(150)]  # more than one sendmmsg's worth
    assert send(sender, run, receiver.getsockname()) == (150, sum(map(len, run)), 0)
    assert [receiver.recv(100) for _ in run] == run
    sender.connect(receiver.getsockname())  # no address: the connected peer
    assert send(sender, [b"a", bytearray(b"bc")]) == (2, 3, 0)
    assert [receiver.recv(100) for _ in range(2)] == [b"a", b"bc"]
    assert send(sender, []) == (0, 0, 0)


@pytest.mark.parametrize("send", SENDERS)
def test_runs_of_other_lengths_one_after_another_each_arrive_whole(
    send: Callable[..., tuple[int, int, int]], receiver: socket.socket, sender: socket.socket
) -> None:
    # (the C core's sends keep their offsets for the next run: a run of one after a
    # longer one, or a longer after a shorter, must not send what the last one left)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    for count in (5, 1, 64, 2, 1, 130, 3):
        run = [b"%d-%d" % (count, i) * (1 + i % 3) for i in range(count)]
        assert send(sender, run, receiver.getsockname()) == (count, sum(map(len, run)), 0)
        assert _read_all(receiver, count) == run


def _read_all(sock: socket.socket, count: int) -> list[bytes]:
    """The ``count`` datagrams expected on ``sock`` (each waited for, as a loaded kernel
    may deliver late), and any more already waiting (a group sent as one datagram would
    show as fewer, longer ones; a doubled one as more)."""
    sock.settimeout(10)
    out = [sock.recv(70000) for _ in range(count)]
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


# runs the C core sends in segmented (GSO) messages where the socket takes them: each
# must still arrive as the datagrams it was, whole and in order
SIZED_RUNS = {
    "one-size": [512] * 32,
    "a-shorter-last": [512] * 31 + [100],
    "an-empty-one-amid": [512, 512, 0, 512, 512, 512],
    "longer-after-shorter": [3, 3, 3, 2, 3, 3, 4, 4],
    "past-64-segments": [100] * 150,
    "past-64-KiB": [1400] * 60,
    "large": [60000, 60000, 5000],
}


@pytest.mark.parametrize("send", SENDERS)
@pytest.mark.parametrize("sizes", list(SIZED_RUNS.values()), ids=list(SIZED_RUNS))
def test_a_run_of_one_size_arrives_as_its_datagrams(
    send: Callable[..., tuple[int, int, int]],
    sizes: list[int],
    receiver: socket.socket,
    sender: socket.socket,
) -> None:
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    run = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    assert send(sender, run, receiver.getsockname()) == (len(run), sum(sizes), 0)
    assert _read_all(receiver, len(run)) == run


@pytest.mark.parametrize("send", SENDERS)
def test_a_unix_datagram_socket_gets_each_datagram_apart(
    send: Callable[..., tuple[int, int, int]],
) -> None:
    # (a control message of UDP's is ignored there: sent segmented, the run would
    # arrive as one datagram)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        run = [bytes([i]) * 100 for i in range(10)]
        assert send(a, run) == (10, 1000, 0)
        assert _read_all(b, len(run)) == run


TAKES_GSO = [twin_takes_gso, *([native_takes_gso] if _core.HAVE_NATIVE else [])]


@pytest.mark.parametrize("takes", TAKES_GSO)
def test_a_udp_socket_takes_segmented_sends_and_others_do_not(
    takes: Callable[[socket.socket], bool],
) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with udp, a, b:
        # (the kernel's answer, asked as the C core asks it: Linux 4.18 on says yes)
        try:
            udp.getsockopt(17, 103)  # SOL_UDP, UDP_SEGMENT
            kernel = True
        except OSError:
            kernel = False
        assert takes(udp) is kernel
        assert takes(a) is False
    assert takes(udp) is False  # (closed)


@pytest.mark.skipif(not _core.HAVE_NATIVE, reason="the C core is not built")
def test_the_c_core_keeps_a_kinds_yes_to_segmented_sends_and_asks_a_no_again(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtp.native import _udpio

    asked: list[int] = []

    class Lib:
        def __getattr__(self, name: str) -> Any:
            return getattr(_core.lib, name)

        def dtp_udp_takes_gso(self, fd: int) -> int:
            asked.append(fd)
            return int(_core.lib.dtp_udp_takes_gso(fd))

    monkeypatch.setattr(_udpio, "lib", Lib())
    monkeypatch.setattr(_udpio, "_GSO", {})
    run = [b"x" * 100] * 5
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for sock in socks:
            for _ in range(3):
                assert native_send_datagram_run(sock, run, receiver.getsockname())[0] == 5
        assert native_send_datagram_run(a, run[:2]) == (2, 200, 0)  # (two: never grouped)
        assert len(asked) == 1
        for _ in range(2):
            assert native_send_datagram_run(a, run) == (5, 500, 0)
        # (a Unix datagram socket: a kind of its own, whose no is asked again each run,
        # a failed ask being no proof that its kind cannot segment)
        assert len(asked) == 3
        assert _read_all(b, 12) == run[:2] + run * 2  # (each apart: never segmented)
        assert _read_all(receiver, 45) == run * 9  # (each whole, however it went)
    finally:
        for sock in [*socks, a, b]:
            sock.close()


@pytest.mark.parametrize("send", SENDERS)
def test_an_error_kept_for_the_next_send_drops_that_datagram_alone(
    send: Callable[..., tuple[int, int, int]], receiver: socket.socket, sender: socket.socket
) -> None:
    # a port unreachable leaves ECONNREFUSED on the socket for its next send (kept
    # across a connect): the run's first datagram takes it, the rest go
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    closed = dead.getsockname()
    dead.close()
    sender.connect(closed)
    sender.send(b"x")
    # (the port unreachable comes back as an error on the socket: waited for, not read)
    poller = select.poll()
    poller.register(sender, select.POLLERR)
    assert poller.poll(10_000)
    sender.connect(receiver.getsockname())
    run = [bytes([i]) * 512 for i in range(10)]
    assert send(sender, run) == (9, 9 * 512, errno.ECONNREFUSED)
    assert _read_all(receiver, len(run) - 1) == run[1:]


@pytest.mark.parametrize("send", SENDERS)
def test_a_refused_datagram_is_dropped_and_the_rest_still_go(
    send: Callable[..., tuple[int, int, int]], receiver: socket.socket, sender: socket.socket
) -> None:
    run = [b"first", bytes(70000), b"last"]  # the middle one is above UDP's maximum
    assert send(sender, run, receiver.getsockname()) == (2, 9, errno.EMSGSIZE)
    assert [receiver.recv(100) for _ in range(2)] == [b"first", b"last"]


@pytest.mark.parametrize("send", SENDERS)
def test_a_run_on_a_closed_socket_sends_nothing(
    send: Callable[..., tuple[int, int, int]], receiver: socket.socket
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()
    assert send(sock, [b"x"], receiver.getsockname()) == (0, 0, errno.EBADF)


@pytest.mark.parametrize("send", SENDERS)
def test_a_run_to_an_ipv6_address(send: Callable[..., tuple[int, int, int]]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx,
    ):
        try:
            rx.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        rx.settimeout(5)
        tx.setblocking(False)
        host, port = rx.getsockname()[:2]
        for address in ((host, port), (host, port, 0, 0)):
            assert send(tx, [b"six", b"6"], address) == (2, 4, 0)
            assert [rx.recv(10) for _ in range(2)] == [b"six", b"6"]


RECEIVERS: list[Callable[..., tuple[list[bytes], list[Any], int]]] = [
    twin_recv,
    *([native_recv_datagram_run] if _core.HAVE_NATIVE else []),
]


def _sent_and_waiting(tx: socket.socket, rx: socket.socket, run: list[bytes]) -> None:
    for data in run:
        tx.sendto(data, rx.getsockname())
    # (loopback delivers at once; wait until the last one is readable all the same)
    rx.settimeout(5)
    select.select([rx], [], [], 5)


@pytest.mark.parametrize("recv", RECEIVERS)
def test_a_run_is_read_up_to_its_limit_with_or_without_sources(
    recv: Callable[..., tuple[list[bytes], list[Any], int]],
    receiver: socket.socket,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        run = [b"%d" % i for i in range(150)] + [b"", bytes(65000)]
        _sent_and_waiting(tx, receiver, run)
        time.sleep(0.05)  # (all queued: a short read below would be the limit's)
        datagrams, sources, err = recv(receiver, 100, True)
        assert (datagrams, err) == (run[:100], 0)
        assert sources == [tx.getsockname()] * 100
        assert recv(receiver, 1000) == (run[100:], [], 0)
        assert recv(receiver, 10) == ([], [], 0)  # nothing waits: no wait either


@pytest.mark.parametrize("recv", RECEIVERS)
def test_an_icmp_error_is_reported_by_a_read(
    recv: Callable[..., tuple[list[bytes], list[Any], int]],
) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nobody listens there now: the kernel answers port unreachable
        udp.connect(("127.0.0.1", port))
        udp.send(b"x")
        deadline = time.monotonic() + 5
        while True:
            datagrams, _, err = recv(udp, 10)
            assert datagrams == []
            if err or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert err == errno.ECONNREFUSED
        assert recv(udp, 10) == ([], [], 0)  # reported once


@pytest.mark.parametrize("recv", RECEIVERS)
def test_a_read_on_a_closed_socket(recv: Callable[..., tuple[list[bytes], list[Any], int]]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()
    assert recv(sock, 10) == ([], [], errno.EBADF)
