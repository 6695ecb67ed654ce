"""Second reading of a connect to a carrier endpoint keeping the config's keys
(dtp.connection.direct_client_config): server keys that are bytes-like but not bytes,
keys that are not 32 bytes, and a server key and a pin that name different servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.connection import ConnectionConfig, direct_client_config
from dtp.keys import HostIdentity
from tests.test_s34_direct_config_pins import CLIENT, OTHER, SERVER
from tests.test_s34_direct_config_pins import server as echo_server


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_bytes_like_server_key_connects_blocking(kind: type) -> None:
    # the blocking adapter's keys made ahead (dtp.keys_ahead) took bytes alone: a
    # bytearray or memoryview server key failed with a TypeError from the crypto
    with echo_server() as (srv, peers):
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
    with echo_server() as (srv, peers):
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
