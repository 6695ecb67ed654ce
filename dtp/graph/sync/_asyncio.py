"""The asyncio sync driver: :func:`sync_stream` runs a :class:`~dtp.graph.sync.SyncSession`
over an asyncio DTP stream (a task writes, the caller's task reads)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from dtp.errors import ConnectionClosed, DTPError, RemoteProtocolError
from dtp.graph._store import Graph
from dtp.graph.sync._messages import MAX_MESSAGE, GraphSyncError
from dtp.graph.sync._run_checks import (
    HELLO_TIMEOUT,
    _backlog_exceeded,
    _check_end_coming,
    _check_run_ended,
    _check_tick,
    _check_timeout,
    _left_cleanly,
    _no_hello,
)
from dtp.graph.sync._session import SyncSession


async def sync_stream(
    graph: Graph,
    reader: Any,
    writer: Any,
    *,
    until_synced: bool = False,
    max_message: int = MAX_MESSAGE,
    tick: float = 0.25,
    hello_timeout: float | None = HELLO_TIMEOUT,
) -> SyncSession:
    """Run a sync session over an asyncio DTP stream (``dtp.aio`` reader/writer).

    It returns and raises as :func:`sync_blocking` does (``until_synced``, the peer's
    end of the stream or clean close of the connection). The writer is left open for
    the caller to close, except when the peer broke the protocol (GraphSyncError): the
    stream is then aborted with the reason "graph sync protocol error".

    ``hello_timeout``: seconds the peer has to send its HELLO (:data:`HELLO_TIMEOUT` by
    default, as :class:`GraphServer`'s: an asyncio server runs this for each connection,
    and a peer that connects and stays silent would otherwise hold its session -- task,
    change listener, connection -- for good, DTP keepalives keeping it from the idle
    timeout); else the session ends, the stream is aborted and GraphSyncError raised.
    None lifts the deadline.
    """
    _check_tick(tick)
    if hello_timeout is not None:
        _check_timeout("hello_timeout", hello_timeout)
    loop = asyncio.get_running_loop()
    session = SyncSession(graph, max_message=max_message, live=not until_synced)
    wake = asyncio.Event()
    ended_here = asyncio.Event()  # our END is queued (the reader may stop reading)
    done = False

    def kick() -> None:
        wake.set()
        if session.end_sent:
            ended_here.set()
        if session.lagging and not writer.is_closing():
            # pump() may be waiting in drain() for as long as the peer does not read:
            # it would never come back to see ``lagging``. Ending the stream frees it
            # and the reader; SyncBacklogExceeded is raised below.
            writer.abort("graph sync backlog exceeded")

    def on_output() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            loop.call_soon_threadsafe(kick)

    session.on_output = on_output

    async def pump() -> None:
        try:
            while True:
                wake.clear()
                data = session.data_to_send()
                if data:
                    writer.write(data)
                    await writer.drain()
                    continue
                if session.lagging:
                    writer.abort("graph sync backlog exceeded")  # ends the reader's wait
                    raise _backlog_exceeded(session)
                if done:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), tick)
                except TimeoutError:
                    graph.advance()
                    session.handle_timer()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if isinstance(exc, ConnectionClosed) and not exc.code:
                # the connection ended cleanly while we were sending (drain() raises so
                # when what we wrote was not all sent): as sync_blocking's writer takes
                # it, no failure of ours, and a catch-up not done (GraphSyncError below,
                # never this ConnectionClosed: tests/graph/test_sync_end.py)
                cut_off.append(exc)
                return
            # the reader may wait for as long as the peer is quiet (the graph closed,
            # say): end its wait
            with contextlib.suppress(Exception):
                writer.abort(f"graph sync failed: {exc}")
            raise

    overdue: list[GraphSyncError] = []  # the peer's HELLO came too late: the error
    cut_off: list[ConnectionClosed] = []  # pump() ended at the connection's clean end

    def hello_overdue() -> None:
        # (a timer, not a deadline on each read: pump() may be blocked in drain() to a
        # silent peer that does not read either.) It and the HELLO's handling both run
        # on the loop: a HELLO handled before this runs keeps its session; one handled
        # after cannot, the session being closed here -- it is not merged, nor does it
        # queue pushes for a stream that is gone.
        if session.peer_root is None and not overdue:
            overdue.append(_no_hello(hello_timeout))
            session.close()  # the change listener goes now, not once this task runs
            with contextlib.suppress(Exception):
                writer.abort("graph sync: no HELLO in time")  # ends the read's wait

    session.start()
    out = asyncio.create_task(pump())
    hello_timer: asyncio.TimerHandle | None = None
    if hello_timeout is not None:
        hello_timer = loop.call_later(hello_timeout, hello_overdue)
    try:
        while not (until_synced and session.synced):
            if out.done():
                out.result()  # the write side failed: raise it
            if until_synced and session.peer_done:
                # our END follows our pushes, which pump() makes as the peer reads; a
                # peer that stays connected sends nothing more: wait for pump(), a tick
                # at a time -- never for an END that nothing will send
                if out.done():
                    break  # pump() ended at the connection's clean end: no END will go
                _check_end_coming(session)
                waiter = asyncio.ensure_future(ended_here.wait())
                try:
                    await asyncio.wait(
                        {out, waiter}, timeout=tick, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                continue
            if until_synced and session.end_received:
                # a peer that reports what it refuses sends its final REFUSED once it
                # has read our END: read on for it (our END must be coming)
                _check_end_coming(session)
            try:
                data = await reader.read(1 << 20)
            except ConnectionClosed as exc:
                if not _left_cleanly(exc):
                    raise
                data = b""  # the peer left: the end of the session, as the stream's end would be
            if overdue:
                raise overdue[0]  # (what came at the deadline is not taken)
            if not data:
                break
            session.receive_data(data)
            if hello_timer is not None and session.peer_root is not None:
                hello_timer.cancel()
                hello_timer = None
    except DTPError as exc:
        if overdue:
            # the abort at the deadline ended the read (or pump()'s drain): say why
            raise overdue[0] from None
        if not session.lagging and out.done() and not out.cancelled():
            failed = out.exception()
            if failed is not None:
                raise failed from None  # the write side's failure ended the read
        if not session.lagging:  # the abort of a lagging session ends the read: reported below
            if isinstance(exc, RemoteProtocolError):
                # as sync_blocking does: the peer learns why, and pump() cannot stay
                # blocked sending to a peer that broke the protocol and does not read
                with contextlib.suppress(Exception):
                    writer.abort("graph sync protocol error")
            raise
    finally:
        if hello_timer is not None:
            hello_timer.cancel()  # (it would abort the caller's stream later)
        session.close()
        done = True
        wake.set()
        if until_synced and session.synced:
            await out
        else:
            out.cancel()
            # (asyncio.wait, not ``await out`` under a suppress: a cancellation of this
            # task arriving meanwhile must go on up, not be taken for out's)
            await asyncio.wait({out})
            if not out.cancelled():
                out.exception()  # (its failure is reported above, or moot: retrieved)
    # (the write side's failure is raised above: by ``await out`` once synced)
    _check_run_ended(session, until_synced=until_synced, cut_off=bool(cut_off))
    return session
