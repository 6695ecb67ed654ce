"""An asyncio server's handshakes (:class:`ServerHandshakes`): each connection's Noise
handshake, run in its task until the client is authenticated or its handshake timeout;
the replay guard; the accept and admit hooks and the reservations; and the verdict the
client reads (accepted, refused)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging

from dtp.transport.asyncio.protocol import Protocol, abort, peer_label
from dtp.transport.asyncio.server_arrival import _Arrival
from dtp.transport.asyncio.server_state import ServerState, _being_cancelled
from dtp.transport.handshake_gate import ENDINGS, Outcome
from dtp.transport.hooks import HOOK_FAILED, PeerInfo, hook_calls, refusal_reason

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.asyncio.server")


class ServerHandshakes(ServerState):
    """The handshakes of :class:`~dtp.transport.asyncio.server.DTPServer`."""

    async def _handshake(self, proto: Protocol, arrival: _Arrival) -> bool:
        """The handshake and the hooks: True once the client is accepted."""
        session = proto.session
        if arrival.by_address and session.authenticated_address is None:
            # its first record, read, got our reply: its client's next message is due.
            # (A ledger bridge's first record comes over the ledger, slowly: it passed
            # the ledger carrier's own admission, and never gives way)
            self._admission.waiting_for_client(arrival)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel (the
        # loop ending) that comes as the handshake completes, and the callback would run
        # in a task asyncio.run then waits on for good
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(session.conn.config.handshake_timeout):
                await proto.wait_for(
                    lambda: (
                        session.authenticated_address is not None
                        or session.terminated is not None
                        or arrival.gave_way
                    )
                )
        self._admission.authenticated(arrival)
        if arrival.gave_way:
            # (_give_way closed it already)
            self.handshakes_failed += ENDINGS[Outcome.GAVE_WAY].failed
            return False
        if session.terminated is not None or session.authenticated_address is None:
            return self._end(proto, Outcome.FAILED)
        conn = session.conn
        # before the hooks: a replay must not reserve the client's ledger connection
        if self._replays.is_replay(conn, peer_label(proto)):
            return self._end(proto, Outcome.REPLAYED)
        if self._accept is not None or self._admit is not None:
            # IK: message 2 goes now, and the client works on it while the hooks (the
            # ledger admission) decide; the verdict follows it. Without hooks the verdict
            # is at once: both go in one flight, as one wake-up
            conn.answer()
            proto.flush()
        peer = session.peer_info()
        verdict = await self._run_hook(peer)
        if session.terminated is not None or conn.closed:
            # the client gave up (or vanished) while the hooks ran: nothing to accept
            # (accept() would raise, and the task's error never be retrieved)
            return self._end(proto, Outcome.FAILED)
        if verdict is None and self._serving is not None:
            # (what the admission counts while the connection is served: hooks.Reservations)
            verdict, release = self._serving.take(peer)
            if release is not None:
                # (never blocks the loop: what a release does that takes long, it does in a
                # thread of its own)
                proto.closed_future.add_done_callback(lambda _: release())
        if verdict is not None:
            self.refused += ENDINGS[Outcome.REFUSED].refused
            session.conn.refuse(verdict)  # sends CLOSE(REFUSED, verdict)
            proto.flush()
            proto.close_carrier()
            return False
        session.conn.accept()
        self._replays.accepted(conn)
        session.process_events()
        proto.flush()
        return True

    def _end(self, proto: Protocol, outcome: Outcome) -> bool:
        """Count a handshake that ended with ``outcome`` and close it as
        :data:`~dtp.transport.handshake_gate.ENDINGS` says: False (not accepted)."""
        ending = ENDINGS[outcome]
        self.handshakes_failed += ending.failed
        self.refused += ending.refused
        if ending.code is not None:
            abort(proto, ending.code, ending.reason or "")
        return False

    async def _run_hook(self, peer: PeerInfo) -> str | None:
        """None to accept, or the refusal reason (``accept`` first, then ``admit``)."""
        for call in hook_calls(peer, self._accept, self._admit):
            hook, arg = call.hook, call.arg
            # (a plain admit hook may call the ledger: in a thread, never on the loop)
            threaded = call.admit and not inspect.iscoroutinefunction(hook)
            try:
                verdict = await asyncio.to_thread(hook, arg) if threaded else hook(arg)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # the loop is ending: this handshake with it
                # the hook's own (it awaited a task cancelled elsewhere): a hook failure.
                # Passed on, it read as the server shutting down, and every connection
                # waiting for a handshake slot was closed with this one
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            reason = refusal_reason(verdict)
            if reason is not None:
                return reason
        return None
