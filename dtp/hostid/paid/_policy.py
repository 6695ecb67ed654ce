"""What a paid server applies on both of its drivers (blocking and asyncio): its
policy (:class:`ServicePolicy`), the receipt gate built from admission, the checks of
its arguments and the slices its credit is handed out in (docs/escrow.md §6.1)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtp.errors import (
    InvalidArgument,
    LocalProtocolError,
)
from dtp.hostid._admission import Admitted
from dtp.ledger._connections import half_close_timeout_ms
from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import ReceiptScope
from dtp.payments._ends import BATCH_WINDOW, EndRule, check_seconds
from dtp.payments._gate import (
    ReceiptGate,
)
from dtp.payments._live_claims import CLAIM_AGE, CLAIM_INTERVAL, ClaimRule, LiveClaimer
from dtp.payments.receipt_store import ReceiptStore
from dtp.transport.carriers._tcp import check_listen_address

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger


SEND_SLICE = 256 * 1024  # sendall pieces: the gate and the rate limit act between them
CREDIT_MAX = 4 << 20  # the gate is looked at again after at most this many bytes ...
CALL_COST = 64 << 10  # ... each read or write counted as at least this many


@dataclass(frozen=True)
class ServicePolicy:
    """A paid server's own settings (the SLA and the firewall are on the ledger)."""

    allowance: int | None = None
    """MIST of usage served on credit before pausing; None: the SLA's ``min_deposit``
    (the server never serves more on credit than the minimum escrow guarantees)."""
    pause_timeout: float = 10.0
    """Seconds a paused connection waits for a covering receipt before it is closed."""
    refresh_interval: float = 2.0
    """Seconds between reads of the Host (limits and deny list reach open connections
    within this delay)."""
    request_interval: float = 0.2
    """Seconds between receipt requests while paused (for the connection, however many
    of its calls are paused: PaidConnectionEngine.request_due)."""
    final_receipt_timeout: float = 1.0
    """When the handler ends a connection the client has not closed: how long to ask
    for a receipt covering everything before closing (the client pays at its own close
    otherwise, but a server that closes first would never see that one)."""
    ledger_check_interval: float = 30.0
    """Seconds between reads of each open connection's state on the ledger (at the
    Host's refreshes): one its client closed there is closed (``CLOSE_LEDGER_CLOSED``)
    and settled. Keep it well below the half-close timeout, after which the client may
    settle first."""
    gas_aware_ends: bool = True
    """Weigh each connection's end against its gas (docs/escrow.md §7.1): an end whose
    fee does not cover it is batched or left to its client. False: every end is
    settled, whatever it costs (as on a LocalLedger, which charges no gas)."""
    batch_window: float = BATCH_WINDOW
    """Seconds an end worth a place in a batch, but not a transaction of its own, waits
    for others (0: none waits; such ends are left). Batches go out in the server's
    recovery rounds (every 30 s) and at its release."""
    claim_above: int | None = None
    """Claim a live connection's receipts once they hold this many MIST unclaimed
    (docs/escrow.md §7.1): what a crash can cost the server. None: once that pays the
    claim's gas (``Ledger.end_gas().claim``); 2**64-1: never by amount."""
    claim_age: float | None = CLAIM_AGE
    """Claim a live connection's oldest unclaimed receipt once it has waited this
    fraction (0 < age < 1) of the half-close timeout (with ``gas_aware_ends``, only
    when that pays): a server down then has the rest of it to come back. None: never."""
    claim_interval: float = CLAIM_INTERVAL
    """The least time (seconds) between two claims of one connection while it lives,
    and from the moment it is served to its first: a connection shorter than this is
    claimed at its end only."""

    def __post_init__(self) -> None:
        # checked here: found where used, after the server listens and published its
        # endpoint, a bad value would leave both behind
        allowance = self.allowance
        if allowance is not None and (
            not isinstance(allowance, int)
            or isinstance(allowance, bool)
            or not 0 <= allowance < 2**64
        ):
            raise InvalidArgument(
                f"ServicePolicy.allowance must be None or an integer from 0 to 2**64-1 "
                f"(MIST), got {allowance!r}"
            )
        _seconds("pause_timeout", self.pause_timeout, zero=True)
        _seconds("refresh_interval", self.refresh_interval, zero=False)
        _seconds("request_interval", self.request_interval, zero=False)
        _seconds("final_receipt_timeout", self.final_receipt_timeout, zero=True)
        _seconds("ledger_check_interval", self.ledger_check_interval, zero=False)
        if not isinstance(self.gas_aware_ends, bool):
            raise InvalidArgument(
                f"ServicePolicy.gas_aware_ends must be a bool, got {self.gas_aware_ends!r}"
            )
        _seconds("batch_window", self.batch_window, zero=True)
        try:
            self.claim_rule  # noqa: B018 (checked by making it)
        except InvalidArgument as exc:
            raise InvalidArgument(f"ServicePolicy.{exc}") from None

    @property
    def end_rule(self) -> EndRule:
        """How the server weighs a connection's end against its gas."""
        return EndRule(self.gas_aware_ends, self.batch_window)

    @property
    def claim_rule(self) -> ClaimRule:
        """When the server claims receipts while their connections live."""
        return ClaimRule(self.claim_above, self.claim_age, self.claim_interval, self.gas_aware_ends)


def _seconds(name: str, value: object, *, zero: bool) -> None:
    """Refuse a ServicePolicy duration (:func:`~dtp.payments._ends.check_seconds`)."""
    check_seconds(f"ServicePolicy.{name}", value, zero=zero)


def gate_for(
    ledger: Ledger,
    connection_id: str,
    policy: ServicePolicy,
    store: ReceiptStore | None = None,
    *,
    admitted: Admitted | None = None,
) -> ReceiptGate:
    """A :class:`ReceiptGate` for an admitted connection from its escrow (``admitted``:
    as admission just read it, not read again). No spending cap is read: the deposit was
    reserved on it (docs/escrow.md §4)."""
    if admitted is not None and admitted.of(normalize_id(connection_id, "connection ID")):
        tc, escrow = admitted.connection, admitted.escrow
    else:
        tc = ledger.get_connection(connection_id)
        escrow = ledger.get_escrow(tc.escrow)
    gate = ReceiptGate(
        scope=ReceiptScope(ledger.package_id, tc.escrow, tc.id),
        client_public_key=escrow.client_public_key,
        sla=tc.sla,
        deposited=escrow.deposited,
        claimed=escrow.claimed,
        latest_nonce=escrow.latest_nonce,
        allowance=policy.allowance,
        pause_timeout_ms=int(policy.pause_timeout * 1000),
        store=store,
    )
    gate.escrow_id = escrow.id  # read again should the client top it up while served
    gate.subscription = tc.subscription  # read while served: over, the connection ends
    gate.half_close_timeout_ms = half_close_timeout_ms(tc)  # (its receipts' claims)
    return gate


def watch_claims(claimer: LiveClaimer, gate: ReceiptGate) -> None:
    """Claim the receipts of the connection ``gate`` (just made by :func:`gate_for`)
    meters while it lives (docs/escrow.md §7.1): its escrow's claims and nonce as the
    gate was made from them."""
    if gate.escrow_id is None or gate.half_close_timeout_ms is None:
        return
    claimer.claims.watch(
        gate.connection_id,
        gate.escrow_id,
        gate.half_close_timeout_ms,
        time.monotonic(),
        claimed=gate.claimed,
        latest_nonce=gate.latest_nonce,
    )


#: The refusal (or abort reason) a client admitted as its server closes gets
CLOSED_REFUSAL = "the server is closed"


def datagram_sizes(items: list[bytes | bytearray | memoryview], limit: int) -> list[int]:
    """The sizes of the datagrams ``items``, checked as the connection checks them, all
    before any goes: a paid stream sends them in runs, and one refused midway would
    leave the earlier runs sent."""
    sizes = []
    for data in items:
        try:
            size = memoryview(data).nbytes
        except TypeError:
            raise TypeError(
                f"a bytes-like object is required, not {type(data).__name__!r}"
            ) from None
        if size > limit:
            raise LocalProtocolError(f"datagram of {size} bytes exceeds {limit}")
        sizes.append(size)
    return sizes


def not_forwarded(stream: object, name: str) -> AttributeError:
    """The error for an attribute ``name`` a paid stream (PaidSocket, PaidReader,
    PaidWriter) does not take from the stream it wraps: only what moves no data is
    forwarded, so that nothing passes the receipt gate."""
    return AttributeError(
        f"{type(stream).__name__!r} object has no attribute {name!r} (a paid stream "
        f"forwards only what moves no data, so that nothing passes the receipt gate)"
    )


def check_address(address: object, what: str) -> None:
    """Refuse a listening or published address that is not a (host, port) tuple before
    anything opens (a string such as "127.0.0.1:0" would fail only in bind(), leaving
    the socket it was made for behind): the servers' one check, naming ``what``."""
    check_listen_address(address, what)
