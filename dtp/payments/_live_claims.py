"""Claims while a connection lives (docs/escrow.md §7.1, "Claims while a connection
lives"): a paid server claims what its receipts hold without waiting for the end, so
that a crash, or an outage longer than the half-close timeout, costs it at most what
came since its last claim.

:class:`ClaimRule` says when (:meth:`ClaimRule.reason`): by **amount** (``above``,
default the claim's gas) and by **age** (``age`` of the half-close timeout; on a ledger
that charges gas, only when it pays), two claims of a connection at least ``interval``
apart (else a claim per receipt would double the ledger's writes).

:class:`LiveClaims` is the engine, sans I/O and thread-safe (:meth:`LiveClaims.watch`,
:meth:`LiveClaims.kept`, :meth:`LiveClaims.due`); :class:`LiveClaimer` (the paid
servers' thread) and the daemon's task make the claims (:func:`claim_live`). A
connection's end stops its claims before its settlement claims the rest. A live claim
is not marked in the receipt store: a mark says the end is done.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import ChainError, ConnectionStateError, InvalidArgument, ReplayedReceipt
from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import U64_MAX
from dtp.payments._ends import _ByConnection, check_seconds

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._gas import EndGas
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt

__all__ = [
    "CLAIM_AGE",
    "CLAIM_INTERVAL",
    "ClaimDue",
    "ClaimReason",
    "ClaimRule",
    "LiveClaim",
    "LiveClaimer",
    "LiveClaims",
    "claim_live",
]

logger = logging.getLogger(__name__)

#: The default age (a fraction of the connection's half-close timeout) after which a
#: receipt still unclaimed is claimed: half of it, so that a server down from then on
#: still has the other half to come back and claim the rest at its start.
CLAIM_AGE: Final = 0.5
#: The default least time between two claims of one connection (seconds).
CLAIM_INTERVAL: Final = 10.0
#: After a claim the ledger refused (away, or out of gas), the next try of that
#: connection waits this long at least, doubled after each failure up to
#: :data:`CLAIM_RETRY_MAX` (seconds).
CLAIM_RETRY: Final = 5.0
CLAIM_RETRY_MAX: Final = 60.0


class ClaimReason(enum.Enum):
    """Why a receipt is claimed while its connection lives."""

    AMOUNT = "amount"
    """Its unclaimed amount reached the rule's threshold."""
    AGE = "age"
    """It waited unclaimed for the rule's part of the half-close timeout."""


@dataclass(frozen=True)
class ClaimRule:
    """When a server claims the receipts of a connection it still serves."""

    above: int | None = None
    """Claim once the receipts hold at least this many MIST unclaimed. None: once that
    pays for the claim's gas (``EndGas.claim``; on a ledger that charges none, any
    amount); 2**64-1: never by amount."""
    age: float | None = CLAIM_AGE
    """Claim once the oldest receipt still unclaimed has waited this fraction of the
    connection's half-close timeout (above 0, below 1); None: never by age."""
    interval: float = CLAIM_INTERVAL
    """The least time (seconds) between two claims of one connection, and from the
    moment it is served to its first."""
    weigh_gas: bool = True
    """On a ledger that charges gas, never claim less than the claim costs (False: the
    amount and the age alone decide)."""

    def __post_init__(self) -> None:
        above = self.above
        if above is not None and (
            not isinstance(above, int) or isinstance(above, bool) or not 0 <= above <= U64_MAX
        ):
            raise InvalidArgument(
                f"claim_above must be None or MIST from 0 to 2**64-1, got {above!r}"
            )
        age = self.age
        if age is not None and (
            not isinstance(age, int | float)
            or isinstance(age, bool)
            or not math.isfinite(age)
            or not 0 < age < 1
        ):
            raise InvalidArgument(
                "claim_age must be None or a fraction of the half-close timeout above 0 "
                f"and below 1, got {age!r}"
            )
        check_seconds("claim_interval", self.interval, zero=True)
        if not isinstance(self.weigh_gas, bool):
            raise InvalidArgument(f"weigh_gas must be a bool, got {self.weigh_gas!r}")

    @property
    def enabled(self) -> bool:
        """Whether any receipt is ever claimed while its connection lives."""
        return self.age is not None or self.above != U64_MAX

    def floor(self, gas: EndGas | None) -> int:
        """The least a claim may take: its gas, when weighed (0 on a ledger that charges
        none)."""
        return gas.claim if self.weigh_gas and gas is not None else 0

    def threshold(self, gas: EndGas | None) -> int:
        """The unclaimed amount at which a claim is due at once."""
        if self.above is None:
            return self.floor(gas)
        return max(self.above, self.floor(gas))

    def reason(
        self, unclaimed: int, waited: float, timeout_ms: int, gas: EndGas | None
    ) -> ClaimReason | None:
        """Why receipts holding ``unclaimed`` MIST, the oldest waiting ``waited``
        seconds, are claimed now (``gas`` None: not known yet, as none); None: not yet."""
        if unclaimed <= 0 or unclaimed < self.floor(gas):
            return None
        if self.above != U64_MAX and unclaimed >= self.threshold(gas):
            return ClaimReason.AMOUNT
        if self.age is not None and waited * 1000 >= self.age * timeout_ms:
            return ClaimReason.AGE
        return None

    def age_due(self, since: float, timeout_ms: int) -> float:
        """When (on ``since``'s clock) a receipt unclaimed since ``since`` is old enough
        to be claimed (inf: never by age)."""
        if self.age is None:
            return math.inf
        return since + self.age * timeout_ms / 1000


@dataclass(frozen=True)
class ClaimDue:
    """A claim :meth:`LiveClaims.due` asks for."""

    connection_id: str
    escrow_id: str
    receipt: Receipt
    """The newest durable receipt of the connection: the one to claim."""
    unclaimed: int
    """MIST it adds to the escrow's claims."""
    reason: ClaimReason


@dataclass(frozen=True)
class LiveClaim:
    """A claim made while its connection lived."""

    connection_id: str
    nonce: int
    total_amount: int
    """The claimed receipt's amount (what the escrow has claimed in all since)."""
    paid: int
    """MIST this claim paid the server."""
    reason: ClaimReason


class _Watched:
    """One connection served, as the engine follows it."""

    __slots__ = (
        "claimed",
        "claiming",
        "connection_id",
        "ending",
        "escrow_id",
        "failures",
        "latest",
        "latest_nonce",
        "made",
        "not_before",
        "since",
        "since_next",
        "timeout_ms",
    )

    def __init__(
        self,
        connection_id: str,
        escrow_id: str,
        timeout_ms: int,
        claimed: int,
        latest_nonce: int,
        not_before: float,
    ) -> None:
        self.connection_id = connection_id
        self.escrow_id = escrow_id
        self.timeout_ms = timeout_ms
        self.claimed = claimed
        self.latest_nonce = latest_nonce
        self.latest: Receipt | None = None
        #: When the oldest receipt not claimed yet was kept (None: all are claimed)
        self.since: float | None = None
        #: The receipt a claim under way takes (None: none under way)
        self.claiming: Receipt | None = None
        #: When the first receipt newer than ``claiming`` was kept
        self.since_next: float | None = None
        self.not_before = not_before
        self.failures = 0
        self.made = False
        self.ending = False

    @property
    def unclaimed(self) -> int:
        latest = self.latest
        if latest is None or latest.nonce <= self.latest_nonce:
            return 0
        return max(0, latest.total_amount - self.claimed)


class LiveClaims(_ByConnection):
    """Which receipts of the connections a server serves are claimed, and when (see the
    module docs). Sans I/O: every call takes ``now`` (monotonic seconds); thread-safe."""

    def __init__(self, rule: ClaimRule | None = None) -> None:
        self.rule = rule or ClaimRule()
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        #: The gas the last :meth:`due` was told (what :meth:`kept` weighs with)
        self._gas: EndGas | None = None

    def watch(
        self,
        connection_id: str,
        escrow_id: str,
        timeout_ms: int,
        now: float,
        *,
        claimed: int = 0,
        latest_nonce: int = 0,
    ) -> None:
        """Connection ``connection_id`` is served from ``now`` (``claimed`` and
        ``latest_nonce`` as read); nothing is claimed before ``now`` + the interval."""
        if not self.rule.enabled:
            return
        key = normalize_id(connection_id, "connection ID")
        with self._lock:
            self._watched[key] = _Watched(
                key,
                normalize_id(escrow_id, "escrow ID"),
                timeout_ms,
                claimed,
                latest_nonce,
                now + self.rule.interval,
            )

    def _table(self) -> dict[str, _Watched]:
        return self._watched

    def kept(self, receipt: Receipt, now: float) -> bool:
        """``receipt`` is durable (stored, or kept by a per-request check): it may be
        claimed. True when it may make a claim due sooner than the driver expects (it is
        the first unclaimed one, or it reaches the amount): wake the driver."""
        key = normalize_id(receipt.connection_id, "connection ID")
        with self._lock:
            watched = self._watched.get(key)
            if watched is None or watched.ending:
                return False
            latest = watched.latest
            if latest is not None and receipt.nonce <= latest.nonce:
                return False
            watched.latest = receipt
            if receipt.nonce <= watched.latest_nonce:
                return False  # (claimed already: the escrow had seen it)
            first = watched.since is None
            if first:
                watched.since = now
            if watched.claiming is not None and watched.since_next is None:
                watched.since_next = now
            return first or watched.unclaimed >= self.rule.threshold(self._gas)

    def due(self, now: float, gas: EndGas | None) -> list[ClaimDue]:
        """The claims to make at ``now`` on a ledger whose transactions cost ``gas``, each
        then under way until :meth:`claimed`, :meth:`failed`, :meth:`known` or
        :meth:`gone` reports on it."""
        rule = self.rule
        out: list[ClaimDue] = []
        with self._lock:
            self._gas = gas
            for watched in self._watched.values():
                if watched.claiming is not None or watched.ending:
                    continue
                latest, since = watched.latest, watched.since
                if latest is None or since is None or now < watched.not_before:
                    continue
                unclaimed = watched.unclaimed
                reason = rule.reason(unclaimed, now - since, watched.timeout_ms, gas)
                if reason is None:
                    continue
                watched.claiming = latest
                watched.since_next = None
                out.append(
                    ClaimDue(watched.connection_id, watched.escrow_id, latest, unclaimed, reason)
                )
        return out

    def next_due(self, now: float) -> float | None:
        """When (on ``now``'s clock) a claim may next be due, by what is known now: the
        driver's wait (None: none until a receipt comes)."""
        rule = self.rule
        nearest: float | None = None
        with self._lock:
            threshold = rule.threshold(self._gas)
            floor = rule.floor(self._gas)
            for watched in self._watched.values():
                since = watched.since
                if watched.claiming is not None or watched.ending or since is None:
                    continue
                unclaimed = watched.unclaimed
                if unclaimed <= 0 or unclaimed < floor:
                    continue
                if rule.above != U64_MAX and unclaimed >= threshold:
                    at = watched.not_before
                else:
                    at = max(watched.not_before, rule.age_due(since, watched.timeout_ms))
                if at != math.inf and (nearest is None or at < nearest):
                    nearest = at
        return None if nearest is None else max(nearest, now)

    def claimed(self, due: ClaimDue, now: float) -> None:
        """The claim of ``due`` landed at ``now``."""
        receipt = due.receipt
        with self._lock:
            watched = self._watched.get(due.connection_id)
            if watched is None:
                return
            watched.claimed = max(watched.claimed, receipt.total_amount)
            watched.latest_nonce = max(watched.latest_nonce, receipt.nonce)
            watched.made = True
            self._after_claim(watched, now)
            watched.failures = 0
            watched.not_before = now + self.rule.interval

    def known(self, due: ClaimDue, claimed: int, latest_nonce: int, now: float) -> None:
        """The claim of ``due`` was refused as replayed: the escrow, read at ``now``, has
        claimed ``claimed`` MIST up to nonce ``latest_nonce`` (another claim -- the
        server's settlement, another server on its store -- came first)."""
        with self._lock:
            watched = self._watched.get(due.connection_id)
            if watched is None:
                return
            watched.claimed = max(watched.claimed, claimed)
            watched.latest_nonce = max(watched.latest_nonce, latest_nonce)
            self._after_claim(watched, now)
            watched.not_before = now + self.rule.interval

    @staticmethod
    def _after_claim(watched: _Watched, now: float) -> None:
        """The claim under way is over, the escrow's claims as known now: the oldest
        unclaimed receipt is the first one kept after the one the claim took once the
        escrow has that one, else still the one it was."""
        claiming = watched.claiming
        if watched.unclaimed <= 0:
            watched.since = None
        elif claiming is not None and watched.latest_nonce >= claiming.nonce:
            watched.since = now if watched.since_next is None else watched.since_next
        watched.claiming = None
        watched.since_next = None

    def failed(self, due: ClaimDue, now: float) -> int:
        """The claim of ``due`` failed: tried again after :data:`CLAIM_RETRY`, doubled up
        to :data:`CLAIM_RETRY_MAX`. How many failed in a row."""
        with self._lock:
            watched = self._watched.get(due.connection_id)
            if watched is None:
                return 1
            watched.claiming = None
            watched.since_next = None
            watched.failures += 1
            wait = min(CLAIM_RETRY_MAX, CLAIM_RETRY * 2 ** (watched.failures - 1))
            watched.not_before = now + max(wait, self.rule.interval)
            return watched.failures

    def gone(self, due: ClaimDue) -> None:
        """The escrow of ``due`` is settled: nothing of it can be claimed any more (its
        end, or its server's ledger check, finds it so)."""
        with self._lock:
            watched = self._watched.get(due.connection_id)
            if watched is not None:
                watched.claiming = None
                watched.ending = True

    def still_due(self, due: ClaimDue) -> bool:
        """Whether the claim of ``due`` is still to be made (a driver asks before each
        of a round's claims): not once its connection's end began -- the claim is
        released, and the end goes on at once."""
        with self._lock:
            watched = self._watched.get(due.connection_id)
            if watched is None or watched.claiming is not due.receipt:
                return False
            if watched.ending:
                watched.claiming = None
                watched.since_next = None
                return False
            return True

    def end(self, connection_id: str, *, abandon: bool = False) -> bool | None:
        """The connection's end begins: no claim starts from now on. Whether a claim
        landed (the escrow moved), once none is under way (None meanwhile); ``abandon``:
        forgotten now (True: read the escrow again)."""
        key = normalize_id(connection_id, "connection ID")
        with self._lock:
            watched = self._watched.get(key)
            if watched is None:
                return False
            watched.ending = True
            if watched.claiming is not None and not abandon:
                return None
            del self._watched[key]
            return watched.made or watched.claiming is not None

    def unclaimed(self, connection_id: str) -> int:
        """MIST the durable receipts of ``connection_id`` hold beyond what was claimed
        (0 for a connection not watched)."""
        with self._lock:
            watched = self._watched.get(normalize_id(connection_id, "connection ID"))
            return 0 if watched is None else watched.unclaimed


def claim_live(
    ledger: Ledger,
    identity: HostIdentity,
    claims: LiveClaims,
    due: ClaimDue,
    clock: Callable[[], float] = time.monotonic,
) -> LiveClaim | None:
    """Make the claim ``due`` asks for (blocking) and report it to ``claims``: the claim
    made, or None (replayed, settled, or refused: logged, tried again later)."""
    cid = due.connection_id
    try:
        paid = ledger.claim(identity, due.escrow_id, due.receipt)
    except ReplayedReceipt:
        try:
            escrow = ledger.get_escrow(due.escrow_id)
        except ChainError as exc:
            _claim_failed(claims, due, str(exc), clock())
            return None
        claims.known(due, escrow.claimed, escrow.latest_nonce, clock())
        return None
    except ConnectionStateError as exc:
        if exc.name != "EEscrowSettled":
            _claim_failed(claims, due, str(exc), clock())
            return None
        claims.gone(due)
        logger.info("connection %s is settled: no claim while it lives any more", cid)
        return None
    except ChainError as exc:
        _claim_failed(claims, due, str(exc), clock())
        return None
    claims.claimed(due, clock())
    logger.info(
        "claimed %d MIST of connection %s while it lives (receipt %d, by %s)",
        paid,
        cid,
        due.receipt.nonce,
        due.reason.value,
    )
    return LiveClaim(cid, due.receipt.nonce, due.receipt.total_amount, paid, due.reason)


def _claim_failed(claims: LiveClaims, due: ClaimDue, why: str, now: float) -> None:
    failures = claims.failed(due, now)
    logger.log(
        logging.WARNING if failures == 1 else logging.DEBUG,
        "claiming %d MIST of connection %s while it lives failed (tried again later): %s",
        due.unclaimed,
        due.connection_id,
        why,
    )


#: How long a connection's end waits for a claim of it under way (seconds): the
#: settlement after it reads the escrow again.
END_WAIT: Final = 30.0


class LiveClaimer:
    """The paid servers' driver of :class:`LiveClaims`: a thread making the claims as
    they fall due, one at a time, into ``made``; :meth:`end` waits for one under way."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        claims: LiveClaims,
        made: deque[tuple[str, LiveClaim]],
    ) -> None:
        self.ledger, self.identity, self.claims = ledger, identity, claims
        self.made = made
        self._cond = threading.Condition()
        self._woken = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dtp-paid-claims", daemon=True)

    def start(self) -> None:
        """Claim from now on (nothing to do when the rule never claims)."""
        if self.claims.rule.enabled:
            self._thread.start()

    def kept(self, receipt: Receipt) -> None:
        """A receipt is durable (the receipt writer's thread, or a per-request check)."""
        if self.claims.kept(receipt, time.monotonic()):
            with self._cond:
                self._woken = True
                self._cond.notify_all()

    def end(self, connection_id: str, timeout: float = END_WAIT) -> bool:
        """The connection's end: no claim of it from now on; a claim of it under way is
        waited for, ``timeout`` seconds at most. Whether a claim of it landed (the
        escrow the server read at its admission has moved since: read it again)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (made := self.claims.end(connection_id)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    # (one still under way: forgotten, and the escrow is read again)
                    return bool(self.claims.end(connection_id, abandon=True))
                self._cond.wait(left)
        return made

    def stop(self) -> None:
        """No claim starts from now on (one under way ends first)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """:meth:`stop`, then wait for the thread up to ``timeout`` seconds; True once
        it has ended (or never started)."""
        self.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._woken:
                    now = time.monotonic()
                    at = self.claims.next_due(now)
                    if at is not None and at <= now:
                        break
                    self._cond.wait(None if at is None else at - now)
                if self._stopped:
                    return
                self._woken = False
            try:
                self.round()
                continue
            except ChainError as exc:  # (the gas unread: looked at again shortly)
                logger.debug("cannot weigh live claims against the gas now: %s", exc)
            except Exception:  # (a bug, a ledger's surprise: the next round tries again)
                logger.exception("claiming receipts of live connections failed")
            with self._cond:
                if not self._stopped:
                    self._cond.wait(CLAIM_RETRY)

    def round(self) -> list[LiveClaim]:
        """The claims due now, made one after the other (until :meth:`stop`); a
        ChainError when the gas cannot be read (nothing claimed: unweighed, a claim
        could cost more than it takes)."""
        gas = self.ledger.end_gas()
        made: list[LiveClaim] = []
        for due in self.claims.due(time.monotonic(), gas):
            with self._cond:
                stopped = self._stopped
            try:
                if stopped:
                    self.claims.failed(due, time.monotonic())  # (not made: released)
                    continue
                if not self.claims.still_due(due):
                    continue  # (its end began meanwhile: released)
                claim = claim_live(self.ledger, self.identity, self.claims, due)
            except BaseException:
                self.claims.failed(due, time.monotonic())
                raise
            finally:
                with self._cond:
                    self._cond.notify_all()  # (an end may wait for this one)
            if claim is not None:
                made.append(claim)
                self.made.append((claim.connection_id, claim))
        return made
