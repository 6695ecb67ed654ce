"""The paid server's side of in-band metering, sans I/O (docs/escrow.md §6.1).

- :class:`ReceiptGate` — checks every RECEIPT frame with
  :func:`dtp.payments.receipts.check_receipt` against the connection's escrow, keeps it durably
  (:class:`dtp.payments.receipt_store.ReceiptStore`) before it counts, and says whether to serve,
  pause or close (:class:`GateVerdict`) given the usage the server has seen.
- :class:`ConnectionIds` — the ledger connections a paid server is serving, one DTP
  connection each; :func:`ledger_checks_due`, :func:`ended_on_ledger` and
  :func:`subscriptions_over` — which of them to read on the ledger, which ended there,
  and which were opened with a subscription that is over.

The client's side (:class:`~dtp.payments.metering.ClientMeter`) is in
:mod:`dtp.payments.metering`. Nothing here reads the clock: ``now_ms`` is always passed in.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from dtp.errors import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_LEDGER_CLOSED,
    CLOSE_PAYMENT_REQUIRED,
    CLOSE_SUBSCRIPTION_ENDED,
    InvalidReceipt,
    move_error,
)
from dtp.ledger._objects import ConnectionState, Host, Sla
from dtp.ledger.receipt import U64_MAX, Receipt, ReceiptScope, fee
from dtp.payments.receipts import check_receipt

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "CLOSE_FIREWALL_DENIED",
    "CLOSE_LEDGER_CLOSED",
    "CLOSE_PAYMENT_REQUIRED",
    "CLOSE_SUBSCRIPTION_ENDED",
    "DEPOSIT_LAG_MS",
    "DEPOSIT_READ_INTERVAL_MS",
    "RECEIPT_REQUEST",
    "ConnectionIds",
    "GateState",
    "GateVerdict",
    "ReceiptGate",
    "ended_on_ledger",
    "ledger_checks_due",
    "subscriptions_over",
]

#: How often (ms) a paid server reads a connection's escrow again while the deposit is
#: what holds the connection (a top-up is seen within this delay).
DEPOSIT_READ_INTERVAL_MS: Final = 1000
#: How long (ms of the server's reads) a receipt may wait above the deposit shown before
#: it is a violation: a full node may show a top-up a few checkpoints late. Not counted
#: meanwhile, its wait buys the client nothing.
DEPOSIT_LAG_MS: Final = 5000
#: Payload of a RECEIPT frame sent by the server: "send me a receipt now". The server
#: sends it while paused, so a client whose sends are blocked by flow control (and so
#: uses nothing new) still pays for what it used below its cadence.
RECEIPT_REQUEST: Final = b""


class GateState(enum.Enum):
    """What a paid server should do with a connection."""

    SERVE = "serve"
    PAUSE = "pause"
    CLOSE = "close"


@dataclass(frozen=True)
class GateVerdict:
    """The outcome of :meth:`ReceiptGate.verdict`."""

    state: GateState
    owed: int
    """MIST of usage seen that no accepted receipt covers."""
    reason: str = ""
    """Why (for PAUSE and CLOSE)."""


class ConnectionIds:
    """The ledger connection IDs a paid server is serving or settling, one DTP
    connection each: a second, on a gate of its own, would count the first one's
    receipts again and take another allowance from one escrow. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def reserve(self, connection_id: str) -> bool:
        """Take ``connection_id``; False (and nothing changes) when it is taken already."""
        with self._lock:
            if connection_id in self._ids:
                return False
            self._ids.add(connection_id)
            return True

    def release(self, connection_id: str) -> None:
        """Give ``connection_id`` back (its connection is served and settled); releasing
        one not taken does nothing."""
        with self._lock:
            self._ids.discard(connection_id)

    def __contains__(self, connection_id: object) -> bool:
        with self._lock:
            return connection_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class LedgerChecked(Protocol):
    """What a state check reads of a served connection."""

    connection_id: str
    ledger_check_due: float  # (monotonic)


CheckedT = TypeVar("CheckedT", bound=LedgerChecked)


def ledger_checks_due(live: Iterable[CheckedT], now: float, interval: float) -> list[CheckedT]:
    """Those of the open connections ``live`` due for a read of their state on the ledger
    at ``now``, each then due again ``interval`` seconds later (the paid servers' and the
    daemon's check: :func:`ended_on_ledger`)."""
    due = [conn for conn in live if now >= conn.ledger_check_due]
    for conn in due:
        conn.ledger_check_due = now + interval
    return due


def ended_on_ledger(ledger: Ledger, connections: Iterable[CheckedT]) -> list[CheckedT]:
    """Those of ``connections`` no longer Open on the ledger (one read each; a
    ChainError passes)."""
    return [
        conn
        for conn in connections
        if ledger.connection_state(conn.connection_id) != ConnectionState.OPEN
    ]


class Subscribed(Protocol):
    """What a subscription check reads of a served connection."""

    connection_id: str

    @property
    def subscription(self) -> str | None: ...


SubscribedT = TypeVar("SubscribedT", bound=Subscribed)


def subscriptions_over(
    ledger: Ledger, connections: Iterable[SubscribedT], host: Host | None = None
) -> list[tuple[SubscribedT, str]]:
    """Those of ``connections`` opened with a subscription that is over
    (:meth:`~dtp.ledger.interface.Ledger.subscription_over`), each with why; each
    subscription read once however many connections share it."""
    why: dict[str, str | None] = {}
    over = []
    for conn in connections:
        sub = conn.subscription
        if sub is None:
            continue
        if sub not in why:
            why[sub] = ledger.subscription_over(sub, host)
        reason = why[sub]
        if reason is not None:
            over.append((conn, reason))
    return over


class ReceiptGate:
    """The server's receipt check and credit limit for one connection.

    ``allowance``: MIST of usage served on credit beyond the latest accepted receipt
    before it pauses (a server policy; default the SLA's ``min_deposit``, which the
    escrow guarantees). ``pause_timeout_ms``: a connection paused this long is closed.
    The spending cap plays no part: the deposit was reserved on it (docs/escrow.md §4).
    """

    def __init__(
        self,
        *,
        scope: ReceiptScope,
        client_public_key: bytes,
        sla: Sla,
        deposited: int,
        claimed: int = 0,
        latest_nonce: int = 0,
        allowance: int | None = None,
        pause_timeout_ms: int = 10_000,
        store: ReceiptStore | None = None,
    ) -> None:
        if pause_timeout_ms < 0 or (allowance is not None and allowance < 0):
            raise ValueError("allowance and pause_timeout_ms must be non-negative")
        #: The package, escrow and connection the receipts must be signed for.
        self.scope = scope
        self.connection_id = scope.connection_id
        self.client_public_key = client_public_key
        self.sla = sla
        self.deposited = deposited
        self.claimed = claimed
        self.allowance = sla.min_deposit if allowance is None else allowance
        self.pause_timeout_ms = pause_timeout_ms
        self.store = store
        self.latest: Receipt | None = None
        self.latest_nonce = latest_nonce
        self.latest_amount = claimed
        self._checked_nonce = latest_nonce
        self._checked_amount = claimed
        self.checked: Receipt | None = None
        """The newest receipt :meth:`check` accepted (kept or not yet)."""
        self.violation: str | None = None
        """Set when the client sent an unacceptable receipt: the connection must close."""
        self._paused_since: int | None = None
        #: The connection's escrow (None: not known, its deposit is never read again).
        self.escrow_id: str | None = None
        #: The Subscription the connection was opened with (None: a metered one): read
        #: while it is served, the connection ends once it is over (docs/escrow.md §13).
        self.subscription: str | None = None
        #: The connection's half-close timeout (ms; None: not read): its receipts are
        #: claimed while it lives before they are that old (docs/escrow.md §7.1).
        self.half_close_timeout_ms: int | None = None
        #: The newest receipt valid but for being above ``deposited``: the client may
        #: have topped the escrow up. Not counted; judged once the escrow is read again
        #: (:meth:`deposit_read`): counted then, or a violation.
        self.over_deposit: Receipt | None = None
        self._deposit_read_ms: int | None = None
        # when a read first found the receipt waiting still above the deposit
        self._above_since_ms: int | None = None

    def check(self, data: bytes) -> Receipt:
        """Validate an encoded receipt; the caller stores it, then :meth:`kept` counts it.

        Raises :class:`dtp.errors.InvalidReceipt` (a violation, remembered) when it is
        malformed, replayed, badly signed, priced wrong or lower than the newest checked.
        One beyond ``deposited`` raises InvalidReceipt (``EReceiptExceedsDeposit``) but is
        no violation yet: the client may have topped up. It waits in
        :attr:`over_deposit` for the escrow to be read again (:meth:`deposit_read`).
        """
        try:
            receipt = Receipt.decode(data)
            pending = self.over_deposit
            try:
                check_receipt(
                    receipt,
                    scope=self.scope,
                    sla=self.sla,
                    public_key=self.client_public_key,
                    deposited=self.deposited,
                    claimed=self.claimed,
                    latest_nonce=self._checked_nonce,
                )
            except InvalidReceipt as exc:
                if exc.name != "EReceiptExceedsDeposit":
                    raise
                # good but for the deposit read at admission: judged once the escrow is
                # read again (deposit_read)
                self._not_below_pending(receipt, pending)
                if pending is None or receipt.nonce > pending.nonce:
                    self.over_deposit = receipt
                raise
            # not lower than the newest one checked (check_receipt compares with the
            # claims only): a regression is a violation
            if receipt.total_amount < self._checked_amount:
                raise move_error(
                    "escrow",
                    "EReceiptNotCumulative",
                    f"{receipt.total_amount} MIST after a receipt for {self._checked_amount}",
                )
            self._not_below_pending(receipt, pending)
        except InvalidReceipt as exc:
            if exc.name != "EReceiptExceedsDeposit":
                self.violation = f"invalid receipt: {exc}"
            raise
        self._checked_nonce = receipt.nonce
        self._checked_amount = receipt.total_amount
        self.checked = receipt
        return receipt

    @staticmethod
    def _not_below_pending(receipt: Receipt, pending: Receipt | None) -> None:
        """A receipt signed after the one waiting above the deposit must not be lower:
        taking its place, it would cost the server the difference (a violation)."""
        if (
            pending is not None
            and receipt.nonce > pending.nonce
            and receipt.total_amount < pending.total_amount
        ):
            raise move_error(
                "escrow",
                "EReceiptNotCumulative",
                f"{receipt.total_amount} MIST after a receipt for "
                f"{pending.total_amount} (waiting above the deposit)",
            )

    def kept(self, receipt: Receipt) -> None:
        """``receipt`` (from :meth:`check`) is stored durably: from now on it counts."""
        if receipt.nonce > self.latest_nonce:
            self.latest = receipt
            self.latest_nonce = receipt.nonce
            self.latest_amount = receipt.total_amount

    def receive(self, data: bytes) -> Receipt:
        """:meth:`check`, keep in ``store`` (when there is one), :meth:`kept`: durable
        before it counts, so once service resumes on a receipt, a crash cannot lose the
        fee it earns."""
        receipt = self.check(data)
        if self.store is not None and not self.store.keep(receipt):
            raise move_error("escrow", "EReplayedReceipt", f"nonce {receipt.nonce} already stored")
        self.kept(receipt)
        return receipt

    def payable(self) -> int:
        """What the accepted receipts let the server collect: the latest one's amount
        (within the deposit, reserved on the client's cap: no claim of it can be
        refused). (The gate's own checks read :attr:`latest_amount`, several times a
        request, without the call.)"""
        return self.latest_amount

    def wants_deposit(
        self, now_ms: int, total_bytes: int, total_requests: int, *, ending: bool = False
    ) -> bool:
        """Whether to read the escrow's deposit again now (a top-up may have come): a
        receipt waits above it, or the deposit is what holds the usage; at most once per
        :data:`DEPOSIT_READ_INTERVAL_MS`. ``ending``: whenever a receipt waits above it,
        else it goes unclaimed."""
        if self.escrow_id is None or self.violation is not None:
            return False
        if ending:
            return self.over_deposit is not None
        last = self._deposit_read_ms
        if last is not None and now_ms - last < DEPOSIT_READ_INTERVAL_MS:
            return False
        if self.over_deposit is not None:
            return True
        owed = fee(self.sla, total_bytes, total_requests) - self.latest_amount
        credit = self.credit()
        return owed > credit and self._credit(U64_MAX) > credit

    def deposit_reading(self, now_ms: int) -> None:
        """A read of the escrow begins at ``now_ms`` (the next is due an interval on,
        whether this one succeeds or not)."""
        self._deposit_read_ms = now_ms

    def deposit_read(self, deposited: int) -> Receipt | None:
        """The escrow holds ``deposited`` MIST: the receipt that waited above the old
        deposit if the new one covers it (for the receipt path again). One still above
        waits on until reads :data:`DEPOSIT_LAG_MS` apart found it so: a violation."""
        if deposited > self.deposited:
            self.deposited = deposited
        pending, self.over_deposit = self.over_deposit, None
        if pending is None or pending.nonce <= self._checked_nonce:
            self._above_since_ms = None
            return None  # a newer receipt was accepted since: it does not matter
        if pending.total_amount <= self.deposited:
            self._above_since_ms = None
            return pending
        read_at = self._deposit_read_ms
        if read_at is not None:
            if self._above_since_ms is None:
                self._above_since_ms = read_at
            if read_at - self._above_since_ms < DEPOSIT_LAG_MS:
                self.over_deposit = pending
                return None
        self.violation = (
            f"invalid receipt: {pending.total_amount} MIST against a deposit of "
            f"{self.deposited} (the escrow read again)"
        )
        return None

    def credit(self) -> int:
        """MIST of usage served beyond the accepted receipts now: the allowance, but
        never more than the escrow can still pay (else a deposit bought twice its worth)."""
        return self._credit(self.deposited)

    def _credit(self, deposited: int) -> int:
        return max(0, self._headroom(deposited))

    def _headroom(self, deposited: int) -> int:
        """:meth:`credit` before it is floored at 0 (never negative while receipts stay
        within the deposit, as :meth:`check` sees to)."""
        return min(self.allowance, deposited - self.latest_amount)

    def owed(self, total_bytes: int, total_requests: int) -> int:
        """MIST of the usage seen that no accepted receipt covers (0 if covered)."""
        return max(0, fee(self.sla, total_bytes, total_requests) - self.latest_amount)

    def settled_up(self, total_bytes: int, total_requests: int) -> bool:
        """Whether no further receipt is to be expected: the usage is covered, or the
        receipts already reach all the client can pay (its deposit)."""
        return self.owed(total_bytes, total_requests) == 0 or self.latest_amount >= self.deposited

    def serving(self, total_bytes: int, total_requests: int) -> bool:
        """The cheap check made before every read and write: True when the verdict is
        SERVE (no bad receipt, credit within the allowance)."""
        if self.violation is not None:
            return False
        # (_headroom inlined: this runs before every read and write)
        paid = self.latest_amount
        if fee(self.sla, total_bytes, total_requests) - paid > min(
            self.allowance, self.deposited - paid
        ):
            return False
        self._paused_since = None
        return True

    def credit_bytes(self, total_bytes: int, total_requests: int) -> int:
        """How many more bytes (no new request) keep :meth:`serving` True from this usage,
        on the receipts accepted so far (0 when it is not serving)."""
        if self.violation is not None:
            return 0
        room = (
            self._headroom(self.deposited)
            + self.latest_amount
            - total_requests * self.sla.price_per_request
        )
        if room < 0:
            return 0
        if not self.sla.price_per_kib:
            return U64_MAX
        # ceil(b * price / 1024) <= room  <=>  b <= room * 1024 // price
        return max(0, room * 1024 // self.sla.price_per_kib - total_bytes)

    def verdict(self, now_ms: int, total_bytes: int, total_requests: int) -> GateVerdict:
        """Serve, pause (unreceipted credit above the allowance) or close (a bad
        receipt, or paused longer than ``pause_timeout_ms``)."""
        owed = self.owed(total_bytes, total_requests)
        if self.violation is not None:
            return GateVerdict(GateState.CLOSE, owed, self.violation)
        headroom = self._headroom(self.deposited)
        credit = max(0, headroom)
        if fee(self.sla, total_bytes, total_requests) - self.latest_amount <= headroom:
            self._paused_since = None
            return GateVerdict(GateState.SERVE, owed)
        if self._paused_since is None:
            self._paused_since = now_ms
        waited = now_ms - self._paused_since
        if waited >= self.pause_timeout_ms:
            return GateVerdict(
                GateState.CLOSE,
                owed,
                f"payment required: {owed} MIST of usage unreceipted (credit {credit}, "
                f"allowance {self.allowance}) for {waited} ms",
            )
        return GateVerdict(GateState.PAUSE, owed, f"waiting for a receipt: {owed} MIST unreceipted")

    def pause_deadline_ms(self) -> int | None:
        """When a paused connection is due to close (None when not paused)."""
        if self._paused_since is None:
            return None
        return self._paused_since + self.pause_timeout_ms
