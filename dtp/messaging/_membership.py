"""Group membership with SWIM-style failure detection and Lifeguard's local health: the
sans-I/O engine. Its rules -- probes and indirect probes, suspicion and its confirmations,
incarnations, local health, piggybacked gossip and whole-table syncs, the detection
bound -- are docs/messaging.md §6.2 (SWIM, Das, Gupta and Motivala 2002; Lifeguard,
Dadgar, Phillips and Currey 2018).

:class:`Membership` holds one member's view of the group and the rules that change it;
it never opens a socket, reads the clock or draws randomness of its own: the drivers
(:mod:`dtp.messaging._membership_aio`, :mod:`dtp.messaging._membership_socket`) feed it
messages with :meth:`Membership.receive` and the time with :meth:`Membership.handle_timer`,
and carry what :meth:`Membership.messages_to_send` returns to other members over DTP. It
keeps no thread and no task of its own, so one process can run a thousand of them on a
virtual clock.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from dtp.messaging import errors as E
from dtp.messaging._membership_wire import (
    ACK,
    MAX_MESSAGE,
    NACK,
    NOTICE,
    PING,
    PING_REQ,
    SYNC,
    SYNC_REPLY,
    UNTARGETED,
    VERSION,
    Member,
    MemberState,
    Seed,
    check_member,
    decode_message,
    encode_message,
    pack_record,
)

# (the records' and messages' names are the wire module's: imported from there)
__all__ = [
    "MAX_MESSAGE",
    "Member",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "MembershipEvent",
    "Outgoing",
    "Seed",
]

#: Pings sent per period to the members this one accuses (each carries the suspicion).
_MAX_SUSPECT_PINGS: Final = 16
#: PING-REQs served at once.
_MAX_RELAYS: Final = 256
#: Gossip candidates looked at for one message past those that fit (a record too large
#: for what is left of the byte budget is skipped for a smaller one, this many times).
_MAX_SKIPPED: Final = 16
#: Most steps a pause adds to the local health score (timeouts up to 4 times longer: room
#: to read what came meanwhile; a longer pause leaves no more to read per second).
_PAUSE_STEPS: Final = 3
#: Up to this many live members a member syncs every ``sync_interval``; past it, the
#: interval stretches with log2 of the group's size (as memberlist's push-pull's).
_SYNC_SCALE_FROM: Final = 32


EventKind = Literal["joined", "suspect", "alive", "dead", "left"]


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """A change in the view of another member."""

    #: ``joined`` (new, or back from dead or left), ``suspect``, ``alive`` (a suspicion
    #: refuted), ``dead`` (failed), ``left`` (said goodbye).
    kind: EventKind
    #: The member's record after the change.
    member: Member
    #: The engine's time of the change (the ``now`` it was given).
    at: float


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the driver to carry to ``host:port`` (``key``: the server's Noise key,
    None for a seed known by address only)."""

    host: str
    port: int
    key: bytes | None
    data: bytes
    #: The member it is for (None for a seed).
    to: str | None


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing and sizes of the protocol (seconds)."""

    #: T: one probe per period (times the local health multiplier).
    probe_interval: float = 1.0
    #: Wait for a direct ACK before asking others (below T; times the multiplier too).
    probe_timeout: float = 0.4
    #: k: members asked to probe indirectly.
    indirect_probes: int = 3
    #: S: from a failed probe to the verdict when no other member confirms the suspicion.
    suspicion_timeout: float = 5.0
    #: The verdict's delay once ``suspicion_confirmations`` other members accuse the
    #: suspect too (None: half of ``suspicion_timeout``); at most suspicion_timeout.
    suspicion_min: float | None = None
    #: Independent accusations that bring the delay down to ``suspicion_min``.
    suspicion_confirmations: int = 3
    #: λ: each change is piggybacked on about λ·ceil(log10(n + 1)) messages.
    retransmit_mult: int = 4
    #: Most changes piggybacked on one message.
    max_piggyback: int = 8
    #: Most bytes of piggybacked changes on one message (past the first change, which
    #: goes whatever its size).
    max_piggyback_bytes: int = 1024
    #: Whole-table exchange with one other member (or a seed, alone) this often, in a
    #: group of up to 32; longer in larger ones (docs/messaging.md §6.2).
    sync_interval: float = 10.0
    #: Dead and left members are kept this long (synced with, so a partition heals).
    dead_retention: float = 3600.0
    #: Most members a view holds (more are refused and counted).
    max_members: int = 1024
    #: The drivers' bound on opening a connection (carrier and handshake). Not tied to
    #: probe_timeout: a connect cut short while a busy peer works through handshakes
    #: is retried, adding to its load, and a group can talk itself into suspicion.
    connect_timeout: float = 1.0
    #: Highest local health score (Lifeguard's multiplier: timeouts up to this + 1
    #: times longer); 0 keeps them as configured.
    max_health: int = 8
    #: The highest wire version spoken: 2, or 1 to speak only as members before
    #: version 2 did (no NACKs, no accusers, no version said).
    wire_version: int = VERSION

    def __post_init__(self) -> None:
        for name in (
            "probe_interval",
            "probe_timeout",
            "suspicion_timeout",
            "sync_interval",
            "connect_timeout",
        ):
            value = getattr(self, name)
            if type(value) not in (int, float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds above 0")
        if type(self.dead_retention) not in (int, float) or not self.dead_retention >= 0:
            raise ValueError("dead_retention must be a number of seconds, at least 0")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be below probe_interval")
        low = self.suspicion_min
        if low is not None and (
            type(low) not in (int, float) or not 0 < low <= self.suspicion_timeout
        ):
            raise ValueError("suspicion_min must be a number of seconds in (0, suspicion_timeout]")
        for name, least in (
            ("indirect_probes", 0),
            ("suspicion_confirmations", 1),
            ("retransmit_mult", 1),
            ("max_piggyback", 0),
            ("max_piggyback_bytes", 0),
            ("max_members", 2),
            ("max_health", 0),
        ):
            value = getattr(self, name)
            if type(value) is not int or value < least:
                raise ValueError(f"{name} must be an int of at least {least}")
        if type(self.wire_version) is not int or not 1 <= self.wire_version <= VERSION:
            raise ValueError(f"wire_version must be an int in 1..{VERSION}")

    def suspicion_bounds(self) -> tuple[float, float]:
        """(shortest, longest) delay from a failed probe to its verdict."""
        low = self.suspicion_timeout / 2 if self.suspicion_min is None else self.suspicion_min
        return low, self.suspicion_timeout

    def suspicion_delay(self, confirmations: int, n: int) -> float:
        """The delay of a verdict after ``confirmations`` independent accusations beyond
        the first, in a group of ``n`` live members: from suspicion_timeout down to
        suspicion_min, log-wise (Lifeguard; memberlist's suspicion.go), at
        min(``suspicion_confirmations``, n - 2) of them (no more can come)."""
        low, high = self.suspicion_bounds()
        k = min(self.suspicion_confirmations, n - 2)
        if k <= 0 or confirmations >= k:
            return low
        return max(low, high - (high - low) * math.log(confirmations + 1) / math.log(k + 1))

    def sync_period(self, n: int) -> float:
        """How often a member of a group of ``n`` live members syncs: sync_interval up
        to 32 members, times 1 + ceil(log2(n / 32)) past it."""
        if n <= _SYNC_SCALE_FROM:
            return self.sync_interval
        return self.sync_interval * (1 + math.ceil(math.log2(n / _SYNC_SCALE_FROM)))

    def detection_bound(self, n: int) -> float:
        """D = 2 (n - 1) T + S: how long after a crash every other member of a stable
        group of ``n`` healthy members has marked the crashed one dead (module docstring):
        a guarantee, that grows with n."""
        return 2 * max(n - 1, 1) * self.probe_interval + self.suspicion_timeout

    def spread_bound(self, n: int) -> float:
        """(ln n + log2 n + 2) T + S: how long after a crash every other member of a
        stable group of ``n`` healthy members has marked it dead, but with a small
        chance (docs/messaging.md §6.2, "Detection bound"): some member's probe reaches
        the crashed one within ln n + 1 periods (missed with a chance of about 1/n),
        its verdict follows within S, and the verdict's gossip reaches every member
        within log2 n + 1 periods. Not a guarantee; :meth:`detection_bound` is."""
        n = max(n, 2)
        periods = math.log(n) + math.log2(n) + 2
        return periods * self.probe_interval + self.suspicion_timeout


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    indirect_sent: bool = False
    acked: bool = False
    #: Helpers asked that speak version 2 (each owes a NACK if the target is silent).
    nacks_due: int = 0
    nacks: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    """A PING-REQ being served: our ping ``seq`` to the target answers ``their_seq``."""

    requester: Member
    version: int
    their_seq: int
    target: str
    expires: float
    #: When a NACK goes to the requester if the target has not answered (version 2).
    nack_at: float | None


@dataclass(slots=True)
class _Entry:
    member: Member
    changed: float
    #: The highest wire version it speaks, as far as its messages told.
    version: int = 1
    #: Members known to accuse it in its current suspicion (their own probes failed).
    accusers: set[str] = field(default_factory=set)
    #: The accuser its suspect record is gossiped with (the latest one heard).
    accuser: str | None = None
    #: When our own probe of it failed (we accuse it), in its current suspicion, moved
    #: on by the time this member was away since (its suspicion's clock stood still).
    since: float | None = None
    #: No verdict of ours before this (after a pause: not before we probed again).
    hold: float = -math.inf
    #: Our verdict's time, while we accuse it.
    deadline: float | None = None


class _Gossip:
    """Changes waiting to be piggybacked, by transmissions left: the least-sent first,
    and of those the newest (a death behind a thousand joins goes first, as in
    memberlist's queue), in constant time however many wait."""

    def __init__(self) -> None:
        self._left: dict[str, int] = {}
        self._tiers: dict[int, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._left)

    def add(self, member_id: str, times: int) -> None:
        self.discard(member_id)
        self._left[member_id] = times
        self._tiers.setdefault(times, {})[member_id] = None

    def discard(self, member_id: str) -> None:
        times = self._left.pop(member_id, None)
        if times is not None:
            tier = self._tiers[times]
            del tier[member_id]
            if not tier:
                del self._tiers[times]

    def candidates(self, most: int) -> Iterator[str]:
        """Up to ``most`` ids, the most transmissions left first (each tier's taken as a
        snapshot: :meth:`sent` may follow each)."""
        for times in sorted(self._tiers, reverse=True):
            batch = list(itertools.islice(reversed(self._tiers[times]), most))
            yield from batch
            most -= len(batch)
            if most <= 0:
                return

    def sent(self, member_id: str) -> None:
        times = self._left[member_id]
        self.discard(member_id)
        if times > 1:
            self.add(member_id, times - 1)


def _after(last: float, period: float, now: float) -> float:
    """The next time of a periodic step due at ``last``: a period on, on the same grid, or
    a whole period after ``now`` when that has passed (never ``now``: a step done twice
    at once would conclude a probe the moment it started)."""
    later = last + period
    return later if later > now else now + period


def _rank(m: Member) -> tuple[int, int]:
    return (m.incarnation, int(m.state))


class Membership:
    """One member's view of the group (module docstring has the rules)."""

    def __init__(
        self,
        me: Member,
        now: float,
        *,
        config: MembershipConfig | None = None,
        rng: random.Random | None = None,
        seeds: Sequence[Seed] = (),
    ) -> None:
        """``me``: this member (alive; its incarnation is where it starts). ``rng`` draws
        the probe order and the members asked (a seeded one makes runs repeatable).
        ``seeds``: addresses to join through (a SYNC goes to each at once, and to one of
        them at each sync while no other member is known)."""
        check_member(me)
        self.config = config or MembershipConfig()
        self.rng = rng or random.Random()
        self.me = replace(me, state=MemberState.ALIVE)
        self.seeds = list(seeds)
        self._table: dict[str, _Entry] = {}
        self._live = 0  # live entries of the table
        self._timed: dict[str, _Entry] = {}  # the ones we accuse: a verdict of ours due
        self._forget: list[tuple[float, str]] = []  # (when, id) of dead and left ones
        self._events: collections.deque[MembershipEvent] = collections.deque()
        self._out: list[Outgoing] = []
        self._gossip = _Gossip()
        self._order: list[str] = []
        self._index = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._next_probe = now + self.config.probe_interval
        self._next_sync = now + self.config.sync_interval
        self._left = False
        #: Messages refused as malformed or forged, and members refused past max_members.
        self.refused = 0
        #: Local health score, 0..max_health: probe period and timeout are times this + 1.
        self.health = 0
        #: Times a timer of this member fired later than its probe timeout (a pause).
        self.pauses = 0
        for seed in self.seeds:
            self._send(seed, 1, SYNC, 0, records=self._all())

    # -- the view -------------------------------------------------------------------------

    def members(self, *, include_self: bool = True) -> list[Member]:
        """The live member list (alive and suspect), by id."""
        out = [e.member for e in self._table.values() if e.member.live]
        if include_self and not self._left:
            out.append(self.me)
        return sorted(out, key=lambda m: m.id)

    def member(self, member_id: str) -> Member | None:
        """The record of ``member_id`` (any state, kept for ``dead_retention``)."""
        if member_id == self.me.id:
            return self.me
        entry = self._table.get(member_id)
        return entry.member if entry else None

    def all_members(self) -> list[Member]:
        """Every record held, dead and left ones too, by id (this member's included)."""
        return sorted([self.me, *(e.member for e in self._table.values())], key=lambda m: m.id)

    def accusers(self, member_id: str) -> frozenset[str]:
        """The members known to accuse ``member_id`` in its current suspicion (this one
        included when its own probe failed); empty unless it is suspect."""
        entry = self._table.get(member_id)
        return frozenset(entry.accusers) if entry is not None else frozenset()

    @property
    def left(self) -> bool:
        """Whether :meth:`leave` was called (the engine then stays silent)."""
        return self._left

    # -- I/O interface ----------------------------------------------------------------------

    def next_event(self) -> MembershipEvent | None:
        """The next change of the view, or None."""
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[Outgoing]:
        """The messages due out (each a whole frame), oldest first."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None once left)."""
        if self._left:
            return None
        due = min(self._next_probe, self._next_sync)
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent:
            due = min(due, probe.started + self._scaled(self.config.probe_timeout))
        for entry in self._timed.values():
            assert entry.deadline is not None
            due = min(due, entry.deadline)
        for relay in self._relays.values():
            due = min(due, relay.expires if relay.nack_at is None else relay.nack_at)
        if self._forget:
            due = min(due, self._forget[0][0])
        return due

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``: probe steps, verdicts, syncs, forgetting. A call
        later than its probe timeout after what was due is a pause of this member's:
        its health drops and it reads what came meanwhile before it accuses anyone."""
        due = self.get_timer()
        if due is None:
            return
        cfg = self.config
        # (its own probe timeout, widened: a member starved all the time widens it until
        # its lateness no longer counts as a pause, and gives its verdicts again)
        if now - due > self._scaled(cfg.probe_timeout):
            self._resumed(now, now - due)
        probe = self._probe
        if (
            probe is not None
            and not probe.acked
            and not probe.indirect_sent
            and now >= probe.started + self._scaled(cfg.probe_timeout)
        ):
            self._ask_others(probe)
        if now >= self._next_probe:
            if probe is not None:
                self._conclude(probe, now)
            self._next_probe = _after(self._next_probe, self._scaled(cfg.probe_interval), now)
            self._start_probe(now)
        for entry in list(self._timed.values()):
            assert entry.deadline is not None
            if now >= entry.deadline:
                self._untime(entry)
                if entry.member.state is MemberState.SUSPECT:
                    self._set(replace(entry.member, state=MemberState.DEAD), now)
        for seq, relay in list(self._relays.items()):
            if relay.nack_at is not None and now >= relay.nack_at:
                relay.nack_at = None
                self._send(relay.requester, relay.version, NACK, relay.their_seq, relay.target)
            if now >= relay.expires:
                del self._relays[seq]
        retention = cfg.dead_retention
        while self._forget and self._forget[0][0] <= now:
            _, member_id = heapq.heappop(self._forget)
            gone = self._table.get(member_id)
            if gone is not None and not gone.member.live and now >= gone.changed + retention:
                del self._table[member_id]
                self._gossip.discard(member_id)
        if now >= self._next_sync:
            self._next_sync = _after(self._next_sync, cfg.sync_period(self._live + 1), now)
            self._sync()

    def receive(self, data: bytes, now: float, *, peer_key: bytes | None = None) -> None:
        """Take one message (a frame's body). ``peer_key``: the Noise key the connection it
        came on authenticated; a sender record with another key is forged. Raises
        :class:`~dtp.messaging.errors.MalformedMessage` (counted in ``refused``, the view
        unchanged) for anything else than a well-formed message."""
        try:
            msg = decode_message(data, self.config.wire_version)
            if peer_key is not None and msg.sender.key != peer_key:
                raise E.MalformedMessage("the sender's key is not the connection's")
        except E.MalformedMessage:
            self.refused += 1
            raise
        if self._left:
            return
        sender = msg.sender
        self._merge(sender, now, None)
        entry = self._table.get(sender.id)
        speaks = msg.speaks
        if entry is not None and speaks is not None:
            entry.version = min(speaks, self.config.wire_version)
        for record, accuser in msg.records:
            self._merge(record, now, accuser)
        kind, seq, target = msg.kind, msg.seq, msg.target
        if kind == PING:
            if target == self.me.id:
                self._send(sender, self._answer_in(sender, msg.version), ACK, seq)
        elif kind == ACK:
            probe = self._probe
            if probe is not None and seq == probe.seq:
                probe.acked = True
            relay = self._relays.pop(seq, None)
            if relay is not None:
                self._send(relay.requester, relay.version, ACK, relay.their_seq)
        elif kind == NACK:
            probe = self._probe
            if probe is not None and seq == probe.seq and target == probe.target:
                probe.nacks.add(sender.id)
        elif kind == PING_REQ:
            held = self._table.get(target) if target is not None else None
            if held is None or not held.member.live:
                if msg.version >= 2:  # not one to ping: say so at once (it heard from us)
                    self._send(sender, self._answer_in(sender, msg.version), NACK, seq, target)
            # (bounded: each relay lives one period; a flood of requests is dropped)
            elif len(self._relays) < _MAX_RELAYS:
                self._seq += 1
                cfg = self.config
                nack_at = None
                if msg.version >= 2:  # it asks for a NACK: back before its period ends
                    nack_at = now + (cfg.probe_interval - cfg.probe_timeout) / 2
                self._relays[self._seq] = _Relay(
                    sender, msg.version, seq, held.member.id, now + cfg.probe_interval, nack_at
                )
                self._ping(held, self._seq)
        elif kind == SYNC:
            self._send(
                sender, self._answer_in(sender, msg.version), SYNC_REPLY, 0, records=self._all()
            )

    def leave(self, now: float) -> None:
        """Say goodbye: a LEFT record of this member goes to every live member at once,
        then the engine stays silent (the driver sends what is queued and stops)."""
        if self._left:
            return
        self.me = replace(self.me, state=MemberState.LEFT)
        for entry in self._table.values():
            if entry.member.live:
                self._send(entry.member, entry.version, NOTICE, 0, records=())
        self._left = True
        self._probe = None
        self._relays.clear()

    # -- rules ------------------------------------------------------------------------------

    def _scaled(self, seconds: float) -> float:
        """A probe period or timeout stretched by the local health multiplier."""
        return seconds * (self.health + 1)

    def _health(self, delta: int) -> None:
        self.health = min(self.config.max_health, max(0, self.health + delta))

    def _resumed(self, now: float, late: float) -> None:
        """A timer fired ``late`` seconds after its time: this member was paused (or
        starved). What it did not read meanwhile may hold the answers it waits for, so
        the probe in flight starts over, its verdicts move on by the time it was away
        (and past its next probe's timeout), and its health drops by a step per period
        lost, up to :data:`_PAUSE_STEPS`."""
        cfg = self.config
        self.pauses += 1
        self._health(min(_PAUSE_STEPS, 1 + int(late // cfg.probe_interval)))
        period = self._scaled(cfg.probe_interval)
        probe = self._probe
        if probe is not None and not probe.acked:
            probe.started, probe.indirect_sent = now, False
            probe.nacks_due, probe.nacks = 0, set()
            entry = self._table.get(probe.target)
            if entry is not None and entry.member.live:
                self._ping(entry, probe.seq)  # (same seq: an ACK read late still counts)
        self._next_probe = now + period
        earliest = self._next_probe + self._scaled(cfg.probe_timeout)
        for entry in self._timed.values():
            assert entry.since is not None
            entry.since += late
            entry.hold = earliest
            self._time(entry, now)

    def _merge(self, record: Member, now: float, accuser: str | None) -> None:
        if record.id == self.me.id:
            self._about_me(record)
            return
        entry = self._table.get(record.id)
        if entry is None:
            if len(self._table) + 1 >= self.config.max_members:
                self.refused += 1
                return
            self._set(record, now, accuser)
        elif _rank(record) > _rank(entry.member):
            self._set(record, now, accuser)
        elif (
            accuser is not None
            and record.state is MemberState.SUSPECT
            and _rank(record) == _rank(entry.member)
            and accuser != self.me.id
        ):
            self._confirm(entry, accuser, now)

    def _about_me(self, record: Member) -> None:
        """Someone holds another record of this member: refute what is not alive (or an
        alive one from a former life, ahead of ours) with a higher incarnation."""
        if self._left:
            return
        if record.incarnation < self.me.incarnation:
            return
        if record.state is MemberState.ALIVE and record.incarnation == self.me.incarnation:
            return
        if record.state is MemberState.SUSPECT or record.state is MemberState.DEAD:
            self._health(1)  # (Lifeguard: suspected, maybe for our own slowness)
        self.me = replace(self.me, incarnation=record.incarnation + 1)

    def _set(self, record: Member, now: float, accuser: str | None = None) -> None:
        """Replace (or add) a record; an event for a change of state; gossip it."""
        entry = self._table.get(record.id)
        old = entry.member.state if entry is not None else None
        if entry is None:
            self._table[record.id] = entry = _Entry(record, now)
        else:
            entry.member = record
        if old != record.state:
            entry.changed = now
            self._live += int(record.live) - int(old is not None and old <= MemberState.SUSPECT)
            if not record.live:
                heapq.heappush(self._forget, (now + self.config.dead_retention, record.id))
        # a new record: a new suspicion, or none
        entry.accusers = {accuser} if accuser is not None else set()
        entry.accuser = accuser
        entry.since = None
        self._untime(entry)
        kind: EventKind | None = None
        if record.live and (old is None or old >= MemberState.DEAD):
            kind = "joined"
            # (a random place: random() rather than randint(), a third of a join's cost)
            self._order.insert(int(self.rng.random() * (len(self._order) + 1)), record.id)
            if record.state is MemberState.SUSPECT:
                self._events.append(MembershipEvent("joined", record, now))
                kind = "suspect"
        elif record.state is MemberState.SUSPECT and old is MemberState.ALIVE:
            kind = "suspect"
        elif record.state is MemberState.ALIVE and old is MemberState.SUSPECT:
            kind = "alive"
        elif record.state is MemberState.DEAD and old is not None and old.value <= 1:
            kind = "dead"
        elif record.state is MemberState.LEFT and old is not None and old is not record.state:
            kind = "left"
        if kind is not None:
            self._events.append(MembershipEvent(kind, record, now))
        self._gossip.add(record.id, self._transmissions())

    def _confirm(self, entry: _Entry, accuser: str, now: float) -> None:
        """Another member accuses a suspect we hold: one more independent confirmation
        (the first ``suspicion_confirmations`` are passed on, and shorten our verdict's
        delay when we accuse it too)."""
        if accuser in entry.accusers:
            return
        entry.accusers.add(accuser)
        if len(entry.accusers) <= self.config.suspicion_confirmations + 1:
            entry.accuser = accuser
            self._gossip.add(entry.member.id, self._transmissions())
        self._time(entry, now)

    def _accuse(self, entry: _Entry, now: float) -> None:
        """Our own probe of ``entry`` failed: suspect it (if it was alive), count ourselves
        among its accusers, and give our verdict when the suspicion's delay is over."""
        me = self.me.id
        if entry.member.state is MemberState.ALIVE:
            self._set(replace(entry.member, state=MemberState.SUSPECT), now, me)
        elif me not in entry.accusers:
            self._confirm(entry, me, now)
        if entry.since is None:
            entry.since, entry.hold = now, -math.inf
            self._time(entry, now)

    def _time(self, entry: _Entry, now: float) -> None:
        """(Re)set our verdict's time on a member we accuse, from its confirmations and
        our pauses (not in the past: a timer due before ``now`` would read as this
        member's lateness)."""
        if entry.since is None:
            return
        delay = self.config.suspicion_delay(len(entry.accusers) - 1, self._live + 1)
        entry.deadline = max(now, entry.hold, entry.since + delay)
        self._timed[entry.member.id] = entry

    def _untime(self, entry: _Entry) -> None:
        entry.deadline = None
        self._timed.pop(entry.member.id, None)

    def _start_probe(self, now: float) -> None:
        self._probe = None
        suspect_seqs: dict[str, int] = {}
        for entry in self._timed.values():
            if entry.member.state is MemberState.SUSPECT and len(suspect_seqs) < _MAX_SUSPECT_PINGS:
                self._seq += 1
                suspect_seqs[entry.member.id] = self._seq
                self._ping(entry, self._seq)  # the suspicion rides along: a live one refutes
        target = self._next_target()
        if target is None:
            return
        seq = suspect_seqs.get(target.member.id)
        if seq is None:
            self._seq += 1
            seq = self._seq
            self._ping(target, seq)
        self._probe = _Probe(target.member.id, seq, now)

    def _next_target(self) -> _Entry | None:
        """The next live member of the round-robin order (reshuffled after each round)."""
        for _ in range(2):
            while self._index < len(self._order):
                member_id = self._order[self._index]
                entry = self._table.get(member_id)
                if entry is None or not entry.member.live:
                    del self._order[self._index]  # gone: out of the order
                    continue
                self._index += 1
                return entry
            self._order = [i for i, e in self._table.items() if e.member.live]
            self.rng.shuffle(self._order)
            self._index = 0
        return None

    def _ask_others(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        entry = self._table.get(probe.target)
        if entry is None or not entry.member.live:
            return
        helpers = [
            e
            for i, e in self._table.items()
            if i != probe.target and e.member.state is MemberState.ALIVE
        ]
        for helper in self.rng.sample(helpers, min(self.config.indirect_probes, len(helpers))):
            probe.nacks_due += helper.version >= 2
            self._send(helper.member, helper.version, PING_REQ, probe.seq, probe.target)

    def _conclude(self, probe: _Probe, now: float) -> None:
        """The period of ``probe`` is over: an answer is good health; none makes its
        target suspect, accused by us, and our health worse by the NACKs that did not
        come (or by one, with no helper able to send them)."""
        self._probe = None
        if probe.acked:
            self._health(-1)
            return
        entry = self._table.get(probe.target)
        if entry is None or not entry.member.live:
            return
        missed = probe.nacks_due - len(probe.nacks)
        self._health(missed if probe.nacks_due else 1)
        self._accuse(entry, now)

    def _sync(self) -> None:
        """Exchange the whole table with one other member (dead ones included: that is how
        two sides of a healed partition meet again), or a seed while alone."""
        others = [e for e in self._table.values() if e.member.state < MemberState.LEFT]
        if self._live or not self.seeds:
            if others:
                entry = self.rng.choice(others)
                self._send(entry.member, entry.version, SYNC, 0, records=self._all())
            return
        self._send(self.rng.choice(self.seeds), 1, SYNC, 0, records=self._all())

    # -- messages ---------------------------------------------------------------------------

    def _transmissions(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(len(self._table) + 2)))

    def _piggyback(self, to: str | None, version: int) -> list[bytes]:
        """Changes to carry to ``to`` (packed in ``version``'s form): its own record first
        when we hold it other than alive (so it can refute), then the least-sent changes,
        within ``max_piggyback`` records and ``max_piggyback_bytes`` bytes."""
        cfg = self.config
        out: list[bytes] = []
        size = 0
        entry = self._table.get(to) if to is not None else None
        if entry is not None and entry.member.state is not MemberState.ALIVE:
            out.append(pack_record(entry.member, entry.accuser, version))
            size = len(out[0])
        skipped = 0
        for member_id in self._gossip.candidates(cfg.max_piggyback + _MAX_SKIPPED + 1):
            if len(out) >= cfg.max_piggyback or skipped > _MAX_SKIPPED:
                break
            if member_id == to and out:
                continue  # (its own, already first)
            held = self._table.get(member_id)
            if held is None:
                self._gossip.discard(member_id)
                continue
            packed = pack_record(held.member, held.accuser, version)
            if out and size + len(packed) > cfg.max_piggyback_bytes:
                skipped += 1
                continue
            out.append(packed)
            size += len(packed)
            self._gossip.sent(member_id)
        return out

    def _all(self) -> list[tuple[Member, str | None]]:
        return [(e.member, e.accuser) for e in self._table.values()]

    def _ping(self, entry: _Entry, seq: int) -> None:
        self._send(entry.member, entry.version, PING, seq, entry.member.id)

    def _answer_in(self, sender: Member, version: int) -> int:
        """The version to answer ``sender`` in: the one it spoke, or a newer one its record
        holds. (The answer goes to the address it gave in this very message: it may be
        newer than our record -- a restart -- and is where it listens now.)"""
        entry = self._table.get(sender.id)
        return max(version, entry.version) if entry is not None else version

    def _send(
        self,
        to: Member | Seed,
        version: int,
        kind: int,
        seq: int,
        target: str | None = None,
        records: Iterable[tuple[Member, str | None]] | None = None,
    ) -> None:
        """Queue one message for ``to`` (a member, or a seed: its version unknown) in
        ``version`` (at most ours); ``records`` None: what is piggybacked for it."""
        version = min(version, self.config.wire_version)
        to_id = to.id if isinstance(to, Member) else None
        if records is None:
            packed = self._piggyback(to_id, version)
        else:
            packed = [pack_record(m, a, version) for m, a in records if m.id != self.me.id]
        if version == 1 and kind in UNTARGETED and self.config.wire_version >= 2:
            target = str(self.config.wire_version)  # (which versions we speak, to a peer of 1)
        data = encode_message(version, kind, self.me, seq, target, packed)
        self._out.append(Outgoing(to.host, to.port, to.key, data, to_id))
