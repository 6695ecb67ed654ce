"""Serving a paid DTP service on a host, with blocking sockets (docs/escrow.md §6.1).

    server = dtp.socket.serve(host_id, 7000, handler, ledger=ledger, identity=host_key,
                              receipts="receipts.db")
    ...
    server.close()

:class:`PaidServer` publishes its endpoint and Noise key in the Host, claims whatever
receipts a previous run left unclaimed, and admits a client only through
:class:`~dtp.hostid.admission.LedgerAdmission`. Each handler gets a :class:`PaidSocket`: the
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
the rest (:func:`~dtp.payments.settlement.claim_and_settle`).

The Host's connection limits (``max_connections_per_client``, a service's
``max_connections``) are counted over the connections being served
(:mod:`dtp.hostid.served`): one counts until it ends, not until its settlement is done, and a
client refused at a limit has its ledger connection settled at once, its deposit
refunded whole (docs/escrow.md §2).

:class:`PaidServer` is made of parts, each in a module of its own over the attributes
:mod:`~dtp.hostid.paid.blocking_server_state` declares: the admission and handing over
(:mod:`~dtp.hostid.paid.blocking_server_handover`), the host's policy refresh
(:mod:`~dtp.hostid.paid.blocking_server_policy`) and the lifetime
(:mod:`~dtp.hostid.paid.blocking_server_lifetime`); this module has the constructor and
the serving and end of a connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from dtp.errors import (
    ChainError,
    DTPError,
)
from dtp.hostid.admission import Admitted
from dtp.hostid.paid.blocking import Handler, PaidConnection, PaidSocket
from dtp.hostid.paid.blocking_server_handover import ServerHandover
from dtp.hostid.paid.blocking_server_lifetime import ServerLifetime
from dtp.hostid.paid.blocking_server_policy import HostPolicyRefresh
from dtp.hostid.paid.policy import CLOSED_REFUSAL, ServicePolicy, gate_for
from dtp.hostid.paid.request_billing import (
    RequestServer,
    bill_for,
    checked_billing,
    request_server,
)
from dtp.hostid.paid.server_admission import PaidAdmission, ReportedConnections
from dtp.hostid.paid.server_core import (
    EndPhase,
    EndStep,
    HandleStep,
    PaidServerCore,
    ServerOptions,
)
from dtp.hostid.paid.server_steps import (
    served_host,
)
from dtp.ledger.objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipt_writer import ReceiptWriter
from dtp.payments.serving import (
    DeferredEnds,
    Recovery,
    SettlementRetries,
    closes_store,
    open_store,
    recover_store,
    served_refusal,
    settle_ended,
)
from dtp.payments.settlement import (
    publish_endpoint,
)
from dtp.transport.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.protocol.connection import ConnectionConfig
    from dtp.transport.blocking.server import DTPServer
    from dtp.transport.blocking.socket import DTPSocket


logger = logging.getLogger(__name__)


class PaidServer(ServerHandover, HostPolicyRefresh, ServerLifetime):
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
    requests paid by the receipt it carries: :mod:`~dtp.hostid.paid.request_billing`).
    """

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
        from dtp.hostid.blocking import create_server

        checked_billing(billing)

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
        )
        self.ledger = ledger
        self.identity = identity
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.handler = handler
        self.policy = options.policy
        #: The server-wide rules (called under _live_lock: the threads share it)
        self.core: PaidServerCore[PaidConnection] = PaidServerCore(self.policy)
        self._serving = self.core.serving
        self._live_lock = threading.Lock()
        #: What the connections' rate-limit buckets are touched under (by the core, and
        #: by each connection: PaidConnection); taken after _live_lock, never before
        self._limit_lock = threading.Lock()
        self.limiter = self.core.limiter
        # set with core.closed: what the policy loop and serve_forever() wait on
        self._closed = threading.Event()
        #: Set by the release: closed, every connection ended and settled, the receipt
        #: writer stopped (what wait_released() waits for)
        self._released = threading.Event()
        # marks the threads running _handle: wait_released() there waits for itself
        self._in_handler = threading.local()
        self._threads: list[threading.Thread] = []
        self.settlements = self.core.settlements
        """The most recent settlements: (connection ID, outcome)."""
        self.store, opened = open_store(receipts)
        self._own_store = closes_store(receipts)
        try:
            #: With ``billing="requests"``: the handler, serving requests paid one by one
            self.requests = (
                request_server(handler, asynchronous=False) if billing == "requests" else None
            )
            self.receipt_writer = ReceiptWriter(self.store)
        except BaseException:
            if opened:
                self.store.close()
            raise
        #: The settlements that failed, retried by the recovery thread
        self.retries = SettlementRetries(
            ledger, identity, self.receipt_writer, self._serving, self.settlements
        )
        self.left = self.core.left
        """The most recent ends left to their clients: (connection ID, fee and gas)."""
        #: The ends waiting to be settled together (their fees below a transaction's
        #: gas), settled or left in the recovery rounds and at the release
        self.deferred = DeferredEnds(
            ledger,
            identity,
            self.receipt_writer,
            self.policy.end_rule,
            self.settlements,
            self.left,
        )
        self.server: DTPServer | None = None
        self._recovery: Recovery | None = None  # (once the start's recovery is done)
        try:
            host = served_host(ledger, self.host_id, port)
            alone = self.store.attach_server()
            self.core.attached = True
            self.recovered = recover_store(
                ledger, identity, self.store, alone, deferred=self.deferred
            )
            """(connection ID, settlement) of what dead server runs left unclaimed: at
            the start, then every :data:`RECOVERY_INTERVAL` (this server's own
            settlements retried then go to :attr:`settlements`)."""
            self._recovery = recovery = Recovery(
                ledger, identity, self.store, self.recovered, self.retries, self.deferred
            )
            # our own LedgerAdmission (what create_server would make from ledger,
            # host_id and port), remembering what it read for the gate; its count of the
            # connections served tells us of every DTP connection admitted being
            # reserved and ending: one never served (its handshake finished as the
            # server closed, and it was aborted) is settled then (_unreserved)
            served = ReportedConnections(self._refused_at_limit, self._reserved, self._unreserved)
            self.admission = PaidAdmission(
                self._admit, served, ledger, self.host_id, port, options.open_grace
            )
            self.server = create_server(
                options.address,
                identity=identity,
                admit=self.admission,
                config=options.config,
                backlog=options.backlog,
                max_handshakes=options.max_handshakes,
                max_handshakes_per_address=options.max_handshakes_per_address,
                max_waiting_per_address=options.max_waiting_per_address,
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
        # (taken first, whatever follows: a connection refused below leaves no entry)
        admitted = None if cid is None else self._take_admitted(cid)
        refused = self.core.serve_refusal(cid, client)
        if refused is not None:
            if refused.warning is not None:
                logger.warning(refused.warning)
            sock.abort(refused.reason)
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
                bill = bill_for(gate, key, self.store, self.ledger)
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
                    self._settle(cid, admitted, paid.final)
                elif phase.plan.abort is not None:  # (EndStep.CLOSE)
                    sock.abort(phase.plan.abort)  # (as dtp.socket's and dtp.aio's servers)
                else:  # (EndStep.CLOSE, gracefully)
                    sock.close()  # (also once the session ended: the socket's resources)
            except Exception:
                logger.exception(step.failure, cid)

    def _settle(
        self, cid: str, known: Admitted | None = None, final: Receipt | None = None
    ) -> None:
        settlement = settle_ended(
            self.ledger,
            self.identity,
            cid,
            self.receipt_writer,
            final,
            escrow=None if known is None else known.escrow,
            connection=None if known is None else known.connection,
            rule=self.deferred.rule,
            batch=self.deferred.batch,
            now=time.monotonic(),
        )
        if not self.core.settled(cid, settlement):
            self.retries.add(cid)

    def __enter__(self) -> PaidServer:
        return self

    def __exit__(self, *exc: object) -> None:
        """:meth:`close` (connections still served settle after it: see
        :meth:`wait_released`)."""
        self.close()
