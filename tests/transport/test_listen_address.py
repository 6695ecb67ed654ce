"""Both servers check the address they are to listen on before anything listens.

``dtp.socket.create_server`` given a ``"host:port"`` string (or a list, or a port as a
str) failed inside ``bind`` with the socket's own words ("AF_INET address must be
tuple, not str"); ``dtp.aio.start_server`` given ``"host:port"`` as its host failed in
the name lookup (``gaierror``), and a ``(host, port)`` tuple as its host with "host and
port are needed". They now raise TypeError / ValueError (InvalidArgument for a port out
of range) naming the argument and what was given, with the check the paid servers and
``GraphServer`` make (one checker for them all).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import InvalidArgument
from dtp.identity.keys import HostIdentity

NOT_TUPLES: list[Any] = [
    "127.0.0.1:7400",
    ["127.0.0.1", 0],
    ("127.0.0.1", "7400"),
    ("127.0.0.1",),
    ("127.0.0.1", True),
    7400,
]


@pytest.mark.parametrize("address", NOT_TUPLES, ids=repr)
def test_the_blocking_server_wants_a_host_port_tuple(address: Any) -> None:
    with pytest.raises(TypeError) as caught:
        dtp.socket.create_server(address, identity=HostIdentity.generate())
    text = str(caught.value)
    assert text.startswith("address must be a (host, port) tuple such as ('127.0.0.1', 7400)")
    assert text.endswith(f"got {address!r}")


def test_the_blocking_server_wants_a_port_in_range() -> None:
    with pytest.raises(InvalidArgument, match=r"^address: port 70000 is outside 0\.\.65535$"):
        dtp.socket.create_server(("127.0.0.1", 70000), identity=HostIdentity.generate())


def test_the_blocking_server_still_listens_on_good_addresses() -> None:
    for address in [("127.0.0.1", 0), ("::1", 0, 0, 0)]:
        try:
            server = dtp.socket.create_server(address, identity=HostIdentity.generate())
        except OSError as exc:  # (a machine without IPv6)
            assert address[0] == "::1", exc
            continue
        with server:
            assert server.address[1] > 0


def _start(host: Any, port: Any, **kw: Any) -> dtp.aio.DTPServer:
    async def main() -> dtp.aio.DTPServer:
        server = await dtp.aio.start_server(
            lambda r, w: None, host, port, identity=HostIdentity.generate(), **kw
        )
        server.close()
        await server.wait_closed()
        return server

    return asyncio.run(main())


def test_the_asyncio_server_refuses_host_port_in_one_string() -> None:
    for port in (7400, None):
        with pytest.raises(ValueError) as caught:
            _start("127.0.0.1:7400", port)
        text = str(caught.value)
        assert "'127.0.0.1:7400'" in text
        assert "pass the host and the port apart" in text


@pytest.mark.parametrize(
    ("host", "port", "named"),
    [
        (("127.0.0.1", 7400), None, "host must be a str"),
        (7400, None, "host must be a str"),
        ("127.0.0.1", "7400", "port must be an int"),
        ("127.0.0.1", 7400.0, "port must be an int"),
    ],
    ids=repr,
)
def test_the_asyncio_server_checks_host_and_port_types(host: Any, port: Any, named: str) -> None:
    with pytest.raises(TypeError) as caught:
        _start(host, port)
    text = str(caught.value)
    assert text.startswith(named)
    assert repr(host if named.startswith("host") else port) in text


def test_the_asyncio_server_checks_its_websocket_address() -> None:
    with pytest.raises(TypeError) as caught:
        _start("127.0.0.1", 0, websocket="127.0.0.1:8443")
    assert str(caught.value).startswith("websocket must be a (host, port) tuple")
    assert "'127.0.0.1:8443'" in str(caught.value)


def test_the_asyncio_server_still_listens_on_good_addresses() -> None:
    _start("127.0.0.1", 0)
    _start(["127.0.0.1"], 0)  # (a list of hosts, as asyncio.start_server takes)
    with pytest.raises(InvalidArgument, match=r"^port 70000 is outside 0\.\.65535$"):
        _start("127.0.0.1", 70000)
