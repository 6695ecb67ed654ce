"""The client's side of in-band metering of paid connections, sans I/O (docs/escrow.md §6.1).

- :class:`MeteringConfig` — the client's knobs: on/off and the receipt cadence.
- :class:`ClientMeter` — the connection's usage counters in, signed cumulative receipts
  out (wraps :class:`dtp.payments.receipts.Meter`); when the deposit runs out it signs
  one last receipt for the whole deposit and pays nothing beyond it.

The server's side, which checks those receipts and says whether to serve, pause or
close, is :class:`dtp.payments._gate.ReceiptGate`.

What is metered: application bytes in both directions -- new bytes of every stream the
connection sent plus received, and the payloads of the datagrams it sent and received,
as :attr:`dtp.protocol.connection.Connection.usage` counts them -- and requests = streams opened
by the client, its first one only once data went on it (docs/escrow.md §6.1). Both
sides count the same bytes (a datagram as it is framed to go, and as it is accepted,
before any queue drops it), so over an ordered carrier they disagree only by what is in
flight.

Nothing here reads the clock: ``now_ms`` is always passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtp.errors import InsufficientFunds, InvalidArgument
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import U64_MAX, Receipt, ReceiptScope
from dtp.payments.receipts import Meter

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

# the server's receipt gate was defined here before payments/_gate.py; its names still
# import from here (docs/architecture.md, "Moved modules")
from dtp.payments._gate import (
    CLOSE_FIREWALL_DENIED,
    CLOSE_LEDGER_CLOSED,
    CLOSE_PAYMENT_REQUIRED,
    DEPOSIT_LAG_MS,
    DEPOSIT_READ_INTERVAL_MS,
    RECEIPT_REQUEST,
    ConnectionIds,
    GateState,
    GateVerdict,
    ReceiptGate,
    ended_on_ledger,
    ledger_checks_due,
)

__all__ = ["ClientMeter", "MeteringConfig"]
__all__ += [
    "CLOSE_FIREWALL_DENIED",
    "CLOSE_LEDGER_CLOSED",
    "CLOSE_PAYMENT_REQUIRED",
    "DEPOSIT_LAG_MS",
    "DEPOSIT_READ_INTERVAL_MS",
    "RECEIPT_REQUEST",
    "ConnectionIds",
    "GateState",
    "GateVerdict",
    "ReceiptGate",
    "ended_on_ledger",
    "ledger_checks_due",
]


@dataclass(frozen=True)
class MeteringConfig:
    """How a client meters a connection made by host ID."""

    enabled: bool = True
    """False: send no receipts (the server will pause and then close the connection
    once the unreceipted usage exceeds its allowance)."""
    every_bytes: int = 128 << 20
    """Sign a receipt after this many new bytes (0: never for bytes; bytes the SLA
    prices at 0 are never signed for on their own, by any cadence). A client signs
    sooner when this much would cost more than a quarter of the SLA's ``min_deposit``
    (the server's default allowance), so a client paying on cadence is never paused.
    Each receipt costs a signature here and a verification and a synced write at the
    server (about 0.4 ms of CPU in all, most of it the write's fsync): every 128 MiB
    that stays under 1% of a transfer at 2 GB/s (a metered connection's rate over
    loopback here), where every 64 MiB took 1.3% (and every 16 MiB over 2% at 1 GB/s).
    The server's risk does not grow with it: the allowance bounds what it serves
    unreceipted, whatever the cadence, and the time cadence below signs first on links
    slower than 128 MiB/s."""
    every_ms: int = 1000
    """...or this long after the last one when there is unpaid usage (0: never). Checked
    whenever the connection does I/O."""
    every_requests: int = 0
    """...or after this many new requests (streams we open; 0: none of its own). While
    any of the three is set, a client also signs once the requests since the last
    receipt cost a quarter of the SLA's ``min_deposit``, as for bytes: a client opening
    many streams with few bytes each is not paused for a receipt either."""

    def __post_init__(self) -> None:
        # checked here, when it is made, so that a connect refuses it before the
        # deposit moves (the meter is set up only once the ledger open is on its way)
        if not isinstance(self.enabled, bool):
            raise InvalidArgument(f"enabled must be a bool, got {self.enabled!r}")
        for name in ("every_bytes", "every_ms", "every_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
                raise InvalidArgument(
                    f"{name} must be an integer from 0 to 2**64-1 (0: never), got {value!r}"
                )


#: What a connect given no MeteringConfig meters by (made and checked once: frozen).
_DEFAULT_METERING = MeteringConfig()


class ClientMeter:
    """The client's meter of one connection, its receipts bound to ``scope`` (the
    package, the escrow and the connection, docs/escrow.md §6).

    :meth:`update` takes the connection's cumulative usage and returns a receipt when the
    cadence says so. Usage the deposit cannot cover is not signed for: the meter then
    signs once for as much as the deposit covers and sets :attr:`exhausted`.
    """

    def __init__(
        self,
        identity: HostIdentity,
        scope: ReceiptScope,
        sla: Sla,
        deposit: int,
        config: MeteringConfig | None = None,
        *,
        now_ms: int = 0,
    ) -> None:
        cfg = config or _DEFAULT_METERING
        # bytes that cost nothing (price_per_kib 0) are never signed for on their own:
        # such a receipt pays nothing more
        every_bytes = cfg.every_bytes if sla.price_per_kib else 0
        if every_bytes:
            quarter = max(4096, sla.min_deposit // 4 * 1024 // sla.price_per_kib)
            every_bytes = min(every_bytes, quarter)
        every_requests = cfg.every_requests
        if sla.price_per_request and (cfg.every_bytes or cfg.every_ms or every_requests):
            # the same bound for requests (unless all three are 0): else a client of
            # many small streams ran up an allowance of request fees and was paused
            quarter_requests = max(1, sla.min_deposit // 4 // sla.price_per_request)
            every_requests = min(every_requests or quarter_requests, quarter_requests)
        self.meter = Meter(
            identity,
            scope,
            sla,
            deposit,
            every_bytes=every_bytes,
            every_requests=every_requests,
            every_ms=cfg.every_ms,
            now_ms=now_ms,
            sign_free=False,
        )
        self.exhausted = False
        """True once usage went beyond what the deposit covers."""
        self._seen_bytes = 0
        self._seen_requests = 0
        self._every_ms = cfg.every_ms
        # once exhausted, usage is counted in steps of at least this many bytes (with
        # free bytes, whose cadence is off, a sixteenth of the configured one all the
        # same: steps of 64 KiB ticked an exhausted meter 128 times as often)
        self._step = max(1, (every_bytes or cfg.every_bytes or 1 << 20) // 16)
        self._due_ms = now_ms + cfg.every_ms if cfg.every_ms else None
        self._unseen_bytes = 0

    def _bytes_bound(self) -> int:
        """The usage (bytes) below which counting can change nothing: the next receipt
        by bytes, or the first byte the deposit does not cover."""
        meter = self.meter
        if self.exhausted:
            return self._seen_bytes + self._step
        bound = meter.total_bytes + meter.affordable_bytes() + 1
        if meter.every_bytes:
            bound = min(bound, meter.receipted_bytes + meter.every_bytes)
        return max(bound, self._seen_bytes + 1)

    @property
    def latest(self) -> Receipt | None:
        """The last receipt signed."""
        return self.meter.latest

    def update(
        self, now_ms: int, total_bytes: int, total_requests: int, *, force: bool = False
    ) -> Receipt | None:
        """Cumulative usage at ``now_ms`` in; a receipt out when one is due. Small
        increments are counted a step at a time unless ``force``."""
        new_bytes = total_bytes - self._seen_bytes
        new_requests = total_requests - self._seen_requests
        if new_bytes < 0 or new_requests < 0:
            raise ValueError("usage counters went backwards")
        due = self._due_ms is not None and now_ms >= self._due_ms
        if not force and not new_requests and total_bytes < self._bytes_bound() and not due:
            self._unseen_bytes = total_bytes  # (counted by a flush, should one come first)
            return None  # the hot path: called on every write
        self._seen_bytes, self._seen_requests = total_bytes, total_requests
        if self.exhausted:
            return None
        try:
            receipt = self.meter.record(now_ms, new_bytes, new_requests)
        except InsufficientFunds:
            receipt = self._exhaust(now_ms, new_bytes, new_requests)
        if due or receipt is not None:
            self._rearm(now_ms)
        return receipt

    @property
    def seen_requests(self) -> int:
        """The request count as last counted (new requests end the quiet of
        :meth:`quiet_until`)."""
        return self._seen_requests

    def quiet_until(self) -> tuple[int, int | None]:
        """(total bytes, ms time or None): while the usage stays below the one and the
        clock before the other, with no new requests, :meth:`update` returns None at
        once -- a caller on a hot path may skip calling it."""
        return self._bytes_bound(), self._due_ms

    def _rearm(self, now_ms: int) -> None:
        if self._every_ms:
            self._due_ms = now_ms + self._every_ms

    def _exhaust(self, now_ms: int, new_bytes: int, new_requests: int) -> Receipt | None:
        self.exhausted = True
        meter = self.meter
        # the requests first, as many as the deposit covers (each one fits whole or
        # not at all), then the bytes it still covers
        price = meter.sla.price_per_request
        requests = new_requests
        if price:
            requests = min(new_requests, max(0, meter.remaining) // price)
        signed = meter.record(now_ms, 0, requests) if requests else None
        signed = meter.record(now_ms, min(new_bytes, meter.affordable_bytes()), 0) or signed
        # the cadence may have signed already: either way the newest covers everything
        return meter.flush(now_ms) or signed

    def top_up(self, amount: int, now_ms: int) -> Receipt | None:
        """The escrow was topped up by ``amount`` MIST: sign up to the new deposit. When
        the meter was :attr:`exhausted`, the usage it saw since went unsigned; it is
        signed now, as far as the new deposit covers (a receipt returned: send it)."""
        meter = self.meter
        meter.top_up(amount)
        if not self.exhausted:
            return None
        self.exhausted = False
        owed_bytes = self._seen_bytes - meter.total_bytes
        owed_requests = self._seen_requests - meter.total_requests
        try:
            receipt = meter.record(now_ms, owed_bytes, owed_requests)
        except InsufficientFunds:
            receipt = self._exhaust(now_ms, owed_bytes, owed_requests)
        return meter.flush(now_ms) or receipt

    def flush(self, now_ms: int) -> Receipt | None:
        """A receipt for all usage :meth:`update` was given now (on request or at
        close), if unpaid."""
        counted = None
        if self._unseen_bytes > self._seen_bytes:
            counted = self.update(now_ms, self._unseen_bytes, self._seen_requests, force=True)
        receipt = self.meter.flush(now_ms) or counted
        if receipt is not None:
            self._rearm(now_ms)
        return receipt
