"""The edges of the UDP runs (dtp_core/udpio.c, dtp/native/_udpio.py and its twin):
the C functions refuse offsets and capacities outside the caller's buffers, both
backends give the same outcome for addresses ``sendto`` would refuse or look up, the
same sources (an IPv6 scope in scope_id, never in the host; a burst's sources told
apart where they change), a send on a socket
with a timeout never waits, and one on a blocking socket waits for room, as ``send``."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode
from dtp.hostid.udp import _sockets
from dtp.native import _udpio
from dtp.native import core as _core
from dtp.native.reference._udpio import recv_datagram_run as twin_recv
from dtp.native.reference._udpio import same_source as twin_same_source
from dtp.native.reference._udpio import send_datagram_run as twin_send

SENDERS: list[Callable[..., tuple[int, int, int]]] = [twin_send]
RECEIVERS: list[Callable[..., tuple[list[bytes], list[Any], int]]] = [twin_recv]
SAME_SOURCE: list[Callable[[bytes, int, list[int], int], int]] = [twin_same_source]
if _core.HAVE_NATIVE:
    SENDERS.append(_udpio.native_send_datagram_run)
    RECEIVERS.append(_udpio.native_recv_datagram_run)
    SAME_SOURCE.append(_udpio.native_same_source)

native_only = pytest.mark.skipif(not _core.HAVE_NATIVE, reason="the C core is not built")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx.setblocking(False)
    yield rx, tx
    rx.close()
    tx.close()


def _waiting(sock: socket.socket) -> list[bytes]:
    time.sleep(0.05)  # (loopback delivers at once; a margin all the same)
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


@native_only
def test_send_run_refuses_offsets_past_its_data(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    lib, ffi = _core.lib, _core.ffi
    tx.connect(rx.getsockname())
    data = b"abcdef"
    sent = ffi.new("uint64_t *")
    err = ffi.new("int *")
    for offsets in ([0, 3, 7], [0, 4, 2], [0, 1 << 40]):  # past the end, descending, far out
        offs = ffi.new("uint64_t[]", offsets)
        rc = lib.dtp_udp_send_run(
            tx.fileno(), data, len(data), offs, len(offsets) - 1, ffi.NULL, 0, -1, sent, err
        )
        assert rc == ErrorCode.ARG
    assert _waiting(rx) == []  # nothing left: not even the datagrams before the bad one
    offs = ffi.new("uint64_t[]", [0, 3, 6])
    fd = tx.fileno()
    assert lib.dtp_udp_send_run(fd, data, len(data), offs, 2, ffi.NULL, 0, -1, sent, err) == 2
    assert (sent[0], err[0]) == (6, 0)
    assert _waiting(rx) == [b"abc", b"def"]


@native_only
def test_recv_run_refuses_buffers_smaller_than_asked(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    lib, ffi = _core.lib, _core.ffi
    tx.sendto(b"kept", rx.getsockname())
    time.sleep(0.05)
    buf = ffi.new("uint8_t[]", 4 * 100)
    lens = ffi.new("uint32_t[]", 4)
    addrs = ffi.new("uint8_t[]", 4 * 128)
    alens = ffi.new("uint32_t[]", 4)
    err = ffi.new("int *")
    fd = rx.fileno()
    # (fd, buf, buf_cap, slot, max, lens, addrs, addrs_cap, addr_slot, addr_lens, err)
    assert (
        lib.dtp_udp_recv_run(fd, buf, 399, 100, 4, lens, ffi.NULL, 0, 128, alens, err)
        == ErrorCode.ARG
    )
    assert (
        lib.dtp_udp_recv_run(fd, buf, 400, 100, 4, lens, addrs, 511, 128, alens, err)
        == ErrorCode.ARG
    )
    assert (
        lib.dtp_udp_recv_run(fd, buf, 400, 100, 65, lens, ffi.NULL, 0, 128, alens, err)
        == ErrorCode.ARG
    )
    # refused before any read: the datagram still waits, and exact capacities take it
    assert lib.dtp_udp_recv_run(fd, buf, 400, 100, 4, lens, addrs, 512, 128, alens, err) == 1
    assert bytes(ffi.buffer(buf, lens[0])) == b"kept"


# addresses the C path cannot take as given (made from the receiver's port: one sent
# anywhere would arrive there)
BAD_ADDRESSES: list[Callable[[int], Any]] = [
    lambda port: ("127.0.0.1", port + 65536),  # port out of range (its low bits: rx's)
    lambda port: ("127.0.0.1", -1),
    lambda port: ("127.0.0.1", str(port)),  # port not an int
    lambda port: ("127.0.0.1 junk", port),  # inet_aton took this for 127.0.0.1
]


def _outcome(send: Callable[..., tuple[int, int, int]], sock: socket.socket, address: Any) -> Any:
    try:
        return send(sock, [b"x", b"y"], address)
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_both_backends_treat_a_bad_address_alike(
    pair: tuple[socket.socket, socket.socket], address: Callable[[int], Any]
) -> None:
    rx, tx = pair
    outcomes = [_outcome(send, tx, address(rx.getsockname()[1])) for send in SENDERS]
    assert all(o == outcomes[0] for o in outcomes), outcomes
    assert outcomes[0] != (2, 2, 0)  # none of them was sent
    assert _waiting(rx) == []


def test_an_address_equal_to_a_remembered_one_is_still_checked(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # the C path remembers each address's sockaddr; ("h", 5.0) == ("h", 5), yet sendto
    # refuses a float port: both backends refuse it after the int one was sent, too
    rx, tx = pair
    port = rx.getsockname()[1]
    for send in SENDERS:
        assert send(tx, [b"x"], ("127.0.0.1", port)) == (1, 1, 0)
    outcomes = [_outcome(send, tx, ("127.0.0.1", float(port))) for send in SENDERS]
    assert outcomes == [TypeError] * len(SENDERS), outcomes
    assert _waiting(rx) == [b"x"] * len(SENDERS)


@pytest.mark.parametrize(
    "address",
    [
        lambda port: ("::1", port, 1 << 32, 0),  # flow label beyond 32 bits
        lambda port: ("::1", port, 0, -1),  # scope negative
        lambda port: ("::1", port, "0", 0),
        lambda port: ("::1", port, 0.0, 0),  # equal to a remembered (.., 0, 0) as a key
        lambda port: ("::1%no-such-interface", port),
    ],
)
def test_both_backends_treat_a_bad_ipv6_address_alike(address: Callable[[int], Any]) -> None:
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
        rx.setblocking(False)
        tx.setblocking(False)
        for send in SENDERS:  # (remembered by the C path: the next must still be checked)
            send(tx, [b"x"], ("::1", rx.getsockname()[1], 0, 0))
        _waiting(rx)
        outcomes = []
        for send in SENDERS:  # (what sendto makes of it, sent or not: the same for both)
            outcomes.append((_outcome(send, tx, address(rx.getsockname()[1])), _waiting(rx)))
        assert all(o == outcomes[0] for o in outcomes), outcomes


def _sockaddr_in6(host: str, port: int, flow: int, scope: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, flow)
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("=I", scope)
    )


@pytest.mark.parametrize("host", ["fe80::1", "fe90::1", "febf::2", "2001:db8::1"])
def test_an_ipv6_source_is_what_recvfrom_gives(host: str) -> None:
    # (CPython's recvfrom: the scope in scope_id, the host bare, since 3.7)
    source = _udpio._source(_sockaddr_in6(host, 4000, 0, 1))
    assert source == (host, 4000, 0, 1)


def test_sources_agree_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx,
    ):
        try:
            rx.bind(("::1", 0))
            tx.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        rx.setblocking(False)
        seen = []
        for recv in RECEIVERS:
            tx.sendto(b"q", rx.getsockname())
            time.sleep(0.05)
            data, sources, err = recv(rx, 10, True)
            assert (data, err) == ([b"q"], 0)
            seen.append(sources[0])
        assert all(s == tx.getsockname() for s in seen)


@pytest.mark.parametrize("recv", RECEIVERS)
def test_flows_are_keyed_by_host_port_and_scope(
    recv: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = ("fe80::1", 5, 0, 2), ("fe80::1", 5, 0, 3)  # one host on two interfaces

    def fake(sock: Any, limit: int, sources: bool = False) -> Any:
        return [b"1", b"2", b"3", b"4"], [a, b, ("fe80::1", 5, 77, 2), ("10.0.0.1", 5)], 0

    monkeypatch.setattr(_sockets, "recv_datagram_run", fake)
    flows = _sockets.drain_by_source(None)  # type: ignore[arg-type]
    # the flow label does not split a flow; the scope does, and stays for the reply
    assert flows == {a: [b"1", b"3"], b: [b"2"], ("10.0.0.1", 5): [b"4"]}


def _same_source_outcome(
    count: Callable[[bytes, int, list[int], int], int],
    addrs: bytes,
    slot: int,
    lens: list[int],
    n: int,
) -> int | tuple[type[Exception], str]:
    try:
        return count(addrs, slot, lens, n)
    except Exception as exc:  # (any error: the backends' must be alike, and ValueError)
        return type(exc), str(exc)


#: Values the C core's size_t and uint32_t arguments cannot hold, and their edges
_OUTSIDE_UINT32 = [-(2**64), -16, -1, 2**32, 2**64]


@given(st.data())
def test_both_backends_count_the_sources_alike_as_the_first(data: st.DataObject) -> None:
    slot = data.draw(st.integers(min_value=1, max_value=12))
    first = data.draw(st.binary(min_size=slot, max_size=slot))
    n = data.draw(st.integers(min_value=-2, max_value=8))
    # slots mostly the first's bytes (some changed), lengths mostly the first's: runs of
    # one source that end somewhere, and bounds overrun now and then
    slots = [data.draw(st.sampled_from([first, first[:-1] + b"?", bytes(slot)])) for _ in range(n)]
    addrs = b"".join(slots)[: data.draw(st.integers(min_value=0, max_value=slot * max(n, 0) + 3))]
    size = data.draw(st.integers(min_value=0, max_value=slot + 1))
    lens = [
        data.draw(st.sampled_from([size, size, max(size - 1, 0)]))
        for _ in range(max(n, 0) + data.draw(st.integers(min_value=-1, max_value=1)))
    ]
    # in a quarter of the runs each, a length or the slot no uint32 holds (or its edges)
    odd = st.sampled_from([*_OUTSIDE_UINT32, 0, 2**32 - 1])
    if lens and data.draw(st.integers(min_value=0, max_value=3)) == 0:
        lens[data.draw(st.integers(min_value=0, max_value=len(lens) - 1))] = data.draw(odd)
    if data.draw(st.integers(min_value=0, max_value=3)) == 0:
        slot = data.draw(odd)
    outcomes = [_same_source_outcome(count, addrs, slot, lens, n) for count in SAME_SOURCE]
    assert all(o == outcomes[0] for o in outcomes)
    if isinstance(outcomes[0], tuple):
        assert outcomes[0][0] is ValueError
    else:
        assert outcomes[0] == 0 if n <= 0 else 1 <= outcomes[0] <= n


@pytest.mark.parametrize("count", SAME_SOURCE)
@pytest.mark.parametrize(
    ("slot", "lens", "n", "message"),
    [
        (16, [4], -1, "a negative count of sources"),
        (16, [4], -(2**64), "a negative count of sources"),
        (-16, [4], 1, "sources out of bounds"),
        (0, [4], 1, "sources out of bounds"),
        (2**32, [4], 1, "sources out of bounds"),
        (16, [2**32], 1, "a source length outside uint32"),
        (16, [-1], 1, "a source length outside uint32"),
        # (the run would stop at the first's length 4: C reads every length all the same)
        (16, [4, 2**32], 2, "a source length outside uint32"),
        (16, [4, -1], 2, "a source length outside uint32"),
        (16, [17], 1, "a source longer than its slot"),
        # (more than one fault: the first in the documented order)
        (-16, [2**32], -1, "a negative count of sources"),
        (2**32, [-1], 1, "sources out of bounds"),
        (16, [2**32, 4], 5, "sources out of bounds"),
        (16, [17, 2**32], 2, "a source length outside uint32"),
    ],
)
def test_same_source_refuses_arguments_outside_c_s_types_with_value_error(
    count: Callable[[bytes, int, list[int], int], int],
    slot: int,
    lens: list[int],
    n: int,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        count(bytes(32), slot, lens, n)


@pytest.mark.parametrize("count", SAME_SOURCE)
def test_same_source_of_no_sources_is_none_whatever_the_rest(
    count: Callable[[bytes, int, list[int], int], int],
) -> None:
    # (n 0: nothing is read, so nothing else is looked at, as dtp_udp_same_source)
    assert count(b"", -16, [2**32], 0) == 0
    assert count(b"", 0, [], 0) == 0


@pytest.mark.parametrize("recv", RECEIVERS)
def test_a_burst_of_two_sources_keeps_each_datagram_s_own(
    recv: Callable[..., tuple[list[bytes], list[Any], int]],
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, a = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        # (one source's run, another's, the first's again: each where it changes)
        order = [a, a, a, b, b, a, b]
        for i, tx in enumerate(order):
            tx.sendto(b"%d" % i, rx.getsockname())
        time.sleep(0.05)
        datagrams, sources, err = recv(rx, 64, True)
        assert (datagrams, err) == ([b"%d" % i for i in range(len(order))], 0)
        assert sources == [tx.getsockname() for tx in order]


@pytest.mark.parametrize("send", SENDERS)
def test_a_send_on_a_socket_with_a_timeout_never_waits(send: Callable[..., Any]) -> None:
    # a datagram socket pair of the Unix family: its queue fills and a send then blocks
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        left.setblocking(False)
        filled = 0
        while True:
            try:
                left.send(b"z" * 512)
            except BlockingIOError:
                break
            filled += 1
        assert filled > 0
        left.settimeout(30)
        started = time.monotonic()
        result = send(left, [b"late", b"later"])
        assert time.monotonic() - started < 10  # (30 if it waited for room)
        assert result == (0, 0, errno.EAGAIN)


def _full_pair() -> tuple[socket.socket, socket.socket]:
    """A datagram socket pair of the Unix family whose queue ``left`` to ``right`` is full."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.setblocking(False)
    while True:
        try:
            left.send(b"z" * 512)
        except BlockingIOError:
            return left, right


def _sleeping_in_kernel(thread: threading.Thread) -> bool:
    """Whether ``thread`` sleeps in a system call (its state in /proc is S)."""
    stat = f"/proc/self/task/{thread.native_id}/stat"
    with open(stat) as f:
        return f.read().rpartition(")")[2].split()[0] == "S"


@pytest.mark.parametrize("send", SENDERS)
def test_a_send_on_a_blocking_socket_waits_for_room(send: Callable[..., Any]) -> None:
    # the blocking relays' sockets: a full buffer holds the run back, as a blocking send
    # holds a datagram back, and drops nothing
    left, right = _full_pair()
    with left, right:
        left.setblocking(True)
        result: list[tuple[int, int, int]] = []
        sender = threading.Thread(target=lambda: result.append(send(left, [b"late", b"later"])))
        sender.start()
        deadline = time.monotonic() + 30
        while not _sleeping_in_kernel(sender):
            assert time.monotonic() < deadline, "the run never waited"
            time.sleep(0.01)
        assert sender.is_alive() and not result  # (waiting for room, not dropped)
        right.setblocking(False)
        received = []
        while sender.is_alive() or len(received) < 2 or received[-1] != b"later":
            try:
                data = right.recv(1024)
            except BlockingIOError:
                assert time.monotonic() < deadline, "the run never went"
                time.sleep(0.01)
                continue
            if data != b"z" * 512:
                received.append(data)
        sender.join(30)
        assert result == [(2, 9, 0)]
        assert received == [b"late", b"later"]
        assert os.get_blocking(left.fileno())  # (the socket's mode is untouched)
