"""In-band metering of paid connections, sans I/O (docs/escrow.md §6.1).

- :class:`MeteringConfig` — the client's knobs: on/off and the receipt cadence.
- :class:`ClientMeter` — the client side: the connection's usage counters in, signed
  cumulative receipts out (wraps :class:`dtp.escrow.Meter`); when the deposit runs out
  it signs one last receipt for the whole deposit and pays nothing beyond it.
- :class:`ReceiptGate` — the server side: checks every RECEIPT frame with
  :func:`dtp.escrow.check_receipt` against the connection's escrow, keeps it durably
  (:class:`dtp.receipt_store.ReceiptStore`) before it counts, and says whether to serve,
  pause or close given the usage the server has seen.

What is metered: application bytes in both directions -- new bytes of every stream the
connection sent plus received, and the payloads of the datagrams it sent and received,
as :attr:`dtp.connection.Connection.usage` counts them -- and requests = streams opened
by the client. Both sides count the same bytes (a datagram as it is framed to go, and
as it is accepted, before any queue drops it), so over an ordered carrier they disagree
only by what is in flight.

Nothing here reads the clock: ``now_ms`` is always passed in.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from dtp.chain.objects import ConnectionState, Sla, SpendingCap
from dtp.errors import InsufficientFunds, InvalidArgument, InvalidReceipt, move_error
from dtp.escrow import U64_MAX, Meter, Receipt, check_receipt, fee

if TYPE_CHECKING:
    from dtp.chain.ledger import Ledger
    from dtp.keys import HostIdentity
    from dtp.receipt_store import ReceiptStore

__all__ = [
    "CLOSE_FIREWALL_DENIED",
    "CLOSE_LEDGER_CLOSED",
    "CLOSE_PAYMENT_REQUIRED",
    "DEPOSIT_LAG_MS",
    "DEPOSIT_READ_INTERVAL_MS",
    "RECEIPT_REQUEST",
    "CapShare",
    "CapShares",
    "ClientMeter",
    "ConnectionIds",
    "GateState",
    "GateVerdict",
    "MeteringConfig",
    "ReceiptGate",
    "ended_on_ledger",
    "ledger_checks_due",
    "share_generations",
]

#: CLOSE code (application range) a paid server uses when receipts stop covering usage.
CLOSE_PAYMENT_REQUIRED: Final = 0x1402
#: CLOSE code a paid server uses when the host's firewall now denies the client.
CLOSE_FIREWALL_DENIED: Final = 0x1403
#: CLOSE code a paid server uses when the connection is no longer Open on the ledger
#: while it is served (the client half-closed it there): the server settles it at once,
#: as once the half-close timeout passed the client could settle first and take the
#: whole escrow back, the usage served meanwhile unpaid.
CLOSE_LEDGER_CLOSED: Final = 0x1404
#: How often (ms) a paid server reads a connection's escrow again while the deposit is
#: what holds the connection (a top-up is seen within this delay).
DEPOSIT_READ_INTERVAL_MS: Final = 1000
#: How long (ms of the server's reads) a receipt may go on waiting above the deposit the
#: escrow shows before it is a violation. A client tops up, then signs for more; the
#: ledger the server reads (a Sui full node) may not show the top-up for a few
#: checkpoints yet, and an honest client would be closed for it. Meanwhile the receipt
#: is not counted, so its wait buys the client nothing.
DEPOSIT_LAG_MS: Final = 5000
#: Payload of a RECEIPT frame sent by the server: "send me a receipt now". The server
#: sends it while paused, so a client whose sends are blocked by flow control (and so
#: uses nothing new) still pays for what it used below its cadence.
RECEIPT_REQUEST: Final = b""


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


class ClientMeter:
    """The client's meter of one connection.

    :meth:`update` takes the connection's cumulative usage and returns a receipt when the
    cadence says so. Usage the deposit cannot cover is not signed for: the meter then
    signs once for as much as the deposit covers and sets :attr:`exhausted`.
    """

    def __init__(
        self,
        identity: HostIdentity,
        connection_id: str,
        sla: Sla,
        deposit: int,
        config: MeteringConfig | None = None,
        *,
        now_ms: int = 0,
    ) -> None:
        cfg = config or MeteringConfig()
        # bytes that cost nothing (price_per_kib 0: a service priced by the request, or
        # a subscribed connection's all-zero SLA) are never signed for on their own: a
        # receipt for them pays nothing more, and it was signed every second they
        # moved (every_ms), at every ask of the server and at close
        every_bytes = cfg.every_bytes if sla.price_per_kib else 0
        if every_bytes:
            quarter = max(4096, sla.min_deposit // 4 * 1024 // sla.price_per_kib)
            every_bytes = min(every_bytes, quarter)
        every_requests = cfg.every_requests
        if sla.price_per_request and (cfg.every_bytes or cfg.every_ms or every_requests):
            # the same bound for requests, whenever the client pays on a cadence at all:
            # the byte cadence alone let a client opening streams with few bytes each
            # (RPC calls) run up a whole allowance of request fees between receipts,
            # and the server paused it for one every min_deposit's worth of requests.
            # (Only the "pay when asked" configuration -- all three 0 -- is left alone.)
            quarter_requests = max(1, sla.min_deposit // 4 // sla.price_per_request)
            every_requests = min(every_requests or quarter_requests, quarter_requests)
        self.meter = Meter(
            identity,
            connection_id,
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
        """The usage (bytes) below which counting can change nothing: the byte
        cadence's next receipt, or the first byte the deposit does not cover, whichever
        comes first. (Counting in steps of a sixteenth of the cadence instead ran the
        meter -- a fee, a deposit check -- 16 times a receipt: 64 times per 256 MiB.)"""
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


class CapShare:
    """One spending cap as a paid server's live connections share it. Each connection's
    gate judges a receipt against what the cap lets the server claim; a client that
    uses one cap for several connections at once would have each of them served on the
    whole of it, and the claims of the later ones refused. So the receipts the
    connections hold together (beyond what they claimed) may not exceed what the cap
    lets the server claim: a receipt that would take them past it is not counted, as
    one beyond the cap is not (the connection pauses for a receipt the cap can pay)."""

    def __init__(self, cap_id: str, remaining: int) -> None:
        self.cap_id = cap_id
        self._lock = threading.Lock()
        #: What the cap lets the server claim, as last read (less what it claimed since).
        self.remaining = remaining
        self._held: dict[int, int] = {}  # id(gate) -> its receipt beyond its claims
        self._total = 0  # sum of _held
        #: Bumped by every leave: a read of the cap started before a leave (its
        #: generation older) may predate that connection's claim, or include it
        #: (:meth:`refresh` ignores it; the server reads the cap afresh after a leave)
        self.generation = 0

    def take(self, gate: object, amount: int) -> None:
        """Let ``gate`` hold a receipt for ``amount`` MIST beyond its claims, or raise
        SpendingCapExceeded when the others' and this one would exceed the cap."""
        key = id(gate)
        with self._lock:
            mine = self._held.get(key, 0)
            others = self._total - mine
            if others + amount > self.remaining:
                raise move_error(
                    "spending_cap",
                    "ESpendingCapExceeded",
                    f"receipt for {amount} MIST; the client's other connections hold "
                    f"{others} of the {self.remaining} its cap lets be claimed",
                )
            self._held[key] = amount
            self._total += amount - mine

    def room(self, gate: object) -> int:
        """What the cap lets ``gate`` hold beyond its claims, the others' receipts
        taken (may be negative after the cap was read lower)."""
        with self._lock:
            return self.remaining - (self._total - self._held.get(id(gate), 0))

    def refresh(self, remaining: int, generation: int | None = None) -> bool:
        """The cap read again: it lets the server claim ``remaining`` MIST now (its owner
        may have lowered it, or a new epoch reset it). ``generation``: the share's
        :attr:`generation` when the read began; a read begun before a connection left
        is ignored (False): it may or may not hold that connection's claim, which the
        leave took off already, and applied after it, it counted the claim twice (or
        not at all). The server reads the cap again after a leave."""
        with self._lock:
            if generation is not None and generation != self.generation:
                return False
            self.remaining = remaining
            return True

    def _join(self, gate: object, remaining: int) -> None:
        """Add ``gate``, whose connection's claims the cap lets take ``remaining`` MIST
        (as just read). The share keeps the least of what it had and that: taken as it
        came, a connection opened under a higher limit (or read before another one's
        claim) raised the budget of every connection on the cap, the receipts they then
        held together could pass what the claim of the one opened under the lowest
        limit can take, and one of them went unclaimed. Only a read of the cap for all
        of them (:meth:`refresh`, from :func:`apply_cap_limits`) raises it."""
        with self._lock:
            self.remaining = min(self.remaining, remaining)
            self._held.setdefault(id(gate), 0)

    def _leave(self, gate: object) -> bool:
        """Drop ``gate``; True when no connection holds the cap any more.

        What it held is claimed now (or kept for a later claim): spent either way, so it
        is taken off ``remaining`` -- which is right only if ``remaining`` was read before
        the claim. A read between the claim and this leave (the server's refresh of the
        caps, or another connection joining) held the claim already, and it was taken
        off twice: the connections left on the cap were served that much less than it
        allows. The taking off stays (nothing is ever counted on beyond the cap), and
        :attr:`generation` moves on: the server then reads the cap afresh (its claim
        on the ledger by then), and refreshes begun before are ignored."""
        with self._lock:
            held = self._held.pop(id(gate), 0)
            self._total -= held
            self.remaining = max(0, self.remaining - held)
            self.generation += 1
            return not self._held


class CapShares:
    """A paid server's :class:`CapShare` of each spending cap its live connections use.

    A cap's share goes with its last connection, but what that one's settlement spent of
    the cap is remembered for :attr:`GONE_KEPT` seconds: a connection admitted on a read
    of the cap made before that claim (admission's, a moment earlier) would otherwise
    start a new share on the cap as it was before it, and count receipts its claims
    cannot take until the next read of the caps."""

    GONE_KEPT: Final = 30.0
    """Seconds what a cap's share had left, as its last connection left, bounds a new
    share of the cap (many refresh intervals: the caps are read again by then)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shares: dict[str, CapShare] = {}
        # cap ID -> (when its last connection left (monotonic), what its share had left
        # then), oldest first
        self._gone: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def join(self, cap_id: str, gate: ReceiptGate, remaining: int) -> None:
        """``gate`` (a connection just admitted) uses cap ``cap_id``, which lets the
        server claim ``remaining`` MIST now (as just read): the share keeps the least of
        that and what it had (:meth:`CapShare._join`), and a new share the least of that
        and what the cap's last share had left, if that was lately."""
        with self._lock:
            share = self._shares.get(cap_id)
            if share is None:
                self._forget_gone(time.monotonic())
                gone = self._gone.pop(cap_id, None)
                if gone is not None:
                    # the read may predate the settlement's claim that share saw: not
                    # more than it had left (a new epoch, or a raise, waits for the next
                    # read of the caps)
                    remaining = min(remaining, gone[1])
                share = self._shares[cap_id] = CapShare(cap_id, remaining)
            share._join(gate, remaining)
            gate.share = share

    def _forget_gone(self, now: float) -> None:
        gone = self._gone
        while gone:
            cap_id, (left_at, _) = next(iter(gone.items()))
            if now - left_at < self.GONE_KEPT:
                return
            del gone[cap_id]

    def leave(self, gate: ReceiptGate) -> CapShare | None:
        """``gate``'s connection ended (its settlement is done). Returns its cap's share
        when other live connections still hold it: the server is to read the cap again
        for them (:func:`read_cap_limits` then :func:`apply_cap_limits`), since what the
        share has left may count the settlement's claim twice (:meth:`CapShare._leave`)."""
        with self._lock:
            share = gate.share
            gate.share = None
            if share is None:
                return None
            if share._leave(gate):
                if self._shares.get(share.cap_id) is share:
                    del self._shares[share.cap_id]
                    now = time.monotonic()
                    self._forget_gone(now)
                    self._gone.pop(share.cap_id, None)  # (to the end: the newest)
                    self._gone[share.cap_id] = (now, share.remaining)
                return None
            return share


class ConnectionIds:
    """The ledger connection IDs a paid server is serving or settling: one DTP connection
    per ledger connection at a time. A second DTP connection naming an ID in use would,
    on a gate of its own, count the first one's receipts again and take another
    allowance from one escrow.

    Its own lock, held only for a set operation, makes it safe from the blocking
    server's threads and costs the asyncio server's event loop nothing noticeable."""

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


class _LedgerChecked(Protocol):
    connection_id: str
    ledger_check_due: float  # (monotonic)


_C = TypeVar("_C", bound=_LedgerChecked)


def ledger_checks_due(live: Iterable[_C], now: float, interval: float) -> list[_C]:
    """Those of the open connections ``live`` due for a read of their state on the ledger
    at ``now``, each then due again ``interval`` seconds later (the paid servers' and the
    daemon's check: :func:`ended_on_ledger`)."""
    due = [conn for conn in live if now >= conn.ledger_check_due]
    for conn in due:
        conn.ledger_check_due = now + interval
    return due


def ended_on_ledger(ledger: Ledger, connections: Iterable[_C]) -> list[_C]:
    """Those of ``connections`` no longer Open on the ledger (one read each; a
    ChainError passes)."""
    return [
        conn
        for conn in connections
        if ledger.connection_state(conn.connection_id) != ConnectionState.OPEN
    ]


def read_cap_limits(ledger: Ledger, cap_ids: Iterable[str]) -> dict[str, tuple[SpendingCap, int]]:
    """Each spending cap of ``cap_ids`` as it is now, with the epoch (read with the Host,
    for :func:`apply_cap_limits`): its owner may lower or raise a cap at any time
    (docs/escrow.md §4) and a new epoch resets it. Ledger reads: call it off an event
    loop. Raises ChainError when the ledger cannot be read."""
    epoch = ledger.epoch()
    return {cap_id: (ledger.get_cap(cap_id), epoch) for cap_id in cap_ids}


def share_generations(gates: Iterable[ReceiptGate]) -> dict[str, int]:
    """The :attr:`CapShare.generation` of each cap the ``gates`` share, taken before
    :func:`read_cap_limits` begins: pass it to :func:`apply_cap_limits`."""
    generations: dict[str, int] = {}
    for gate in gates:
        share = gate.share  # (once: a leave may clear it meanwhile)
        if share is not None:
            generations[share.cap_id] = share.generation
    return generations


def apply_cap_limits(
    gates: Iterable[ReceiptGate],
    limits: dict[str, tuple[SpendingCap, int]],
    generations: dict[str, int] | None = None,
) -> None:
    """Serve and judge receipts from now on against the caps as :func:`read_cap_limits`
    read them: each gate on a cap of ``limits`` takes what the cap lets the server serve
    on for its connection (:meth:`~dtp.chain.objects.SpendingCap.serving_room`: a
    lowering pauses service, a raise does not extend a connection opened under less,
    since the client can take it back before the claim) and what its receipts may reach
    (:meth:`~dtp.chain.objects.SpendingCap.secured`: the claims keep the limit at
    open), and the cap's share the least of its gates' claimable room. A
    gate kept the cap as admission read it: on a lowered cap it would go on serving on
    credit the client no longer means to give. ``generations``: from
    :func:`share_generations` before the read; a share a connection left since is not
    refreshed (the read may predate that connection's claim)."""
    rooms: dict[CapShare, int] = {}
    for gate in gates:
        share = gate.share
        if share is None or share.cap_id not in limits:
            continue
        cap, epoch = limits[share.cap_id]
        gate.spend_limit = gate.claimed + cap.serving_room(epoch, gate.cap_opened_under)
        # receipts for what was served stay good: the ledger charges their claims
        # against the limit the connection opened under, whatever the cap says now
        claimable = cap.secured(epoch, gate.cap_opened_under)
        gate.claim_limit = gate.claimed + claimable
        rooms[share] = min(claimable, rooms.get(share, claimable))
    for share, room in rooms.items():
        share.refresh(room, None if generations is None else generations.get(share.cap_id))


class ReceiptGate:
    """The server's receipt check and credit limit for one connection.

    ``allowance``: how many MIST of usage the server extends on credit (usage seen
    minus the latest accepted receipt) before it pauses. The SLA has no such field and
    the Move structs stay as they are, so it is a server policy; the default is the
    SLA's ``min_deposit``: the server never serves more on credit than the minimum
    escrow guarantees it can be paid. ``pause_timeout_ms``: a connection paused this
    long without a covering receipt is to be closed. ``spend_limit``: the most the
    server serves on, as the client's spending cap allows (None: no limit beyond the
    deposit): a lowering of the cap pauses service there. ``claim_limit``: the most
    receipts may reach, what the cap lets the server claim (default: ``spend_limit``):
    a lowering does not bind the claims of a connection opened before it, so a receipt
    for usage served before it stays good (judged against the serving limit, the final
    receipt after a refresh of the caps was refused, and an older one claimed).
    """

    def __init__(
        self,
        *,
        connection_id: str,
        client_public_key: bytes,
        sla: Sla,
        deposited: int,
        claimed: int = 0,
        latest_nonce: int = 0,
        allowance: int | None = None,
        pause_timeout_ms: int = 10_000,
        spend_limit: int | None = None,
        claim_limit: int | None = None,
        store: ReceiptStore | None = None,
    ) -> None:
        if pause_timeout_ms < 0 or (allowance is not None and allowance < 0):
            raise ValueError("allowance and pause_timeout_ms must be non-negative")
        self.connection_id = connection_id
        self.client_public_key = client_public_key
        self.sla = sla
        self.deposited = deposited
        self.claimed = claimed
        self.allowance = sla.min_deposit if allowance is None else allowance
        self.pause_timeout_ms = pause_timeout_ms
        self.spend_limit = spend_limit
        self.claim_limit = spend_limit if claim_limit is None else claim_limit
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
        #: The cap as the server's other live connections share it (:class:`CapShares`).
        self.share: CapShare | None = None
        #: The cap limit the connection opened under (its escrow's cap_max_per_epoch;
        #: None: not recorded), for :func:`apply_cap_limits`.
        self.cap_opened_under: int | None = None
        #: The connection's escrow (None: not known, its deposit is never read again).
        self.escrow_id: str | None = None
        #: The newest receipt valid but for being above ``deposited``: the client may
        #: have topped the escrow up. Not counted; judged once the escrow is read again
        #: (:meth:`deposit_read`): counted then, or a violation.
        self.over_deposit: Receipt | None = None
        self._deposit_read_ms: int | None = None
        # when a read first found the receipt waiting still above the deposit
        self._above_since_ms: int | None = None

    def check(self, data: bytes) -> Receipt:
        """Validate an encoded receipt without counting it yet; the caller stores it
        durably and then calls :meth:`kept` (which is when it starts to count).

        Raises :class:`dtp.errors.InvalidReceipt` (and remembers the violation) when it is
        malformed, replayed, badly signed, priced wrong or lower than an earlier one;
        :class:`dtp.errors.SpendingCapExceeded` (not a violation: it is just not counted)
        when it is above ``spend_limit``. Replays and regressions are judged against the
        newest receipt checked, kept or not. One beyond ``deposited`` raises
        InvalidReceipt (``EReceiptExceedsDeposit``) and is not counted, but it is no
        violation yet: the client may have topped the escrow up since the server read
        it. It waits in :attr:`over_deposit` for the server to read the escrow again
        (:meth:`wants_deposit`, :meth:`deposit_read`; for up to :data:`DEPOSIT_LAG_MS`
        of reads): a closed connection then, where a client that topped up and signed
        on was closed for an "invalid" receipt.
        """
        try:
            receipt = Receipt.decode(data)
            pending = self.over_deposit
            try:
                check_receipt(
                    receipt,
                    connection_id=self.connection_id,
                    sla=self.sla,
                    public_key=self.client_public_key,
                    deposited=self.deposited,
                    claimed=self.claimed,
                    latest_nonce=self._checked_nonce,
                )
            except InvalidReceipt as exc:
                if exc.name != "EReceiptExceedsDeposit":
                    raise
                # nonce, signature and amount are good (checked first): only the
                # deposit as read at admission is short, and the client may have topped
                # the escrow up since. Not counted, not a violation yet: judged once the
                # escrow is read again (deposit_read)
                self._not_below_pending(receipt, pending)
                if pending is None or receipt.nonce > pending.nonce:
                    self.over_deposit = receipt
                raise
            # (not lower than the previous one before the cap: a lowered cap -- read again
            # by the server -- may be below both, and a regression is a violation)
            if receipt.total_amount < self._checked_amount:
                raise move_error(
                    "escrow",
                    "EReceiptNotCumulative",
                    f"{receipt.total_amount} MIST after a receipt for {self._checked_amount}",
                )
            self._not_below_pending(receipt, pending)
            if self.claim_limit is not None and receipt.total_amount > self.claim_limit:
                # valid, but the client's cap would refuse its claim this epoch, and a
                # cumulative receipt cannot be claimed in part: keep the previous one
                raise move_error(
                    "spending_cap",
                    "ESpendingCapExceeded",
                    f"receipt for {receipt.total_amount} MIST, the cap lets "
                    f"{self.claim_limit} be claimed",
                )
            share = self.share
            if share is not None:
                share.take(self, receipt.total_amount - self.claimed)
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
        """A receipt signed after the one waiting above the deposit (good but for the
        deposit) must not be lower: the client signed for more first, and the later,
        lower receipt would take its place -- counted, or waiting instead of it -- and
        cost the server the difference. A regression: a violation, as any other."""
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
        """What the accepted receipts let the server collect: the latest one's amount,
        or, while the spending cap lets less than that be claimed (the client's claims
        elsewhere spent the cap since: :func:`apply_cap_limits`), only what is claimed
        already -- a cumulative receipt is claimed whole or not at all, so the cap's
        room short of it collects nothing of it (counted as collectable, it was credit
        the server served on and could not be paid for)."""
        if self.claim_limit is None or self.latest_amount <= self.claim_limit:
            return self.latest_amount
        return self.claimed

    def wants_deposit(
        self, now_ms: int, total_bytes: int, total_requests: int, *, ending: bool = False
    ) -> bool:
        """Whether the server should read the escrow's deposit again now: a receipt
        waits above the deposit as known (:attr:`over_deposit`), or the usage outruns
        the credit and the deposit is what holds it (with more deposit, more credit) --
        the client may have topped the escrow up while the connection was open. At
        most once per :data:`DEPOSIT_READ_INTERVAL_MS` (the read itself is the
        server's: :meth:`deposit_read` takes what it found). ``ending`` (the connection
        is over, its settlement next): whenever a receipt waits above the deposit,
        whatever the interval -- else it goes unclaimed."""
        if self.escrow_id is None or self.violation is not None:
            return False
        if ending:
            return self.over_deposit is not None
        last = self._deposit_read_ms
        if last is not None and now_ms - last < DEPOSIT_READ_INTERVAL_MS:
            return False
        if self.over_deposit is not None:
            return True
        owed = fee(self.sla, total_bytes, total_requests) - self.payable()
        credit = self.credit()
        return owed > credit and self._credit(U64_MAX) > credit

    def deposit_reading(self, now_ms: int) -> None:
        """A read of the escrow begins at ``now_ms`` (the next is due an interval on,
        whether this one succeeds or not)."""
        self._deposit_read_ms = now_ms

    def deposit_read(self, deposited: int) -> Receipt | None:
        """The escrow read again: it holds ``deposited`` MIST in all (a deposit only
        grows). Returns the receipt that waited above the old deposit when the new one
        covers it: the caller hands it to its receipt path again (check, keep, count).
        One still above it goes on waiting (the ledger read may lag the client's top-up)
        until reads :data:`DEPOSIT_LAG_MS` apart both found it above: a violation then,
        the client signed for more than it deposited."""
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
        """MIST of usage the server serves beyond the accepted receipts now: the
        allowance, but never more than the escrow can still pay -- the deposit (and what
        the client's cap lets the server claim) less what the receipts take already. The
        allowance alone let a client whose receipts had reached its deposit be served a
        whole allowance more, for nothing (with the default allowance, a deposit of
        ``min_deposit`` bought twice its worth), and each further connection on a cap
        the first had used up as much."""
        return self._credit(self.deposited)

    def _credit(self, deposited: int) -> int:
        return max(0, self._headroom(deposited))

    def _headroom(self, deposited: int) -> int:
        """:meth:`credit` before it is floored at 0: negative when the accepted receipts
        reach past what the server serves up to (a cap lowered below them: they pay for
        service before the lowering, and serve no more), so that usage is held to that
        ceiling -- the receipts alone, above it, served on for as long as the client
        paid."""
        ceiling = deposited if self.spend_limit is None else min(deposited, self.spend_limit)
        share = self.share
        if share is not None:
            # the client's other live connections on the cap hold part of it: what they
            # hold cannot pay for this one's credit
            ceiling = min(ceiling, self.claimed + share.room(self))
        return min(self.allowance, ceiling - self.payable())

    def owed(self, total_bytes: int, total_requests: int) -> int:
        """MIST of the usage seen that no accepted receipt covers (0 if covered)."""
        return max(0, fee(self.sla, total_bytes, total_requests) - self.payable())

    def settled_up(self, total_bytes: int, total_requests: int) -> bool:
        """Whether no further receipt is to be expected: the usage is covered, or the
        receipts already reach all the client can pay (its deposit, or its cap)."""
        ceiling = (
            self.deposited if self.claim_limit is None else min(self.deposited, self.claim_limit)
        )
        return self.owed(total_bytes, total_requests) == 0 or self.payable() >= ceiling

    def serving(self, total_bytes: int, total_requests: int) -> bool:
        """The cheap check made before every read and write: True when the verdict is
        SERVE (no bad receipt, credit within the allowance)."""
        if self.violation is not None:
            return False
        if fee(self.sla, total_bytes, total_requests) - self.payable() > self._headroom(
            self.deposited
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
            + self.payable()
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
        if fee(self.sla, total_bytes, total_requests) - self.payable() <= headroom:
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
