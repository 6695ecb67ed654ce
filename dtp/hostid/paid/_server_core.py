"""The server-wide rules of a paid service, written once for the blocking
(:class:`~dtp.hostid.paid._blocking_server.PaidServer`) and the asyncio
(:class:`~dtp.hostid.paid._asyncio_server.PaidAioServer`) server.

:class:`ServerOptions` checks both servers' options and fills in their defaults.
:class:`PaidServerCore` is sans-I/O: given ``now`` and what the servers read from the
ledger, it decides admissions, handing over, refusals, rate limits, firewall denials,
how a served connection ends and when the release is due; the ledger reads, store
writes and closes stay in the servers (:mod:`dtp.hostid.paid._server_steps`). The
blocking server calls it under its lock, the asyncio server from the event loop only.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Generic, Protocol, TypedDict, TypeVar

from dtp.errors import DTPError
from dtp.hostid._admission import checked_open_grace
from dtp.hostid._connect import check_ledger_object
from dtp.hostid.paid._policy import CLOSED_REFUSAL, ServicePolicy, check_address
from dtp.hostid.paid._request_billing import checked_billing
from dtp.identity._zklogin import ZkLoginVerifier
from dtp.ledger._objects import normalize_id
from dtp.payments._ends import EndDeferred, EndLeft
from dtp.payments._gate import ConnectionIds, ledger_checks_due
from dtp.payments._ratelimit import ClientBuckets, HostPolicy, RateLimiter
from dtp.payments._serving import SERVED_REFUSAL
from dtp.protocol.connection import CloseCode, ConnectionConfig
from dtp.transport._session import CALLBACK_FAILED
from dtp.transport.blocking._server import check_handshake_bounds, check_server_identity
from dtp.transport.carriers._tcp import checked_websocket_listen

if TYPE_CHECKING:
    from dtp.hostid._admission import Admitted
    from dtp.ledger._objects import Firewall, Host, Settlement
    from dtp.protocol._events import ConnectionTerminated
    from dtp.protocol.connection import ConnectionConfig

#: How many of the most recent settlements a server keeps (:attr:`PaidServerCore.settlements`)
SETTLEMENTS_KEPT = 1024
#: Why a DTP connection that names no ledger connection, or no client, is aborted
#: (LedgerAdmission refuses those already)
NO_LEDGER_CONNECTION = "no ledger connection"
#: Why a connection whose state the server cannot read on the ledger to meter it is
#: aborted
UNMETERED_REFUSAL = "the server cannot read the connection on the ledger"
#: What a server logs (with the connection ID, and the traceback) when a step of a
#: served connection's end before its settlement fails: the settlement runs all the
#: same, so that the server's fee is claimed and the deposit not left locked
END_FAILED = "connection %s: its end before the settlement failed"
#: What a server logs (with the connection ID, and the traceback) when the escrow read at
#: a served connection's end (:attr:`EndStep.TOP_UP`) fails
TOP_UP_FAILED = "connection %s: reading its escrow at the end failed"


class Listening(TypedDict):
    """How a paid server's DTP server listens: its handshake bounds and connections'
    configuration, as both servers' ``create_server`` / ``start_server`` take them
    (:meth:`ServerOptions.listening`)."""

    config: ConnectionConfig | None
    backlog: int
    max_handshakes: int
    max_handshakes_per_address: int | None
    max_waiting_per_address: int


@dataclass(frozen=True)
class ServerOptions:
    """A paid server's options as both servers take them (``PaidServer``'s and
    :func:`dtp.aio.serve`'s keyword arguments), checked and with their defaults: built by
    :meth:`checked`, before the ledger is read or written."""

    address: tuple[str, int]
    """Where to listen."""
    endpoint: tuple[str, int] | None
    """What to publish in the Host when it differs from the listening address."""
    policy: ServicePolicy
    """The service's policy (``ServicePolicy()`` when none was given)."""
    config: ConnectionConfig | None
    """The connections' configuration (None: the default); its ``zklogin_verifier`` is
    the server's ledger unless it names another: zkLogin proofs go to the ledger's Sui
    node (docs/protocol.md 8.4; a LocalLedger refuses them)."""
    backlog: int
    """The longest line of connections waiting for a handshake slot."""
    max_handshakes: int
    """Handshakes in progress at once."""
    max_handshakes_per_address: int | None
    """Handshakes in progress at once from one address (None: no cap)."""
    max_waiting_per_address: int
    """Connections from one address waiting for a handshake slot."""
    open_grace: float | None
    """The admission's grace for an open still landing, in seconds (None: its default)."""
    websocket: tuple[str, int] | None = None
    """Where to listen for the WebSocket carrier too (None: not at all)."""
    origins: tuple[str, ...] | None = None
    """The web origins whose pages may connect over WebSocket (None: none)."""

    def listening(self) -> Listening:
        """The options the DTP server listens with (the same for both servers)."""
        return Listening(
            config=self.config,
            backlog=self.backlog,
            max_handshakes=self.max_handshakes,
            max_handshakes_per_address=self.max_handshakes_per_address,
            max_waiting_per_address=self.max_waiting_per_address,
        )

    @classmethod
    def checked(
        cls,
        identity: object,
        *,
        address: tuple[str, int],
        endpoint: tuple[str, int] | None,
        policy: ServicePolicy | None,
        config: ConnectionConfig | None,
        backlog: int,
        max_handshakes: int,
        max_handshakes_per_address: int | None,
        max_waiting_per_address: int,
        open_grace: float | None,
        websocket: tuple[str, int] | None = None,
        origins: Iterable[str] | None = None,
        ledger: ZkLoginVerifier | None = None,
        billing: object = "bytes",
    ) -> ServerOptions:
        """The options, refused as the DTP server would refuse them (TypeError,
        ValueError, InvalidArgument, MissingExtra for ``websocket`` without ``ws``) but
        before the ledger is read or written, for the store's recovery claims on it
        (tests/paid/test_server_options.py); first ``billing`` (the handler is checked
        with it as the server is made) and a ledger file's path given for ``ledger``."""
        checked_billing(billing)
        check_ledger_object(ledger)
        check_server_identity(identity)
        check_handshake_bounds(
            max_handshakes, max_handshakes_per_address, max_waiting_per_address, backlog
        )
        check_address(address, "address")
        if endpoint is not None:
            check_address(endpoint, "endpoint")
        allowed = checked_websocket_listen(websocket, origins)
        if ledger is not None and (config is None or config.zklogin_verifier is None):
            base = config or ConnectionConfig(identity=identity, is_client=False)  # type: ignore[arg-type]
            config = replace(base, zklogin_verifier=ledger)
        return cls(
            address,
            endpoint,
            policy or ServicePolicy(),
            config,
            backlog,
            max_handshakes,
            max_handshakes_per_address,
            max_waiting_per_address,
            checked_open_grace(open_grace),
            websocket,
            allowed,
        )


class _Served(Protocol):
    """What the core needs of a served connection (the drivers' ``PaidConnection``)."""

    client: str
    connection_id: str
    ledger_check_due: float  # (monotonic)


_P = TypeVar("_P", bound=_Served)


class AdmitStep(enum.Enum):
    """What follows the ledger's verdict on an admission (:meth:`PaidServerCore.admitted`)."""

    VERDICT = "verdict"
    """The verdict stands: a refusal, or no ledger connection to serve."""
    SERVE = "serve"
    """Admitted: the DTP server goes on to serve it."""
    SETTLE_AND_REFUSE = "settle and refuse"
    """Admitted as the server closes, so nobody will serve it: settled at once (nothing
    claimed, the whole deposit refunded), then refused with ``CLOSED_REFUSAL``."""


class HandleStep(enum.Enum):
    """What the server does with a DTP connection its DTPServer hands it after the
    handshake (:meth:`PaidServerCore.handling`)."""

    SERVE = "serve"
    """Serve it (counted as work until :meth:`PaidServerCore.work_ends`)."""
    REFUSE = "refuse"
    """Abort it with ``CLOSED_REFUSAL``: the server is closed, and its reservation's
    release settles it (:meth:`PaidServerCore.unreserved`), if anything can."""
    REFUSE_AND_SETTLE = "refuse and settle"
    """The server is closed: abort it with ``CLOSED_REFUSAL``, then settle it as a
    connection nobody serves (:meth:`PaidServerCore.reserve_unserved`: nothing claimed,
    the whole deposit refunded); counted as work until that is done."""


@dataclass(frozen=True)
class PolicyRefresh(Generic[_P]):
    """What a fresh read of the Host asks of the open connections."""

    limits: Firewall | None
    """The Host's firewall when its per-client rate limits changed (set on the core's
    :attr:`~PaidServerCore.limiter` already), else None."""
    denied: tuple[_P, ...]
    """The connections whose client the firewall no longer permits (deny them)."""
    ledger_checks: tuple[_P, ...]
    """The connections due for a read of their state on the ledger (each one closed
    when no longer Open there)."""


@dataclass(frozen=True)
class EndPlan:
    """How the server ends a served connection once its handler returned or raised
    (:meth:`PaidServerCore.end_plan`)."""

    settle_first: bool
    """Settle before the server's end of the carrier closes (:meth:`PaidServerCore.settles_first`);
    else close first, then settle."""
    abort: str | None
    """Abort with this reason: ``CALLBACK_FAILED`` when the handler failed (a reply cut
    short must not look whole), ``CLOSED_REFUSAL`` when the end was cancelled; None:
    close gracefully."""


class EndStep(enum.Enum):
    """A step of a served connection's end, in the order :class:`EndPhase` gives them."""

    FINAL_RECEIPT = "final receipt"
    """Ask for a receipt for all usage and wait ``final_receipt_timeout`` at most: the
    client's own comes only at its close, too late (docs/escrow.md §6.1)."""
    TOP_UP = "top-up read"
    """Read the escrow again (``read_deposit(ending=True)``): a receipt the client signed
    above the deposit as admission read it (it topped up) is judged before the
    settlement, or it goes unclaimed."""
    ENDING = "ending"
    """It no longer counts (:meth:`EndPhase.ending`), and the server ends its count
    against the Host's connection limits: the client may connect again at once, while
    the settlement goes on (docs/escrow.md §2)."""
    SETTLE = "settle"
    """Claim its latest receipt and refund the rest (retried when it claimed nothing),
    or batch or leave it by the policy's ``end_rule`` (docs/escrow.md §7.1)."""
    CLOSE = "close"
    """The server's end closes: aborted with the plan's reason, else gracefully."""

    @property
    def failure(self) -> str:
        """The line a server logs (with the connection ID, and the traceback) when this
        step raises; the later steps run all the same."""
        return _END_STEP_FAILED[self]


_END_STEP_FAILED = {
    EndStep.FINAL_RECEIPT: END_FAILED,
    EndStep.TOP_UP: TOP_UP_FAILED,
    EndStep.ENDING: END_FAILED,
    EndStep.SETTLE: "connection %s: its settlement failed",
    EndStep.CLOSE: "connection %s: closing the server's end failed",
}


class EndPhase(Generic[_P]):
    """The end of served connection ``paid`` once its handler returned or raised, as
    steps: iterated, it gives the next :class:`EndStep` (final receipt, top-up read,
    :meth:`ending`, then settlement and close in the plan's order). A step that raises
    is logged and the later ones run all the same, for they protect money
    (tests/paid/test_handler_ending.py); after :meth:`cancel` the waits left are
    skipped, never the settlement."""

    def __init__(self, core: PaidServerCore[_P], paid: _P, failed: bool) -> None:
        self.core = core
        self.paid = paid
        self.failed = failed
        #: A step was cut short by a cancellation (the driver re-raises it at the end)
        self.cancelled = False
        self._plan: EndPlan | None = None

    def __iter__(self) -> Iterator[EndStep]:
        yield EndStep.FINAL_RECEIPT
        if not self.cancelled:
            yield EndStep.TOP_UP
        yield EndStep.ENDING
        if self.plan.settle_first:
            yield EndStep.SETTLE
            yield EndStep.CLOSE
        else:
            yield EndStep.CLOSE
            yield EndStep.SETTLE

    def ending(self, ended: ConnectionTerminated | None) -> EndPlan:
        """The :attr:`EndStep.ENDING` step, the connection having ``ended`` so (None: not
        yet): it no longer counts (:meth:`PaidServerCore.ending`), and this is how its
        settlement and its close go."""
        self._plan = self.core.ending(self.paid, ended, self.failed, self.cancelled)
        return self._plan

    @property
    def plan(self) -> EndPlan:
        """The plan :meth:`ending` made; before it (or should it have raised), that of a
        connection not ended yet: closed first, then settled."""
        if self._plan is None:
            return self.core.end_plan(None, self.failed, self.cancelled)
        return self._plan

    def cancel(self) -> None:
        """A step was cut short by a cancellation."""
        self.cancelled = True


@dataclass(frozen=True)
class Refusal:
    """A connection handed over to serve that is aborted instead
    (:meth:`PaidServerCore.serve_refusal`, :meth:`PaidServerCore.unmetered`)."""

    reason: str
    """What it is aborted with: the reason its client reads."""
    warning: str | None
    """The line the server logs as a warning with its own logger (None: nothing)."""
    settle: bool = False
    """Settle it at once once aborted (nothing claimed, the deposit refunded) rather
    than leave the deposit locked until the half-close timeout."""


@dataclass(frozen=True)
class HandlerRaised:
    """What a handler that raised means (:meth:`PaidServerCore.handler_raised`), and the
    line the server logs with its own module's logger."""

    failed: bool
    """Whether the handler failed: end the connection with ``CALLBACK_FAILED``
    (:meth:`PaidServerCore.end_plan`)."""
    level: int
    """The log level: ``logging.INFO`` for a DTPError (the connection ended, or the gate
    closed it), ``logging.ERROR`` for any other error (a bug in the handler)."""
    message: str
    """The log line."""
    exc_info: BaseException | None
    """The error whose traceback goes with the line (None: the message says it all)."""


class PaidServerCore(Generic[_P]):
    """The rules a paid server applies across its connections (see the module docs).

    ``serving``: the ledger connection IDs being served or settled (one DTP connection
    each: :meth:`serve_refusal`). ``settlements``: the latest (connection ID, outcome)
    pairs; ``left``: the ends left to their clients.
    """

    def __init__(self, policy: ServicePolicy) -> None:
        self.policy = policy
        self.serving = ConnectionIds()
        self.settlements: deque[tuple[str, Settlement]] = deque(maxlen=SETTLEMENTS_KEPT)
        #: The most recent ends left to their clients, their fee below the gas of
        #: claiming it (docs/escrow.md §7.1)
        self.left: deque[tuple[str, EndLeft]] = deque(maxlen=SETTLEMENTS_KEPT)
        self.host_policy: HostPolicy | None = None
        #: The Host's per-client rate limits, with each client's buckets (shared by its
        #: connections; the blocking server touches it under the lock its connections
        #: take for their buckets)
        self.limiter = RateLimiter()
        self._live: dict[int, _P] = {}
        self.closed = False
        #: The release is decided: nothing may count in any more
        self.releasing = False
        #: Admissions, handler calls and settlements of connections admitted but not
        #: served, running (they may still use the receipt writer): the release waits
        #: until none is left
        self.working = 0
        #: attach_server() was made on the store: detach_server() is due at the release
        self.attached = False
        #: Reserved ledger connections (:meth:`reserved`, :meth:`unreserved`): True once
        #: handed to the server to serve (its settlement then the server's)
        self._reserved: dict[str, bool] = {}

    # -- the host's policy -------------------------------------------------------------

    def start(self, host: Host, now: float) -> None:
        """The Host as read at the start: its rate limits set (ValueError for a policy
        refresh interval that is no positive number)."""
        self.host_policy = HostPolicy(host, now, self.policy.refresh_interval)
        self.limiter.set_limits(
            host.firewall.max_bytes_per_sec, host.firewall.max_requests_per_sec, now
        )

    def refresh(
        self, host: Host, now: float, denied: frozenset[str] = frozenset()
    ) -> PolicyRefresh[_P]:
        """A fresh read of the Host: new rate limits set at once; ``denied``, the clients
        its firewall refuses now, are the caller's to close."""
        assert self.host_policy is not None, "refresh() before start()"
        live = list(self._live.values())
        change = self.host_policy.refresh(host, now, denied)
        if change.limits_changed:
            firewall = change.firewall
            self.limiter.set_limits(firewall.max_bytes_per_sec, firewall.max_requests_per_sec, now)
        return PolicyRefresh(
            change.firewall if change.limits_changed else None,
            tuple(p for p in live if p.client in change.denied),
            tuple(ledger_checks_due(live, now, self.policy.ledger_check_interval)),
        )

    # -- connections -------------------------------------------------------------------

    def buckets(self, client: str, now: float) -> ClientBuckets:
        """The rate-limit buckets for a connection of ``client`` about to be served
        (shared with its other connections), given back when :meth:`ended` ends it."""
        return self.limiter.acquire(client, now)

    def opened(self, paid: _P) -> None:
        """``paid``, given its client's :meth:`buckets`, is being served (the policy
        refreshes reach it)."""
        self._live[id(paid)] = paid

    def ended(self, paid: _P) -> None:
        """``paid`` is no longer served: its client's buckets are given back (ending it
        twice does nothing)."""
        if self._live.pop(id(paid), None) is not None:
            self.limiter.release(paid.client)

    def live(self) -> list[_P]:
        """The connections being served."""
        return list(self._live.values())

    @property
    def open_connections(self) -> int:
        return len(self._live)

    def reserve_served(self, cid: str) -> bool:
        """Take ``cid`` for a DTP connection about to be served; False when another one
        on that ledger connection is served or settled already (refuse it with
        ``SERVED_REFUSAL``). Released with ``serving.release(cid)``."""
        return self.serving.reserve(cid)

    def serve_refusal(self, cid: str | None, client: str | None) -> Refusal | None:
        """Why the connection handed over on ``cid`` is refused, or None with ``cid``
        reserved (released with ``serving.release`` once settled) before the store is
        read: one DTP connection per ledger connection, or a second one would count
        the first one's receipts again and take another allowance from one escrow."""
        if cid is None or client is None:
            return Refusal(NO_LEDGER_CONNECTION, None)
        key = normalize_id(cid, "connection ID")
        if not self.reserve_served(key):
            return Refusal(SERVED_REFUSAL, f"refused connection {key}: already served")
        return None

    @staticmethod
    def unmetered(cid: str, exc: DTPError) -> Refusal:
        """Connection ``cid``, whose state could not be read (``exc``), is refused and
        settled as unserved (retried as a failed settlement is)."""
        return Refusal(UNMETERED_REFUSAL, f"cannot meter connection {cid}: {exc}", settle=True)

    def reserve_unserved(self, cid: str) -> str | None:
        """The key to settle an unserved connection by, reserved (released with
        ``serving.release(key)``); None when another one on it is served, settled or
        still reserved: that one's end settles it."""
        key = normalize_id(cid, "connection ID")
        if key in self._reserved:
            return None
        return key if self.serving.reserve(key) else None

    # -- the DTPServer's reservations and hand-overs --------------------------------------

    def reserved(self, cid: str, made: bool) -> bool:
        """The DTPServer reserved ``cid`` (``made``; the admission's count goes on until
        :meth:`unreserved`) or refused it (the count ends here): True when the release
        is due now (:meth:`work_ends`)."""
        if not made:
            return self.work_ends()
        self._reserved[normalize_id(cid, "connection ID")] = False
        return False

    def handling(self, cid: str | None) -> HandleStep:
        """The DTPServer hands over the connection on ``cid`` after its handshake:
        served unless the server closed meanwhile (:class:`HandleStep`)."""
        key = None if cid is None else normalize_id(cid, "connection ID")
        if self.closed:
            if key is None or key in self._reserved or self.releasing:
                return HandleStep.REFUSE
            self.working += 1
            return HandleStep.REFUSE_AND_SETTLE
        self.working += 1
        if key in self._reserved:
            self._reserved[key] = True  # its settlement is the server's now
        return HandleStep.SERVE

    def unreserved(self, cid: str) -> bool:
        """The reservation of ``cid`` is released: True when it was never served (settle
        it, then :meth:`work_ends`); else its admission's count ends now."""
        return self._reserved.pop(normalize_id(cid, "connection ID"), True) is False

    @staticmethod
    def admission_view(admitted: Admitted | None, key: str) -> Admitted | None:
        """What the admission read for ``key``, which the gate and the settlement use
        rather than read it again (:meth:`Admitted.of`)."""
        if admitted is None or not admitted.of(key):
            return None
        return admitted

    @staticmethod
    def settles_first(ended: ConnectionTerminated | None) -> bool:
        """Whether a connection that ``ended`` so is settled before the server's end of
        its carrier closes (a clean client close: the client then has nothing left to
        do on the ledger), else closed first."""
        return ended is not None and ended.by_peer and ended.error_code == CloseCode.NO_ERROR

    @staticmethod
    def handler_raised(
        cid: str, exc: Exception, ended: ConnectionTerminated | None
    ) -> HandlerRaised:
        """The handler raised ``exc``: a DTPError is a failure only while the connection
        goes on (once ``ended``, that end says how), any other error always."""
        if isinstance(exc, DTPError):
            return HandlerRaised(
                ended is None, logging.INFO, f"connection {cid} ended: {exc}", None
            )
        return HandlerRaised(True, logging.ERROR, f"the handler failed for connection {cid}", exc)

    def ending(
        self,
        paid: _P,
        ended: ConnectionTerminated | None,
        failed: bool,
        cancelled: bool = False,
    ) -> EndPlan:
        """The end of ``paid`` begins: it no longer counts (:meth:`ended`; the client may
        connect again at once, docs/escrow.md §2) while its settlement and close go on
        as :meth:`end_plan` says."""
        self.ended(paid)
        return self.end_plan(ended, failed, cancelled)

    def end_plan(
        self, ended: ConnectionTerminated | None, failed: bool, cancelled: bool = False
    ) -> EndPlan:
        """How a served connection that ``ended`` so (None: not yet) ends, its handler
        ``failed`` or not, its end ``cancelled`` or not (see :class:`EndPlan`)."""
        abort = CALLBACK_FAILED if failed else CLOSED_REFUSAL if cancelled else None
        return EndPlan(self.settles_first(ended), abort)

    def settled(self, cid: str, settlement: Settlement | EndLeft | EndDeferred | None) -> bool:
        """Record a settlement of ``cid`` (:attr:`settlements`, or :attr:`left`); False
        when it claimed nothing: the caller retries it, the ID still reserved."""
        if settlement is None:
            return False
        if isinstance(settlement, EndLeft):
            self.left.append((cid, settlement))
        elif not isinstance(settlement, EndDeferred):
            self.settlements.append((cid, settlement))
        return True

    # -- work the release waits for ------------------------------------------------------

    def admission_starts(self) -> bool:
        """An admission begins, counted until :meth:`work_ends`; False when the release
        is decided already (refuse it with ``CLOSED_REFUSAL``, nothing counted)."""
        if self.releasing:
            return False
        self.working += 1
        return True

    def admitted(self, verdict: str | None, cid: str | None) -> AdmitStep:
        """What follows the ledger's ``verdict`` on a peer naming ledger connection ``cid``."""
        if verdict is not None or cid is None:
            return AdmitStep.VERDICT
        return AdmitStep.SETTLE_AND_REFUSE if self.closed else AdmitStep.SERVE

    def work_starts(self) -> None:
        """A handler call or a settlement begins: the release waits for it."""
        self.working += 1

    def work_ends(self) -> bool:
        """An admission, handler call or settlement ended: True when it was the last one
        after :meth:`close` (the release is due now, and decided)."""
        self.working -= 1
        return self._release_due()

    def close(self) -> bool | None:
        """The server closes: None when it was closed already, else whether the release
        is due at once (no work left; decided then)."""
        if self.closed:
            return None
        self.closed = True
        return self._release_due()

    def _release_due(self) -> bool:
        if self.closed and self.working == 0 and not self.releasing:
            self.releasing = True
            return True
        return False

    def detach_due(self) -> bool:
        """Whether the store is to be left now (once: ``attached`` is cleared)."""
        if not self.attached:
            return False
        self.attached = False
        return True
