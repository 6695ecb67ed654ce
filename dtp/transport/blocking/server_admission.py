"""A blocking server's admission of new connections (:class:`ServerAdmission`: the hooks
its :class:`~dtp.transport.handshake_gate.Admission` calls, and the reader thread): a
connection's first record, read with its connect or by the reader thread until its
first-message timeout; the lines for the handshake slots, expired there; a handshake's
start in a connection thread; what the admission turns away; and the ledger bridge's
way in (:meth:`handoff`)."""

from __future__ import annotations

import contextlib
import logging
import select
import socket as _socket
import time
from typing import Any

from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking.server_arrival import _Arrival, _read_first
from dtp.transport.blocking.server_state import ServerState
from dtp.transport.handshake_gate import Progress, Why, unserved_counts
from dtp.transport.heap_release import release_free_heap

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.blocking.server")

_EXPIRY_POLL = 0.25
"""Seconds at most between two looks for connections waiting in a line for a slot past
their deadline (DTPServer._read_loop): they are closed at most this late."""


class ServerAdmission(ServerState):
    """The admission of :class:`~dtp.transport.blocking.server.DTPServer` (docs/protocol.md §8)."""

    def _take_in(self, arrival: _Arrival) -> None:
        """A new TCP connection: its first record is read now if it came with the
        connect (as a genuine client's does) -- then it goes on to the slots without
        waiting among the unproven, where it could make another give way -- else it
        waits there, the reader thread reading it."""
        now = time.monotonic()
        arrival.deadline = now + arrival.config.handshake_timeout
        self._heap.connected(now)
        progress = _read_first(arrival)
        if progress is Progress.NEED_MORE:
            if self._admission.arrived(arrival, arrival.key, now):
                self._watch(arrival)
            return
        self._first_read(arrival, progress, waited=False)

    def _first_read(
        self, arrival: _Arrival, progress: Progress | None, *, waited: bool = True
    ) -> None:
        """``arrival``'s first record is in (COMPLETE: on to the slots), or is not DTP
        (INVALID), or its client left first (None): closed, its address struck.
        ``waited``: whether it waited among the unproven (else it came with its
        connect, and was never there)."""
        now = time.monotonic()
        if progress is Progress.COMPLETE:
            self._admission.proven(arrival, arrival.key, arrival.deadline, now, waited=waited)
            return
        if waited:
            counted = self._admission.dropped(arrival, now)
        else:
            counted = True
            self._admission.struck(arrival.key, now)
        if counted and progress is Progress.INVALID:
            with self._stats_lock:
                self.handshakes_failed += 1
        arrival.tcp.close()

    def _watch(self, arrival: _Arrival) -> None:
        """Leave ``arrival``'s first record to the reader thread."""
        with self._stats_lock:
            if self._closed.is_set():
                arrival.tcp.close()
                return
            self._reading[arrival.tcp.fileno()] = arrival
        with contextlib.suppress(OSError):
            self._reader_waker.send(b"\0")

    def _read_loop(self) -> None:
        """The reader thread: the first records of the connections that are still
        sending theirs, read as they come, until their first-message timeout; and the
        connections waiting in a line for a slot, closed once past their deadline
        (looked at every :data:`_EXPIRY_POLL` seconds at most)."""
        wake = self._reader_wake
        try:
            while not self._closed.is_set():
                poller = select.poll()
                poller.register(wake, select.POLLIN)
                with self._stats_lock:
                    for fd in self._reading:
                        poller.register(fd, select.POLLIN)
                deadline = self._admission.next_deadline()
                wait = _EXPIRY_POLL
                if deadline is not None:
                    wait = min(max(deadline - time.monotonic(), 0.0), wait)
                for fd, _ in poller.poll(wait * 1000.0 + 1):
                    if fd == wake.fileno():
                        with contextlib.suppress(OSError):
                            wake.recv(4096)
                        continue
                    with self._stats_lock:
                        arrival = self._reading.get(fd)
                    if arrival is None:
                        continue  # (closed meanwhile: it gave way, or timed out)
                    progress = _read_first(arrival)
                    if progress is not Progress.NEED_MORE:
                        with self._stats_lock:
                            self._reading.pop(fd, None)
                        self._guarded_first_read(arrival, progress)
                now = time.monotonic()
                try:
                    self._admission.expire(now)
                except Exception:  # (as _guarded_first_read: never the thread)
                    logger.exception("closing connections past their first-message timeout")
                if self._heap.due(now):
                    # (after churn, at a quiet moment: dtp.transport.heap_release)
                    release_free_heap()
        except Exception:
            # (its end would leave the first records unread and the lines unexpired)
            logger.exception("the admission thread failed")
            raise
        finally:
            self._reader_waker.close()
            wake.close()

    def _guarded_first_read(self, arrival: _Arrival, progress: Progress | None) -> None:
        """:meth:`_first_read` in the reader thread: what it raises (a thread that could
        not start, say) closes that connection, never the thread."""
        try:
            self._first_read(arrival, progress)
        except Exception:
            logger.exception("a connection from %s could not be taken in", arrival.peer)
            arrival.tcp.close()

    def _begin(self, arrival: _Arrival) -> bool:
        """The admission's ``start``: ``arrival`` holds its slots; its handshake begins
        in a connection thread -- this one, when the accepting thread asked for it
        (:meth:`_accept_next`). False when it cannot (the server closed, the client
        left, no thread): closed."""
        if self._closed.is_set():
            arrival.tcp.close()
            return False
        mine: list[_Arrival] | None = getattr(self._local, "mine", None)
        if mine is not None and not mine:
            mine.append(arrival)
            return True
        try:
            self._give(arrival)
        except RuntimeError as exc:
            # the process is out of threads: the first thread free serves it -- the
            # accepting one, woken for it, at the latest (as it serves what it accepts).
            # A ledger connection is closed: a server on the ledger alone has no
            # accepting thread, and its client's ledger connection is not held meanwhile
            logger.warning("no thread for a connection from %s: %s", arrival.peer, exc)
            if arrival.key is None:
                arrival.tcp.close()
                return False
            with self._idle_lock:
                self._orphans.append(arrival)
            with contextlib.suppress(OSError):
                self._orphan_sender.send(b"\0")
        return True

    def _close_unserved(self, arrivals: list[_Arrival], why: Why) -> None:
        """The admission's ``close``: connections it turned away (``why``)."""
        if not arrivals:
            return
        busy, unproven = unserved_counts(why, len(arrivals))
        with self._stats_lock:
            self.busy_refused += busy
            self.unproven_closed += unproven
            for arrival in arrivals:
                with contextlib.suppress(OSError):
                    self._reading.pop(arrival.tcp.fileno(), None)
        for arrival in arrivals:
            logger.debug("closed a connection from %s unserved: %s", arrival.peer, why)
            arrival.tcp.close()

    def _give_way(self, arrival: _Arrival) -> None:
        """The admission's ``give_way``: end a half-handshake, for a proven connection
        waiting for a slot (its thread ends it, and its slot goes on)."""
        with self._stats_lock:
            self.half_handshakes_evicted += 1
        arrival.gave_way = True
        engine = arrival.engine
        if engine is not None:
            engine._wake()  # its pump looks at gave_way

    def handoff(self, carrier: _socket.socket, peer: Any, config: ConnectionConfig) -> bool:
        """Serve a carrier connection that came from elsewhere (a ledger bridge: an
        :meth:`attach`-ed listener's, from any thread): it
        waits for a handshake slot as a proven TCP connection does, until ``config``'s
        handshake timeout (a ledger connection's is longer, as its records take ledger
        transactions), holding no thread meanwhile. False (the carrier closed) once the
        server is closed, when the server's line is full, or when no thread can be
        started for it."""
        if self._closed.is_set():
            carrier.close()
            return False
        # no IP address to cap by: the ledger bridge is a local socket
        arrival = _Arrival(carrier, peer, config, None)
        now = time.monotonic()
        arrival.deadline = now + config.handshake_timeout
        self._heap.connected(now)
        self._admission.proven(arrival, None, arrival.deadline, now)
        return carrier.fileno() >= 0  # (closed: no thread for it, or its line was full)
