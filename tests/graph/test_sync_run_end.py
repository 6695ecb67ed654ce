"""What a sync run raises as it ends, decided once for both drivers
(``dtp.graph.sync._run_checks``): driven here with real sessions on in-memory graphs,
without a stream, so each rule is seen on its own. The drivers' own tests
(test_sync_backlog.py, test_sync_end_on_close.py, test_sync_end.py, test_sync_hello.py)
see the same rules over real DTP streams."""

from __future__ import annotations

import pytest

from dtp.errors import DTPTimeoutError
from dtp.graph import Graph, GraphSyncError, SyncSession
from dtp.graph.sync import SyncBacklogExceeded
from dtp.graph.sync._run_checks import (
    _check_end_coming,
    _check_run_ended,
    _no_hello,
)


def _exchange(a: SyncSession, b: SyncSession) -> None:
    """Move bytes both ways until neither side has anything to send."""
    while True:
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            b.receive_data(x)
        if y:
            a.receive_data(y)


def _synced_pair() -> tuple[SyncSession, SyncSession]:
    a, b = Graph(None), Graph(None)
    a.put("x", {"v": 1})
    sa, sb = SyncSession(a, live=False), SyncSession(b, live=False)
    sa.start()
    sb.start()
    _exchange(sa, sb)
    assert sa.synced and sb.synced
    return sa, sb


def test_a_synced_catch_up_ends_without_an_error() -> None:
    sa, _ = _synced_pair()
    _check_run_ended(sa, until_synced=True, cut_off=False)
    _check_run_ended(sa, until_synced=False, cut_off=False)


def test_a_catch_up_before_both_ends_raises_graph_sync_error() -> None:
    graph = Graph(None)
    session = SyncSession(graph, live=False)
    session.start()
    with pytest.raises(GraphSyncError, match="closed the stream before the sync completed"):
        _check_run_ended(session, until_synced=True, cut_off=False)
    # a live run that the peer ended is no failure, synced or not
    _check_run_ended(session, until_synced=False, cut_off=True)


def test_a_catch_up_whose_writer_was_cut_off_is_not_done_even_with_both_ends() -> None:
    sa, _ = _synced_pair()
    with pytest.raises(GraphSyncError, match="closed the stream before the sync completed"):
        _check_run_ended(sa, until_synced=True, cut_off=True)


def test_the_writers_failure_ends_a_catch_up_but_not_a_live_run() -> None:
    sa, _ = _synced_pair()
    failure = DTPTimeoutError("send timed out")
    with pytest.raises(DTPTimeoutError) as raised:
        _check_run_ended(sa, until_synced=True, cut_off=False, failure=failure)
    assert raised.value is failure
    _check_run_ended(sa, until_synced=False, cut_off=False, failure=failure)


def test_a_lagging_session_raises_backlog_exceeded_first() -> None:
    graph = Graph(None)
    session = SyncSession(graph, max_backlog=0)
    session.start()  # HELLO is queued and not read: the backlog is over 0 bytes
    graph.put("y", {"v": 2})
    assert session.lagging
    for until_synced in (True, False):
        with pytest.raises(SyncBacklogExceeded, match="more than 0 bytes behind"):
            _check_run_ended(
                session,
                until_synced=until_synced,
                cut_off=True,
                failure=DTPTimeoutError("send timed out"),
            )


def test_an_end_that_nothing_of_ours_can_follow_is_refused() -> None:
    sa, _ = _synced_pair()
    _check_end_coming(sa)  # both ENDs through: nothing stalled
    graph = Graph(None)
    session = SyncSession(graph, live=False)
    session.start()
    # the peer's END in, ours not out, nothing left to push that would send it (set by
    # hand: receive_data refuses the END that would lead here, test_sync_end_before_answer.py)
    session.end_received = True
    with pytest.raises(GraphSyncError, match="END came before the exchange it ends"):
        _check_end_coming(session)


def test_the_missing_hello_error_names_the_deadline() -> None:
    error = _no_hello(2.5)
    assert isinstance(error, GraphSyncError)
    assert "no HELLO within 2.5 s" in str(error)
