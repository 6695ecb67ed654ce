"""A blocking server's handshakes (:class:`ServerHandshakes`): each connection's Noise
handshake, run in its connection thread; the replay guard; the accept and admit hooks
and the reservations; and the verdict the client reads (accepted, refused, "server
busy")."""

from __future__ import annotations

import logging
import time

from dtp.errors import DTPError
from dtp.identity.ahead import prepare_ephemeral_key
from dtp.identity.noise import prepare_handshake
from dtp.protocol.connection import CloseCode
from dtp.transport.blocking.engine import Engine
from dtp.transport.blocking.server_arrival import _Arrival
from dtp.transport.blocking.server_state import ServerState
from dtp.transport.blocking.socket import DTPSocket
from dtp.transport.handshake_gate import ENDINGS, Outcome
from dtp.transport.handshake_slots import SERVER_BUSY
from dtp.transport.hooks import HOOK_FAILED, PeerInfo, hook_calls, refusal_reason
from dtp.transport.session import Session

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.blocking.server")

_REFUSAL_MARGIN = 0.5
"""Seconds (a quarter of the handshake timeout at most) before its handshake timeout
that a client still waiting for a place in the accept() queue is refused "server busy":
at the timeout itself the connection would end with no reply."""


class ServerHandshakes(ServerState):
    """The handshakes of :class:`~dtp.transport.blocking.server.DTPServer`."""

    def _handshake(self, arrival: _Arrival) -> DTPSocket | None:
        tcp, peer = arrival.tcp, arrival.peer
        session = Session(arrival.config)
        try:
            engine = Engine(tcp, session, name=f"server-{peer[0]}:{peer[1]}")
        except OSError as exc:
            # (its wake socketpair: out of descriptors, say) escaping, it ended the
            # thread with a traceback, uncounted, the carrier left to the collector
            logger.warning("handshake with %s not started: %s", peer, exc)
            with self._stats_lock:
                self.handshakes_failed += ENDINGS[Outcome.FAILED].failed
            tcp.close()
            return None
        engine.peername = peer
        arrival.engine = engine
        with self._stats_lock:
            self._handshaking.add(engine)
        try:
            # (close() sets _closed before it wakes what it finds in _handshaking)
            if self._closed.is_set():
                outcome, verdict = Outcome.CLOSED, ""
            else:
                outcome, verdict = self._authenticate(engine, arrival)
        except DTPError as exc:
            logger.debug("handshake with %s failed: %s", peer, exc)
            outcome, verdict = Outcome.FAILED, ""
        except Exception:
            logger.exception("handshake with %s failed", peer)
            engine.abort(CloseCode.INTERNAL_ERROR, "internal error")
            return None
        finally:
            with self._stats_lock:
                self._handshaking.discard(engine)
        # the engine's lock is not held here: abort() and friends take it themselves
        ending = ENDINGS[outcome]
        if ending.failed or ending.refused:
            with self._stats_lock:
                self.handshakes_failed += ending.failed
                self.refused += ending.refused
        if ending.code is not None:
            engine.abort(ending.code, verdict if ending.reason is None else ending.reason)
            return None
        engine.start_timer()
        return DTPSocket(engine, 0, primary=True)

    def _authenticate(self, engine: Engine, arrival: _Arrival) -> tuple[Outcome, str]:
        """Run the handshake and the accept hook: its outcome, and the refusal's reason
        (REFUSED, BUSY; else "": :data:`~dtp.transport.handshake_gate.ENDINGS` holds it)."""
        session = engine.session
        conn = session.conn
        # (a wait for a place ends a little before the connection's own handshake timer,
        # so that the refusal still goes out: _take_place)
        timeout = conn.config.handshake_timeout
        deadline = time.monotonic() + timeout - min(_REFUSAL_MARGIN, timeout / 4)
        with engine.lock:
            first = arrival.reader.take()
            if first:
                # (the first record, read before the slots: the handshake's first input)
                conn.receive_data(first, time.monotonic())
                engine._after_io()
            # IK: the client's proof comes with its first message and our reply waits
            # for the verdict; XX: the proof comes after the three messages
            closed = self._closed
            if arrival.key is not None and session.authenticated_address is None:
                # its first record, read, got our reply: its client's next message is
                # due. (A ledger bridge's first record comes over the ledger, slowly: it
                # passed the ledger carrier's own admission, and never gives way)
                self._admission.waiting_for_client(arrival)
            engine.pump(
                lambda: (
                    session.authenticated_address is not None
                    or session.terminated is not None
                    or closed.is_set()
                    or arrival.gave_way
                ),
                conn.config.handshake_timeout,
            )
            self._admission.authenticated(arrival)
            if closed.is_set():
                return Outcome.CLOSED, ""
            if arrival.gave_way:
                return Outcome.GAVE_WAY, ""
            if session.terminated is not None or session.authenticated_address is None:
                return Outcome.FAILED, ""
            # before the hooks: a replay must not reserve the client's ledger connection
            if self._replays.is_replay(conn, engine.peername):
                return Outcome.REPLAYED, ""
            if self._accept_hook is not None or self._admit_hook is not None:
                # IK: message 2 goes now, and the client works on it while the hooks
                # (the ledger admission) decide; the verdict follows it. Without hooks
                # the verdict is at once: both go in one flight, as one wake-up
                conn.answer()
                engine.flush()
            peer = session.peer_info()
            verdict = self._run_hook(peer)
            if verdict is None and self._serving is not None:
                # (what the admission counts while the connection is served: hooks.Reservations)
                verdict, release = self._serving.take(peer)
                if release is not None:
                    engine.on_release.append(release)
            outcome = Outcome.REFUSED
            if verdict is None and not self._take_place(engine, deadline):
                outcome, verdict = Outcome.BUSY, SERVER_BUSY
                with self._stats_lock:  # (counted before the client can read it)
                    self.busy_refused += 1
            if verdict is not None:
                session.conn.refuse(verdict)  # sends CLOSE(REFUSED, reason)
                engine.flush()
                engine.pump(lambda: not engine.out, 1.0)
                return outcome, verdict
            session.conn.accept()
            self._replays.accepted(conn)
            engine.flush()
            session.process_events()
            # our reply is out and the client works on it: make the next connection's
            # ephemeral key and start its Noise state meanwhile
            prepare_ephemeral_key()
            prepare_handshake(conn.config.identity.noise_private_bytes(), initiator=False)
            return Outcome.ACCEPTED, ""

    def _run_hook(self, peer: PeerInfo) -> str | None:
        """None to accept, or the refusal reason."""
        for call in hook_calls(peer, self._accept_hook, self._admit_hook):
            try:
                verdict = call.hook(call.arg)
            except Exception:
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            reason = refusal_reason(verdict)
            if reason is not None:
                return reason
        return None
