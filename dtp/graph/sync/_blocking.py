"""The blocking sync driver: :func:`sync_blocking` runs a :class:`~dtp.graph.sync.SyncSession`
over a blocking DTP stream (a writer thread sends, the calling thread reads), and
:func:`connect` opens the stream first."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from dtp.errors import ConnectionClosed, DTPError, DTPTimeoutError, RemoteProtocolError
from dtp.graph._store import Graph
from dtp.graph.sync._messages import MAX_MESSAGE
from dtp.graph.sync._run_checks import (
    CONNECT_TIMEOUT,
    _backlog_exceeded,
    _check_end_coming,
    _check_run_ended,
    _check_tick,
    _check_timeout,
    _left_cleanly,
    _no_hello,
)
from dtp.graph.sync._session import SyncSession, _check_graph


def sync_blocking(
    graph: Graph,
    sock: Any,
    *,
    until_synced: bool = False,
    max_message: int = MAX_MESSAGE,
    tick: float = 0.25,
    hello_timeout: float | None = None,
) -> SyncSession:
    """Run a sync session over a blocking DTP stream (:class:`dtp.socket.DTPSocket`).

    With ``until_synced`` it returns once both sides have exchanged what the other
    lacked (one-shot catch-up, the stream stays open; GraphSyncError if the peer closes
    the stream before); otherwise it keeps forwarding changes both ways until the peer
    closes the stream. The peer's clean close of the whole connection ends the session
    as the end of its stream does, on any stream (on one other than the connection's
    first, whose reads then raise ConnectionClosed with code 0, too); a close with an
    error code, a reset of the stream and a close here raise as they do. A writer
    thread sends; the calling thread reads. Deferred updates are applied every
    ``tick`` seconds.
    The socket's timeout bounds each send, and each read until the peer's END (the
    initial exchange: DTPTimeoutError); a live session then waits through quiet periods
    of any length.
    ``hello_timeout``: seconds the peer has to send its HELLO, else the stream is
    aborted and GraphSyncError raised (None: no deadline).
    Raises GraphSyncError / RemoteProtocolError if the peer misbehaves.
    """
    _check_tick(tick)
    if hello_timeout is not None:
        _check_timeout("hello_timeout", hello_timeout)
    session = SyncSession(graph, max_message=max_message, live=not until_synced)
    wake = threading.Event()
    stop = threading.Event()
    ended_here = threading.Event()  # our END is queued (the reader may stop reading)
    cut_off = threading.Event()  # the writer ended at the connection's clean end
    failure: list[BaseException] = []

    aborting = threading.Event()

    def abort_lagging() -> None:
        with contextlib.suppress(Exception):
            sock.abort("graph sync backlog exceeded")

    def on_output() -> None:
        wake.set()
        if session.end_sent:
            ended_here.set()
        if session.lagging and not aborting.is_set():
            # the writer may be blocked in sendall for as long as the peer does not
            # read (the data of the first exchange is not bounded by the backlog): it
            # would never come back to see ``lagging``. Ending the stream frees it, and
            # the reader; SyncBacklogExceeded is raised below. From a thread of its
            # own: this runs under the graph's lock, and a paid connection's abort
            # closes it on the ledger.
            aborting.set()
            threading.Thread(target=abort_lagging, name="dtp-graph-sync-abort", daemon=True).start()

    session.on_output = on_output

    def writer() -> None:
        try:
            while True:
                data = session.data_to_send()
                if data:
                    sock.sendall(data)
                    continue
                if session.lagging:
                    sock.abort("graph sync backlog exceeded")  # unblocks the reader
                    raise _backlog_exceeded(session)
                if stop.is_set():
                    return
                if not wake.wait(tick):
                    graph.advance()
                    session.handle_timer()
                wake.clear()
        except BaseException as exc:
            if isinstance(exc, ConnectionClosed) and not exc.code:
                # the connection ended cleanly (the peer left, as a server that closes
                # does, while we were sending): no failure of ours -- the reader reads
                # the end, and the session ends as the peer's leaving ends it. What was
                # being sent did not all go: a catch-up is not done, even with both
                # ENDs through (ours may be in it): GraphSyncError below
                cut_off.set()
                return
            failure.append(exc)
            # the reader may be blocked in recv for as long as the peer is quiet: end it
            with contextlib.suppress(Exception):
                sock.abort(f"graph sync failed: {exc}")

    def hello_overdue() -> None:
        # (a timer of its own, not the writer's loop: the writer may be blocked in
        # sendall to a silent peer that does not read either)
        if session.peer_root is None and not stop.is_set():
            failure.append(_no_hello(hello_timeout))
            with contextlib.suppress(Exception):
                sock.abort("graph sync: no HELLO in time")

    hello_timer: threading.Timer | None = None
    if hello_timeout is not None:
        hello_timer = threading.Timer(hello_timeout, hello_overdue)
        hello_timer.name = "dtp-graph-sync-hello"
        hello_timer.daemon = True
    session.start()
    thread = threading.Thread(target=writer, name="dtp-graph-sync-writer", daemon=True)
    thread.start()
    if hello_timer is not None:
        hello_timer.start()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    ended: BaseException | None = None  # (None: the read loop ended as it should)
    try:
        while not (until_synced and session.synced):
            if failure:
                raise failure[0]
            if until_synced and session.peer_done:
                # the peer is done; our END follows our pushes, which the writer makes
                # as the peer reads (each send bounded by the socket's timeout). A peer
                # that stays connected (a live server) sends nothing more: wait for the
                # writer, not in recv -- but never for an END that nothing will send.
                if not thread.is_alive():
                    break
                _check_end_coming(session)
                ended_here.wait(tick)
                continue
            if until_synced and session.end_received:
                # a peer that reports what it refuses sends its final REFUSED once it
                # has read our END: read on for it (our END must be coming)
                _check_end_coming(session)
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                if until_synced or not session.end_received:
                    raise  # the peer still owes us its part of the initial exchange
                # Live, with the peer's END in: it owes us nothing more, and a quiet
                # table is no fault (pub/sub and RPC wait through it too). Nothing was
                # read, the stream stays usable; the loop's top sees a writer failure.
                continue
            except ConnectionClosed as exc:
                if not _left_cleanly(exc):
                    raise
                n = 0  # the peer left: the end of the session, as the stream's end would be
            if not n:
                break
            session.receive_data(view[:n])
            if hello_timer is not None and session.peer_root is not None:
                hello_timer.cancel()  # (its thread ends now, not at the deadline)
                hello_timer = None
    except DTPError as exc:
        ended = exc
        if failure and not session.lagging:
            raise failure[0] from None  # the writer's failure ended the read
        if not session.lagging:  # the abort of a lagging session ends the read: reported below
            raise
    except BaseException as exc:
        ended = exc
        raise
    finally:
        if hello_timer is not None:
            hello_timer.cancel()
        view.release()
        session.close()
        stop.set()
        wake.set()
        if ended is not None:
            # the session failed: the writer may be blocked sending to a peer that does
            # not read, and would hold this thread for as long as the peer likes
            with contextlib.suppress(Exception):
                sock.abort(
                    "graph sync protocol error"
                    if isinstance(ended, RemoteProtocolError)
                    else "graph sync failed"
                )
        thread.join()
    _check_run_ended(
        session,
        until_synced=until_synced,
        cut_off=cut_off.is_set(),
        failure=failure[0] if failure else None,
    )
    return session


def connect(
    graph: Graph,
    address: tuple[str, int],
    *,
    server_key: bytes | None = None,
    until_synced: bool = True,
    timeout: float | None = CONNECT_TIMEOUT,
    **connect_args: Any,
) -> SyncSession:
    """Connect to a graph peer over DTP and sync (blocking); see :func:`sync_blocking`.

    ``timeout`` (seconds, :data:`CONNECT_TIMEOUT` = 10 by default, None for none) bounds
    connecting and the handshake, then each wait of the initial exchange and each send:
    an address that does not answer in time raises DTPTimeoutError naming it. It does
    not bound idleness: a live session (``until_synced=False``) lasts until the peer
    closes the stream, however long no change is made."""
    import dtp.socket
    from dtp.transport.carriers._tcp import endpoint_text

    _check_graph(graph)  # before connecting: a peer would otherwise see us come and go
    with dtp.socket.create_connection(
        address, timeout, server_key=server_key, **connect_args
    ) as sock:
        try:
            return sync_blocking(graph, sock, until_synced=until_synced)
        except DTPTimeoutError as exc:
            if timeout is None:
                raise
            # the socket's own "timed out" names neither the peer nor the bound
            target = (
                endpoint_text(address[0], address[1])
                if isinstance(address, tuple)
                else str(address)
            )
            raise DTPTimeoutError(
                f"graph sync with {target} timed out after {timeout:g} s: the peer did not"
                " answer in time"
            ) from exc
