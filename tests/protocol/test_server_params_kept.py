"""A server packs its transport parameters (docs/protocol.md 8.2) once per config and
version, and answers every client with those bytes (``Connection._transport_params``):
each client must still read its own server's, as if they were packed for it."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from dtp.protocol.connection import Connection, ConnectionConfig
from tests.support.pairs import CLIENT_ID, SERVER_ID, establish


def _client() -> Connection:
    cfg = ConnectionConfig(identity=CLIENT_ID, is_client=True, server_static=SERVER_ID.noise_public)
    return Connection(cfg, ephemeral_key=os.urandom(32), now=0.0)


def _params_read(server_cfg: ConnectionConfig) -> dict[str, object]:
    server = Connection(server_cfg, ephemeral_key=os.urandom(32), now=0.0)
    c, _, _ = establish(_client(), server)
    assert c.conn.established
    return c.conn.peer_params


@pytest.mark.parametrize("rounds", [1, 3])
def test_each_client_reads_its_servers_own_parameters(rounds: int) -> None:
    base = ConnectionConfig(identity=SERVER_ID, is_client=False)
    other = replace(base, idle_timeout=base.idle_timeout + 7, max_streams=base.max_streams + 1)
    for _ in range(rounds):
        first, second = _params_read(base), _params_read(other)
        assert first["it"] == int(base.idle_timeout * 1000)
        assert second["it"] == int(other.idle_timeout * 1000)
        assert (first["ms"], second["ms"]) == (base.max_streams, other.max_streams)


def test_a_config_equal_to_another_gets_the_same_parameters() -> None:
    one = ConnectionConfig(identity=SERVER_ID, is_client=False, stream_window=1 << 17)
    two = replace(one)
    assert two is not one
    assert _params_read(one) == _params_read(two) == _params_read(one)
