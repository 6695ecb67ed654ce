"""Session 35: the blocking UDP forwarder and relay check their numbers up front, as
the asyncio ones now do (tests/test_s35_udpaio_review.py): ``UdpForwarder`` took an
``idle_timeout`` of None (its thread died silently at the first sweep), 0 or NaN, and a
float ``max_pending`` (every new source's datagrams lost, an "unexpected error" logged
per batch); ``relay_udp`` took ``idle_timeout=None`` and failed inside its loop."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

import dtp.socket
from dtp.errors import InvalidArgument
from dtp.keys import HostIdentity
from dtp.udp import UdpForwarder, relay_udp
from tests.leaks import resource_warnings
from tests.test_s35_udpaio_review import BAD_FORWARDER_ARGS


@pytest.mark.parametrize("kw", BAD_FORWARDER_ARGS, ids=repr)
def test_a_blocking_forwarder_refuses_bad_numbers(kw: dict[str, Any]) -> None:
    def connect() -> Any:
        raise AssertionError("no flow is made")

    def make() -> None:
        with pytest.raises(InvalidArgument, match=next(iter(kw))):
            UdpForwarder(("127.0.0.1", 0), connect, **kw).close()

    assert resource_warnings(make) == []  # (refused before the bind)


@pytest.mark.parametrize(
    "kw", [{"idle_timeout": None}, {"idle_timeout": 0}, {"report_every": 0}], ids=repr
)
def test_a_blocking_relay_refuses_a_bad_number_and_closes_its_connection(
    kw: dict[str, Any],
) -> None:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    raised: list[BaseException] = []
    done = threading.Event()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        try:
            relay_udp(sock, ("127.0.0.1", 9), **kw)
        except BaseException as exc:  # the error is the result
            raised.append(exc)
        done.set()

    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    client = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=5
    )
    try:
        assert done.wait(20)
        assert len(raised) == 1 and isinstance(raised[0], InvalidArgument), raised
        assert next(iter(kw)) in str(raised[0])
        client.settimeout(10)
        with contextlib.suppress(ConnectionError):
            assert client.recv(1) == b""  # closed by the relay
    finally:
        client.close()
        server.close()
