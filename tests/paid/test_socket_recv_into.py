"""PaidSocket.recv_into with the gate's and the rate limit's bookkeeping inline (one
call per read instead of four): what each read counts against the credit, the byte
rate limit still holding the reader back, and a socket's errors for a bad size."""

from __future__ import annotations

import array
import time
import types
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._policy import CALL_COST
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from tests.support.paid_inprocess import ident, paid_service

SLA = Sla(price_per_kib=1, price_per_request=0, min_deposit=1 << 30)
SERVER, CLIENT = ident(0x73), ident(0x74)


def _connect(service: Any) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(
        service.address, timeout=10, ledger=service.ledger, identity=CLIENT, deposit=1 << 30
    )


def test_each_read_counts_against_the_credit_and_keeps_a_sockets_errors(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def handle(sock: PaidSocket) -> None:
        paid = sock._paid
        buf = bytearray(8)
        n = sock.recv_into(buf)  # the whole buffer: no size given
        seen["first"] = bytes(buf[:n])
        before = paid.credit.read  # (the gate looked at by the first read)
        # a size larger than the buffer: the socket's ValueError, nothing read
        with pytest.raises(ValueError):
            sock.recv_into(bytearray(4), 5)
        with pytest.raises(ValueError):
            sock.recv_into(bytearray(4), -1)
        # ... also when the gate allows less than the size (the read is cut to it)
        credit, paid.credit.read = paid.credit.read, 2
        paid.room = lambda nbytes: 2  # type: ignore[method-assign]
        with pytest.raises(ValueError):
            sock.recv_into(bytearray(4), 5)
        del paid.room
        paid.credit.read = credit
        # a size as long as the buffer reads as if none was given; a shorter one stops there
        got = bytearray()
        reads = 0
        while len(got) < 8:
            reads += 1
            part = bytearray(8)
            k = sock.recv_into(part, 8 if not got else 3)
            assert k <= (8 if not got else 3)
            got += part[:k]
        seen["rest"] = bytes(got)
        seen["counted"] = before - paid.credit.read
        seen["reads"] = reads
        # a buffer whose items are wider than a byte: its size in bytes
        ints = array.array("i", [0, 0])
        k = sock.recv_into(ints)
        seen["ints"] = ints.tobytes()[:k]
        sock.sendall(b"ok")
        sock.recv(1)

    with paid_service(tmp_path, SERVER, CLIENT, 83, SLA, handle) as service, _connect(service) as s:
        s.sendall(b"abcdefgh")
        time.sleep(0.2)  # (so that the first read finds them all)
        s.sendall(b"ijklmnop")
        time.sleep(0.2)
        s.sendall(b"\x01\x00\x00\x00\x02\x00\x00\x00")
        assert s.recv(2) == b"ok"
    assert seen["first"] == b"abcdefgh"
    assert seen["rest"] == b"ijklmnop"
    # each read counts as CALL_COST at least (what moves around the wrapper is still
    # looked at within a bounded number of calls)
    assert seen["counted"] == seen["reads"] * CALL_COST
    assert seen["ints"] == b"\x01\x00\x00\x00\x02\x00\x00\x00"


def test_the_byte_rate_limit_still_holds_back_a_reader_of_recv_into(tmp_path: Path) -> None:
    rate = 100_000  # bytes/s: a burst of a quarter second, then the rate
    total = 200_000
    took: list[float] = []

    def handle(sock: PaidSocket) -> None:
        buf = bytearray(1 << 16)
        got = 0
        start = time.monotonic()
        while got < total:
            n = sock.recv_into(buf)
            assert n
            got += n
        took.append(time.monotonic() - start)
        sock.sendall(b"ok")
        sock.recv(1)

    policy = ServicePolicy(refresh_interval=0.05)
    with paid_service(tmp_path, SERVER, CLIENT, 84, SLA, handle, policy) as service:
        host_id = service.address.removeprefix("dtp://").rsplit(":", 1)[0]
        service.ledger.set_client_limits(SERVER, host_id, 0, rate, 0)
        time.sleep(0.3)  # (the server reads the Host again every 50 ms)
        with _connect(service) as s:
            s.sendall(bytes(total))
            assert s.recv(2) == b"ok"
    # the first 25 kB go at once (the burst); the rest, less the last read's debt,
    # at 100 kB/s: over a second in all (unlimited, it takes milliseconds)
    assert took and took[0] >= (total - rate // 4 - (1 << 16)) / rate


class _Size(int):
    """An int subclass as a size (an operator.index type, not an int)."""


# (buffer, size[, flags]) made afresh for each call
_BAD_CALLS: dict[str, Any] = {
    "size past the buffer": lambda: (bytearray(4), 5),
    "an int subclass past the buffer": lambda: (bytearray(4), _Size(5)),
    "a size past ssize_t": lambda: (bytearray(4), 2**63),
    "a negative size": lambda: (bytearray(4), -1),
    "a float size": lambda: (bytearray(8), 5.0),
    "a read-only buffer": lambda: (b"abcd", 5),
    "a strided view": lambda: (memoryview(bytearray(8))[::2], 5),
    "flags": lambda: (bytearray(4), 5, 1),
}


@pytest.mark.parametrize("call", list(_BAD_CALLS))
def test_a_read_the_gate_cuts_fails_as_the_sockets_would(call: str) -> None:
    """When the gate allows less than the size asked for, the call is checked as made
    first: cut to the credit, a size past the buffer (or of a subclass of int) escaped
    the socket's checks, and bytes were read."""

    def outcome(fn: Any, args: tuple[Any, ...]) -> str:
        try:
            fn(*args)
        except Exception as exc:
            return type(exc).__name__
        return "read"

    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    with (
        server,
        dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=10
        ) as client,
    ):
        accepted, _ = server.accept(timeout=10)
        with accepted:
            client.sendall(bytes(64))
            time.sleep(0.1)
            accepted.settimeout(0)
            want = outcome(accepted.recv_into, _BAD_CALLS[call]())
            assert want != "read"
            # a paid connection whose gate lets 2 bytes go
            paid = types.SimpleNamespace(
                credit=types.SimpleNamespace(read=2),
                room=lambda nbytes: 2,
                wait_paid=lambda: None,
                buckets=types.SimpleNamespace(
                    bytes=types.SimpleNamespace(rate=0), requests=types.SimpleNamespace(rate=0)
                ),
            )
            metered = PaidSocket(accepted, paid)  # type: ignore[arg-type]
            assert outcome(metered.recv_into, _BAD_CALLS[call]()) == want
            assert accepted.recv(64) == bytes(64)  # nothing was read by the bad calls
