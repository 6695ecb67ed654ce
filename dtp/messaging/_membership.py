"""Group membership with SWIM-style failure detection: the sans-I/O engine
(docs/messaging.md §6.2).

:class:`Membership` holds one member's view of the group and the rules that change it;
it never opens a socket, reads the clock or draws randomness of its own: the drivers
(:mod:`dtp.messaging._membership_aio`, :mod:`dtp.messaging._membership_socket`) feed it
messages with :meth:`Membership.receive` and the time with :meth:`Membership.handle_timer`,
and carry what :meth:`Membership.messages_to_send` returns to other members over DTP.

The rules (SWIM, Das, Gupta and Motivala 2002, with incarnation numbers):

* Every ``probe_interval`` T a member pings the next member of a shuffled round-robin
  order. No ACK within ``probe_timeout``: it asks ``indirect_probes`` (k) other members to
  ping the target for it (PING-REQ). No ACK, direct or relayed, by the end of the period:
  the target is *suspect*, and dead ``suspicion_timeout`` S later unless it refutes.
* A member refutes a suspicion (or a death) of itself by raising its incarnation number;
  a record with a higher incarnation wins, and at one incarnation alive < suspect < dead
  < left. While a member is suspect it is pinged every period with the suspicion on
  board, so a live one hears of it and refutes within a round trip.
* Only a member whose *own* probe failed declares death when its timer runs out; one
  that heard the suspicion by gossip waits for the verdict (or its own probe). So an
  alive member reachable again within S of the first failed probe is never declared
  dead, while every member still reaches its own verdict within the bound below.
* Membership changes ride on every message (piggybacked, each sent about
  ``retransmit_mult * ceil(log10(n + 1))`` times), and every ``sync_interval`` a member
  exchanges its whole table with one other -- alive, suspect or dead -- so a healed
  partition re-converges (both sides meet again and refute their deaths).

**Detection bound.** In a group of n members that does not change meanwhile, every
member marks a crashed member dead within ``D = 2 (n - 1) T + S`` of the crash: its
round-robin order reaches the crashed member within 2 (n - 1) - 1 periods, that probe
fails by the end of its period, and the verdict is due S later
(:meth:`MembershipConfig.detection_bound`; the drivers add their timers' lateness).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from dtp.messaging import errors as E
from dtp.messaging._framing import decode_body, encode_frame

__all__ = [
    "Member",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "MembershipEvent",
    "Outgoing",
    "Seed",
]

#: Message kinds (docs/messaging.md §6.2): ``[1, kind, sender, seq, target, records]``.
PING: Final = 1
ACK: Final = 2
PING_REQ: Final = 3
SYNC: Final = 4
SYNC_REPLY: Final = 5
NOTICE: Final = 6
_VERSION: Final = 1
_MAX_ID: Final = 128
_MAX_HOST: Final = 255
#: Largest membership message (a SYNC of the whole table fits: ~110 bytes a record).
MAX_MESSAGE: Final = 1 << 20
#: Pings sent per period to members held suspect (each carries the suspicion).
_MAX_SUSPECT_PINGS: Final = 16
#: PING-REQs served at once.
_MAX_RELAYS: Final = 256


class MemberState(enum.IntEnum):
    """A member's state; at one incarnation a higher state wins."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Member:
    """One member as a view holds it."""

    #: The member's name, unique in the group (1..128 characters).
    id: str
    #: Where its DTP server listens.
    host: str
    port: int
    #: Its Noise static public key (32 bytes): connections to it are Noise IK to this key.
    key: bytes
    #: Raised by the member itself to refute a suspicion or a death.
    incarnation: int
    state: MemberState

    @property
    def live(self) -> bool:
        """Alive or suspect: part of the live member list."""
        return self.state <= MemberState.SUSPECT


@dataclass(frozen=True, slots=True)
class Seed:
    """An address to join through (its key when known: Noise IK, else XX)."""

    host: str
    port: int
    key: bytes | None = None


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

    #: T: one probe per period.
    probe_interval: float = 1.0
    #: Wait for a direct ACK before asking others (below T).
    probe_timeout: float = 0.4
    #: k: members asked to probe indirectly.
    indirect_probes: int = 3
    #: S: from a failed probe to the verdict, time for a live member to refute.
    suspicion_timeout: float = 5.0
    #: λ: each change is piggybacked on about λ·ceil(log10(n + 1)) messages.
    retransmit_mult: int = 4
    #: Most changes piggybacked on one message.
    max_piggyback: int = 8
    #: Whole-table exchange with one other member (or a seed, alone) this often.
    sync_interval: float = 10.0
    #: Dead and left members are kept this long (synced with, so a partition heals).
    dead_retention: float = 3600.0
    #: Most members a view holds (more are refused and counted).
    max_members: int = 1024
    #: The drivers' bound on opening a connection (carrier and handshake). Not tied to
    #: probe_timeout: a connect cut short while a busy peer works through handshakes
    #: is retried, adding to its load, and a group can talk itself into suspicion.
    connect_timeout: float = 1.0

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
        for name, low in (
            ("indirect_probes", 0),
            ("retransmit_mult", 1),
            ("max_piggyback", 0),
            ("max_members", 2),
        ):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ValueError(f"{name} must be an int of at least {low}")

    def detection_bound(self, n: int) -> float:
        """D = 2 (n - 1) T + S: how long after a crash every other member of a stable
        group of ``n`` has marked the crashed one dead (module docstring)."""
        return 2 * max(n - 1, 1) * self.probe_interval + self.suspicion_timeout


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    indirect_sent: bool = False
    acked: bool = False


@dataclass(slots=True)
class _Relay:
    """A PING-REQ being served: our ping ``seq`` to the target answers ``their_seq``."""

    requester: Outgoing  # (its address; data unused)
    their_seq: int
    expires: float


@dataclass(slots=True)
class _Entry:
    member: Member
    changed: float
    #: Set when our own probe failed: the verdict is ours to give at this time.
    deadline: float | None = None


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
        _check_member(me)
        self.config = config or MembershipConfig()
        self.rng = rng or random.Random()
        self.me = replace(me, state=MemberState.ALIVE)
        self.seeds = list(seeds)
        self._table: dict[str, _Entry] = {}
        self._events: list[MembershipEvent] = []
        self._out: list[Outgoing] = []
        self._gossip: dict[str, int] = {}  # id -> transmissions left
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
        self._gossip[self.me.id] = self._transmissions()
        for seed in self.seeds:
            self._send_to(seed.host, seed.port, seed.key, None, SYNC, 0, None, self._all())

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

    @property
    def left(self) -> bool:
        """Whether :meth:`leave` was called (the engine then stays silent)."""
        return self._left

    # -- I/O interface ----------------------------------------------------------------------

    def next_event(self) -> MembershipEvent | None:
        """The next change of the view, or None."""
        return self._events.pop(0) if self._events else None

    def messages_to_send(self) -> list[Outgoing]:
        """The messages due out (each a whole frame), oldest first."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None once left)."""
        if self._left:
            return None
        times = [self._next_probe, self._next_sync]
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent:
            times.append(probe.started + self.config.probe_timeout)
        times += [e.deadline for e in self._table.values() if e.deadline is not None]
        times += [r.expires for r in self._relays.values()]
        retention = self.config.dead_retention
        times += [e.changed + retention for e in self._table.values() if not e.member.live]
        return min(times)

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``: probe steps, verdicts, syncs, forgetting."""
        if self._left:
            return
        cfg = self.config
        probe = self._probe
        due = probe is not None and now >= probe.started + cfg.probe_timeout
        if probe is not None and due and not probe.acked and not probe.indirect_sent:
            self._ask_others(probe)
        if now >= self._next_probe:
            if probe is not None:
                self._conclude(probe, now)
            self._next_probe = max(self._next_probe + cfg.probe_interval, now)
            self._start_probe(now)
        for member_id, entry in list(self._table.items()):
            if entry.deadline is not None and now >= entry.deadline:
                entry.deadline = None
                if entry.member.state is MemberState.SUSPECT:
                    self._set(replace(entry.member, state=MemberState.DEAD), now)
            elif not entry.member.live and now >= entry.changed + cfg.dead_retention:
                del self._table[member_id]
                self._gossip.pop(member_id, None)
        for seq, relay in list(self._relays.items()):
            if now >= relay.expires:
                del self._relays[seq]
        if now >= self._next_sync:
            self._next_sync = max(self._next_sync + cfg.sync_interval, now)
            self._sync()

    def receive(self, data: bytes, now: float, *, peer_key: bytes | None = None) -> None:
        """Take one message (a frame's body). ``peer_key``: the Noise key the connection it
        came on authenticated; a sender record with another key is forged. Raises
        :class:`~dtp.messaging.errors.MalformedMessage` (counted in ``refused``, the view
        unchanged) for anything else than a well-formed message."""
        try:
            kind, sender, seq, target, records = _decode(data)
            if peer_key is not None and sender.key != peer_key:
                raise E.MalformedMessage("the sender's key is not the connection's")
        except E.MalformedMessage:
            self.refused += 1
            raise
        if self._left:
            return
        self._merge(sender, now)
        for record in records:
            self._merge(record, now)
        if kind == PING:
            if target == self.me.id:
                self._reply(sender, ACK, seq, None, self._piggyback(sender.id))
        elif kind == ACK:
            probe = self._probe
            if probe is not None and seq == probe.seq:
                probe.acked = True
            relay = self._relays.pop(seq, None)
            if relay is not None:
                r = relay.requester
                self._send_to(
                    r.host, r.port, r.key, r.to, ACK, relay.their_seq, None,
                    self._piggyback(r.to),
                )  # fmt: skip
        elif kind == PING_REQ:
            entry = self._table.get(target) if target is not None else None
            # (bounded: each relay lives one period; a flood of requests is dropped)
            if entry is not None and entry.member.live and len(self._relays) < _MAX_RELAYS:
                self._seq += 1
                requester = Outgoing(sender.host, sender.port, sender.key, b"", sender.id)
                expires = now + self.config.probe_interval
                self._relays[self._seq] = _Relay(requester, seq, expires)
                self._ping(entry.member, self._seq)
        elif kind == SYNC:
            self._reply(sender, SYNC_REPLY, 0, None, self._all())

    def leave(self, now: float) -> None:
        """Say goodbye: a LEFT record of this member goes to every live member at once,
        then the engine stays silent (the driver sends what is queued and stops)."""
        if self._left:
            return
        self.me = replace(self.me, state=MemberState.LEFT)
        mine = [self.me]
        for entry in self._table.values():
            if entry.member.live:
                m = entry.member
                self._send_to(m.host, m.port, m.key, m.id, NOTICE, 0, None, mine)
        self._left = True
        self._probe = None
        self._relays.clear()

    # -- rules ------------------------------------------------------------------------------

    def _merge(self, record: Member, now: float) -> None:
        if record.id == self.me.id:
            self._about_me(record)
            return
        entry = self._table.get(record.id)
        if entry is None:
            if len(self._table) + 1 >= self.config.max_members:
                self.refused += 1
                return
            self._set(record, now)
        elif _rank(record) > _rank(entry.member):
            self._set(record, now)

    def _about_me(self, record: Member) -> None:
        """Someone holds another record of this member: refute what is not alive (or an
        alive one from a former life, ahead of ours) with a higher incarnation."""
        if self._left:
            return
        if record.incarnation < self.me.incarnation:
            return
        if record.state is MemberState.ALIVE and record.incarnation == self.me.incarnation:
            return
        self.me = replace(self.me, incarnation=record.incarnation + 1)
        self._gossip[self.me.id] = self._transmissions()

    def _set(self, record: Member, now: float) -> None:
        """Replace (or add) a record; an event for a change of state; gossip it."""
        entry = self._table.get(record.id)
        old = entry.member.state if entry is not None else None
        if entry is None:
            self._table[record.id] = entry = _Entry(record, now)
        else:
            entry.member = record
        if old != record.state:
            entry.changed = now
        if record.state is not MemberState.SUSPECT:
            entry.deadline = None
        kind: EventKind | None = None
        if record.live and (old is None or old >= MemberState.DEAD):
            kind = "joined"
            self._order.insert(self.rng.randint(0, len(self._order)), record.id)
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
        self._gossip[record.id] = self._transmissions()

    def _start_probe(self, now: float) -> None:
        self._probe = None
        suspect_seqs: dict[str, int] = {}
        for entry in self._table.values():
            m = entry.member
            if m.state is MemberState.SUSPECT and len(suspect_seqs) < _MAX_SUSPECT_PINGS:
                self._seq += 1
                suspect_seqs[m.id] = self._seq
                self._ping(m, self._seq)  # the suspicion rides along: a live one refutes
        target = self._next_target()
        if target is None:
            return
        seq = suspect_seqs.get(target.id)
        if seq is None:
            self._seq += 1
            seq = self._seq
            self._ping(target, seq)
        self._probe = _Probe(target.id, seq, now)

    def _next_target(self) -> Member | None:
        """The next live member of the round-robin order (reshuffled after each round)."""
        for _ in range(2):
            while self._index < len(self._order):
                member_id = self._order[self._index]
                entry = self._table.get(member_id)
                if entry is None or not entry.member.live:
                    del self._order[self._index]  # gone: out of the order
                    continue
                self._index += 1
                return entry.member
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
            e.member
            for i, e in self._table.items()
            if i != probe.target and e.member.state is MemberState.ALIVE
        ]
        for m in self.rng.sample(helpers, min(self.config.indirect_probes, len(helpers))):
            self._send_to(
                m.host, m.port, m.key, m.id, PING_REQ, probe.seq, probe.target,
                self._piggyback(m.id),
            )  # fmt: skip

    def _conclude(self, probe: _Probe, now: float) -> None:
        """The period of ``probe`` is over: no ACK makes its target suspect, and the
        verdict ours."""
        self._probe = None
        entry = self._table.get(probe.target)
        if probe.acked or entry is None or not entry.member.live:
            return
        if entry.member.state is MemberState.ALIVE:
            self._set(replace(entry.member, state=MemberState.SUSPECT), now)
        if entry.deadline is None:
            entry.deadline = now + self.config.suspicion_timeout

    def _sync(self) -> None:
        """Exchange the whole table with one other member (dead ones included: that is how
        two sides of a healed partition meet again), or a seed while alone."""
        others = [e.member for e in self._table.values() if e.member.state < MemberState.LEFT]
        if any(m.live for m in others) or not self.seeds:
            if others:
                m = self.rng.choice(others)
                self._send_to(m.host, m.port, m.key, m.id, SYNC, 0, None, self._all())
            return
        seed = self.rng.choice(self.seeds)
        self._send_to(seed.host, seed.port, seed.key, None, SYNC, 0, None, self._all())

    # -- messages ---------------------------------------------------------------------------

    def _transmissions(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(len(self._table) + 2)))

    def _piggyback(self, to: str | None) -> list[Member]:
        """Changes to carry to ``to``: its own record first when we hold it other than
        alive (so it can refute), then the least-sent changes."""
        out: list[Member] = []
        if to is not None:
            entry = self._table.get(to)
            if entry is not None and entry.member.state is not MemberState.ALIVE:
                out.append(entry.member)
        budget = self.config.max_piggyback - len(out)
        if budget <= 0:
            return out
        best = sorted(self._gossip.items(), key=lambda kv: -kv[1])[:budget]
        for member_id, left in best:
            record = self.member(member_id)
            if record is None:
                del self._gossip[member_id]
                continue
            if not (out and out[0].id == record.id):  # (to's own, already first)
                out.append(record)
            if left <= 1:
                del self._gossip[member_id]
            else:
                self._gossip[member_id] = left - 1
        return out

    def _all(self) -> list[Member]:
        return [self.me, *(e.member for e in self._table.values())]

    def _ping(self, m: Member, seq: int) -> None:
        self._send_to(m.host, m.port, m.key, m.id, PING, seq, m.id, self._piggyback(m.id))

    def _reply(
        self, to: Member, kind: int, seq: int, target: str | None, records: list[Member]
    ) -> None:
        # the address the sender gave in this very message: it may be newer than our
        # record (a restart), and is where it listens now
        self._send_to(to.host, to.port, to.key, to.id, kind, seq, target, records)

    def _send_to(
        self,
        host: str,
        port: int,
        key: bytes | None,
        to: str | None,
        kind: int,
        seq: int,
        target: str | None,
        records: Iterable[Member],
    ) -> None:
        body = [
            _VERSION,
            kind,
            _wire(self.me),
            seq,
            target,
            [_wire(r) for r in records if r.id != self.me.id],
        ]
        self._out.append(Outgoing(host, port, key, encode_frame(body, MAX_MESSAGE), to))


def _wire(m: Member) -> list[object]:
    return [m.id, m.host, m.port, m.key, m.incarnation, int(m.state)]


def _check_member(m: Member) -> None:
    if not isinstance(m.id, str) or not 0 < len(m.id) <= _MAX_ID:
        raise E.DiscoveryError(f"a member id is 1..{_MAX_ID} characters")
    if not isinstance(m.host, str) or not 0 < len(m.host) <= _MAX_HOST:
        raise E.DiscoveryError("a member's host is 1..255 characters")
    if type(m.port) is not int or not 0 < m.port <= 0xFFFF:
        raise E.DiscoveryError("a member's port is 1..65535")
    if not isinstance(m.key, bytes) or len(m.key) != 32:
        raise E.DiscoveryError("a member's key is 32 bytes")
    if type(m.incarnation) is not int or not 0 <= m.incarnation < 1 << 63:
        raise E.DiscoveryError("an incarnation is an int in 0..2**63-1")


def _record(fields: Any) -> Member:
    if not (isinstance(fields, list) and len(fields) == 6):
        raise E.MalformedMessage("a member record is [id, host, port, key, incarnation, state]")
    member_id, host, port, key, incarnation, state = fields
    if type(state) is not int or not 0 <= state <= 3:
        raise E.MalformedMessage("a member's state is 0..3")
    m = Member(member_id, host, port, key, incarnation, MemberState(state))
    try:
        _check_member(m)
    except E.DiscoveryError as exc:
        raise E.MalformedMessage(str(exc)) from None
    return m


def _decode(data: bytes) -> tuple[int, Member, int, str | None, list[Member]]:
    if len(data) > MAX_MESSAGE:
        raise E.MalformedMessage("membership message too large")
    fields: Any = decode_body(data)
    if not (
        isinstance(fields, list)
        and len(fields) == 6
        and type(fields[0]) is int
        and fields[0] == _VERSION
        and type(fields[1]) is int
        and PING <= fields[1] <= NOTICE
        and type(fields[3]) is int
        and 0 <= fields[3] < 1 << 63
        and (fields[4] is None or isinstance(fields[4], str))
        and isinstance(fields[5], list)
    ):
        raise E.MalformedMessage("not a membership message")
    _, kind, sender, seq, target, records = fields
    sender_record = _record(sender)
    if sender_record.state is not MemberState.ALIVE and kind != NOTICE:
        raise E.MalformedMessage("only a NOTICE comes from a member that is not alive")
    return kind, sender_record, seq, target, [_record(r) for r in records]
