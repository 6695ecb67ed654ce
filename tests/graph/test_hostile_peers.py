"""dtp.graph against misbehaving peers and bad local arguments: names that are not
UTF-8 cannot pose as other names (reads were decoded with errors="replace"), a SUM
listing a child twice is a protocol error, a protocol error ends the session object, an
update larger than the cap of a session does not recurse, a failing change listener fails
nothing else, session and runner arguments are checked up front, and a graph file
reached through a symlink is still one graph."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Change, Graph, GraphSyncError, SyncSession, sync_blocking, sync_stream
from dtp.graph.sync import HELLO, SUM, VERSION
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate


def _frame(message: object) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("ham", ["c", "python"])
@pytest.mark.parametrize("spoof_first", [False, True])
def test_names_that_are_not_utf8_cannot_pose_as_others(ham: str, spoof_first: bool) -> None:
    """A peer writes field b"x\\xff" beside the field "x\\ufffd", and soul b"d\\xfe".
    Read with errors="replace", the field read as "x\\ufffd": get() showed whichever
    came last -- peers holding the same table read different values, and get() and
    get_field() disagreed -- subscribers of "x\\ufffd" and "d\\ufffd" got the peer's
    changes as if they were theirs, and souls() listed a soul that get() did not know.
    Names that are not UTF-8 (no str names them) are now left out of reads."""
    g = Graph(ham=ham)
    seen: list[Change] = []
    g.subscribe("doc", seen.append, field="x\ufffd")
    g.subscribe("d\ufffd", seen.append)
    legit = HamUpdate(b"doc", "x\ufffd".encode(), 1.0, b'"legit"')
    spoof = HamUpdate(b"doc", b"x\xff", 1.0, b'"spoof"')
    for update in [spoof, legit] if spoof_first else [legit, spoof]:
        g.merge(encode_ham_batch([update]))
    g.merge(encode_ham_batch([HamUpdate(b"d\xfe", b"f", 1.0, b'"spoof soul"')]))
    assert g.get("doc") == {"x\ufffd": "legit"}
    assert g.get_field("doc", "x\ufffd") == "legit"
    assert g.souls() == ["doc"]
    assert [c.value for c in seen] == ["legit"]
    assert len(g) == 3  # (still held and synced: only reads leave them out)
    g.close()


def test_a_sum_listing_a_child_twice_is_refused() -> None:
    """The last of two entries for one child was taken silently; another implementation
    may take the first, and the two would decide differently what to push."""
    g = Graph()
    for i in range(300):
        g.put(f"n/{i}", {"v": i})
    session = SyncSession(g)
    session.start()
    session.receive_data(_frame([HELLO, VERSION, b"r" * 16, 300, 12345]))
    assert (0, 0) in session._sent  # it descended: our SUM of the root's children is out
    with pytest.raises(GraphSyncError, match="twice"):
        session.receive_data(_frame([SUM, 0, 0, [[5, 1, 200], [5, 2, 100]]]))
    session.close()
    g.close()


def test_a_graph_file_reached_through_a_symlink_is_still_one_graph(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    other = tmp_path / "elsewhere"
    other.mkdir()
    alias = other / "alias.db"
    alias.symlink_to(path)
    with Graph(path) as g:
        g.put("a", {"v": 1})
        with pytest.raises(LocalProtocolError, match="already open"):
            Graph(alias)
    with Graph(alias) as g:
        assert g.get("a") == {"v": 1}


def test_a_protocol_error_ends_the_session_object_too() -> None:
    """GraphSyncError means the session is over, the sans-I/O session too: it stops
    listening and refuses further input (a DATA the peer sends after breaking the
    protocol is not merged), and no local change is queued for that peer any more."""
    g = Graph()
    session = SyncSession(g)
    session.start()
    session.data_to_send()
    data = encode_ham_batch([HamUpdate(b"n", b"f", 1.0, b"1")])
    stream = _frame([HELLO, VERSION, b"r" * 16, 1, 5]) + _frame([99]) + _frame([3, data])
    with pytest.raises(GraphSyncError):
        session.receive_data(stream)
    with pytest.raises(GraphSyncError, match="earlier error"):
        session.receive_data(b"")
    assert g.get("n") is None
    session.data_to_send()
    g.put("local", {"v": 1})
    assert session.data_to_send() == b""
    session.close()
    g.close()


def _pump(a: SyncSession, b: SyncSession) -> None:
    for _ in range(1000):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            return
        b.receive_data(da)
        a.receive_data(db)
    raise AssertionError("sync did not settle")


def test_an_update_larger_than_a_sessions_cap_is_sent_alone() -> None:
    """A session splits batches larger than its max_message; a single update larger than
    the cap was split on and on until RecursionError -- raised out of the put() that
    made the change (after it was committed, and before the subscribers heard of it),
    or out of the first push of the session. It now goes alone, for the peer's cap to
    judge."""
    a, b = Graph(), Graph()
    a.put("big", {"v": "x" * 2000})
    seen: list[Change] = []
    a.subscribe("later", seen.append)
    small = SyncSession(a, max_message=1000)
    other = SyncSession(b)  # the default cap: 4 MiB
    small.start()
    other.start()
    _pump(small, other)
    assert b.get("big") == {"v": "x" * 2000}
    a.put("later", {"v": "y" * 2000, "w": "z" * 2000})  # (live: forwarded as it happens)
    assert sorted(c.field for c in seen) == ["v", "w"]
    _pump(small, other)
    assert b.get("later") == {"v": "y" * 2000, "w": "z" * 2000}
    assert a.root_summary() == b.root_summary()
    small.close()
    other.close()
    a.close()
    b.close()


def test_a_failing_change_listener_neither_fails_the_write_nor_starves_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listener (a sync session forwarding changes) that raised made put() raise after
    the change was committed, and the listeners after it and the subscribers never
    heard of the change."""
    g = Graph()
    forwarded: list[bytes] = []
    seen: list[Change] = []

    def broken(batch: bytes, origin: object) -> None:
        raise RuntimeError("session bug")

    g.add_listener(broken, object())
    g.add_listener(lambda batch, origin: forwarded.append(batch), object())
    g.subscribe("a", seen.append)
    with caplog.at_level("ERROR", logger="dtp.graph._store"):
        g.put("a", {"v": 1})
    assert g.get("a") == {"v": 1}
    assert len(forwarded) == 1 and [c.value for c in seen] == [1]
    assert "session bug" in caplog.text
    g.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_message": -1}, ValueError),
        ({"max_message": 0}, ValueError),
        ({"max_message": math.nan}, TypeError),
        ({"max_message": True}, TypeError),
        ({"max_message": "4096"}, TypeError),
        ({"max_backlog": -1}, ValueError),
        ({"max_backlog": None}, TypeError),
        ({"live": "no"}, TypeError),
    ],
    ids=[
        "msg-neg",
        "msg-zero",
        "msg-nan",
        "msg-bool",
        "msg-str",
        "backlog-neg",
        "backlog-none",
        "live-str",
    ],
)
def test_session_arguments_are_checked_up_front(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """A bad cap surfaced as a GraphSyncError blaming the peer ("message of 31 bytes
    exceeds the -1 cap"), or as no cap at all (NaN: every size compared false), or was
    taken as given (a negative backlog, live="no")."""
    g = Graph()
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        SyncSession(g, **kwargs)
    g.close()


@pytest.mark.parametrize("tick", [math.nan, 0, -1.0, math.inf, "1"])
def test_the_runners_tick_is_checked_up_front(tick: object) -> None:
    """tick=NaN, 0 or less made the writer spin (Event.wait returns at once)."""
    g = Graph()
    with pytest.raises((TypeError, ValueError), match="tick"):
        sync_blocking(g, object(), tick=tick)  # type: ignore[arg-type]

    async def run() -> None:
        await sync_stream(g, object(), object(), tick=tick)  # type: ignore[arg-type]

    with pytest.raises((TypeError, ValueError), match="tick"):
        asyncio.run(run())
    g.close()


@pytest.mark.parametrize("ham", ["c", "python"])
def test_a_queue_of_far_future_updates_does_not_tax_every_write(ham: str) -> None:
    """A peer that fills the deferred queue with far-future updates made every put() and
    merge() walk the whole queue (table.advance; 22 ms a write at the default cap).
    The graph now tracks the smallest deferred states and asks the table only when one
    may be due -- and honest updates a few seconds ahead are still applied on time, as
    are more of them than are tracked one by one."""
    now = [1.7e12]
    g = Graph(ham=ham, now_ms=lambda: now[0], max_drift_ms=1000)
    n_junk = 10_000 if ham == "c" else 2000  # (the twin walks its queue in Python)
    junk = [HamUpdate(b"junk/%d" % i, b"f", 1e15 + i, b"1") for i in range(n_junk)]
    for i in range(0, len(junk), 1000):
        assert g.merge(encode_ham_batch(junk[i : i + 1000])).deferred == 1000
    calls = [0]
    table_advance = g._table.advance

    def advance(machine_state: float) -> bytes:
        calls[0] += 1
        return table_advance(machine_state)  # type: ignore[no-any-return]

    g._table.advance = advance
    for i in range(200):
        now[0] += 1.0
        g.put("local", {"n": i})
    assert calls[0] == 0
    # honest peers a little ahead: one update 5 s ahead, then 4196 more from 3 s on, four
    # a ms (100 more than are tracked one by one)
    t0 = now[0]
    g.merge(encode_ham_batch([HamUpdate(b"honest", b"f", t0 + 5000, b'"soon"')]))
    honest = [HamUpdate(b"many", b"%d" % i, t0 + 3000 + i / 4, b"1") for i in range(4196)]
    assert g.merge(encode_ham_batch(honest)).deferred == 4196
    now[0] = t0 + 2499.75  # machine state t0 + 3499.75: the first 2000 of them are due
    g.put("local", {"n": -1})
    assert calls[0] == 1 and g.get("honest") is None
    assert g.deferred_count == n_junk + 1 + 2196
    now[0] = t0 + 3024  # all the tracked ones are due (and one untracked)
    g.put("local", {"n": -2})
    assert g.deferred_count == n_junk + 1 + 99
    now[0] = t0 + 3025  # none tracked is left: the table is asked blindly, 1 ms on
    g.put("local", {"n": -3})
    assert g.deferred_count == n_junk + 1 + 95
    now[0] = t0 + 4000  # the "soon" one is due, and the rest of them
    g.put("local", {"n": -2})
    assert g.get_field("honest", "f") == "soon"
    assert len(g.get("many") or {}) == 4196
    assert g.deferred_count == n_junk
    before = calls[0]
    for i in range(2000):  # 2 s of writes, one a ms: blind asks back off to 1 a second
        now[0] += 1.0
        g.put("local", {"n": i})
    assert calls[0] - before <= 12
    assert g.deferred_count == n_junk  # the junk still waits
    g.close()


@pytest.mark.parametrize("ham", ["c", "python"])
def test_an_untracked_deferred_update_is_not_held_behind_later_tracked_ones(ham: str) -> None:
    """More deferred updates than are tracked one by one: once the tracked ones are
    applied, a later deferred update (tracked, further ahead) must not hold back the
    untracked one that comes due first."""
    now = [1.7e12]
    g = Graph(ham=ham, now_ms=lambda: now[0], max_drift_ms=1000)
    t0 = now[0]
    ahead = [HamUpdate(b"n", b"%d" % i, t0 + 3000 + i, b"1") for i in range(4097)]
    assert g.merge(encode_ham_batch(ahead)).deferred == 4097
    now[0] = t0 + 6095.5  # machine state t0 + 7095.5: all but the last are due
    assert g.advance() == 4096
    g.merge(encode_ham_batch([HamUpdate(b"later", b"f", t0 + 9000, b"1")]))
    now[0] = t0 + 6096  # the last one (untracked) is due; "later" is not
    assert g.advance() == 1
    assert g.get_field("n", "4096") == 1 and g.deferred_count == 1
    g.close()
