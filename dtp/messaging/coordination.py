"""Coordination for off-chain servers on the ledger: leader leases, locks with fencing
tokens, a small key-value registry and watches (docs/coordination.md).

The ledger is the consensus: each lease, token and value lives in a ``dtp::registry``
``Registry`` object (LocalLedger on one machine, Sui across many), whose rules refuse a
second holder while a lease stands and any write made with a token older than the
name's current one. What a server runs here is only the client side: it acquires,
renews in the background, believes it holds the lease until a *local* deadline that
the ledger's expiry cannot precede, and writes through its token so that a write made
after it lost the lease without knowing it is refused on the ledger.

Blocking side::

    registry = Registry(ledger, registry_id, signer, holder="server-a")
    with registry.lease("leader", duration=10.0) as lease:   # blocks until held
        lease.put("config", b"...")                          # fenced by lease.token
    for change in registry.watch(key="config"):              # wakes on each change
        ...

Asyncio side: :class:`AsyncRegistry`, :class:`AsyncLease`, :class:`AsyncLock` and
``async for`` over :meth:`AsyncRegistry.watch`, driven by the same engines
(:class:`LeaseEngine`, :class:`WatchEngine`) as the blocking classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self

from dtp.errors import (
    ChainError,
    DTPTimeoutError,
    FencedOut,
    InvalidArgument,
    LeaseHeld,
    NotAuthorized,
)
from dtp.ledger._coordination import MAX_LEASE_MS, RegistryEntry, RegistryState
from dtp.ledger._objects import Event, EventFilter

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_LEASE_DURATION",
    "AsyncLease",
    "AsyncLock",
    "AsyncRegistry",
    "AsyncWatch",
    "Change",
    "Lease",
    "LeaseEngine",
    "Lock",
    "Registry",
    "Watch",
    "WatchEngine",
]

logger = logging.getLogger(__name__)

#: A lease's default length (s): how long a silent holder blocks the name at most.
DEFAULT_LEASE_DURATION: Final = 10.0
#: The default bound on how far the ledger's clock may run ahead of this machine's over
#: one lease (s); the holder stops believing it holds the lease this much before its
#: duration is over (docs/coordination.md, "Failure model").
DEFAULT_CLOCK_SKEW: Final = 0.5
#: Longest wait of a watch between two reads of the ledger (s): a lease's expiry is no
#: event, so a watch reads the ledger's clock at least this often.
DEFAULT_POLL_INTERVAL: Final = 0.2

_LEASE_EVENTS: Final = frozenset({"LeaseAcquired", "LeaseRenewed", "LeaseReleased"})
_VALUE_EVENTS: Final = frozenset({"ValuePut", "ValueRemoved"})
_KINDS: Final = {
    "LeaseAcquired": "acquired",
    "LeaseRenewed": "renewed",
    "LeaseReleased": "released",
    "ValuePut": "put",
    "ValueRemoved": "removed",
}


@dataclass(frozen=True)
class Change:
    """One change a watch saw: a key ``"put"`` or ``"removed"``, a lease ``"acquired"``,
    ``"renewed"``, ``"released"`` or ``"expired"`` (no event marks an expiry: the watch
    sees the ledger's clock pass it)."""

    kind: str
    #: The key (for "put" and "removed") or the lease's name (the others).
    name: str
    #: The fencing token of the write or of the lease's tenure.
    token: int
    #: The new value ("put"), else None.
    value: bytes | None = None
    #: The key's version after a "put", else None.
    version: int | None = None
    #: The lease's holder label ("acquired"), else None.
    holder: bytes | None = None
    #: When the lease ends ("acquired", "renewed", "expired"), ledger ms; else None.
    expires_at_ms: int | None = None
    #: The ledger event behind it (None for "expired").
    event: Event | None = None


def _seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidArgument(f"{what} must be a number of seconds >= 0, got {value!r}.")
    return float(value)


# -- engines (no I/O: the blocking and asyncio classes drive them) ----------------------------


class LeaseEngine:
    """What a lease holder believes, and when it acts; no I/O, times from the caller.

    The deadline rule (docs/coordination.md): a call that acquires or renews is sent at
    local time ``sent``; the ledger executes it later and sets ``expires_at = L + d``
    with ``L`` its clock then. If the ledger's clock runs ahead of this machine's by at
    most ``clock_skew`` over the lease, no one else can acquire before local time
    ``sent + d - clock_skew``: that is the local deadline, and the holder acts as
    holder only before it."""

    def __init__(self, duration: float, clock_skew: float, renew_fraction: float = 1 / 3):
        duration = _seconds(duration, "duration")
        duration_ms = round(duration * 1000)
        if not 0 < duration_ms <= MAX_LEASE_MS:
            raise InvalidArgument(
                f"A lease lasts from 0.001 s to {MAX_LEASE_MS // 1000} s, got {duration!r}."
            )
        clock_skew = _seconds(clock_skew, "clock_skew")
        if clock_skew >= duration:
            raise InvalidArgument(
                f"clock_skew ({clock_skew} s) must be shorter than the lease ({duration} s)."
            )
        if not 0 < renew_fraction < 1:
            raise InvalidArgument(f"renew_fraction must be in (0, 1), got {renew_fraction!r}.")
        self.duration = duration
        self.duration_ms = duration_ms
        self.clock_skew = clock_skew
        self.renew_fraction = renew_fraction
        #: The fencing token of the tenure held (or last held), None before the first.
        self.token: int | None = None
        #: Local monotonic time the belief ends; None when not held.
        self.deadline: float | None = None
        #: Local time of the last successful acquire or renew's sending.
        self.renewed_at: float | None = None
        #: The ledger refused the tenure (a newer token, an expiry): it is over.
        self.lost = False
        #: A tenure was acquired and not released since.
        self.owes_release = False

    def acquired(self, token: int, sent: float) -> None:
        self.token = token
        self.lost = False
        self.owes_release = True
        self.renewed_at = sent
        self.deadline = sent + self.duration - self.clock_skew

    def renewed(self, sent: float) -> None:
        if self.token is None or self.lost:
            return
        self.renewed_at = sent
        self.deadline = sent + self.duration - self.clock_skew

    def fenced(self) -> None:
        """The ledger said the tenure is over."""
        self.lost = True
        self.deadline = None

    def take_release(self) -> tuple[int | None, bool]:
        """The token to release (None: nothing to release), and whether the tenure was
        lost already (its release then only frees the name early, if it still can)."""
        if not self.owes_release:
            return None, self.lost
        self.owes_release = False
        self.deadline = None
        return self.token, self.lost

    def held(self, now: float) -> bool:
        """Whether the holder may act as holder at local time ``now``."""
        return not self.lost and self.deadline is not None and now < self.deadline

    def next_renewal(self, now: float) -> float:
        """Seconds from ``now`` to the next renewal (0: due)."""
        if self.renewed_at is None:
            return 0.0
        return max(0.0, self.renewed_at + self.duration * self.renew_fraction - now)

    def retry_delay(self) -> float:
        """Seconds before a failed renewal (the ledger unreachable) is tried again."""
        return max(0.01, self.duration * self.renew_fraction / 4)


class LeaseSteps:
    """The steps a lease holder takes, the same in :class:`Lease` (threads) and
    :class:`AsyncLease` (asyncio): what it reports, how it writes fenced, and what a
    failed renewal or release means. The two differ only in how they wait and call the
    ledger."""

    name: str
    engine: LeaseEngine
    on_lost: Callable[[Self], None] | None
    # guards the engine against the renewer (a thread); asyncio needs none
    _engine_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    @property
    def token(self) -> int | None:
        """The fencing token of the tenure held or last held."""
        return self.engine.token

    @property
    def held(self) -> bool:
        """Whether this server may act as the holder now."""
        return self.engine.held(time.monotonic())

    def check(self) -> int:
        """The token, if the lease is held now; else :class:`FencedOut` (raised here,
        before anything is sent)."""
        if not self.held or self.engine.token is None:
            raise FencedOut(
                f"The lease {self.name!r} is not held (token {self.engine.token}).",
                name="ELeaseExpired",
                module="registry",
            )
        return self.engine.token

    def _renewing(self) -> int:
        """The token a renewal sends (:class:`FencedOut` before the first acquire)."""
        token = self.engine.token
        if token is None:
            raise FencedOut(f"The lease {self.name!r} was never acquired.", name="ENoLease")
        return token

    def _renewal_failed(self, exc: ChainError) -> bool:
        """A renewal raised ``exc``: whether the renewer stops (the lease is lost: fenced,
        revoked, or its local deadline passed with the ledger unreachable) rather than
        try again after :meth:`LeaseEngine.retry_delay`."""
        if isinstance(exc, FencedOut):
            return True  # (renew() lost it already)
        if isinstance(exc, NotAuthorized | InvalidArgument):  # revoked: it will not pass
            logger.warning("lease %r lost: %s", self.name, exc)
            self._lose()
            return True
        if not self.held:  # unreachable, congested: tried again while it holds
            logger.warning("lease %r lost: could not renew in time (%s)", self.name, exc)
            self._lose()
            return True
        logger.info("lease %r: renewal failed (%s), retrying", self.name, exc)
        return False

    def _release_failed(self, exc: ChainError, lost: bool) -> None:
        """A release raised ``exc``: a newer tenure began (nothing of ours to release), or
        a lease lost already could not be freed early (it runs out); else it raises."""
        if isinstance(exc, FencedOut):
            return
        if not lost:
            raise exc
        logger.info("lease %r: its release failed (%s); it runs out", self.name, exc)

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """A ledger call a newer tenure may fence out: then the lease is lost, and the
        :class:`FencedOut` goes on up."""
        try:
            yield
        except FencedOut:
            self._lose()
            raise

    def _lose(self: Self) -> None:
        """The tenure is over: the renewer stops and ``on_lost`` is called, once."""
        with self._engine_lock:
            if self.engine.lost:
                return
            self.engine.fenced()
        self._stop_renewing()
        logger.warning("lease %r lost (token %s)", self.name, self.engine.token)
        if self.on_lost is not None:
            self.on_lost(self)

    def _stop_renewing(self) -> None:
        """Stop the renewer once the lease is lost (the asyncio one ends by itself)."""


@dataclass
class _Tenure:
    """A watched lease's tenure as the watch last saw it."""

    token: int
    #: When it ends (ledger ms); 0 once released, or once its expiry was reported.
    expires_at_ms: int


class WatchEngine:
    """Which ledger events a watch reports, and the expiries between them; no I/O.

    ``key`` selects a key's puts and removals, ``lease`` a lease's changes and its
    expiry; with neither, every change of the registry, every lease's expiry included.

    No event marks an expiry, so the engine places each one where the ledger had it: a
    tenure not released ended at its ``expires_at_ms``, reported before the first event
    stamped at or after that time, before the ``acquired`` of the next tenure whatever
    the stamps say (a name is taken again only once free), and otherwise once the
    ledger's clock has passed it. A new tenure read together with the old one's end thus
    never hides that end."""

    def __init__(self, registry_id: str, key: str | None, lease: str | None) -> None:
        self.registry_id = registry_id
        self.key = key
        self.lease = lease
        self.filter = EventFilter(module="registry", object_id=registry_id)
        #: The watched leases' tenures as last seen, by name.
        self.tenures: dict[str, _Tenure] = {}

    def _watches_lease(self, name: str) -> bool:
        return self.key is None and self.lease in (None, name)

    def start(self, state: RegistryState, ledger_now_ms: int) -> None:
        """Take what the ledger holds now (the watch reports only later changes);
        ``ledger_now_ms`` is the ledger's clock read *before* ``state``, so a lease that
        runs out in between is still reported."""
        for name, lease in state.leases.items():
            if self._watches_lease(name):
                ends = lease.expires_at_ms if lease.held_at(ledger_now_ms) else 0
                self.tenures[name] = _Tenure(lease.token, ends)

    def _wanted(self, event: Event) -> bool:
        f = event.fields
        if event.fields.get("registry") != self.registry_id:
            return False
        if event.name in _VALUE_EVENTS:
            return self.lease is None and self.key in (None, f["key"])
        if event.name in _LEASE_EVENTS:
            return self._watches_lease(str(f["name"]))
        return False

    def _expire(self, ended: Callable[[str, _Tenure], bool]) -> list[Change]:
        """The expiries of the tenures ``ended`` says are over, oldest first, each once."""
        over = sorted(
            (t.expires_at_ms, name)
            for name, t in self.tenures.items()
            if t.expires_at_ms > 0 and ended(name, t)
        )
        out = []
        for at, name in over:
            tenure = self.tenures[name]
            out.append(Change("expired", name, tenure.token, expires_at_ms=at))
            tenure.expires_at_ms = 0
        return out

    def _ended_before(self, event: Event) -> list[Change]:
        """The expiries that came before ``event`` on the ledger."""
        f = event.fields
        name = str(f.get("name", ""))
        lease_event = event.name in _LEASE_EVENTS

        def ended(tenure_name: str, tenure: _Tenure) -> bool:
            if lease_event and tenure_name == name:
                if event.name == "LeaseAcquired":
                    return int(f["token"]) > tenure.token  # a new tenure: the old one ran out
                if event.name == "LeaseRenewed":
                    return False  # a renewal proves its tenure stood
            return tenure.expires_at_ms <= event.timestamp_ms  # (0: no stamp, no rule)

        return self._expire(ended)

    def changes(self, events: list[Event], ledger_now_ms: int) -> list[Change]:
        """The changes in ``events`` (oldest first) with the expiries between them, then
        the expiries the clock passed: ``ledger_now_ms`` must be read before the last
        read of ``events`` (then no event earlier than such an expiry is still unread)."""
        out: list[Change] = []
        for event in events:
            if not self._wanted(event):
                continue
            out.extend(self._ended_before(event))
            f = event.fields
            kind = _KINDS[event.name]
            if event.name in _VALUE_EVENTS:
                out.append(
                    Change(
                        kind,
                        str(f["key"]),
                        int(f["token"]),
                        value=bytes(f["value"]) if kind == "put" else None,
                        version=int(f["version"]) if kind == "put" else None,
                        event=event,
                    )
                )
                continue
            name, token = str(f["name"]), int(f["token"])
            expires = int(f.get("expires_at_ms", 0))
            self.tenures[name] = _Tenure(token, expires)
            out.append(
                Change(
                    kind,
                    name,
                    token,
                    holder=bytes(f["holder"]) if kind == "acquired" else None,
                    expires_at_ms=expires if kind != "released" else None,
                    event=event,
                )
            )
        out.extend(self._expire(lambda _name, tenure: tenure.expires_at_ms <= ledger_now_ms))
        return out

    def expiry_due(self, ledger_now_ms: int) -> bool:
        """Whether a watched tenure ran out by ``ledger_now_ms`` and is not reported yet:
        the events up to that time must then be read before it is placed."""
        return any(0 < t.expires_at_ms <= ledger_now_ms for t in self.tenures.values())

    def wait_slice(self, ledger_now_ms: int, poll_interval: float) -> float:
        """How long to wait for events before looking at the clock again (s): 0 when an
        expiry is due already."""
        ends = [t.expires_at_ms for t in self.tenures.values() if t.expires_at_ms > 0]
        if ends:
            return min(poll_interval, max(0, min(ends) - ledger_now_ms) / 1000)
        return poll_interval


def _settle(
    ledger: Ledger, engine: WatchEngine, events: list[Event], cursor: str | None
) -> tuple[list[Change], str | None]:
    """The changes of a wait's ``events``: the ledger's clock is read now, and when a
    tenure ran out by then, the events up to it are read too, so that the expiry lands
    after every event before it and before every event after it (blocking; the asyncio
    watch runs it in a worker thread)."""
    now_ms = ledger.clock_ms()
    if engine.expiry_due(now_ms):
        events = list(events)
        while True:
            read = ledger.read_events(cursor, engine.filter)
            events.extend(read.events)
            cursor = read.cursor
            if read.at_end:
                break
    return engine.changes(events, now_ms), cursor


# -- blocking side ------------------------------------------------------------------------------


class Registry:
    """A ``dtp::registry`` Registry seen by one server (``signer``, labelled ``holder``
    in the leases it takes). Thread-safe as its ledger is."""

    def __init__(
        self,
        ledger: Ledger,
        registry_id: str,
        signer: HostIdentity,
        *,
        holder: str | None = None,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.ledger = ledger
        self.id = registry_id
        self.signer = signer
        # by default the signer's address, its 64 hex digits (a label is at most 64 bytes)
        self.holder = holder if holder is not None else signer.sui_address[2:]
        self.clock_skew = _seconds(clock_skew, "clock_skew")
        self.poll_interval = max(0.001, _seconds(poll_interval, "poll_interval"))

    @classmethod
    def create(cls, ledger: Ledger, signer: HostIdentity, **options: Any) -> Registry:
        """Create a registry owned by ``signer`` on ``ledger`` (``registry::create``)."""
        return cls(ledger, ledger.create_registry(signer), signer, **options)

    def admit(self, member: str) -> None:
        """Let the address ``member`` take leases and write (owner only)."""
        self.ledger.registry_admit(self.signer, self.id, member)

    def revoke(self, member: str) -> None:
        """Stop ``member`` acquiring, renewing and writing (owner only)."""
        self.ledger.registry_revoke(self.signer, self.id, member)

    def state(self) -> RegistryState:
        """The whole registry as the ledger holds it now."""
        return self.ledger.get_registry(self.id)

    def entry(self, key: str) -> RegistryEntry | None:
        """``key``'s value and the write that set it, or None."""
        return self.state().entries.get(key)

    def get(self, key: str) -> bytes | None:
        """``key``'s value, or None (a read needs no lease)."""
        entry = self.entry(key)
        return None if entry is None else entry.value

    def lease(self, name: str, duration: float = DEFAULT_LEASE_DURATION, **options: Any) -> Lease:
        """A :class:`Lease` on ``name`` (not acquired yet)."""
        return Lease(self, name, duration, **options)

    def lock(self, name: str, duration: float = DEFAULT_LEASE_DURATION, **options: Any) -> Lock:
        """A :class:`Lock` on ``name`` (not acquired yet)."""
        return Lock(self, name, duration, **options)

    def watch(self, key: str | None = None, *, lease: str | None = None) -> Watch:
        """A :class:`Watch` of ``key``'s values, or of the lease ``lease`` (its changes
        and its expiry), or with neither of every change of the registry."""
        return Watch(self, key, lease)


class Watch:
    """Changes of a registry after the watch began, read from the ledger's events.
    Iterate (blocks until each change) or call :meth:`wait` with a timeout."""

    def __init__(self, registry: Registry, key: str | None, lease: str | None) -> None:
        self.registry = registry
        self.engine = WatchEngine(registry.id, key, lease)
        ledger = registry.ledger
        self.cursor = ledger.head_cursor()
        now_ms = ledger.clock_ms()
        self.engine.start(registry.state(), now_ms)
        self._pending: list[Change] = []

    def wait(self, timeout: float | None = None) -> Change | None:
        """The next change, or None once ``timeout`` seconds passed without one."""
        ledger = self.registry.ledger
        end = None if timeout is None else time.monotonic() + _seconds(timeout, "timeout")
        while not self._pending:
            now_ms = ledger.clock_ms()
            wait = self.engine.wait_slice(now_ms, self.registry.poll_interval)
            if end is not None:
                wait = min(wait, max(0.0, end - time.monotonic()))
            events, cursor = ledger.wait_events(self.cursor, wait, self.engine.filter)
            changes, self.cursor = _settle(ledger, self.engine, events, cursor)
            self._pending.extend(changes)
            if not self._pending and end is not None and time.monotonic() >= end:
                return None
        return self._pending.pop(0)

    def __iter__(self) -> Iterator[Change]:
        while True:
            change = self.wait()
            if change is not None:
                yield change


class Lease(LeaseSteps):
    """A named lease of a registry, held by this server: acquired, renewed in the
    background every third of its ``duration``, released on exit.

    :attr:`held` says whether this server may act as the holder now (before its local
    deadline, and not refused by the ledger); :meth:`put` and :meth:`remove` write
    fenced by the lease's token. When the lease is lost (a renewal refused, or its
    local deadline passed with the ledger unreachable) ``on_lost`` is called once, from
    the renewing thread."""

    def __init__(
        self,
        registry: Registry,
        name: str,
        duration: float = DEFAULT_LEASE_DURATION,
        *,
        timeout: float | None = None,
        auto_renew: bool = True,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.engine = LeaseEngine(duration, registry.clock_skew)
        self.timeout = timeout
        self.auto_renew = auto_renew
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._engine_lock = threading.Lock()

    # acquiring (its state, check() and the failures' meaning: LeaseSteps)

    def try_acquire(self) -> bool:
        """Take the lease if it is free now; False if someone holds it."""
        r = self.registry
        sent = time.monotonic()
        try:
            token = r.ledger.acquire_lease(
                r.signer, r.id, self.name, r.holder, self.engine.duration_ms
            )
        except LeaseHeld:
            return False
        with self._engine_lock:
            self.engine.acquired(token, sent)
        logger.info("lease %r acquired by %s, token %d", self.name, r.holder, token)
        self._start_renewer()
        return True

    def acquire(self, timeout: float | None = None) -> int:
        """Block until the lease is taken (waking when it is released or expires);
        returns the token. :class:`~dtp.errors.DTPTimeoutError` after ``timeout`` s."""
        end = None if timeout is None else time.monotonic() + _seconds(timeout, "timeout")
        watch = self.registry.watch(lease=self.name)
        while not self.try_acquire():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise DTPTimeoutError(f"The lease {self.name!r} stayed held for {timeout} s.")
            change = watch.wait(left)
            logger.debug("lease %r: %s", self.name, change)
        assert self.engine.token is not None
        return self.engine.token

    def renew(self) -> None:
        """Renew now; :class:`FencedOut` when the ledger says the tenure is over."""
        r = self.registry
        token = self._renewing()
        sent = time.monotonic()
        with self._fenced():
            r.ledger.renew_lease(r.signer, r.id, self.name, token, self.engine.duration_ms)
        with self._engine_lock:
            self.engine.renewed(sent)

    def release(self) -> None:
        """Stop renewing and give the lease up: at once free for the next holder. A lease
        already lost is released if the ledger still lets it (a revoked member's); the
        failure to is then only logged."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        self._renewer = None
        with self._engine_lock:
            token, lost = self.engine.take_release()
        if token is None:
            return
        r = self.registry
        try:
            r.ledger.release_lease(r.signer, r.id, self.name, token)
        except ChainError as exc:
            self._release_failed(exc, lost)

    # fenced writes

    def put(self, key: str, value: bytes) -> int:
        """Set ``key`` fenced by this lease's token; returns the key's version."""
        r = self.registry
        with self._fenced():
            return r.ledger.registry_put(r.signer, r.id, self.name, self.check(), key, value)

    def remove(self, key: str) -> None:
        """Delete ``key`` fenced by this lease's token."""
        r = self.registry
        with self._fenced():
            r.ledger.registry_remove(r.signer, r.id, self.name, self.check(), key)

    # the renewing thread

    def _start_renewer(self) -> None:
        if not self.auto_renew:
            return
        self._stop = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"dtp-lease-{self.name}", daemon=True
        )
        self._renewer.start()

    def _renew_loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.engine.next_renewal(time.monotonic())):
            if self.engine.lost:
                return
            try:
                self.renew()
            except ChainError as exc:
                if self._renewal_failed(exc) or stop.wait(self.engine.retry_delay()):
                    return

    def _stop_renewing(self) -> None:
        self._stop.set()

    def __enter__(self) -> Lease:
        self.acquire(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Lock(Lease):
    """A lock: a :class:`Lease` held around one piece of work (``with registry.lock(name)
    as lock:``), its token fencing what the work writes. It renews itself while held, so
    the work may last longer than ``duration``; a holder that stops (crashed, paused,
    cut off) frees it at most ``duration`` later."""


# -- asyncio side -------------------------------------------------------------------------------


class AsyncRegistry:
    """:class:`Registry` for asyncio code: the ledger's blocking calls run in worker
    threads (``asyncio.to_thread``), the engines are the same."""

    def __init__(self, ledger: Ledger, registry_id: str, signer: HostIdentity, **options: Any):
        self.sync = Registry(ledger, registry_id, signer, **options)
        self.ledger = ledger
        self.id = registry_id

    @classmethod
    async def create(cls, ledger: Ledger, signer: HostIdentity, **options: Any) -> AsyncRegistry:
        registry_id = await asyncio.to_thread(ledger.create_registry, signer)
        return cls(ledger, registry_id, signer, **options)

    async def admit(self, member: str) -> None:
        await asyncio.to_thread(self.sync.admit, member)

    async def revoke(self, member: str) -> None:
        await asyncio.to_thread(self.sync.revoke, member)

    async def state(self) -> RegistryState:
        return await asyncio.to_thread(self.sync.state)

    async def entry(self, key: str) -> RegistryEntry | None:
        return await asyncio.to_thread(self.sync.entry, key)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self.sync.get, key)

    def lease(
        self, name: str, duration: float = DEFAULT_LEASE_DURATION, **options: Any
    ) -> AsyncLease:
        return AsyncLease(self, name, duration, **options)

    def lock(
        self, name: str, duration: float = DEFAULT_LEASE_DURATION, **options: Any
    ) -> AsyncLock:
        return AsyncLock(self, name, duration, **options)

    def watch(self, key: str | None = None, *, lease: str | None = None) -> AsyncWatch:
        """``async for change in registry.watch(key)``: :meth:`Registry.watch`."""
        return AsyncWatch(self, key, lease)


class AsyncWatch:
    """:class:`Watch` for asyncio code: ``async for``, or :meth:`wait` with a timeout. It
    reports the changes after :meth:`start` (called by the first wait if not before)."""

    def __init__(self, registry: AsyncRegistry, key: str | None, lease: str | None) -> None:
        self.registry = registry
        self.engine = WatchEngine(registry.id, key, lease)
        self.cursor: str | None = None
        self._started = False
        self._pending: list[Change] = []

    async def start(self) -> None:
        """Take what the ledger holds now: later changes are reported."""
        if self._started:
            return
        ledger = self.registry.ledger
        self.cursor = await asyncio.to_thread(ledger.head_cursor)
        now_ms = await asyncio.to_thread(ledger.clock_ms)
        self.engine.start(await self.registry.state(), now_ms)
        self._started = True

    async def wait(self, timeout: float | None = None) -> Change | None:
        """The next change, or None once ``timeout`` seconds passed without one."""
        await self.start()
        ledger = self.registry.ledger
        end = None if timeout is None else time.monotonic() + _seconds(timeout, "timeout")
        while not self._pending:
            now_ms = await asyncio.to_thread(ledger.clock_ms)
            wait = self.engine.wait_slice(now_ms, self.registry.sync.poll_interval)
            if end is not None:
                wait = min(wait, max(0.0, end - time.monotonic()))
            events, cursor = await ledger.wait_events_async(self.cursor, wait, self.engine.filter)
            changes, self.cursor = await asyncio.to_thread(
                _settle, ledger, self.engine, events, cursor
            )
            self._pending.extend(changes)
            if not self._pending and end is not None and time.monotonic() >= end:
                return None
        return self._pending.pop(0)

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Change:
        while True:
            change = await self.wait()
            if change is not None:
                return change


class AsyncLease(LeaseSteps):
    """:class:`Lease` for asyncio code: the renewals run as a task of the loop."""

    def __init__(
        self,
        registry: AsyncRegistry,
        name: str,
        duration: float = DEFAULT_LEASE_DURATION,
        *,
        timeout: float | None = None,
        auto_renew: bool = True,
        on_lost: Callable[[AsyncLease], None] | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.engine = LeaseEngine(duration, registry.sync.clock_skew)
        self.timeout = timeout
        self.auto_renew = auto_renew
        self.on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    async def try_acquire(self) -> bool:
        r = self.registry.sync
        sent = time.monotonic()
        try:
            token = await asyncio.to_thread(
                r.ledger.acquire_lease, r.signer, r.id, self.name, r.holder, self.engine.duration_ms
            )
        except LeaseHeld:
            return False
        self.engine.acquired(token, sent)
        if self.auto_renew:
            self._task = asyncio.get_running_loop().create_task(self._renew_loop())
        return True

    async def acquire(self, timeout: float | None = None) -> int:
        async def attempt() -> int:
            # the watch starts first: a release between a refused try and the watch's
            # start would otherwise go unseen
            watch = self.registry.watch(lease=self.name)
            await watch.start()
            while not await self.try_acquire():
                await watch.wait()
            assert self.engine.token is not None
            return self.engine.token

        if timeout is None:
            return await attempt()
        try:
            return await asyncio.wait_for(attempt(), _seconds(timeout, "timeout"))
        except TimeoutError:
            raise DTPTimeoutError(f"The lease {self.name!r} stayed held for {timeout} s.") from None

    async def renew(self) -> None:
        r = self.registry.sync
        token = self._renewing()
        sent = time.monotonic()
        with self._fenced():
            await asyncio.to_thread(
                r.ledger.renew_lease, r.signer, r.id, self.name, token, self.engine.duration_ms
            )
        self.engine.renewed(sent)

    async def release(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        token, lost = self.engine.take_release()
        if token is None:
            return
        r = self.registry.sync
        try:
            await asyncio.to_thread(r.ledger.release_lease, r.signer, r.id, self.name, token)
        except ChainError as exc:
            self._release_failed(exc, lost)

    async def put(self, key: str, value: bytes) -> int:
        r = self.registry.sync
        with self._fenced():
            return await asyncio.to_thread(
                r.ledger.registry_put, r.signer, r.id, self.name, self.check(), key, value
            )

    async def remove(self, key: str) -> None:
        r = self.registry.sync
        with self._fenced():
            await asyncio.to_thread(
                r.ledger.registry_remove, r.signer, r.id, self.name, self.check(), key
            )

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.engine.next_renewal(time.monotonic()))
            if self.engine.lost:
                return
            try:
                await self.renew()
            except ChainError as exc:
                if self._renewal_failed(exc):
                    return
                await asyncio.sleep(self.engine.retry_delay())

    async def __aenter__(self) -> AsyncLease:
        await self.acquire(self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class AsyncLock(AsyncLease):
    """:class:`Lock` for asyncio code (``async with registry.lock(name) as lock:``)."""
