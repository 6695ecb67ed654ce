"""Which of a connection's requests its receipts cover (:class:`RequestCover`, the rules
of :class:`~dtp.messaging.rpc._fees.RequestPayments`, docs/escrow.md §3), and what a
request and its answer say of it (meta ``"n"``, ``"counted"``: docs/messaging.md §2.5).
Sans-I/O and lock-free, as the fee engine (:mod:`dtp.messaging.rpc._engine`): ``_fees.py``
holds it under its lock and reads the clock and the ledger."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dtp.errors import DTPError
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt, ReceiptScope
from dtp.messaging import errors as E
from dtp.payments.receipts import check_next_receipt

#: Shortest time (seconds) between two reads of a connection's deposit
#: (:meth:`RequestCover.reread`: a receipt beyond the deposit known, perhaps a top-up).
DEPOSIT_REREAD: Final = 1.0


#: The key of a paid request's meta saying how many requests of the SLA the client
#: metered it as (what its receipt pays for it, docs/messaging.md §2.5).
METERED = "n"
#: The key of a server's answer saying how many requests of the SLA it counted the
#: request as, when that is not what the client metered: in the ``data`` of a refusal
#: made before counting (0: nothing counted, no receipt kept), and in the RESPONSE meta
#: of a request metered above what it counts as.
COUNTED = "counted"


def _count_in(found: Any, key: str) -> int | None:
    if isinstance(found, Mapping):
        value = found.get(key)
        if type(value) is int and value >= 0:
            return value
    return None


def counted_of(found: Any) -> int | None:
    """The count a server's answer states (its RESPONSE meta, or its error's ``data``),
    or None when it states none (the request counted as the client metered it)."""
    return _count_in(found, COUNTED)


def metered_of(meta: Mapping[str, Any] | None) -> int | None:
    """What a request's meta says the client metered it as (None: it does not say, a
    client of an older release)."""
    return _count_in(meta, METERED)


def uncounted(data: Any) -> Any:
    """``data`` of a refusal made before its request was counted (unknown method,
    method rules, fee admission), marked so (:data:`COUNTED` 0): the client's meter
    takes the call back. Data of another kind than a map (none of the servers' own
    refusals) is left as it is: the call then stays charged at the client, never the
    other way (a client counting less than the server counted would be refused for good)."""
    if data is None:
        return {COUNTED: 0}
    if isinstance(data, dict):
        return {**data, COUNTED: 0}
    return data


class Reread(enum.Enum):
    """What a request refused beyond the deposit known does (:meth:`RequestCover.reread`)."""

    #: Read the escrow's deposit again now, then ask again (:meth:`RequestCover.admit`).
    READ_NOW = enum.auto()
    #: Wait for the re-read under way, then ask again.
    WAIT = enum.auto()
    #: Refused as it is: the deposit was read less than :data:`DEPOSIT_REREAD` ago.
    REFUSE = enum.auto()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why :meth:`RequestCover.admit` did not count a request. Its receipt is not kept,
    whatever it is: a refused request costs nothing (docs/messaging.md §2.5)."""

    #: What to answer the request with.
    error: E.PaymentRequired
    #: The receipt exceeds the deposit known: the client may have topped up
    #: (:meth:`RequestCover.reread` says whether to read the deposit again).
    beyond_deposit: bool = False


class RequestCover:
    """The per-request fee rules of one connection's escrow (docs/escrow.md §3): each
    request may carry a cumulative receipt (meta ``"r"``), checked as ``escrow::claim``
    would (:func:`~dtp.payments.receipts.check_next_receipt`); a request is served only
    while ``served < latest.total_requests + credit_requests``. Sans-I/O and lock-free:
    :class:`~dtp.messaging.rpc._fees.RequestPayments` holds it under its lock, reads the
    clock and the ledger, and keeps the receipts."""

    __slots__ = (
        "_deposit_read_at",
        "_rereading",
        "client_public_key",
        "credit_requests",
        "deposited",
        "latest",
        "scope",
        "served",
        "sla",
    )

    def __init__(
        self,
        scope: ReceiptScope,
        sla: Sla,
        client_public_key: bytes,
        deposited: int,
        credit_requests: int,
    ) -> None:
        #: The package, escrow and connection the receipts must be signed for.
        self.scope = scope
        self.sla = sla
        self.client_public_key = client_public_key
        self.deposited = deposited
        self.credit_requests = credit_requests
        #: Requests counted as served.
        self.served = 0
        #: The newest receipt accepted: what the server claims.
        self.latest: Receipt | None = None
        self._deposit_read_at = -float("inf")
        self._rereading = False

    @property
    def connection_id(self) -> str:
        """The connection whose escrow pays."""
        return self.scope.connection_id

    @property
    def earned(self) -> int:
        """MIST the latest receipt lets the server claim."""
        return 0 if self.latest is None else self.latest.total_amount

    def resume(self, latest: Receipt) -> None:
        """Carry on from ``latest``, a receipt accepted earlier on this connection:
        every request it pays for counts as served, so the client's receipts up to it
        pay for nothing more."""
        if self.latest is None or latest.nonce > self.latest.nonce:
            self.latest = latest
        self.served = max(self.served, self.latest.total_requests)

    def admit(
        self, raw: Any, requests: int = 1, metered: int | None = None
    ) -> Receipt | Refusal | None:
        """Check a request's receipt (``raw``, meta ``"r"``; None: none) and count the
        request as ``requests`` requests of the SLA (a method priced at a multiple of
        ``price_per_request``, docs/messaging.md §2.5; 0: free): None when counted, the
        receipt when counted and paid by that receipt, newly accepted (to keep), or a
        :class:`Refusal`, whose error's ``data`` holds ``{"requests": requests}`` -- what
        the client's receipts must cover for it. ``metered``: what the client says it
        metered the request as (meta ``"n"``; None: it does not say); below
        ``requests`` the request is refused, whatever the receipts cover (what they
        cover beyond the served requests was paid for other calls, and a client that
        counted the call as less would owe less than was served).

        Only a request counted keeps its receipt: one refused (a receipt covering too
        little) leaves the latest receipt as it was, and so does a request counted as
        none (a free method, a JSON-RPC document whose requests the rules refuse all),
        whose receipt pays for nothing served. The client's meter takes such a call
        back, so its next receipt pays for what is served and nothing else.

        A receipt at or below the latest one's nonce is not refused while the latest
        pays for more requests than were served: the client signed them in one order
        and they came in another (two streams sharing a meter), and the newer receipt
        already paid for this request (the served count still bounds what it pays for)."""
        if metered is not None and metered < requests:
            text = f"metered as {metered} requests: this method counts as {requests}"
            return Refusal(E.PaymentRequired(text, data={"requests": requests}))
        if requests == 0:
            return None
        receipt = None
        if raw is not None:
            if not isinstance(raw, bytes):
                return Refusal(E.PaymentRequired("receipt must be bytes"))
            try:
                receipt = Receipt.decode(raw)
            except DTPError as exc:
                return Refusal(E.PaymentRequired(f"receipt refused: {exc}"))
            latest = self.latest
            if (
                latest is not None
                and receipt.nonce <= latest.nonce
                and latest.total_requests > self.served
            ):
                receipt = None  # (paid already: the latest covers it)
            else:
                try:
                    check_next_receipt(
                        receipt,
                        latest,
                        scope=self.scope,
                        sla=self.sla,
                        public_key=self.client_public_key,
                        deposited=self.deposited,
                    )
                except DTPError as exc:
                    error = E.PaymentRequired(f"receipt refused: {exc}")
                    return Refusal(error, beyond_deposit=receipt.total_amount > self.deposited)
        paying = receipt or self.latest
        paid = 0 if paying is None else paying.total_requests
        if self.served + requests > paid + self.credit_requests:
            if requests == 1:
                text = f"request {self.served + 1} is not covered (receipts cover {paid})"
            else:
                text = (
                    f"requests {self.served + 1}..{self.served + requests} are not covered "
                    f"(receipts cover {paid}; this method counts as {requests})"
                )
            return Refusal(E.PaymentRequired(text, data={"requests": requests}))
        if receipt is not None:
            self.latest = receipt
        self.served += requests
        return receipt

    def not_served(self, requests: int = 1) -> None:
        """A request :meth:`admit` counted (as ``requests``) was not served after all
        (the receipt paying for it could not be kept): it counts no more."""
        self.served -= requests

    def reread(self, now: float) -> Reread:
        """For a request refused beyond the deposit known (``now``: monotonic seconds):
        read the deposit again (at most once a :data:`DEPOSIT_REREAD`, so that a client
        sending receipts beyond its deposit cannot make the server hammer the ledger),
        wait for the re-read under way, or refuse. After ``READ_NOW`` the caller reports
        the read with :meth:`deposit_read`."""
        if self._rereading:
            return Reread.WAIT
        if now - self._deposit_read_at < DEPOSIT_REREAD:
            return Reread.REFUSE
        self._deposit_read_at = now
        self._rereading = True
        return Reread.READ_NOW

    def deposit_read(self, deposited: int | None) -> None:
        """The re-read :meth:`reread` asked for ended: the escrow's deposit, or None
        when it could not be read (a deposit never shrinks while the connection is open)."""
        if deposited is not None:
            self.deposited = max(self.deposited, deposited)
        self._rereading = False
