"""An asyncio server's connection tasks (:class:`ServerTasks`): one per connection whose
handshake may start, that runs its handshake (holding its slots until it ends) and then
the client callback; and what each does when the loop ends under it or the callback
fails."""

from __future__ import annotations

import asyncio
import inspect
import logging

from dtp.errors import DTPError, LocalProtocolError
from dtp.protocol.connection import CloseCode
from dtp.transport.asyncio.protocol import Protocol, abort
from dtp.transport.asyncio.server_admission import loop_time
from dtp.transport.asyncio.server_arrival import _Arrival
from dtp.transport.asyncio.server_state import ServerState, _being_cancelled
from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.asyncio.server")


class ServerTasks(ServerState):
    """The connection tasks of :class:`~dtp.transport.asyncio.server.DTPServer`."""

    def _start_serving(self, arrival: _Arrival) -> None:
        started: list[bool] = []  # set by _serve's first step
        assert arrival.proto is not None
        proto = arrival.proto
        task = proto.loop.create_task(self._serve(arrival, started))

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled() and not started:
                # cancelled before its first step (the loop shutting down): none of
                # _serve ran, its finally blocks included
                self._admission.ended(arrival, loop_time(self._loop), start_next=False)
                abort(proto, CloseCode.HANDSHAKE_FAILED, "the server is shutting down")

        self._tasks.add(task)
        task.add_done_callback(done)

    async def _serve(self, arrival: _Arrival, started: list[bool]) -> None:
        """One connection: the handshake and hooks, then the client callback. It holds
        its slots (one of the server's, one of its address's) until its handshake ends.
        Cancelled (the loop shutting down), it aborts the connection rather than leave
        the transport open."""
        started.append(True)
        cancelled = False
        proto = arrival.proto
        assert proto is not None
        try:
            accepted = await self._handshake(proto, arrival)
        except asyncio.CancelledError:
            # (only a cancel of this task -- the loop ending -- closes those waiting: a
            # CancelledError of something it awaited leaves the server serving them)
            cancelled = _being_cancelled()
            abort(proto, CloseCode.HANDSHAKE_FAILED, "the server is shutting down")
            raise
        finally:
            # however the handshake ended (accepted, refused, failed, timed out, an error
            # or a cancellation): its slots are free for the next connections
            self._admission.ended(arrival, loop_time(self._loop), start_next=not cancelled)
            if not cancelled and not self._closed.is_set():
                self._arm_expiry()  # (those it handed on may wait in a line now)
        if not accepted:
            return
        session = proto.session
        reader = DTPStreamReader(proto, 0)
        writer = DTPStreamWriter(proto, 0, primary=True)
        # the connection stays open once the callback returned, as asyncio's server
        # keeps its writer (the callback may have handed the pair on, or kept neither)
        proto.pinned = writer._owner
        try:
            result = self._callback(reader, writer)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            writer.abort("the server is shutting down")
            # (the loop is ending: no drain can run on it, the carrier closes now)
            proto.close_carrier(drain=False)
            raise
        except DTPError as exc:
            if isinstance(exc, LocalProtocolError) and session.terminated is None:
                # the callback misused a live stream (a write after write_eof() or
                # close()): a bug of its own, reported as any other exception below.
                # At INFO, nobody saw it: the client only read an abort
                self._callback_failed(proto, exc)
                writer.abort("internal error")
                return
            logger.info("connection from %s ended: %s", session.authenticated_address, exc)
            if session.terminated is None and not writer._closing:
                # an error of the callback's own (a stream the peer reset) while the
                # connection goes on: nobody serves it any more, and the client must
                # not wait on it. (Not once the first stream is closing: that close
                # ends it, after what is queued went out. A drain() waiting when another
                # task closed the writer raises ConnectionClosed at once; aborted here,
                # what the close was still sending was cut and the client read an
                # error.)
                writer.abort("internal error")
        except Exception as exc:
            # then the connection ends, the peer reading an error, not a clean end
            self._callback_failed(proto, exc)
            writer.abort("internal error")

    @staticmethod
    def _callback_failed(proto: Protocol, exc: Exception) -> None:
        """Report what a client callback raised to the loop's exception handler, as
        asyncio.start_server reports it (a program that set its own handler saw
        nothing when this went to our logger)."""
        proto.loop.call_exception_handler(
            {
                "message": "Unhandled exception in client_connected_cb",
                "exception": exc,
                "transport": proto.transport,
                "peer_address": proto.session.authenticated_address,
            }
        )
