"""Receipts off-chain (docs/escrow.md §3 and §6): the server's check and the client's
meter. The receipt itself (its signed message, its RECEIPT-frame encoding, the fee it
states) is the ledger's, :mod:`dtp.ledger.receipt`, and is re-exported here.

- :func:`check_receipt` — the server's off-chain check of a received receipt, with the
  same rules (and error names) as ``escrow::claim``.
- :class:`Meter` — the client side: usage in, cumulative signed receipts out, at a
  configurable cadence, never beyond the deposit.

Nothing here reads the clock: times are passed in (milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dtp.errors import InsufficientFunds, InvalidArgument, move_error
from dtp.identity._ed25519 import verify_memoized
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import (
    RECEIPT_DOMAIN,
    RECEIPT_ENCODED_SIZE,
    RECEIPT_ENCODING_VERSION,
    RECEIPT_MESSAGE_SIZE,
    U64_MAX,
    Receipt,
    ReceiptScope,
    fee,
    object_id_bytes,
    receipt_message,
)

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Escrow, TransportControl
    from dtp.ledger.interface import Ledger

__all__ = [
    "RECEIPT_DOMAIN",
    "RECEIPT_ENCODED_SIZE",
    "RECEIPT_ENCODING_VERSION",
    "RECEIPT_MESSAGE_SIZE",
    "U64_MAX",
    "Charge",
    "ConnectionTerms",
    "Meter",
    "Receipt",
    "ReceiptScope",
    "check_next_receipt",
    "check_receipt",
    "fee",
    "object_id_bytes",
    "receipt_message",
]


def check_receipt(
    receipt: Receipt,
    *,
    scope: ReceiptScope,
    sla: Sla,
    public_key: bytes,
    deposited: int,
    claimed: int = 0,
    latest_nonce: int = 0,
) -> int:
    """The server's check of a receipt before keeping it, with ``escrow::claim``'s rules
    in its order (nonce, signature, amount, deposit, cumulative); returns what claiming it
    would pay (``total_amount - claimed``). ``scope``: the package, escrow and
    connection the server expects (its ledger's package, the connection's escrow).

    Raises :class:`dtp.errors.ReplayedReceipt` / :class:`dtp.errors.InvalidReceipt` with
    the Move error names; a receipt for another connection, another escrow or another
    package fails as ``EBadSignature``, exactly as on chain (the message binds all three).
    """
    if receipt.nonce <= latest_nonce:
        raise move_error("escrow", "EReplayedReceipt", f"nonce {receipt.nonce} <= {latest_nonce}")
    # the receipt is stored and claimed under the scope it names: one signed for this
    # connection naming another would be counted here yet never claimable, and block
    # that other's genuine receipts in the store
    if receipt.scope != scope:
        raise move_error(
            "escrow",
            "EBadSignature",
            f"receipt for {_scope_text(receipt.scope)} on {_scope_text(scope)}",
        )
    message = receipt_message(
        scope,
        receipt.total_bytes,
        receipt.total_requests,
        receipt.total_amount,
        receipt.nonce,
    )
    if not verify_memoized(public_key, receipt.signature, message):
        raise move_error("escrow", "EBadSignature", f"connection {scope.connection_id}")
    expected = fee(sla, receipt.total_bytes, receipt.total_requests)
    if receipt.total_amount != expected:
        raise move_error(
            "escrow", "EAmountMismatch", f"receipt says {receipt.total_amount}, fee is {expected}"
        )
    if receipt.total_amount > deposited:
        raise move_error(
            "escrow",
            "EReceiptExceedsDeposit",
            f"{receipt.total_amount} MIST against a deposit of {deposited}",
        )
    if receipt.total_amount < claimed:
        raise move_error(
            "escrow",
            "EReceiptNotCumulative",
            f"{receipt.total_amount} MIST, {claimed} already claimed",
        )
    return receipt.total_amount - claimed


def _scope_text(scope: ReceiptScope) -> str:
    return f"connection {scope.connection_id} (escrow {scope.escrow_id}, package {scope.package})"


def check_next_receipt(
    receipt: Receipt,
    latest: Receipt | None,
    *,
    scope: ReceiptScope,
    sla: Sla,
    public_key: bytes,
    deposited: int,
) -> int:
    """:func:`check_receipt` against the latest receipt accepted so far on the
    connection (None before the first): its nonce must be exceeded and its amount may
    not go down."""
    return check_receipt(
        receipt,
        scope=scope,
        sla=sla,
        public_key=public_key,
        deposited=deposited,
        claimed=0 if latest is None else latest.total_amount,
        latest_nonce=0 if latest is None else latest.nonce,
    )


@dataclass(frozen=True)
class ConnectionTerms:
    """What a server needs to check one ledger connection's receipts, read from its
    TransportControl and Escrow, and its ledger's package."""

    connection_id: str
    escrow_id: str
    sla: Sla
    client_public_key: bytes
    deposited: int
    """The deposit: what receipts may reach. It was reserved on the client's spending
    cap, so no claim within it can be refused (docs/escrow.md §4)."""
    package: str
    """The ledger's package (its original ID), which receipts name (docs/escrow.md §6)."""
    subscription: str | None = None
    """The Subscription the connection was opened with (None: a metered one): it is
    served only while that covers it (docs/escrow.md §13)."""

    @property
    def scope(self) -> ReceiptScope:
        """What the connection's receipts are bound to."""
        return ReceiptScope(self.package, self.escrow_id, self.connection_id)

    @classmethod
    def from_ledger(cls, ledger: Ledger, connection_id: str) -> ConnectionTerms:
        """Read the terms of ``connection_id`` (blocking ledger reads)."""
        tc = ledger.get_connection(connection_id)
        return cls.from_objects(tc, ledger.get_escrow(tc.escrow), ledger.package_id)

    @classmethod
    def from_objects(cls, tc: TransportControl, escrow: Escrow, package: str) -> ConnectionTerms:
        """The terms of ``tc`` from objects already read (no cap: the deposit is
        reserved on it, docs/escrow.md §4)."""
        return cls(
            tc.id,
            tc.escrow,
            tc.sla,
            escrow.client_public_key,
            escrow.deposited,
            package,
            tc.subscription,
        )


def _meter_count(name: str, value: object) -> int:
    # int only: a float or NaN counted into the totals made every later receipt
    # unbuildable, and NaN passed the deposit check (cost > deposit is False for NaN)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Charge:
    """One call a :class:`Meter` counted (:meth:`Meter.charge`): the receipt it carries
    (None: none), and how many requests of the SLA it was counted as. The caller tells
    the meter how the call ended (:meth:`Meter.settle`)."""

    receipt: Receipt | None
    requests: int


class Meter:
    """The client's meter for one connection: usage in, signed cumulative receipts out,
    each bound to ``scope`` (the package, the connection's escrow and the connection:
    ``ledger.receipt_scope(connection_id)``, docs/escrow.md §6).

    A receipt is issued when, since the last one, at least ``every_bytes`` bytes or
    ``every_requests`` requests were used or ``every_ms`` milliseconds passed with unpaid
    usage (0 disables that trigger). Usage that would take the fee past the deposit is
    refused with :class:`dtp.errors.InsufficientFunds` before it is counted (:meth:`top_up`
    first), so no receipt exceeds the deposit. Nonces start at ``start_nonce`` (1 by
    default, never 0, which no escrow can claim), one more per receipt. Amounts and usage
    are ints: anything else (a float, a bool, a negative number) is
    :class:`dtp.errors.InvalidArgument`, a ValueError.

    Calls paid per request (docs/messaging.md §2.5) are counted with :meth:`charge` and
    settled with :meth:`settle`: a call the server refused before counting it is taken
    back, or, when a later receipt covers it already (receipts stay cumulative, never
    below :attr:`latest`), a credit the next calls spend first.
    ``sign_free=False``: usage the SLA prices at 0 makes no receipt due on its own, nor
    does :meth:`flush` sign for it alone (it pays nothing more): only for a peer that
    judges receipts by their amount (:class:`dtp.payments._gate.ReceiptGate`), not one
    counting the usage a receipt covers (:class:`dtp.messaging.rpc.RequestPayments`,
    :class:`dtp.hostid.udp.UdpBilling`).
    """

    def __init__(
        self,
        identity: HostIdentity,
        scope: ReceiptScope,
        sla: Sla,
        deposit: int,
        *,
        every_bytes: int = 64 * 1024,
        every_requests: int = 0,
        every_ms: int = 0,
        start_nonce: int = 1,
        now_ms: int = 0,
        sign_free: bool = True,
    ) -> None:
        if not isinstance(scope, ReceiptScope):
            raise InvalidArgument(
                f"scope must be a ReceiptScope (package, escrow, connection), got {scope!r}"
            )
        _meter_count("deposit", deposit)
        for name, value in (
            ("every_bytes", every_bytes),
            ("every_requests", every_requests),
            ("every_ms", every_ms),
        ):
            _meter_count(name, value)
        if not isinstance(sign_free, bool):
            # (a str such as "no" was truthy: every free byte signed for, silently)
            raise InvalidArgument(f"sign_free must be a bool, got {sign_free!r}")
        if not 1 <= _meter_count("start_nonce", start_nonce) < 2**64:
            # (above u64 it failed only at the first receipt, as a plain ValueError)
            raise InvalidArgument("start_nonce must be from 1 to 2**64 - 1")
        self._identity = identity
        self.scope = scope
        self.connection_id = scope.connection_id
        self.sla = sla
        self.deposit = deposit
        self.every_bytes = every_bytes
        self.every_requests = every_requests
        self.every_ms = every_ms
        # which usage a receipt is owed for: both kinds, or only those with a price
        self._owed_bytes = sign_free or sla.price_per_kib > 0
        self._owed_requests = sign_free or sla.price_per_request > 0
        self.total_bytes = 0
        self.total_requests = 0
        self._next_nonce = start_nonce
        self._receipted = (0, 0)
        self._last_receipt_ms = now_ms
        self.latest: Receipt | None = None
        """The newest receipt the peer may hold: the last one signed, or after a call
        the peer refused (:meth:`settle`), the newest of those it may have kept."""
        # receipts carried by calls not settled yet: nonce -> [receipt, calls carrying
        # it, whether the peer may have kept it]; and the newest one a settled call left
        # with the peer (what a refused call's receipt falls back to)
        self._carried: dict[int, list[Any]] = {}
        self._kept: Receipt | None = None

    @property
    def identity(self) -> HostIdentity:
        """The identity whose key signs the receipts (the escrow's client key)."""
        return self._identity

    @property
    def total_amount(self) -> int:
        """The fee of all usage counted so far."""
        return fee(self.sla, self.total_bytes, self.total_requests)

    @property
    def remaining(self) -> int:
        """MIST of the deposit not yet committed to usage."""
        return self.deposit - self.total_amount

    @property
    def receipted_bytes(self) -> int:
        """The bytes the latest receipt covers (0 before the first)."""
        return self._receipted[0]

    def affordable_bytes(self) -> int:
        """How many more bytes (without requests) the deposit covers."""
        if self.sla.price_per_kib == 0:
            return U64_MAX - self.total_bytes
        budget = self.deposit - self.total_requests * self.sla.price_per_request
        # largest b with ceil(b * price / 1024) <= budget
        most = budget * 1024 // self.sla.price_per_kib
        return max(0, min(most, U64_MAX) - self.total_bytes)

    def top_up(self, amount: int) -> None:
        """Raise the deposit after an ``escrow::top_up`` of ``amount`` (an int >= 0)."""
        self.deposit += _meter_count("a top-up", amount)

    def record(self, now_ms: int, nbytes: int = 0, requests: int = 0) -> Receipt | None:
        """Count usage at time ``now_ms``; return a new receipt when the cadence says so.

        Raises :class:`dtp.errors.InsufficientFunds` (and counts nothing) when the new
        total fee would exceed the deposit, :class:`dtp.errors.InvalidArgument` (and
        counts nothing) for usage that is not a non-negative int or takes a total past
        u64.
        """
        new_bytes = self.total_bytes + _meter_count("nbytes", nbytes)
        new_requests = self.total_requests + _meter_count("requests", requests)
        if new_bytes > U64_MAX or new_requests > U64_MAX:
            raise InvalidArgument("usage beyond u64")
        cost = fee(self.sla, new_bytes, new_requests)
        # the deposit first: a fee past u64 is InsufficientFunds (which the ClientMeter
        # answers), not an InvalidArgument that would escape the connection's I/O
        if cost > self.deposit:
            raise InsufficientFunds(
                f"Usage would cost {cost} MIST but connection {self.connection_id} has a "
                f"deposit of {self.deposit}; top up first.",
                name="DepositExhausted",
                module="meter",
            )
        if cost > U64_MAX:  # (only with a deposit past u64, which no escrow holds)
            raise InvalidArgument(f"a total fee of {cost} MIST is beyond u64")
        before = self.total_bytes, self.total_requests
        self.total_bytes, self.total_requests = new_bytes, new_requests
        try:
            return self.poll(now_ms)
        except BaseException:
            # no receipt could be made: this usage is not counted either, so the meter
            # stays as it was and usable
            self.total_bytes, self.total_requests = before
            raise

    def poll(self, now_ms: int) -> Receipt | None:
        """Return a receipt if the cadence is due at ``now_ms`` (e.g. from a timer)."""
        if not self._unpaid():
            return None
        done_bytes, done_requests = self._receipted
        due = (
            (self.every_bytes > 0 and self.total_bytes - done_bytes >= self.every_bytes)
            or (
                self.every_requests > 0
                and self.total_requests - done_requests >= self.every_requests
            )
            or (self.every_ms > 0 and now_ms - self._last_receipt_ms >= self.every_ms)
        )
        return self.flush(now_ms) if due else None

    def flush(self, now_ms: int) -> Receipt | None:
        """A receipt for all usage so far, unless the last one already covers it. (Its
        totals never fall below those of the receipt the peer may hold, :attr:`latest`:
        receipts are cumulative, and a credit left by a refused call stays one.)"""
        if not self._unpaid():
            return None
        if self._next_nonce > U64_MAX:
            # (the nonce is a u64: the receipt could not be encoded, a bare ValueError)
            raise InvalidArgument(
                f"connection {self.connection_id} has used every receipt nonce (2**64)"
            )
        done_bytes, done_requests = self._receipted
        totals = (max(self.total_bytes, done_bytes), max(self.total_requests, done_requests))
        receipt = Receipt(self.scope, *totals, fee(self.sla, *totals), self._next_nonce).sign(
            self._identity
        )
        self._next_nonce += 1
        self._receipted = totals
        self._last_receipt_ms = now_ms
        self.latest = receipt
        return receipt

    def _unpaid(self) -> bool:
        done_bytes, done_requests = self._receipted
        return (self._owed_bytes and self.total_bytes > done_bytes) or (
            self._owed_requests and self.total_requests > done_requests
        )

    def charge(self, now_ms: int, requests: int) -> Charge:
        """Count a call paid per request as ``requests`` requests of the SLA: the
        receipt it carries is a new one covering it, or -- when a receipt the peer may
        hold pays for it already (a refused call's credit) -- that one again, nothing
        more signed. Raises as :meth:`record`. Tell the meter how the call ended with
        :meth:`settle`."""
        floor = self.latest
        if (
            requests
            and floor is not None
            and self.total_requests + _meter_count("requests", requests) <= floor.total_requests
            and self.total_bytes <= floor.total_bytes
        ):
            self.total_requests += requests
            receipt: Receipt | None = floor
        else:
            receipt = self.record(now_ms, requests=requests) or self.flush(now_ms)
        if receipt is not None:
            entry = self._carried.setdefault(receipt.nonce, [receipt, 0, False])
            entry[1] += 1
        return Charge(receipt, requests)

    def settle(self, charge: Charge, counted: int | None = None) -> None:
        """The call of ``charge`` ended. ``counted``: how many requests of the SLA the
        peer says it counted the call as -- 0 when it refused the call before counting
        it, which leaves no receipt of the call's with the peer (docs/messaging.md
        §2.5); None when it did not say (answered, failed or never answered: the
        receipt may be with the peer, and the call stays counted as charged). A call
        counted as fewer requests than charged gives the rest back: taken back
        outright when its receipt is not with the peer (the next receipt counts from
        the one before), else a credit the next calls spend (:meth:`charge`)."""
        receipt = charge.receipt
        if receipt is not None:
            entry = self._carried.get(receipt.nonce)
            if entry is not None:
                entry[1] -= 1
                entry[2] = entry[2] or counted != 0
                if entry[1] <= 0:
                    del self._carried[receipt.nonce]
                    if entry[2] and (self._kept is None or receipt.nonce > self._kept.nonce):
                        self._kept = receipt
        if counted is None or counted == charge.requests:
            return
        self.total_requests = max(0, self.total_requests + counted - charge.requests)
        if counted == 0 and receipt is not None:
            # the newest receipt the peer may hold now: one a settled call left it, or
            # one a call in flight carries
            floor = self._kept
            for held, _, _ in self._carried.values():
                if floor is None or held.nonce > floor.nonce:
                    floor = held
            self.latest = floor
            self._receipted = (0, 0) if floor is None else (floor.total_bytes, floor.total_requests)
