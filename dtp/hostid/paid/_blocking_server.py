"""Serving a paid DTP service on a host, with blocking sockets (docs/escrow.md §6.1).

    server = dtp.socket.serve(host_id, 7000, handler, ledger=ledger, identity=host_key,
                              receipts="receipts.db")
    ...
    server.close()

:class:`PaidServer` publishes its endpoint and Noise key in the Host, claims whatever
receipts a previous run left unclaimed, and admits a client only through
:class:`~dtp.hostid._admission.LedgerAdmission`. Each handler gets a :class:`PaidSocket`: the
connection's first stream, which before every read and write

- checks the client's receipts (:class:`~dtp.payments.metering.ReceiptGate`): when the usage no
  receipt covers exceeds the allowance it stops reading and writing — the client's sends
  then block on flow control — asks for a receipt, resumes when one arrives, and closes
  the connection with :data:`~dtp.payments.metering.CLOSE_PAYMENT_REQUIRED` if none comes within
  the pause timeout. When it is the escrow's deposit that holds the connection (or a
  receipt comes above it), the escrow is read again, at most once a second: a client
  that topped it up while connected is served on;
- applies the host's per-client rate limits by waiting (back-pressure, never drops).

The Host is re-read every ``refresh_interval``: new limits apply to open connections,
and a client the firewall now denies is closed with
:data:`~dtp.payments.metering.CLOSE_FIREWALL_DENIED`. When a connection ends (either side closed,
or the client vanished), the server claims its latest receipt and the client is refunded
the rest (:func:`~dtp.payments._settlement.claim_and_settle`).

The Host's connection limits count the connections being served until they end
(:mod:`dtp.hostid._served`); a client refused at a limit is settled at once, its deposit
refunded whole (docs/escrow.md §2).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from dtp.errors import ChainError, DTPError, LocalProtocolError
from dtp.hostid._admission import Admitted
from dtp.hostid.paid import _server_steps as steps
from dtp.hostid.paid._blocking import Handler, PaidConnection, PaidSocket
from dtp.hostid.paid._policy import CLOSED_REFUSAL, ServicePolicy, gate_for, watch_claims
from dtp.hostid.paid._request_billing import (
    RequestServer,
    bill_for,
    request_server,
)
from dtp.hostid.paid._server_admission import PaidAdmission, ReportedConnections
from dtp.hostid.paid._server_books import ServerBooks
from dtp.hostid.paid._server_core import AdmitStep, EndPhase, EndStep, HandleStep, ServerOptions
from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments._serving import RECOVERY_CLOSE_WAIT, closes_store, served_refusal, server_store
from dtp.payments._settlement import publish_endpoint
from dtp.payments.receipt_store import ReceiptStore
from dtp.transport._admission import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)

if TYPE_CHECKING:
    from dtp.hostid._admission import Admitted, PeerInfo
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.protocol.connection import ConnectionConfig
    from dtp.transport.blocking._server import DTPServer
    from dtp.transport.blocking._socket import DTPSocket

# the server's own logger, where an operator filters for its lines
# (tests/paid/test_policy_loop.py)
logger = logging.getLogger("dtp.hostid.paid._blocking_server")

#: How long one wait of :meth:`PaidServer.wait_released` without a timeout lasts for a
#: receipt writer still writing, before it waits again (seconds).
_WRITER_WAIT = 60.0


class PaidServer(ServerBooks[PaidConnection]):
    """A paid service on ``port`` of the Host ``host_id`` (see the module docs); serving
    in background threads from construction until :meth:`close`.

    ``identity`` must be the host's authority (it publishes the endpoint and signs the
    claims). ``receipts``: a :class:`ReceiptStore` or its file path (keep it across
    restarts: that is what makes earned fees survive a crash); None keeps them in
    memory only. ``endpoint``: what to publish when it differs from the listening
    address (e.g. listening on 0.0.0.0). ``backlog``, ``max_handshakes``,
    ``max_handshakes_per_address``, ``max_waiting_per_address``: the listen backlog and
    the bounds on handshakes in progress, as :func:`dtp.socket.create_server`'s (same
    defaults; refused as there -- ValueError, TypeError for a backlog that is no
    integer -- but before the ledger is read or written). ``open_grace``: seconds the
    admission looks for a connection a client names whose open may still be landing,
    as :func:`dtp.socket.create_server`'s (InvalidArgument, also before the ledger is
    read or written). ``billing``: ``"bytes"`` (the connection metered by its
    transport, the handler given a :class:`PaidSocket`) or ``"requests"`` (the handler
    is an :class:`~dtp.messaging.rpc.RpcServer` made without ``payments``, each of its
    requests paid by the receipt it carries: :mod:`~dtp.hostid.paid._request_billing`).
    """

    host_id: str
    port: int
    handler: Handler | RequestServer
    requests: RequestServer | None
    _live_lock: threading.Lock
    _limit_lock: threading.Lock
    _closed: threading.Event
    _released: threading.Event
    _in_handler: threading.local
    _threads: list[threading.Thread]
    server: DTPServer | None
    admission: PaidAdmission[str | None]
    address: tuple[str, int]

    def __init__(
        self,
        host_id: str,
        port: int,
        handler: Handler | RequestServer,
        *,
        ledger: Ledger,
        identity: HostIdentity,
        address: tuple[str, int] = ("127.0.0.1", 0),
        receipts: ReceiptStore | str | Path | None = None,
        policy: ServicePolicy | None = None,
        config: ConnectionConfig | None = None,
        endpoint: tuple[str, int] | None = None,
        backlog: int = 128,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        open_grace: float | None = None,
        billing: Literal["bytes", "requests"] = "bytes",
    ) -> None:
        from dtp.hostid._blocking import create_server

        options = ServerOptions.checked(
            identity,
            address=address,
            endpoint=endpoint,
            policy=policy,
            config=config,
            backlog=backlog,
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            open_grace=open_grace,
            ledger=ledger,
            billing=billing,
        )
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.handler = handler
        self._live_lock = threading.Lock()
        #: What the connections' rate-limit buckets are touched under (by the core, and
        #: by each connection: PaidConnection); taken after _live_lock, never before
        self._limit_lock = threading.Lock()
        # set with core.closed: what the policy loop and serve_forever() wait on
        self._closed = threading.Event()
        #: Set by the release: closed, every connection ended and settled, the receipt
        #: writer stopped (what wait_released() waits for)
        self._released = threading.Event()
        # marks the threads running _handle: wait_released() there waits for itself
        self._in_handler = threading.local()
        self._threads: list[threading.Thread] = []
        self.server: DTPServer | None = None
        with server_store(receipts) as (store, opened):
            #: With ``billing="requests"``: the handler, serving requests paid one by one
            self.requests = (
                request_server(handler, asynchronous=False) if billing == "requests" else None
            )
            # (the server-wide rules, self.core, are called under _live_lock: the
            # threads share it)
            self._keep_books(ledger, identity, options.policy, store, closes_store(receipts))
        try:
            host = steps.served_host(ledger, self.host_id, port)
            alone = self.store.attach_server()
            self.core.attached = True
            self.recovered = self._recovered(alone)
            recovery = self._make_recovery()
            # our own LedgerAdmission, remembering what it read for the gate, and told
            # of each reservation and its end (one never served is settled: _unreserved)
            served = ReportedConnections(self._refused_at_limit, self._reserved, self._unreserved)
            self.admission = PaidAdmission(
                self._admit, served, ledger, self.host_id, port, options.open_grace, identity
            )
            self.server = create_server(
                options.address, identity=identity, admit=self.admission, **options.listening()
            )
            self.address = self.server.address
            publish_endpoint(ledger, identity, self.host_id, options.endpoint or self.address)
            self.core.start(host, time.monotonic())
            self._threads = [
                threading.Thread(
                    target=self.server.serve_forever,
                    args=(self._handle,),
                    name="dtp-paid",
                    daemon=True,
                ),
                threading.Thread(target=self._policy_loop, name="dtp-paid-policy", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
            recovery.start()
            self.claimer.start()
        except BaseException:
            # nothing was served yet: whatever started so far stops with the error, the
            # store too (in memory as well: nobody gets this server)
            self._own_store = opened
            self.close()
            raise

    def _handle(self, sock: DTPSocket) -> None:
        cid = sock.peer_connection_id
        with self._live_lock:
            step = self.core.handling(cid)
        if step is not HandleStep.SERVE:
            # a handshake that finished as the server closed: aborted (its reservation
            # settles it once the engine is released: _unreserved)
            sock.abort(CLOSED_REFUSAL)
            if step is HandleStep.REFUSE_AND_SETTLE:
                assert cid is not None  # (handling() refuses a connection naming none)
                self._settle_dropped(cid, self._take_admitted(cid))
            return
        self._in_handler.active = True
        try:
            self._serve(sock)
        finally:
            # (the DTPServer's threads serve one connection after another)
            self._in_handler.active = False
            self._done()

    def _serve(self, sock: DTPSocket) -> None:
        cid = sock.peer_connection_id
        client = sock.peer_address
        admitted, refused = self._opening(cid, client, logger)
        if refused is not None:
            sock.abort(refused)
            return
        assert cid is not None and client is not None  # (serve_refusal refuses them)
        key = normalize_id(cid, "connection ID")
        # Nor may one come back after its receipts (its settlement failed: still Open),
        # or when they cannot be read: its new gate would count them once more.
        try:
            refusal = served_refusal(self.receipt_writer, key)
            if refusal is not None:
                sock.abort(refusal)
                return
            self._serve_paid(sock, cid, client, admitted)
        finally:
            self._serving.release(key)

    def _serve_paid(
        self, sock: DTPSocket, cid: str, client: str, admitted: Admitted | None
    ) -> None:
        """Serve and settle an admitted connection (its ID reserved by :meth:`_serve`)."""
        try:
            gate = gate_for(self.ledger, cid, self.policy, admitted=admitted)
        except ChainError as exc:
            refused = self.core.unmetered(cid, exc)
            logger.warning(refused.warning)
            sock.abort(refused.reason)
            if refused.settle:
                self._settle(cid, admitted)
            return
        watch_claims(self.claimer, gate)  # (ended by its settlement, in _end)
        with self._live_lock, self._limit_lock:
            buckets = self.core.buckets(client, time.monotonic())
        paid = PaidConnection(
            sock,
            gate,
            buckets,
            self._limit_lock,
            self.policy,
            self.receipt_writer,
            self.ledger,
        )
        paid.attach()
        with self._live_lock:
            self.core.opened(paid)
        # a handler that failed while the connection goes on: the client must read an
        # error, not a clean end that makes a reply cut short look whole
        failed = False
        try:
            paid.throttle(requests=1)  # the first stream is the first request
            if self.requests is not None:
                # each RPC request pays by its receipt (request_billing), not the bytes
                key = normalize_id(cid, "connection ID")
                bill = bill_for(gate, key, self.store, self.ledger, self.claimer.kept)
                self.requests.serve_billed(sock, bill)
            else:
                cast(Handler, self.handler)(PaidSocket(sock, paid))
        except Exception as exc:
            raised = self.core.handler_raised(cid, exc, paid.terminated)
            logger.log(raised.level, raised.message, exc_info=raised.exc_info)
            failed = raised.failed
        finally:
            self._end(sock, paid, cid, failed, admitted)

    def _end(
        self,
        sock: DTPSocket,
        paid: PaidConnection,
        cid: str,
        failed: bool,
        admitted: Admitted | None,
    ) -> None:
        """The end phase of a served connection: the core's :class:`EndPhase` gives its
        steps in order, each made here; one that raises is logged, and the later ones
        run all the same (the top-up read and the settlement protect money)."""
        phase = EndPhase(self.core, paid, failed)
        for step in phase:
            try:
                if step is EndStep.FINAL_RECEIPT:
                    if self.requests is None:  # (per request: each receipt came first)
                        with contextlib.suppress(DTPError):
                            paid.request_final_receipt()
                elif step is EndStep.TOP_UP:
                    paid.read_deposit(ending=True)
                elif step is EndStep.ENDING:
                    with self._live_lock, self._limit_lock:
                        phase.ending(paid.terminated)
                    # its ID stays reserved until the engine goes (docs/escrow.md §2)
                    self.admission.served.ended(cid)
                elif step is EndStep.SETTLE:
                    # billed by its bytes, every receipt stored of it went through its
                    # gate (none was before: _serve), which checked the final one
                    # against them: the store is not read for one for more
                    newest = self.requests is None and paid.final_is_newest()
                    self._settle(cid, admitted, paid.final, newest)
                elif phase.plan.abort is not None:  # (EndStep.CLOSE)
                    sock.abort(phase.plan.abort)  # (as dtp.socket's and dtp.aio's servers)
                else:  # (EndStep.CLOSE, gracefully)
                    sock.close()  # (also once the session ended: the socket's resources)
            except Exception:
                logger.exception(step.failure, cid)

    def _settle(
        self,
        cid: str,
        known: Admitted | None = None,
        final: Receipt | None = None,
        final_is_newest: bool = False,
    ) -> None:
        self._record(cid, self._settling(cid, final, known, final_is_newest)())

    def __enter__(self) -> PaidServer:
        return self

    def __exit__(self, *exc: object) -> None:
        """:meth:`close` (connections still served settle after it: see
        :meth:`wait_released`)."""
        self.close()

    # -- handing over: the admission's verdicts, a connection nobody will serve ----------------

    def _admit(self, peer: PeerInfo, check: Callable[[PeerInfo], str | None]) -> str | None:
        """The admission of ``peer`` (``check``: the ledger's verdict). Counted until
        the DTP connection it admits ends (:meth:`_unreserved`), so that the release
        cannot stop the receipt writer before that connection is served or settled."""
        with self._live_lock:
            if not self.core.admission_starts():
                return CLOSED_REFUSAL
        carried = False
        try:
            verdict = check(peer)
            with self._live_lock:
                step = self.core.admitted(verdict, peer.connection_id)
            if step is AdmitStep.VERDICT or peer.connection_id is None:
                return verdict
            if step is AdmitStep.SERVE:
                # the DTPServer reserves the connection ID next, in this thread, and the
                # count goes on with that reservation (_reserved)
                carried = True
                return None
            # Settled before the refusal goes out, so the client finds its deposit refunded.
            self._settle_unserved(peer.connection_id, self._take_admitted(peer.connection_id))
            return CLOSED_REFUSAL
        finally:
            if not carried:
                self._done()

    def _reserved(self, cid: str, reserved: bool) -> None:
        """The DTPServer reserved ``cid`` for the connection just admitted, or refused
        it (:meth:`_refused_at_limit` settles it then)."""
        with self._live_lock:
            last = self.core.reserved(cid, reserved)
        if last:
            self._release()

    def _unreserved(self, cid: str) -> None:
        """An admitted connection's reservation is released (in whichever thread ended
        it); never served, it is settled now in a thread of its own."""
        with self._live_lock:
            unserved = self.core.unreserved(cid)
        if not unserved:
            self._done()
            return
        self._settle_aside(cid, self._take_admitted(cid))

    def _refused_at_limit(self, cid: str) -> None:
        """The DTPServer refused ``cid`` at a connection limit: settled now in a thread,
        nothing claimed, the deposit back at once (docs/escrow.md §2)."""
        with self._live_lock:
            self.core.work_starts()  # (the release waits for the settlement)
        # taken now, before the DTPServer's refusal drops what admission read of it
        self._settle_aside(cid, self._take_admitted(cid))

    def _settle_aside(self, cid: str, admitted: Admitted | None) -> None:
        """:meth:`_settle_dropped` in a thread of its own (a ledger transaction)."""
        try:
            threading.Thread(
                target=self._settle_dropped,
                args=(cid, admitted),
                name="dtp-paid-settle",
                daemon=True,
            ).start()
        except RuntimeError:  # the process is out of threads
            self._settle_dropped(cid, admitted)

    def _settle_dropped(self, cid: str, admitted: Admitted | None) -> None:
        try:
            self._settle_unserved(cid, admitted)
        finally:
            self._done()

    def _settle_unserved(self, cid: str, admitted: Admitted | None) -> None:
        """Settle an admitted connection the server will not serve (nothing claimed),
        unless another one on it is served or settled."""
        with self._live_lock:
            key = self.core.reserve_unserved(cid)
        if key is None:
            return
        try:
            self._settle(cid, admitted)
        finally:
            self._serving.release(key)

    def _done(self) -> None:
        """One _handle call, admission or settlement ended: the last one after close()
        releases the server."""
        with self._live_lock:
            last = self.core.work_ends()
        if last:
            self._release()

    # -- the host's policy refresh -------------------------------------------------------------

    def _policy_loop(self) -> None:
        while not self._closed.wait(self.policy.refresh_interval):
            try:
                self.refresh_policy()
            except Exception:  # (not the end of the loop: see refresh_failed)
                steps.refresh_failed(self.host_id, self.policy.refresh_interval, logger)

    def refresh_policy(self) -> None:
        """Read the Host now and apply its firewall to open connections."""
        host = steps.host_to_refresh(self.ledger, self.host_id, logger)
        if host is None:
            return
        # (a connection served from now on was admitted by a firewall read after this)
        with self._live_lock:
            clients = frozenset(paid.client for paid in self.core.live())
        denied = steps.refused_clients(self.ledger, host, clients, logger)
        now = time.monotonic()
        with self._live_lock, self._limit_lock:
            refresh = self.core.refresh(host, now, denied)
        for paid in refresh.denied:
            paid.deny()
        ended = steps.ended_connections(self.ledger, refresh.ledger_checks, logger)
        for paid in ended:
            paid.closed_on_ledger()
        # a connection opened with a subscription ends with it (docs/escrow.md §13)
        open_ones = [paid for paid in refresh.ledger_checks if paid not in ended]
        for paid, why in steps.ended_subscriptions(self.ledger, open_ones, logger, host):
            paid.subscription_ended(why)

    @property
    def open_connections(self) -> int:
        with self._live_lock:
            return self.core.open_connections

    # -- lifetime: start, close, the release ---------------------------------------------------

    def serve_forever(self) -> None:
        """Block until :meth:`close`."""
        self._closed.wait()

    def close(self) -> None:
        """Stop accepting and refreshing. Open connections finish and settle (in their
        own threads, after this returns); once the last has (at once when there are
        none), the receipt writer writes what it holds and stops, and a store the server
        opened from ``receipts`` (a path) is closed. A :class:`ReceiptStore` passed in
        stays open: the caller's to close, once :meth:`wait_released` returned True.
        A client whose admission or handshake ends as the server closes is refused (or
        its connection aborted) and its ledger connection settled at once, nothing
        claimed, before the release. May be called from a handler (its own connection
        is then one still served)."""
        with self._live_lock:
            idle = self.core.close()
            if idle is None:
                return
            self._closed.set()
        if self._recovery is not None:
            self._recovery.stop()
        if self.server is not None:
            self.server.close()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(5.0)
        if idle:
            if self._recovery is None or self._recovery.join(RECOVERY_CLOSE_WAIT):
                self._release()
            else:
                # a claim under way takes longer (a ledger slow to answer): released
                # once it ends, in a thread of its own -- close() returns, and
                # wait_released() is the wait with a bound of the caller's choosing
                threading.Thread(target=self._release, name="dtp-paid-release", daemon=True).start()
        else:
            # what is waiting is written now; the last connection to end stops the writer
            self.receipt_writer.flush(timeout=5.0)

    def _release(self) -> None:
        """Stop the receipt writer and close our own store (once, when the server is
        closed and no connection can write any more)."""
        try:
            self._release_books(RECOVERY_CLOSE_WAIT)
        finally:
            # also when the detach (or the store's close) raised: the writer has stopped
            # all the same, and unset, wait_released() said False for good (while the
            # same failure in the writer's last step is only logged)
            self._released.set()

    def wait_released(self, timeout: float | None = None) -> bool:
        """After :meth:`close`: wait until every connection the server was serving
        ended and settled and the receipt writer stopped (True), or ``timeout`` seconds
        (False). Then a :class:`ReceiptStore` passed in may be closed: closed before,
        a settlement still to come failed on it, its fees unclaimed. Waits as long as a
        client keeps its connection open. (False at once when the server is not
        closed.) Not from a handler: it would wait for its own connection
        (:class:`~dtp.errors.LocalProtocolError`)."""
        if getattr(self._in_handler, "active", False):
            raise LocalProtocolError("wait_released() in a handler waits for its own connection")
        if not self._closed.is_set():
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._released.wait(timeout):
            return False
        while True:
            left = _WRITER_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            if self._writer_done(left):
                return True
            if deadline is not None:
                return False
