"""S33 review of ConnectionConfig and Connection.reset_stream: ``idle_timeout`` checked
only when a connection was made (LocalProtocolError there), ``max_datagram_size`` never
checked, the seconds refusing a Fraction (a real number, as ``dtp.socket`` timeouts take
it) and failing on an int past the float range with OverflowError, and the
application's own reset of a stream whose sending was done (RFC 9000 3.1, "Data Recvd")
still sending a RESET_STREAM. Connections are driven in memory with virtual clocks."""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction

import pytest

from dtp._types import FRAME_RESET_STREAM, FRAME_STREAM_FIN
from dtp.connection import CloseCode, ConnectionConfig
from dtp.errors import LocalProtocolError
from dtp.events import StreamResetReceived
from tests.test_connection import CLIENT_ID, connect, make_pair, run
from tests.test_s32_smalls_review import _sent

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
    # (0 or less is refused too since S34: a ValueError; 1 byte is the least)
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
        stream = c.conn._streams[done]
        return done in s.eof and stream.fin_acked and stream.base_offset == stream.end_offset

    assert run(link, c, s, until=acknowledged)
    _sent(c, s, reliable, link.now)  # (whatever was due: ACKs on a lossy carrier)
    c.conn.reset_stream(done, 5)
    c.conn.reset_stream(done, 6)
    assert _resets(_sent(c, s, reliable, link.now)) == []
    assert c.conn._streams[done].send_state.value == "fin-sent"
    # the receiving half is as it was: the server's bytes on it still arrive
    s.conn.send_stream_data(done, b"answer", end_stream=True)
    assert run(link, c, s, until=lambda: done in c.eof)
    assert bytes(c.data[done]) == b"answer"
    assert not s.of(StreamResetReceived)
    assert done not in c.conn._streams  # both halves done: forgotten, as ever
    with pytest.raises(LocalProtocolError, match="no stream"):
        c.conn.reset_stream(done, 7)
    # a stream still sending is reset once, however often the application asks
    busy = c.conn.open_stream()
    c.conn.send_stream_data(busy, b"more to come")
    c.conn.reset_stream(busy, 8)
    c.conn.reset_stream(busy, 9)
    assert _resets(_sent(c, s, reliable, link.now)) == [(busy, 8)]
    if not reliable:
        # a FIN sent but not acknowledged may be lost: that stream is reset still
        sid = c.conn.open_stream()
        c.conn.send_stream_data(sid, b"x", end_stream=True)
        assert any(f.type == FRAME_STREAM_FIN for f in _sent(c, s, False, link.now))  # lost
        c.conn.reset_stream(sid, 10)
        assert _resets(_sent(c, s, False, link.now)) == [(sid, 10)]


def test_a_reset_after_the_fin_was_handed_to_a_reliable_carrier_sends_nothing() -> None:
    # a reliable carrier delivers what it takes: the FIN sealed with the data by
    # send_stream_data is "Data Recvd" at once, and a RESET_STREAM followed it
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"hello", end_stream=True)
    c.conn.reset_stream(sid, 3)
    frames = _sent(c, s, True, link.now)
    assert _resets(frames) == []
    assert [(f.a, f.data) for f in frames if f.type == FRAME_STREAM_FIN] == [(sid, b"hello")]
