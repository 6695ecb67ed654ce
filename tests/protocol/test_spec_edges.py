"""docs/protocol.md's edge rules, each checked on the code: the pre-verdict charge
(8.5), which error wins (11), low-order X25519 keys (15), the carrier's mode (10.4),
``it`` = 0 (8.2) and the state tables (14)."""

from __future__ import annotations

import dataclasses

import pytest

from dtp.errors import HandshakeError
from dtp.identity._noise import Handshake
from dtp.native import core as _core
from dtp.native.types import FRAME_DATAGRAM, FRAME_STREAM, RawFrame
from dtp.protocol._events import DatagramReceived
from dtp.protocol._state import CloseCode, ConnState, RecvState, SendState
from dtp.protocol.connection import ConnectionConfig
from tests.protocol.hostile_frames import xx_authenticated_server
from tests.support.pairs import CLIENT_ID, connect, sealed_by
from tests.support.paths import ROOT

SPEC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_pre_verdict_charge_drops_an_over_limit_datagram_silently() -> None:
    """8.5: 64 bytes per held event plus a DATAGRAM's length; past the connection
    window a DATAGRAM is dropped, and the connection goes on."""
    client, server = xx_authenticated_server()
    window = server.config.connection_window
    size = 16000
    frame = _core.encode_frames([RawFrame(FRAME_DATAGRAM, 0, 0, 0, b"d" * size)])
    fits = window // (size + 64)
    for _ in range(fits + 5):
        server.receive_data(sealed_by(client, frame), 0.0)
    assert not server.closed
    assert server._held_bytes == (fits + 5) * (size + 64)  # charged, dropped ones too
    held = [e for e in server._held_events or () if isinstance(e, DatagramReceived)]
    assert len(held) == fits


def test_a_frame_with_a_gap_beyond_flow_control_is_a_flow_control_error() -> None:
    """11, "Which error wins": flow control is checked before contiguity."""
    c, s, _ = connect(stream_window=1024)
    stream = c.conn.open_stream()
    c.conn.send_stream_data(stream, b"x")
    s.conn.receive_data(c.conn.data_to_send(0.0), 0.0)
    frame = _core.encode_frames([RawFrame(FRAME_STREAM, stream, 5000, 0, b"y")])
    s.conn.receive_data(sealed_by(c.conn, frame), 0.0)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FLOW_CONTROL_ERROR, term


def test_a_gap_within_flow_control_is_a_protocol_violation() -> None:
    c, s, _ = connect()
    stream = c.conn.open_stream()
    c.conn.send_stream_data(stream, b"x")
    s.conn.receive_data(c.conn.data_to_send(0.0), 0.0)
    frame = _core.encode_frames([RawFrame(FRAME_STREAM, stream, 500, 0, b"y")])
    s.conn.receive_data(sealed_by(c.conn, frame), 0.0)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION, term


def test_a_record_that_does_not_parse_takes_none_of_its_frames() -> None:
    """11: a record is opened whole first; a bad frame anywhere in it is
    FRAME_ENCODING_ERROR even after a frame that breaks another rule."""
    c, s, _ = connect()
    stream = c.conn.open_stream()
    gap = _core.encode_frames([RawFrame(FRAME_STREAM, stream, 500, 0, b"y")])
    s.conn.receive_data(sealed_by(c.conn, gap + b"\x3f"), 0.0)  # 0x3f: no such type
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FRAME_ENCODING_ERROR, term


# The X25519 points of small order (RFC 7748 section 6.1; as in libsodium's list), and
# the same with the top bit set, which X25519 ignores.
_LOW_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]
_LOW_ORDER += [p[:31] + bytes([p[31] | 0x80]) for p in _LOW_ORDER]


@pytest.mark.parametrize("point", _LOW_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_a_low_order_x25519_key_fails_the_handshake(point: bytes) -> None:
    """15: an all-zero Diffie-Hellman result is refused, as a server static key (IK
    client) and as a client ephemeral key (the server reading message 1)."""
    client = Handshake.initiator(CLIENT_ID.noise_private_bytes(), bytes(range(32)), point)
    with pytest.raises(HandshakeError):
        client.write_message()
    server = Handshake.responder(CLIENT_ID.noise_private_bytes(), bytes(range(32, 64)))
    with pytest.raises(HandshakeError):
        server.read_message(bytes([1]) + point + bytes(64 + 16))


def test_the_carrier_mode_cannot_change_on_a_live_connection() -> None:
    """10.4: the mode is the carrier's, fixed for the connection."""
    c, _, _ = connect()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.conn.config.reliable_carrier = False  # type: ignore[misc]
    assert "reliable" not in " ".join(c.conn.peer_params)  # nothing on the wire says it


def test_a_peer_idle_timeout_of_zero_means_the_shortest_keepalive() -> None:
    """8.2: ``it`` = 0 is valid, and the receiver keeps alive every second."""
    c, s, _ = connect(idle_timeout=0.001)  # (this side cannot send 0; 1 ms reads alike)
    assert s.conn.peer_params["it"] == 1
    c2, s2, _ = connect()
    assert s.conn._keepalive == 1.0 and s2.conn._keepalive == 15.0
    del c, c2


def test_the_state_tables_name_every_state() -> None:
    """14: every connection and stream state of the code has its row."""
    states = SPEC[SPEC.index("## 15. States") : SPEC.index("## 16.")]
    for state in [*ConnState, *SendState, *RecvState]:
        assert f"| {state.name} |" in states or f" {state.name} " in states, state


def test_the_registries_match_the_code() -> None:
    registries = SPEC[SPEC.index("## 17. Registries") :]
    from dtp.protocol.connection._config import _KNOWN_PARAMS

    for key in _KNOWN_PARAMS.values():
        assert f"| `{key}` |" in registries, key
    assert ConnectionConfig.__dataclass_params__.frozen  # type: ignore[attr-defined]
