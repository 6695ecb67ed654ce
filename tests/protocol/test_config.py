"""ConnectionConfig's checks and Connection.reset_stream: ``idle_timeout`` checked
only when a connection was made (LocalProtocolError there), ``max_datagram_size`` never
checked, the seconds refusing a Fraction (a real number, as ``dtp.socket`` timeouts take
it) and failing on an int past the float range with OverflowError, and the
application's own reset of a stream whose sending was done (RFC 9000 3.1, "Data Recvd")
still sending a RESET_STREAM. Connections are driven in memory with virtual clocks.

ConnectionConfig's numbers: the windows, the stream limit, the record size, the
port and the connection ID were checked only by ``Connection()`` (LocalProtocolError),
so a bad config was taken when made and failed only at a connection -- inside a
server's accept, or after a ledger deposit for a connect by host ID -- and a
``max_datagram_size`` of 0 or less was taken, refusing every datagram. Each is now
refused when the config is made (and by ``dataclasses.replace``), with the TypeError /
ValueError the config's other values raise. Connections are driven in memory.

The configs made past the checks of the fields that did not change (a connection by
host ID's, a connect bounded by its caller's timeout) are the ones ``replace`` makes,
and refuse what it refuses, with its errors."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction

import pytest

from dtp.errors import LocalProtocolError
from dtp.native.types import FRAME_RESET_STREAM, FRAME_STREAM_FIN
from dtp.protocol._events import DatagramReceived, StreamResetReceived
from dtp.protocol.connection import (
    CloseCode,
    Connection,
    ConnectionConfig,
    ledger_client_config,
    with_handshake_timeout,
)
from tests.protocol.hostile_frames import frames_sent_by_client
from tests.support.pairs import CLIENT_ID, SERVER_ID, Side, connect, make_pair, run

# -- 1. idle_timeout and max_datagram_size, checked when the config is made --------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (10**400, ValueError),  # past the float range: OverflowError (when it was checked)
        ("60", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
    ids=["zero", "negative", "nan", "inf", "huge-int", "str", "none", "bool"],
)
def test_a_bad_idle_timeout_is_refused_when_the_config_is_made(
    value: object, error: type[Exception]
) -> None:
    # it was refused only by Connection(), with LocalProtocolError (a str, None or a
    # bool: a TypeError naming no option, or taken)
    with pytest.raises(error, match="idle_timeout"):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, idle_timeout=value)  # type: ignore[arg-type]
    good = ConnectionConfig(identity=CLIENT_ID, is_client=True)
    with pytest.raises(error, match="idle_timeout"):
        replace(good, idle_timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["16000", 16000.0, None, True])
def test_a_max_datagram_size_that_is_no_int_is_refused_when_the_config_is_made(
    value: object,
) -> None:
    # taken, then every send_datagram failed comparing it with the record's room (or,
    # a bool or a float, took it as a size)
    with pytest.raises(TypeError, match="max_datagram_size"):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, max_datagram_size=value)  # type: ignore[arg-type]
    # (0 or less is refused too: a ValueError; 1 byte is the least)
    ConnectionConfig(identity=CLIENT_ID, is_client=True, max_datagram_size=1)


# -- 2. the seconds: any real number, stored as a float --------------------------------


def test_seconds_given_as_fractions_are_taken_as_floats() -> None:
    config = ConnectionConfig(
        identity=CLIENT_ID,
        is_client=True,
        handshake_timeout=Fraction(5, 2),
        keepalive_interval=Fraction(3, 2),
        idle_timeout=Fraction(7, 2),
    )
    seconds = (config.handshake_timeout, config.keepalive_interval, config.idle_timeout)
    assert seconds == (2.5, 1.5, 3.5)
    assert all(type(value) is float for value in seconds)
    # an int is a float too, as the clocks it meets are
    assert type(replace(config, idle_timeout=60).idle_timeout) is float
    # a Decimal is no numbers.Real (nor does a socket's settimeout take one)
    for name in ("handshake_timeout", "keepalive_interval", "idle_timeout"):
        with pytest.raises(TypeError, match=name):
            replace(config, **{name: Decimal("0.5")})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=name):
            replace(config, **{name: Fraction(-1, 2)})  # type: ignore[arg-type]


def test_a_connection_runs_on_fraction_seconds() -> None:
    # the timers meet the clocks' floats; the idle timeout goes to the peer in ms
    c, s, link = connect(idle_timeout=Fraction(3, 1), keepalive_interval=Fraction(1, 1))
    assert s.conn.peer_params["it"] == 3000
    run(link, c, s, lambda: link.now > 20)  # keepalives keep it alive
    assert c.conn.established and s.conn.established
    s.conn.handle_timer(link.now + 3.5)
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.IDLE_TIMEOUT
    client, _server = make_pair(handshake_timeout=Fraction(1, 2))
    client.handle_timer(0.75)
    assert client.termination is not None
    assert client.termination.error_code == CloseCode.HANDSHAKE_FAILED


# -- 3. the application's reset of a stream whose sending is done -----------------------


def _resets(frames: list[object]) -> list[tuple[int, int]]:
    return [(f.a, f.b) for f in frames if f.type == FRAME_RESET_STREAM]  # type: ignore[attr-defined]


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_resetting_a_stream_whose_fin_was_acknowledged_sends_nothing(reliable: bool) -> None:
    c, s, link = connect(reliable_carrier=reliable)
    done = c.conn.open_stream()
    c.conn.send_stream_data(done, b"hello", end_stream=True)

    def acknowledged() -> bool:
        stream = c.conn.streams.by_id[done]
        return done in s.eof and stream.fin_acked and stream.base_offset == stream.end_offset

    assert run(link, c, s, until=acknowledged)
    frames_sent_by_client(c, s, reliable, link.now)  # (whatever was due: ACKs on a lossy carrier)
    c.conn.reset_stream(done, 5)
    c.conn.reset_stream(done, 6)
    assert _resets(frames_sent_by_client(c, s, reliable, link.now)) == []
    assert c.conn.streams.by_id[done].send_state.value == "fin-sent"
    # the receiving half is as it was: the server's bytes on it still arrive
    s.conn.send_stream_data(done, b"answer", end_stream=True)
    assert run(link, c, s, until=lambda: done in c.eof)
    assert bytes(c.data[done]) == b"answer"
    assert not s.of(StreamResetReceived)
    assert done not in c.conn.streams.by_id  # both halves done: forgotten, as ever
    with pytest.raises(LocalProtocolError, match="no stream"):
        c.conn.reset_stream(done, 7)
    # a stream still sending is reset once, however often the application asks
    busy = c.conn.open_stream()
    c.conn.send_stream_data(busy, b"more to come")
    c.conn.reset_stream(busy, 8)
    c.conn.reset_stream(busy, 9)
    assert _resets(frames_sent_by_client(c, s, reliable, link.now)) == [(busy, 8)]
    if not reliable:
        # a FIN sent but not acknowledged may be lost: that stream is reset still
        sid = c.conn.open_stream()
        c.conn.send_stream_data(sid, b"x", end_stream=True)
        assert any(
            f.type == FRAME_STREAM_FIN for f in frames_sent_by_client(c, s, False, link.now)
        )  # lost
        c.conn.reset_stream(sid, 10)
        assert _resets(frames_sent_by_client(c, s, False, link.now)) == [(sid, 10)]


def test_a_reset_after_the_fin_was_handed_to_a_reliable_carrier_sends_nothing() -> None:
    # a reliable carrier delivers what it takes: the FIN sealed with the data by
    # send_stream_data is "Data Recvd" at once, and a RESET_STREAM followed it
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"hello", end_stream=True)
    c.conn.reset_stream(sid, 3)
    frames = frames_sent_by_client(c, s, True, link.now)
    assert _resets(frames) == []
    assert [(f.a, f.data) for f in frames if f.type == FRAME_STREAM_FIN] == [(sid, b"hello")]


# (field values, error, what the message says besides the field's name)
BAD: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"stream_window": -1}, ValueError, "from 0 to 2**62 - 1"),
    ({"stream_window": 2**62}, ValueError, "from 0 to 2**62 - 1"),
    ({"stream_window": 4.0}, TypeError, "int"),
    ({"connection_window": -1}, ValueError, "from 0 to 2**62 - 1"),
    ({"connection_window": 2**64}, ValueError, "from 0 to 2**62 - 1"),
    ({"connection_window": "8"}, TypeError, "int"),
    ({"max_streams": -1}, ValueError, "from 0 to 2**62 - 1"),
    ({"max_streams": 2**62}, ValueError, "from 0 to 2**62 - 1"),
    ({"max_streams": True}, TypeError, "int"),
    ({"reliable_carrier": False, "stream_window": 0}, ValueError, "from 1 to 2**32 - 1"),
    ({"reliable_carrier": False, "stream_window": 1 << 32}, ValueError, "2**32 - 1"),
    ({"max_record_plaintext": 0}, ValueError, "from 1 to 16384"),
    ({"max_record_plaintext": 16385}, ValueError, "from 1 to 16384"),
    ({"max_record_plaintext": "1000"}, TypeError, "int"),
    ({"reliable_carrier": False, "max_record_plaintext": 21}, ValueError, "from 22 to 16384"),
    ({"port": -1}, ValueError, "from 0 to 65535"),
    ({"port": 65536}, ValueError, "from 0 to 65535"),
    ({"port": "443"}, TypeError, "int"),
    ({"port": True}, TypeError, "int"),
    ({"connection_id": b"x" * 31}, ValueError, "32 bytes"),
    ({"connection_id": b"x" * 33}, ValueError, "32 bytes"),
    ({"connection_id": "0x" + "01" * 32}, TypeError, "bytes"),
    ({"connection_id": memoryview(b"x" * 32)}, TypeError, "bytes"),
    ({"max_datagram_size": 0}, ValueError, "at least 1"),
    ({"max_datagram_size": -5}, ValueError, "at least 1"),
]


def _name(values: dict[str, object]) -> str:
    return next(name for name in values if name != "reliable_carrier")


def _id(values: dict[str, object]) -> str:
    name = _name(values)
    value = values[name]
    shown = (
        f"{type(value).__name__}{len(value)}"
        if isinstance(value, bytes | memoryview)
        else repr(value)
    )
    return f"{name}={shown:.12}" + ("-lossy" if "reliable_carrier" in values else "")


@pytest.mark.parametrize(
    ("values", "error", "accepted"),
    BAD,
    ids=[_id(values) for values, _, _ in BAD],
)
@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_a_bad_value_is_refused_when_the_config_is_made(
    values: dict[str, object], error: type[Exception], accepted: str, client: bool
) -> None:
    # each was taken here, and refused (a LocalProtocolError) only by Connection()
    name = _name(values)
    with pytest.raises(error, match=name) as caught:
        ConnectionConfig(identity=CLIENT_ID, is_client=client, **values)  # type: ignore[arg-type]
    assert accepted in str(caught.value)
    assert not isinstance(caught.value, LocalProtocolError)
    # dataclasses.replace makes the config anew: refused there too
    good = ConnectionConfig(identity=CLIENT_ID, is_client=client)
    with pytest.raises(error, match=name):
        replace(good, **values)  # type: ignore[arg-type]


def test_the_limits_of_each_range_are_taken_and_work() -> None:
    # the same limits as Connection() had (only max_datagram_size's is new): the
    # largest windows and stream limit go to the peer, and it takes them
    c, s, _link = connect(
        stream_window=2**62 - 1, connection_window=2**62 - 1, max_streams=2**62 - 1
    )
    assert c.conn.established and s.conn.established
    assert s.conn.peer_params["msd"] == s.conn.peer_params["md"] == 2**62 - 1
    assert s.conn.peer_params["ms"] == 2**62 - 1
    for values in (
        {"stream_window": 0, "connection_window": 0, "max_streams": 0},
        {"max_record_plaintext": 1, "port": 0, "connection_id": bytes(32)},
        {"max_record_plaintext": 16384, "port": 65535},
        {"reliable_carrier": False, "stream_window": 1, "max_record_plaintext": 22},
        {"reliable_carrier": False, "stream_window": (1 << 32) - 1},
    ):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, **values)  # type: ignore[arg-type]
    # and what was not, is not
    with pytest.raises(ValueError, match="max_datagram_size"):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, max_datagram_size=0)


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable", "lossy"])
def test_the_smallest_max_datagram_size_sends_a_byte(reliable: bool) -> None:
    # the 3 bytes of the DATAGRAM frame's header come on top of the size: 1 byte goes
    # (over a lossy carrier too, with its smallest records), 2 do not; 0 is refused
    record = {} if reliable else {"max_record_plaintext": 22}
    c, s, link = connect(reliable_carrier=reliable, max_datagram_size=1, **record)  # type: ignore[arg-type]
    assert c.conn.max_datagram_size == 1
    c.conn.send_datagram(b"d")
    with pytest.raises(LocalProtocolError, match="datagram"):
        c.conn.send_datagram(b"dd")
    assert run(link, c, s, until=lambda: bool(s.of(DatagramReceived)))
    assert [e.data for e in s.of(DatagramReceived)] == [b"d"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_datagram_size"):
        replace(c.conn.config, max_datagram_size=0)


def test_a_bytearray_connection_id_is_kept_as_it_was_checked() -> None:
    # a bytearray was kept as given: changed after the config was made, the change
    # reached Connection() (refused there), or the peer's handshake
    cid = bytearray(b"\x01" * 32)
    config = ConnectionConfig(
        identity=CLIENT_ID,
        is_client=True,
        server_static=SERVER_ID.noise_public,
        connection_id=cid,  # type: ignore[arg-type]
        port=7,
    )
    cid[:] = b"\x02" * 5
    assert config.connection_id == b"\x01" * 32 and type(config.connection_id) is bytes
    client = Connection(config, ephemeral_key=os.urandom(32), now=0.0)
    server = Connection(
        ConnectionConfig(identity=SERVER_ID, is_client=False), ephemeral_key=os.urandom(32), now=0.0
    )
    s = Side(server)
    server.receive_data(client.data_to_send(0.0), 0.0)
    s.drain()
    assert server.peer_connection_id == b"\x01" * 32
    assert server.peer_params["port"] == 7
    assert not client.closed and not server.closed


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (0.0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (1e300, ValueError),  # beyond what a thread can wait for (OverflowError there)
        ("10", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
    ids=["zero", "zero-float", "negative", "nan", "inf", "huge", "str", "none", "bool"],
)
def test_a_bad_handshake_timeout_is_refused_when_the_config_is_made(
    value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="handshake_timeout"):
        ConnectionConfig(identity=CLIENT_ID, is_client=True, handshake_timeout=value)  # type: ignore[arg-type]
    good = ConnectionConfig(identity=CLIENT_ID, is_client=True, handshake_timeout=0.25)
    with pytest.raises(error, match="handshake_timeout"):
        replace(good, handshake_timeout=value)  # type: ignore[arg-type]


# -- 4. the configs made past the checks of what did not change -------------------------


def _ledger_replace(base: ConnectionConfig, port: object, cid: object) -> ConnectionConfig:
    return replace(
        base,
        identity=CLIENT_ID,
        is_client=True,
        server_static=SERVER_ID.noise_public,
        expected_server_static=None,
        connection_id=cid,  # type: ignore[arg-type]
        port=port,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("given", [False, True], ids=["defaults", "config-given"])
def test_a_connection_by_host_id_has_the_config_replace_made(given: bool) -> None:
    # made past the base's own checks, it is the config dataclasses.replace made
    base = (
        ConnectionConfig(
            identity=SERVER_ID,
            is_client=False,
            expected_server_static=bytes(32),
            stream_window=1234,
            handshake_timeout=3,
        )
        if given
        else None
    )
    cid = bytearray(b"\x05" * 32)
    made = ledger_client_config(base, CLIENT_ID, SERVER_ID.noise_public, cid, 80)  # type: ignore[arg-type]
    expected = _ledger_replace(
        base or ConnectionConfig(identity=CLIENT_ID, is_client=True), 80, bytes(cid)
    )
    assert made == expected and type(made) is ConnectionConfig
    assert vars(made) == vars(expected)  # (no field of another type: a float stays a float)
    assert type(made.connection_id) is bytes
    cid[0] = 9  # (kept as bytes: not changed with the bytearray)
    assert made.connection_id == b"\x05" * 32


@pytest.mark.parametrize(
    ("port", "cid", "error", "name"),
    [
        (70000, bytes(32), ValueError, "port"),
        (-1, bytes(32), ValueError, "port"),
        (True, bytes(32), TypeError, "port"),
        ("80", bytes(32), TypeError, "port"),
        (80, bytes(31), ValueError, "connection_id"),
        (80, "00" * 32, TypeError, "connection_id"),
    ],
)
def test_a_connection_by_host_id_refuses_what_replace_refuses(
    port: object, cid: object, error: type[Exception], name: str
) -> None:
    base = ConnectionConfig(identity=CLIENT_ID, is_client=True)
    with pytest.raises(error, match=name) as caught:
        _ledger_replace(base, port, cid)
    for given in (base, None):
        with pytest.raises(error, match=name) as ours:
            ledger_client_config(given, CLIENT_ID, SERVER_ID.noise_public, cid, port)  # type: ignore[arg-type]
        assert str(ours.value) == str(caught.value)


def test_a_bounded_handshake_timeout_is_the_config_replace_made() -> None:
    base = ConnectionConfig(identity=CLIENT_ID, is_client=True, port=9, max_streams=3)
    made = with_handshake_timeout(base, 2.5)
    assert vars(made) == vars(replace(base, handshake_timeout=2.5))
    assert base.handshake_timeout == 10.0  # (the base as it was)
    # what the checks refuse goes through them, with their error
    for value in (0.0, -1.0, math.nan, math.inf, 1e300):
        with pytest.raises(ValueError, match="handshake_timeout"):
            with_handshake_timeout(base, value)
    with pytest.raises(TypeError, match="handshake_timeout"):
        with_handshake_timeout(base, True)
    made = with_handshake_timeout(base, 3)  # (an int is taken, as a float)
    assert made.handshake_timeout == 3.0 and type(made.handshake_timeout) is float
