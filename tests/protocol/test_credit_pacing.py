"""Credit pacing under a rate limit (:meth:`Connection.pace_credit`): a receiver that
reads at a bytes/s limit returns flow-control credit in steps of what the limit allows
in an eighth of a second, so the sender's writes keep to the limit too. In quarter windows, a
4 MiB stream window read at 200,000 B/s let the sender move 1 MiB at once every 5 s.

Checked on a virtual clock (the connections take ``now``): two sans-I/O connections in
memory, a reader that moves what the token bucket allows
(:meth:`dtp.payments._ratelimit.TokenBucket.wait_for`, as the paid servers' reads do)
and a writer that hands over its next piece once the last one went out (a blocking
``sendall`` of it). The wall-clock figure, over real sockets, is the bench row
``paid_rate_smoothness`` (bench/hostid_rows.py).
"""

from __future__ import annotations

import pytest

from dtp.payments._ratelimit import TokenBucket
from dtp.protocol.connection._streams import CREDIT_PACE_SECONDS, _credit_at
from tests.support.pairs import connect

RATE = 200_000  # B/s: the service's byte rate limit
WINDOWS = 10  # one-second windows checked
TOLERANCE = 0.2
TICK = 0.005  # s of virtual time between looks (a loaded thread's lateness)

Events = list[tuple[float, int]]


def _run(rate: int, pace: bool, seconds: float, delay: float = 0.0) -> tuple[Events, Events]:
    """The writer's and the reader's moves over ``seconds`` of virtual time, the reader
    limited to ``rate`` B/s and pacing its credit at it when ``pace``; each direction's
    bytes arrive ``delay`` s after they were sent."""
    c, s, link = connect()
    s.auto_read = False
    client, server = c.conn, s.conn
    piece = min(16 << 10, rate // 50)  # what the writer hands over at once
    if pace:
        server.pace_credit(rate)
    sid = client.open_stream()
    now = link.now
    bucket = TokenBucket(rate, now)
    sent: Events = []
    read: Events = []
    unread = 0
    in_flight: list[tuple[float, bool, bytes]] = []  # (due, to the server, bytes)
    end = now + seconds
    while now < end:
        # the writer: its next piece once the last one is out (flow control allowing)
        while client.send_buffered(sid) == 0:
            client.send_stream_data(sid, b"w" * piece)
            sent.append((now, piece))
        for src, to_server in ((client, True), (server, False)):
            data = src.data_to_send(now)
            if data:
                in_flight.append((now + delay, to_server, data))
        due = [item for item in in_flight if item[0] <= now]
        in_flight = [item for item in in_flight if item[0] > now]
        for _, to_server, data in due:
            (server if to_server else client).receive_data(data, now)
        s.drain()
        unread = sum(len(v) for v in s.data.values()) - sum(n for _, n in read)
        # the reader: a piece of at most a take, once the bucket holds it
        while unread:
            size = min(unread, bucket.take_of(unread))
            if bucket.wait_for(size, now):
                break
            bucket.charge(size, now)
            server.acknowledge_read(sid, size)
            read.append((now, size))
            unread -= size
        now = round(now + TICK, 9)
        link.now = now
    return sent, read


def _shares(events: Events, start: float, rate: int) -> list[float]:
    """Bytes per one-second window from ``start``, as fractions of ``rate``: the first
    WINDOWS of them."""
    totals = [0] * WINDOWS
    for at, n in events:
        index = int((at - start) // 1)
        if 0 <= index < WINDOWS:
            totals[index] += n
    return [total / rate for total in totals]


def _after_first_window(sent: Events, window: int) -> float:
    """When the writer moved first after the instant it filled the ``window`` the
    reader granted up front: from then on only returned credit lets it write."""
    moved, full = 0, None
    for at, n in sent:
        if full is not None and at > full:
            return at
        moved += n
        if moved > window and full is None:
            full = at
    raise AssertionError("the writer never got past its first window")


@pytest.mark.parametrize("rate", [20_000, 200_000, 2_000_000])
@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_paced_credit_keeps_every_second_of_the_senders_writes_within_a_fifth(
    rate: int, delay: float
) -> None:
    window = 4 << 20  # the default stream window
    sent, read = _run(rate, True, WINDOWS + 2, delay)
    start = _after_first_window(sent, window)
    # past the window granted up front, the writer moves as the reader reads
    assert start < 1.0, start
    shares = _shares(sent, start, rate)
    assert all(abs(share - 1) <= TOLERANCE for share in shares), shares
    assert all(abs(share - 1) <= TOLERANCE for share in _shares(read, read[0][0], rate))


def test_in_quarter_windows_the_sender_moved_a_mebibyte_at_once() -> None:
    # the behaviour paced credit replaces: the check above fails on it
    sent, _ = _run(RATE, False, WINDOWS + 2)
    start = _after_first_window(sent, 4 << 20)
    shares = _shares(sent, start, RATE)
    assert max(shares) > 5 and min(shares) == 0, shares


def test_the_step_is_an_eighth_of_a_second_of_the_rate_and_at_most_a_quarter_window() -> None:
    assert CREDIT_PACE_SECONDS == 0.125
    window = 4 << 20
    assert _credit_at(window, 0) == window * 3 // 4  # unpaced: a quarter window
    assert _credit_at(window, 25_000) == window - 25_000 + 1  # 25,000 read: credit
    assert _credit_at(window, window) == window * 3 // 4  # (never more than a quarter)
    _, s, _ = connect()
    server = s.conn
    server.pace_credit(RATE)
    assert server.streams.stream_credit_at == server.config.stream_window - RATE // 8 + 1
    assert server.streams.conn_credit_at == server.config.connection_window - RATE // 8 + 1
    server.pace_credit(4)  # below 8 B/s: one byte a step
    assert server.streams.stream_credit_at == server.config.stream_window
    server.pace_credit(0)  # the limit lifted: quarter windows again
    assert server.streams.stream_credit_at == server.config.stream_window * 3 // 4


@pytest.mark.parametrize("rate", [-1, float("nan"), float("inf"), True, "200000"])
def test_a_rate_that_is_not_a_finite_number_of_zero_or_more_is_refused(rate: object) -> None:
    _, s, _ = connect()
    before = s.conn.streams.stream_credit_at
    with pytest.raises(ValueError, match="finite number"):
        s.conn.pace_credit(rate)  # type: ignore[arg-type]
    assert s.conn.streams.stream_credit_at == before


def test_each_update_still_reaches_a_whole_window_past_what_was_read() -> None:
    # only how often credit goes changes, not how far it reaches: a sender on a long
    # path still has a whole window in flight
    c, s, link = connect()
    s.auto_read = False
    server = s.conn
    server.pace_credit(RATE)
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"x" * 60_000)
    link.run()
    s.drain()
    server.acknowledge_read(sid, 24_999)
    assert not server.records.pending_stream_credit  # short of a step: nothing yet
    server.acknowledge_read(sid, 1)
    assert sid in server.records.pending_stream_credit
    assert server.streams.by_id[sid].recv_limit == 25_000 + server.config.stream_window
