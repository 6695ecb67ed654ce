"""A connect to a carrier endpoint keeps what the config given holds: its identity and
its server key pins. create_connection / open_connection replaced them by their own
arguments -- None when not given -- so a config pinning a server connected by XX to any
server, and one carrying our keys connected as a fresh anonymous identity.

A connect to a carrier endpoint keeping the config's keys
(dtp.protocol.connection.direct_client_config): server keys that are bytes-like but not bytes,
keys that are not 32 bytes, and a server key and a pin that name different servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import HandshakeError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig, direct_client_config

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
OTHER = HostIdentity.generate().noise_public  # no server holds it


@contextmanager
def server() -> Iterator[tuple[dtp.socket.DTPServer, list[bytes | None]]]:
    """A server that records each client's static key and answers one read."""
    peers: list[bytes | None] = []
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as srv:
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    sock, _ = srv.accept(timeout=0.2)
                except Exception:
                    continue
                with sock:
                    peers.append(sock.peer_static_key)
                    data = sock.recv(16)
                    sock.sendall(data)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield srv, peers
        finally:
            stop.set()
            thread.join(10)


def _exchange(sock: dtp.socket.DTPSocket) -> None:
    sock.sendall(b"hi")
    assert sock.recv(16) == b"hi"


PINS = [
    pytest.param({"server_static": OTHER}, id="server_static"),
    pytest.param({"expected_server_static": OTHER}, id="expected_server_static"),
]


@pytest.mark.parametrize("pin", PINS)
def test_a_config_pinning_another_key_is_not_connected(pin: dict[str, bytes], api: str) -> None:
    with server() as (srv, _):
        config = ConnectionConfig(identity=CLIENT, is_client=True, **pin)
        if api == "blocking":
            with pytest.raises(HandshakeError):
                dtp.socket.create_connection(srv.address, timeout=5, config=config)
            return

        async def main() -> None:
            host, port = srv.address[:2]
            with pytest.raises(HandshakeError):
                await dtp.aio.open_connection(host, port, config=config, timeout=5)

        asyncio.run(main())


def test_the_configs_identity_and_right_pin_are_kept() -> None:
    with server() as (srv, peers):
        for pin in ("server_static", "expected_server_static"):
            config = ConnectionConfig(identity=CLIENT, is_client=True, **{pin: SERVER.noise_public})
            with dtp.socket.create_connection(srv.address, timeout=5, config=config) as sock:
                _exchange(sock)
                assert sock.peer_static_key == SERVER.noise_public

            async def main(config: ConnectionConfig = config) -> None:
                host, port = srv.address[:2]
                reader, writer = await dtp.aio.open_connection(host, port, config=config, timeout=5)
                writer.write(b"hi")
                assert await reader.read(16) == b"hi"
                writer.close()
                await writer.wait_closed()

            asyncio.run(main())
        # the server saw our keys each time, not an anonymous identity's
        assert peers == [CLIENT.noise_public] * 4
        # an identity given as the argument still wins over the config's
        other = HostIdentity.generate()
        config = ConnectionConfig(identity=CLIENT, is_client=True)
        with dtp.socket.create_connection(
            srv.address, timeout=5, config=config, identity=other, server_key=SERVER.noise_public
        ) as sock:
            _exchange(sock)
        assert peers[-1] == other.noise_public


def test_a_key_given_both_ways_must_agree() -> None:
    config = ConnectionConfig(identity=CLIENT, is_client=True, server_static=SERVER.noise_public)
    with pytest.raises(ValueError, match="server_key differs from the config's server_static"):
        dtp.socket.create_connection(("127.0.0.1", 9), timeout=1, config=config, server_key=OTHER)
    pinned = ConnectionConfig(
        identity=CLIENT, is_client=True, expected_server_static=SERVER.noise_public
    )

    async def main() -> None:
        with pytest.raises(ValueError, match="expected_server_key differs"):
            await dtp.aio.open_connection(
                "127.0.0.1", 9, config=pinned, expected_server_key=OTHER, timeout=1
            )

    asyncio.run(main())


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_bytes_like_server_key_connects_blocking(kind: type) -> None:
    # the blocking adapter's keys made ahead (dtp.identity._ahead) took bytes alone: a
    # bytearray or memoryview server key failed with a TypeError from the crypto
    with server() as (srv, peers):
        key = kind(SERVER.noise_public)
        with dtp.socket.create_connection(srv.address, timeout=5, server_key=key) as sock:
            sock.sendall(b"hi")
            assert sock.recv(16) == b"hi"
            assert sock.peer_static_key == SERVER.noise_public
        config = ConnectionConfig(identity=CLIENT, is_client=True, server_static=key)
        with dtp.socket.create_connection(srv.address, timeout=5, config=config) as sock:
            sock.sendall(b"hi")
            assert sock.recv(16) == b"hi"
        assert peers[-1] == CLIENT.noise_public


def test_the_config_made_holds_the_keys_as_bytes() -> None:
    key = SERVER.noise_public
    cfg, made = direct_client_config(None, CLIENT, bytearray(key), memoryview(key), lambda: CLIENT)
    assert not made
    assert type(cfg.server_static) is bytes and cfg.server_static == key
    assert type(cfg.expected_server_static) is bytes and cfg.expected_server_static == key


@pytest.mark.parametrize(
    ("keys", "error", "words"),
    [
        ({"server_key": SERVER.noise_public[:31]}, ValueError, "server_key must be 32 bytes"),
        ({"expected_server_key": 32}, TypeError, "expected_server_key must be 32 bytes"),
        ({"server_key": SERVER.noise_public.hex()}, TypeError, "server_key must be 32 bytes"),
    ],
    ids=["key-31", "pin-int", "key-hex"],
)
def test_a_server_key_not_32_bytes_is_named_before_any_connect(
    keys: dict[str, Any], error: type[Exception], words: str
) -> None:
    # port 9 of localhost: refused at once, so an error raised after the carrier
    # connect is a ConnectionRefused, not the key's own
    with pytest.raises(error, match=words):
        dtp.socket.create_connection(("127.0.0.1", 9), timeout=2, **keys)

    async def main() -> None:
        with pytest.raises(error, match=words):
            await dtp.aio.open_connection("127.0.0.1", 9, timeout=2, **keys)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("config_keys", "keys", "words"),
    [
        (
            {"expected_server_static": OTHER},
            {"server_key": SERVER.noise_public},
            "server_key and the config's expected_server_static differ",
        ),
        (
            {"server_static": SERVER.noise_public},
            {"expected_server_key": OTHER},
            "the config's server_static and expected_server_key differ",
        ),
        (
            {},
            {"server_key": SERVER.noise_public, "expected_server_key": OTHER},
            "server_key and expected_server_key differ",
        ),
    ],
    ids=["config-pin", "config-key", "arguments"],
)
def test_a_server_key_and_a_pin_naming_different_servers_are_refused(
    config_keys: dict[str, bytes], keys: dict[str, bytes], words: str
) -> None:
    # IK to the key given, the other one pinned: our static key and proof went to the
    # server in the first message, and only its answer failed the pin
    with server() as (srv, peers):
        config = ConnectionConfig(identity=CLIENT, is_client=True, **config_keys)
        with pytest.raises(ValueError, match=words):
            dtp.socket.create_connection(srv.address, timeout=5, config=config, **keys)

        async def main() -> None:
            host, port = srv.address[:2]
            with pytest.raises(ValueError, match=words):
                await dtp.aio.open_connection(host, port, config=config, timeout=5, **keys)

        asyncio.run(main())
        assert peers == []  # nothing reached the server


def test_a_refused_connect_takes_no_anonymous_identity() -> None:
    taken: list[HostIdentity] = []

    def anonymous() -> HostIdentity:
        taken.append(HostIdentity.generate())
        return taken[-1]

    with pytest.raises(ValueError, match="differ"):
        direct_client_config(None, None, SERVER.noise_public, OTHER, anonymous)
    assert taken == []


def test_a_config_made_from_the_defaults_is_the_one_the_dataclass_makes() -> None:
    """Each direct connect without a config gets the defaults checked once, not again:
    the config it gets equals, field by field, the one ConnectionConfig makes, and
    carries its own keys (the connect before it made the same kind of config)."""
    for key, pin, identity in (
        (SERVER.noise_public, None, CLIENT),
        (None, SERVER.noise_public, SERVER),
        (bytearray(SERVER.noise_public), None, CLIENT),
    ):
        cfg, made = direct_client_config(None, identity, key, pin, HostIdentity.generate)
        expected = ConnectionConfig(
            identity=identity,
            is_client=True,
            server_static=None if key is None else bytes(key),
            expected_server_static=pin,
        )
        assert not made
        assert type(cfg) is ConnectionConfig
        assert vars(cfg) == vars(expected)
        assert type(cfg.server_static) is (bytes if key is not None else type(None))
    anonymous, made = direct_client_config(None, None, None, None, HostIdentity.generate)
    assert made and anonymous.identity not in (SERVER, CLIENT)
    assert vars(anonymous) == vars(ConnectionConfig(identity=anonymous.identity, is_client=True))
