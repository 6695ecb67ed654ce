"""dtp.graph: one value, one encoding -- states and values of ``-0.0`` (equal to ``0.0``
under HAM's comparison) converge instead of being re-sent by every sync; JSON objects
with duplicate keys from peers are refused; a closed graph refuses every read; the
constructor checks its arguments up front, by name.

A peer's value with a lone surrogate escape (``"\\ud800"``) is refused like the other
values two readers could read differently. json read it as a str that no UTF-8 holds:
get() handed it to the application, whose print() or file write then raised
UnicodeEncodeError, and put() of the node read refused it (LocalProtocolError)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import LocalProtocolError, RemoteProtocolError
from dtp.graph import Change, Graph, SyncSession
from dtp.graph.values import decode_value, encode_value
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate
from tests.support.leaks import open_fds

HAMS = ["c", "python"]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _sync(ga: Graph, gb: Graph) -> tuple[SyncSession, SyncSession]:
    """One catch-up session between two graphs, bytes carried in memory until quiet."""
    a, b = SyncSession(ga, live=False), SyncSession(gb, live=False)
    a.start()
    b.start()
    for _ in range(1000):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        b.receive_data(da)
        a.receive_data(db)
    assert a.synced and b.synced
    a.close()
    b.close()
    return a, b


# -- -0.0 -------------------------------------------------------------------------------


@pytest.mark.parametrize("ham", HAMS)
def test_a_state_of_negative_zero_converges_with_zero(ham: str) -> None:
    """One peer holds a field at state -0.0, the other the same value at 0.0: HAM finds
    them equal (SAME both ways), both hold 0.0, and a second sync is quiet (the
    summaries agree: the field is not sent again)."""
    a, b = Graph(ham=ham), Graph(ham=ham)
    a.merge(encode_ham_batch([HamUpdate(b"n", b"f", -0.0, b"1")]))
    b.merge(encode_ham_batch([HamUpdate(b"n", b"f", 0.0, b"1")]))
    _sync(a, b)
    assert a.root_summary() == b.root_summary()
    for g in (a, b):
        ((state, value),) = g.snapshot().values()
        assert (_bits(state), value) == (_bits(0.0), b"1")
    again = _sync(a, b)
    assert [s.stats["batches_sent"] for s in again] == [0, 0]
    a.close()
    b.close()


@pytest.mark.parametrize("ham", HAMS)
def test_a_log_holding_negative_zero_states_loads_them_as_zero(tmp_path: Path, ham: str) -> None:
    """A log written before states were canonicalised may hold -0.0: the replay brings
    it to 0.0, so the table and its summary agree with peers that hold 0.0."""
    path = tmp_path / "g.db"
    with Graph(path, ham=ham) as g:
        g.put("x", {"y": 1})
    with contextlib.closing(sqlite3.connect(path)) as db:
        batch = encode_ham_batch([HamUpdate(b"n", b"f", -0.0, b"2")])
        db.execute("INSERT INTO log (batch) VALUES (?)", (batch,))
        db.commit()
    with Graph(path, ham=ham) as g, Graph(ham=ham) as other:
        state = g.state_of("n", "f")
        assert state is not None and _bits(state) == _bits(0.0)
        other.merge(encode_ham_batch([HamUpdate(b"n", b"f", 0.0, b"2")]))
        for batch in g.export():
            other.merge(batch)
        assert other.root_summary() == g.root_summary()


def test_negative_zero_values_are_written_and_read_as_zero() -> None:
    """-0.0 == 0.0, so it is one value with one encoding, JavaScript's ``0`` (json would
    write "-0.0"): two peers writing equal values write equal bytes; a peer's "-0.0"
    reads as 0.0."""
    assert encode_value(-0.0) == encode_value(0.0) == encode_value(0) == b"0"
    for text in (b"-0.0", b"-0e0", b"[-0.0]"):
        value = decode_value(text)
        number = value[0] if isinstance(value, list) else value
        assert isinstance(number, float) and math.copysign(1.0, number) == 1.0
    g = Graph()
    g.put("n", {"f": -0.0})
    assert g.snapshot()[b"n", b"f"][1] == b"0"
    g.close()


# -- duplicate keys and numbers beyond the float range from peers ---------------------------


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1,"a":2}',
        b'{"a":1,"b":{"c":1,"c":1}}',
        b'[{"x":true},{"y":1,"y":2}]',
        b"1e400",
        b"[-1e999]",
    ],
)
def test_what_two_readers_could_read_differently_is_refused(text: bytes) -> None:
    """Python's json keeps the last of duplicate keys (another implementation may keep
    the first) and reads 1e400 as infinity, which graph values cannot hold: decoding a
    peer's value refuses both with the typed error; get() leaves such a field out and
    get_field raises."""
    with pytest.raises(RemoteProtocolError):
        decode_value(text)
    g = Graph()
    g.put("doc", {"ok": 1})
    g.merge(encode_ham_batch([HamUpdate(b"doc", b"bad", 1.0, text)]))
    assert g.get("doc") == {"ok": 1}
    with pytest.raises(RemoteProtocolError):
        g.get_field("doc", "bad")
    g.close()


def test_distinct_keys_still_decode() -> None:
    assert decode_value(b'{"b":1,"a":{"a":2}}') == {"a": {"a": 2}, "b": 1}


# -- use after close ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        len,
        lambda g: "a" in g,
        lambda g: 5 in g,
        lambda g: g.deferred_count,
        lambda g: g.flush(),
        lambda g: g.add_listener(lambda batch, origin: None, object()),
    ],
)
def test_a_closed_graph_refuses_len_in_and_the_rest(
    tmp_path: Path, call: Callable[..., Any]
) -> None:
    """After close(), len(), ``in``, deferred_count, flush() and add_listener() raise the
    typed error, as writes and the other reads do (never answering from the table, or,
    for flush(), touching a closed SQLite connection)."""
    g = Graph(tmp_path / "g.db")
    g.put("a", {"f": 1})
    g.close()
    with pytest.raises(LocalProtocolError, match="closed"):
        call(g)


# -- constructor arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_drift_ms": -1}, ValueError, "max_drift_ms"),
        ({"max_drift_ms": math.nan}, ValueError, "max_drift_ms"),
        ({"max_drift_ms": math.inf}, ValueError, "max_drift_ms"),
        ({"max_drift_ms": True}, TypeError, "max_drift_ms"),
        ({"max_drift_ms": "1"}, TypeError, "max_drift_ms"),
        ({"max_deferred_bytes": -1}, ValueError, "max_deferred_bytes"),
        ({"max_deferred_bytes": 2**64}, ValueError, "max_deferred_bytes"),
        ({"max_deferred_bytes": 10**400}, ValueError, "max_deferred_bytes"),
        ({"max_deferred_bytes": True}, TypeError, "max_deferred_bytes"),
        ({"max_deferred_bytes": 1.5}, TypeError, "max_deferred_bytes"),
        ({"flush_interval": -1}, ValueError, "flush_interval"),
        ({"flush_interval": math.nan}, ValueError, "flush_interval"),
        ({"flush_interval": False}, TypeError, "flush_interval"),
        ({"now_ms": 5}, TypeError, "now_ms"),
        ({"identity": "me"}, TypeError, "identity"),
        ({"ham": 1}, TypeError, "ham"),
        ({"ham": "rust"}, ValueError, "ham"),
    ],
)
def test_constructor_arguments_are_checked_up_front_by_name(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    """A bad argument raises TypeError/ValueError naming it, before the file is opened
    (Graph(path, max_drift_ms=-1) used to open the database, fail in the clock and leave
    the SQLite connection open; bools passed for numbers and NaN intervals were taken)."""
    path = tmp_path / "g.db"
    with pytest.raises(error, match=name) as caught:
        Graph(path, **kwargs)
    assert open_fds(path) == 0, caught
    assert not path.exists()


def test_good_constructor_arguments_are_still_taken(tmp_path: Path) -> None:
    with Graph(tmp_path / "g.db", max_drift_ms=0, max_deferred_bytes=0, flush_interval=0.0) as g:
        g.put("a", {"f": 1})
        assert g.clock.max_drift_ms == 0.0
    with Graph(str(tmp_path / "h.db"), max_drift_ms=2.5, now_ms=lambda: 1e12) as g:
        assert g.clock.machine_state() == 1e12 + 2.5


@pytest.mark.parametrize(
    ("now", "error"),
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (10**400, ValueError),
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
    ids=["nan", "inf", "huge-int", "str", "None", "bool"],
)
def test_an_injected_clock_that_returns_no_finite_number_is_named(
    now: object, error: type[Exception]
) -> None:
    """now_ms() returning NaN failed a write in math.floor ("cannot convert float NaN to
    integer") and a merge in the HAM table ("machine state must be finite"); a string
    failed in float(). Each now names now_ms."""
    g = Graph(now_ms=lambda: now)  # type: ignore[arg-type,return-value]
    with pytest.raises(error, match="now_ms"):
        g.put("a", {"v": 1})
    with pytest.raises(error, match="now_ms"):
        g.merge(encode_ham_batch([HamUpdate(b"n", b"f", 1.0, b"1")]))
    g.close()


def test_an_integer_too_long_to_write_gives_the_typed_error() -> None:
    """An int past the interpreter's digit limit raised a plain ValueError from inside
    json (every other value the graph cannot hold is a LocalProtocolError); it is beyond
    what a Gun number holds."""
    g = Graph()
    for value in (10**5000, {"deep": {"deeper": 10**5000}}):
        with pytest.raises(LocalProtocolError, match="range of a Gun number"):
            g.put("a", {"v": value})
    assert g.get("a") is None
    g.close()


@pytest.mark.parametrize("interval", [math.nan, 0, -1.0, math.inf, "1", True])
def test_watch_deferred_checks_its_interval(interval: object) -> None:
    """watch_deferred(0), (-1) or (NaN) spun the event loop (asyncio.sleep returns at
    once); a str failed inside asyncio.sleep."""

    async def run() -> None:
        g = Graph()
        try:
            await asyncio.wait_for(g.watch_deferred(interval), 1.0)  # type: ignore[arg-type]
        finally:
            g.close()

    with pytest.raises((TypeError, ValueError), match="interval"):
        asyncio.run(run())


def test_a_signed_update_at_negative_zero_is_refused_alike_everywhere() -> None:
    """States are brought to 0.0 before the ownership check, so a signature made over
    -0.0 fails on every peer alike (before, it was taken with the -0.0 kept, and a peer
    that held 0.0 for the field never converged with it)."""
    from dtp.graph import namespace, user_soul
    from dtp.identity.keys import HostIdentity

    owner = HostIdentity.generate()
    soul = user_soul(owner, "doc").encode()
    at_zero = namespace.seal(owner, soul, b"f", 0.0, b"1")
    at_negative_zero = namespace.seal(owner, soul, b"f", -0.0, b"1")
    g = Graph()
    report = g.merge(encode_ham_batch([HamUpdate(soul, b"f", -0.0, at_negative_zero)]))
    assert (report.applied, report.refused) == (0, 1)
    assert g.stats["refused_by_reason"] == {"bad_signature": 1}
    assert g.merge(encode_ham_batch([HamUpdate(soul, b"f", 0.0, at_zero)])).applied == 1
    g.close()


LONE = [
    rb'"hi \ud800"',  # a high surrogate alone
    rb'"\udc00"',  # a low one
    rb'"\ude00\ud83d"',  # a pair in the wrong order
    rb'{"\udc00": 1}',  # in an object key
    rb'[1, {"a": ["\ud800"]}]',  # nested
]
FINE = [
    (rb'"\ud83d\ude00"', "\U0001f600"),  # an escaped pair: one character
    (rb'"a\\ud800"', "a\\ud800"),  # an escaped backslash, then the letters
    (rb'"\u00e9"', "\u00e9"),
]


@pytest.mark.parametrize("raw", LONE)
def test_a_lone_surrogate_is_refused(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_value(raw)


@pytest.mark.parametrize(("raw", "value"), FINE)
def test_escapes_that_make_characters_are_read(raw: bytes, value: str) -> None:
    assert decode_value(raw) == value


def test_get_leaves_a_peers_lone_surrogate_out() -> None:
    graph = Graph()
    seen: list[Change] = []
    graph.subscribe("msg", seen.append)
    updates = [HamUpdate(b"msg", b"bad%d" % i, 1.0, raw) for i, raw in enumerate(LONE)]
    updates.append(HamUpdate(b"msg", b"ok", 1.0, rb'"\ud83d\ude00"'))
    graph.merge(encode_ham_batch(updates))
    node = graph.get("msg")
    assert node == {"ok": "\U0001f600"}
    graph.put("copy", node)  # what get() returns can be written back
    with pytest.raises(RemoteProtocolError):
        graph.get_field("msg", "bad0")
    assert [c.field for c in seen] == ["ok"]
    graph.close()
