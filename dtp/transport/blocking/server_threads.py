"""A blocking server's connection threads (:class:`ServerThreads`): the turn to accept on
the listener, passed from thread to thread (leader/follower), and the threads that run
each connection's handshake and then, under ``serve_forever``, its handler; a thread
with nothing to do waits a while for the next job."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from dtp.transport.blocking.server_arrival import _Arrival
from dtp.transport.blocking.server_state import _ACCEPT_TURN, ServerState, _AcceptTurn, _Job
from dtp.transport.carriers.tcp import tune
from dtp.transport.handshake_slots import address_key
from dtp.transport.poll import wait_ready

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.blocking.server")

_ACCEPT_POLL = 0.5
"""Seconds at most the accepting thread waits before it looks whether the server was
closed (DTPServer._accept_next)."""


class ServerThreads(ServerState):
    """The connection threads of :class:`~dtp.transport.blocking.server.DTPServer`."""

    def _accept_next(self) -> _Arrival | None:
        """The accepting thread's turn: the next TCP connection whose handshake may
        start at once (its first record came with its connect, and its slots were
        free), for this thread to serve; the others go to the reader thread, or to the
        lines, and this thread accepts on. None once the server is closed."""
        listener = self._listener
        assert listener is not None
        while not self._closed.is_set():
            with self._idle_lock:
                if self._orphans:
                    return self._orphans.popleft()
            try:
                # (woken by a connection, by an orphan, or by close()'s shutdown; and
                # every _ACCEPT_POLL at the latest: close() closes what this waits on,
                # whose numbers a new descriptor may take before this poll begins)
                ready = wait_ready([listener, self._orphan_wake], [], _ACCEPT_POLL)[0]
                if listener not in ready:
                    with contextlib.suppress(OSError):
                        self._orphan_wake.recv(4096)
                    continue
                tcp, peer = listener.accept()
            except BlockingIOError:
                continue  # (another took it: none here)
            except (OSError, ValueError):
                if self._closed.is_set():
                    return None
                time.sleep(0.05)
                continue
            try:
                tcp.setblocking(False)
                tune(tcp)
            except OSError:
                tcp.close()  # (reset already)
                continue
            arrival = _Arrival(tcp, peer, self._config, address_key(str(peer[0])))
            mine: list[_Arrival] = []
            self._local.mine = mine
            try:
                self._take_in(arrival)
            except Exception:
                # (a fault of ours at one connection: it goes, the accepting goes on --
                # escaping, it ended this thread and all accepting with it)
                logger.exception("a connection from %s could not be taken in", peer)
                tcp.close()
                continue
            finally:
                self._local.mine = None
            if mine:
                return mine[0]
        return None

    def _give(self, job: _Job) -> None:
        """Hand ``job`` to a waiting connection thread, or to a new one."""
        with self._idle_lock:
            if self._idle:
                self._idle -= 1  # that waiting thread is promised this job
                self._jobs.put(job)
                return
        thread = threading.Thread(target=self._work, args=(job,), name="dtp-handshake", daemon=True)
        thread.start()

    def _work(self, job: _Job | None) -> None:
        """A connection thread: do ``job``, then wait up to WORKER_IDLE for another.
        With the turn to accept, it accepts one connection, passes the turn on and
        serves that connection itself."""
        while job is not None:
            if isinstance(job, _AcceptTurn):
                accepted = self._accept_next()
                if accepted is None:
                    return  # closed: nobody accepts any more
                try:
                    self._give(_ACCEPT_TURN)  # the next client need not wait for this one
                except RuntimeError as exc:
                    # the process is out of threads. Lost, the turn stopped all
                    # accepting for good; kept by us, serving this connection, it
                    # stopped it for as long as that lasted (under serve_forever, the
                    # handler's whole run): left for whichever thread is free first --
                    # we, or one whose connection ends sooner
                    logger.warning("no thread to pass the accepting on to: %s", exc)
                    with self._idle_lock:
                        if self._idle:  # one became free meanwhile (and waits)
                            self._idle -= 1
                            self._jobs.put(_ACCEPT_TURN)
                        else:
                            self._turn_left = True
                job = accepted
            self._serve_one(job)
            with self._idle_lock:
                if self._orphans:  # (one no thread could be started for)
                    job = self._orphans.popleft()
                    continue
                if self._turn_left:
                    self._turn_left = False
                    job = _ACCEPT_TURN
                    continue
                if self._closed.is_set():
                    return
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.WORKER_IDLE)
            except queue.Empty:
                with self._idle_lock:
                    if self._idle:
                        self._idle -= 1  # no job promised to us: leave
                        return
                # every waiting thread was promised a job, we included: it is queued
                job = self._jobs.get()

    def _serve_one(self, arrival: _Arrival) -> None:
        """One connection's thread: the handshake, then (under serve_forever) the
        handler, with no thread hand-off between them. It holds its handshake slots
        until the handshake ends."""
        try:
            sock = self._handshake(arrival)
        finally:
            # however the handshake ended: its slots are free for the next client
            self._admission.ended(arrival, time.monotonic())
        if sock is None:
            return
        if self._closed.is_set():
            sock.abort("the server is closed")  # nobody will take it now
            return
        dispatch = self._dispatch
        if dispatch is not None:
            if sock._engine.holds_place:  # (serve_forever began during its handshake)
                sock._engine.holds_place = False
                self._places.release()
            dispatch(sock)
            return
        self._ready.put(sock)  # (its place was taken before its client was told it is in)
        if self._closed.is_set():
            self._drain_ready()  # close() ran meanwhile and may have missed it
