"""The bounded gossip mesh of pub/sub, sans-I/O: per topic a mesh of about ``d`` peers
kept by GRAFT and PRUNE, IHAVE / IWANT gossip, peer exchange and backoff, peers below a
score of 0 left out (the rules are gossipsub v1.0 / v1.1's: docs/messaging.md §4.3).

:class:`MeshRouter` never reads a clock, draws its own randomness or does I/O: every call
takes ``now``, a seeded :class:`random.Random` is given to it, and every call returns the
frames to send, as ``(peer, bytes)`` pairs. Its peers are whatever handles the driver
uses (a :class:`~dtp.messaging.pubsub.Link` in :class:`~dtp.messaging.pubsub.PubSubNode`,
an index in ``bench/scale.py``), so one engine serves the threaded node and the
simulated network alike. It is not thread-safe: the driver calls it under its lock.

Peers of the flooding kind (version 1: they send no HELLO) stay outside the mesh and get
every message of the topics they declared, as before; they cannot take part in GRAFT,
PRUNE or gossip, which they would count as malformed frames.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging._pubsub_scoring import check_number

__all__ = [
    "GRAFT",
    "HELLO",
    "IHAVE",
    "IWANT",
    "MESH_VERSION",
    "PRUNE",
    "MeshParams",
    "MeshRouter",
    "UnsupportedVersion",
]

HELLO: Final = 14  # [14, version, node_id, address or nil]
GRAFT: Final = 15  # [15, [topic, ...]]
PRUNE: Final = 16  # [16, [topic, ...], backoff_s, [[node_id, address], ...]]
IHAVE: Final = 17  # [17, topic, [message_id, ...]]
IWANT: Final = 18  # [18, [message_id, ...]]
#: The pub/sub version a mesh node speaks (1: the flooding kind, which sends no HELLO).
MESH_VERSION: Final = 2
#: Most topics in one GRAFT / PRUNE, ids in one IHAVE / IWANT, peers in one PRUNE's
#: exchange: what a node reads of a control frame is bounded whatever a peer sends.
MAX_CONTROL_ITEMS: Final = 512
MAX_PX: Final = 16
MAX_ADDRESS: Final = 256
#: Longest backoff a PRUNE may ask for (seconds): a larger one is read as this.
MAX_BACKOFF: Final = 3600
_CONTROL_KINDS: Final = frozenset((HELLO, GRAFT, PRUNE, IHAVE, IWANT))

P = TypeVar("P", bound=Hashable)


class UnsupportedVersion(E.MessagingProtocolError):
    """The peer's HELLO names a pub/sub version this node does not speak: the link is
    refused (closed), as a message of a kind it cannot read would be misrouted."""


@dataclass(frozen=True, slots=True)
class MeshParams:
    """The mesh's degrees and timings (gossipsub v1.1's defaults and names)."""

    #: Target mesh degree per topic, and the bounds that trigger a repair.
    d: int = 6
    d_lo: int = 4
    d_hi: int = 12
    #: Peers kept by score when an oversized mesh is cut back to ``d``.
    d_score: int = 4
    #: Least number of non-mesh peers sent IHAVE per topic and heartbeat ...
    d_lazy: int = 6
    #: ... or this share of them, whichever is more.
    gossip_factor: float = 0.25
    heartbeat: float = 1.0
    #: Heartbeats of message ids kept for IWANT, and the last of them told in IHAVE.
    history_length: int = 5
    history_gossip: int = 3
    #: Most bytes of frames kept for IWANT: past it the oldest are forgotten (a burst of
    #: large valid messages would otherwise be held for ``history_length`` heartbeats
    #: whatever its size).
    history_bytes: int = 64 << 20
    #: How long message ids are remembered as seen (an IHAVE of one is not asked for).
    seen_ttl: float = 120.0
    #: A topic published to but not joined keeps its fanout peers this long.
    fanout_ttl: float = 60.0
    #: After a PRUNE neither side grafts the other on that topic for this long ...
    prune_backoff: float = 60.0
    #: ... or this long after one sent on leaving the topic (the node may soon join it
    #: again, and its old mesh peers are the first it would graft).
    unsubscribe_backoff: float = 10.0
    #: Peers named in a PRUNE (peer exchange), at most.
    px_peers: int = MAX_PX
    #: Publish a node's own messages to every peer of the topic, not the mesh only
    #: (gossipsub v1.1's flood publishing: the first hop cannot be starved by a mesh
    #: of sybils).
    flood_publish: bool = True
    #: Copies of one message sent to one peer for its IWANTs, at most.
    gossip_retransmission: int = 3
    #: Ids a node asks one peer for per heartbeat (IWANT), at most.
    max_iwant: int = 5000
    #: IHAVE frames read from one peer per heartbeat, at most.
    max_ihave_frames: int = 10
    #: A duplicate a mesh peer brings this long after the first copy still counts as a
    #: mesh delivery (P3): it was on its way.
    delivery_window: float = 0.1

    def __post_init__(self) -> None:
        for name in ("d", "d_lo", "d_hi", "d_score", "d_lazy", "history_length"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an int, 0 or more")
        if not 0 < self.d_lo <= self.d <= self.d_hi:
            raise ValueError("mesh degrees: 0 < d_lo <= d <= d_hi")
        if self.d_score > self.d:
            raise ValueError("d_score must be at most d")
        if not 0 < self.history_gossip <= self.history_length:
            raise ValueError("history_gossip must be in 1..history_length")
        for name in (
            "gossip_factor",
            "heartbeat",
            "seen_ttl",
            "fanout_ttl",
            "prune_backoff",
            "unsubscribe_backoff",
            "delivery_window",
        ):
            check_number(name, getattr(self, name), signed=False)
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be above 0 seconds")
        if max(self.prune_backoff, self.unsubscribe_backoff) > MAX_BACKOFF:
            raise ValueError(f"backoffs are at most {MAX_BACKOFF} s")
        for name in (
            "px_peers",
            "gossip_retransmission",
            "max_iwant",
            "max_ihave_frames",
            "history_bytes",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an int, 0 or more")
        if self.px_peers > MAX_PX:
            raise ValueError(f"px_peers is at most {MAX_PX}")
        if type(self.flood_publish) is not bool:
            raise TypeError("flood_publish must be a bool")


class _Peer:
    __slots__ = ("address", "asked", "ihaves", "key", "label", "mesh", "node_id", "topics")

    def __init__(self, key: Hashable, label: str) -> None:
        self.key = key
        self.label = label
        #: Whether it speaks the mesh (sent HELLO).
        self.mesh = False
        self.node_id: str | None = None
        self.address: str | None = None
        #: Topics it declared interest in; None until its first SUBSCRIBE.
        self.topics: set[str] | None = None
        #: IHAVE frames read from it, and ids asked of it, this heartbeat.
        self.ihaves = 0
        self.asked = 0


Frames = list[tuple[Any, bytes]]


class MeshRouter(Generic[P]):
    """One node's meshes, gossip and peer exchange (module docstring)."""

    def __init__(
        self,
        node_id: str,
        *,
        params: MeshParams | None = None,
        rng: random.Random | None = None,
        score: Callable[[Hashable, float], float] | None = None,
        on_graft: Callable[[Hashable, float], None] | None = None,
        on_prune: Callable[[Hashable, float], None] | None = None,
        on_mesh_delivery: Callable[[Hashable, float], None] | None = None,
        address: str | None = None,
    ) -> None:
        """``score(key, now)``: a peer's score (0 for all without); ``on_graft`` /
        ``on_prune`` / ``on_mesh_delivery(key, now)``: told when a peer enters or leaves
        one of the node's meshes and when a mesh peer brings a message (P3).
        ``address``: where peers may reach this node (named to others in peer
        exchange)."""
        self.params = params or MeshParams()
        self.node_id = node_id
        self.address = address
        self.rng = rng or random.Random()
        self._score = score or (lambda key, now: 0.0)
        self._on_graft = on_graft or (lambda key, now: None)
        self._on_prune = on_prune or (lambda key, now: None)
        self._on_mesh_delivery = on_mesh_delivery or (lambda key, now: None)
        self._peers: dict[P, _Peer] = {}
        #: Topics this node is in (local subscribers, or relaying for a neighbour).
        self._joined: set[str] = set()
        self.mesh: dict[str, set[P]] = {}
        self.fanout: dict[str, set[P]] = {}
        self._fanout_used: dict[str, float] = {}
        #: (peer, topic) -> the time before which neither grafts the other.
        self._backoff: dict[tuple[P, str], float] = {}
        #: Message ids by heartbeat, newest first, with their topics; and each id's frame.
        self._history: deque[list[tuple[bytes, str]]] = deque([[]])
        self._frames: dict[bytes, bytes] = {}  # (oldest first)
        self._frame_bytes = 0
        #: Ids seen (time first seen), oldest first.
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        #: (peer, id) -> copies sent for its IWANTs (cleared with the history).
        self._served: dict[tuple[P, bytes], int] = {}
        #: Peers learnt from PRUNEs (node id -> address), newest last.
        self.exchanged: OrderedDict[str, str | None] = OrderedDict()
        #: What happened, for views and the bench.
        self.counters: dict[str, int] = {
            "graft_sent": 0,
            "prune_sent": 0,
            "ihave_sent": 0,
            "iwant_sent": 0,
            "iwant_served": 0,
            "graft_refused": 0,
        }

    # -- peers -----------------------------------------------------------------------------

    def add_peer(self, peer: P, key: Hashable, label: str) -> Frames:
        """A link to ``peer`` opened: the HELLO to send it first."""
        self._peers[peer] = _Peer(key, label)
        return [(peer, self.hello_frame())]

    def hello_frame(self) -> bytes:
        return encode_frame([HELLO, MESH_VERSION, self.node_id, self.address])

    def remove_peer(self, peer: P, now: float) -> None:
        """The link to ``peer`` closed: out of every mesh and fanout."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        for members in self.mesh.values():
            if peer in members:
                members.discard(peer)
                self._on_prune(state.key, now)
        for members in self.fanout.values():
            members.discard(peer)
        for key in [k for k in self._backoff if k[0] == peer]:
            del self._backoff[key]

    def interest(self, peer: P, added: Iterable[str], removed: Iterable[str], now: float) -> Frames:
        """``peer`` declared interest in ``added`` and withdrew it from ``removed``: a mesh
        peer of a joined topic whose mesh is short is grafted at once (so a message
        published right after a subscription reaches it), and one that withdrew leaves
        the topic's mesh."""
        state = self._peers.get(peer)
        if state is None:
            return []
        if state.topics is None:
            state.topics = set()
        out: Frames = []
        grafts: list[str] = []
        for topic in removed:
            state.topics.discard(topic)
            members = self.mesh.get(topic)
            if members is not None and peer in members:
                members.discard(peer)
                self._on_prune(state.key, now)
            fan = self.fanout.get(topic)
            if fan is not None:
                fan.discard(peer)
        for topic in added:
            state.topics.add(topic)
            members = self.mesh.get(topic)
            if (
                state.mesh
                and members is not None
                and peer not in members
                and len(members) < self.params.d
                and self._graftable(peer, state, topic, now)
            ):
                members.add(peer)
                self._on_graft(state.key, now)
                grafts.append(topic)
        if grafts:
            out += self._control(peer, GRAFT, grafts)
        return out

    def wants(self, peer: P, topic: str) -> bool:
        """Whether ``peer`` declared interest in ``topic`` (a flooding peer that has not
        declared anything yet takes every message, as it always did)."""
        state = self._peers[peer]
        if state.topics is None:
            return not state.mesh
        return topic in state.topics

    # -- topics this node is in --------------------------------------------------------------

    def join(self, topic: str, now: float) -> Frames:
        """This node is now in ``topic``: its mesh starts from the fanout peers, then
        other mesh peers of the topic, up to ``d``; each is grafted."""
        if topic in self._joined:
            return []
        self._joined.add(topic)
        members = self.fanout.pop(topic, set())
        self._fanout_used.pop(topic, None)
        peers = self._peers
        members = {p for p in members if p in peers and self._graftable(p, peers[p], topic, now)}
        if len(members) < self.params.d:
            more = [p for p in self._candidates(topic, now) if p not in members]
            self.rng.shuffle(more)
            members.update(more[: self.params.d - len(members)])
        self.mesh[topic] = members
        out: Frames = []
        for peer in members:
            self._on_graft(self._peers[peer].key, now)
            out += self._control(peer, GRAFT, [topic])
        return out

    def leave(self, topic: str, now: float) -> Frames:
        """This node left ``topic``: every mesh peer is pruned (with peer exchange)."""
        if topic not in self._joined:
            return []
        self._joined.discard(topic)
        members = self.mesh.pop(topic, set())
        out: Frames = []
        backoff = self.params.unsubscribe_backoff
        for peer in members:
            self._on_prune(self._peers[peer].key, now)
            out += self._prune(peer, [topic], now, exchange=True, backoff=backoff)
        return out

    @property
    def joined(self) -> frozenset[str]:
        return frozenset(self._joined)

    # -- messages ---------------------------------------------------------------------------

    def seen(self, message_id: bytes) -> bool:
        return message_id in self._seen

    def published(self, topic: str, message_id: bytes, frame: bytes, now: float) -> list[P]:
        """This node publishes: the peers to send ``frame`` to (every peer of the topic
        with flood publishing, else the mesh, or the topic's fanout when not in it)."""
        self._record(topic, message_id, frame, now)
        if self.params.flood_publish:
            return [p for p in self._peers if self._score_ok(p, now) and self.wants(p, topic)]
        return self.targets(topic, None, now)

    def received(
        self, peer: P, topic: str, message_id: bytes, frame: bytes | None, now: float
    ) -> list[P]:
        """A message came from ``peer``; ``frame`` is what to send on (None: a copy of one
        seen already, or one not to pass on). Returns the peers to forward it to."""
        state = self._peers.get(peer)
        first = self._seen.get(message_id)
        in_mesh = state is not None and peer in self.mesh.get(topic, ())
        if in_mesh and (first is None or now - first <= self.params.delivery_window):
            assert state is not None
            self._on_mesh_delivery(state.key, now)
        if frame is None:
            if first is None:
                self._seen[message_id] = now
            return []
        self._record(topic, message_id, frame, now)
        return self.targets(topic, peer, now)

    def targets(self, topic: str, source: P | None, now: float) -> list[P]:
        """Where a message of ``topic`` goes on: the topic's mesh (or fanout, when this
        node is not in it), and every flooding peer that wants it; never back to
        ``source``."""
        joined = topic in self._joined
        members = self.mesh.get(topic, set()) if joined else self._fanout(topic, now)
        out = [p for p in members if p != source and self.wants(p, topic)]
        for p, state in self._peers.items():
            if not state.mesh and p != source and self.wants(p, topic):
                out.append(p)
        return out

    def _fanout(self, topic: str, now: float) -> set[P]:
        members = self.fanout.get(topic)
        if members is None:
            members = self.fanout[topic] = set()
        if len(members) < self.params.d:
            more = [
                p
                for p, s in self._peers.items()
                if s.mesh and p not in members and self.wants(p, topic) and self._score_ok(p, now)
            ]
            self.rng.shuffle(more)
            members.update(more[: self.params.d - len(members)])
        self._fanout_used[topic] = now
        return members

    def _record(self, topic: str, message_id: bytes, frame: bytes, now: float) -> None:
        if message_id not in self._seen:
            self._seen[message_id] = now
        frames = self._frames
        if message_id not in frames:
            frames[message_id] = frame
            self._frame_bytes += len(frame)
            self._history[0].append((message_id, topic))
            while self._frame_bytes > self.params.history_bytes and frames:
                oldest = next(iter(frames))
                self._frame_bytes -= len(frames.pop(oldest))

    # -- control frames ---------------------------------------------------------------------

    def control(self, peer: P, message: list[Any], now: float) -> Frames:
        """Handle a decoded HELLO, GRAFT, PRUNE, IHAVE or IWANT from ``peer``; the frames
        to send in answer. A malformed one raises
        :class:`~dtp.messaging.errors.MalformedMessage`; a HELLO of another version,
        :class:`UnsupportedVersion`."""
        state = self._peers.get(peer)
        if state is None:
            return []
        kind = message[0] if message else None
        if kind == HELLO:
            return self._hello(state, message)
        if not state.mesh:
            raise E.MalformedMessage("a mesh control frame before the peer's HELLO")
        if kind == GRAFT and len(message) == 2:
            return self._grafted(peer, state, _topics(message[1]), now)
        if kind == PRUNE and len(message) == 4:
            return self._pruned(peer, state, message, now)
        if kind == IHAVE and len(message) == 3 and _is_topic(message[1]):
            return self._ihave(peer, state, message[1], _ids(message[2]), now)
        if kind == IWANT and len(message) == 2:
            return self._iwant(peer, _ids(message[1]))
        raise E.MalformedMessage("not a pub/sub mesh frame")

    def _hello(self, state: _Peer, message: list[Any]) -> Frames:
        if len(message) != 4 or type(message[1]) is not int:
            raise E.MalformedMessage("HELLO is [14, version, node_id, address]")
        _, version, node_id, address = message
        if version != MESH_VERSION:
            raise UnsupportedVersion(
                f"the peer speaks pub/sub version {version}; this node speaks "
                f"{MESH_VERSION} (and 1, the flooding kind, which sends no HELLO)"
            )
        if not _is_text(node_id, 256) or not (address is None or _is_text(address, MAX_ADDRESS)):
            raise E.MalformedMessage("HELLO's node id and address are short text")
        if state.mesh:
            raise E.MalformedMessage("a second HELLO")
        state.mesh = True
        state.node_id = node_id
        state.address = address
        return []

    def _grafted(self, peer: P, state: _Peer, topics: list[str], now: float) -> Frames:
        refused: list[str] = []
        for topic in topics:
            members = self.mesh.get(topic)
            if members is None or peer in members:
                if members is None:
                    refused.append(topic)  # not in the topic: it should look elsewhere
                continue
            if self._score(state.key, now) < 0 or self._backoff.get((peer, topic), 0) > now:
                # a peer below 0 is not grafted; one grafting again within its backoff
                # is refused again (and its backoff starts over)
                self.counters["graft_refused"] += 1
                refused.append(topic)
                continue
            if len(members) >= self.params.d_hi:
                refused.append(topic)  # full: pruned with peers to try instead
                continue
            members.add(peer)
            self._on_graft(state.key, now)
        return self._prune(peer, refused, now, exchange=True) if refused else []

    def _pruned(self, peer: P, state: _Peer, message: list[Any], now: float) -> Frames:
        _, topics, backoff, px = message
        topics = _topics(topics)
        if type(backoff) is not int or backoff < 0 or not isinstance(px, list) or len(px) > MAX_PX:
            raise E.MalformedMessage("PRUNE is [16, topics, backoff_s, [[node_id, address]...]]")
        records: list[tuple[str, str | None]] = []
        for entry in px:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not _is_text(entry[0], 256)
                or not (entry[1] is None or _is_text(entry[1], MAX_ADDRESS))
            ):
                raise E.MalformedMessage("a PRUNE's peer is [node_id, address]")
            records.append((entry[0], entry[1]))
        until = now + min(backoff, MAX_BACKOFF)
        for topic in topics:
            members = self.mesh.get(topic)
            if members is not None and peer in members:
                members.discard(peer)
                self._on_prune(state.key, now)
            self._backoff[(peer, topic)] = max(self._backoff.get((peer, topic), 0.0), until)
        if records and self._score(state.key, now) >= 0:
            # peer exchange, from peers in good standing only (a sybil would fill it)
            for node_id, address in records:
                if node_id != self.node_id:
                    self.exchanged.pop(node_id, None)
                    self.exchanged[node_id] = address
            while len(self.exchanged) > 4 * MAX_PX:
                self.exchanged.popitem(last=False)
        return []

    def _ihave(self, peer: P, state: _Peer, topic: str, ids: list[bytes], now: float) -> Frames:
        state.ihaves += 1
        if (
            state.ihaves > self.params.max_ihave_frames
            or topic not in self._joined
            or self._score(state.key, now) < 0
        ):
            return []
        room = self.params.max_iwant - state.asked
        want = [i for i in ids if i not in self._seen][: max(room, 0)]
        if not want:
            return []
        state.asked += len(want)
        self.counters["iwant_sent"] += 1
        return self._control_list(peer, IWANT, want)

    def _iwant(self, peer: P, ids: list[bytes]) -> Frames:
        out: Frames = []
        limit = self.params.gossip_retransmission
        for message_id in ids:
            frame = self._frames.get(message_id)
            if frame is None:
                continue
            served = self._served.get((peer, message_id), 0)
            if served >= limit:
                continue
            self._served[(peer, message_id)] = served + 1
            self.counters["iwant_served"] += 1
            out.append((peer, frame))
        return out

    # -- the heartbeat ----------------------------------------------------------------------

    def heartbeat(self, now: float) -> Frames:
        """Repair every mesh (prune peers below 0, graft up to ``d`` when under
        ``d_lo``, cut back to ``d`` when over ``d_hi``, keeping the ``d_score`` best),
        gossip IHAVE, expire fanouts, backoffs and history."""
        p = self.params
        grafts: dict[P, list[str]] = {}
        prunes: dict[P, list[str]] = {}
        for state in self._peers.values():
            state.ihaves = 0
            state.asked = 0
        for topic, members in self.mesh.items():
            for peer in list(members):
                if self._score(self._peers[peer].key, now) < 0:
                    members.discard(peer)
                    self._on_prune(self._peers[peer].key, now)
                    prunes.setdefault(peer, []).append(topic)
            if len(members) < p.d_lo:
                more = [q for q in self._candidates(topic, now) if q not in members]
                self.rng.shuffle(more)
                for peer in more[: p.d - len(members)]:
                    members.add(peer)
                    self._on_graft(self._peers[peer].key, now)
                    grafts.setdefault(peer, []).append(topic)
            elif len(members) > p.d_hi:
                ranked = sorted(members, key=lambda q: -self._score(self._peers[q].key, now))
                keep = ranked[: p.d_score]
                rest = ranked[p.d_score :]
                self.rng.shuffle(rest)
                keep += rest[: p.d - p.d_score]
                for peer in members - set(keep):
                    members.discard(peer)
                    self._on_prune(self._peers[peer].key, now)
                    prunes.setdefault(peer, []).append(topic)
        for topic in [t for t, used in self._fanout_used.items() if now - used > p.fanout_ttl]:
            del self._fanout_used[topic]
            self.fanout.pop(topic, None)
        for members in self.fanout.values():
            for peer in [q for q in members if not self._score_ok(q, now)]:
                members.discard(peer)
        out: Frames = []
        for peer, topics in grafts.items():
            out += self._control(peer, GRAFT, topics)
        for peer, topics in prunes.items():
            out += self._prune(peer, topics, now, exchange=True)
        out += self._gossip(now)
        self._age(now)
        return out

    def _gossip(self, now: float) -> Frames:
        """IHAVE of the last ``history_gossip`` heartbeats' ids, per topic, to
        ``max(d_lazy, gossip_factor x others)`` peers of the topic outside its mesh
        (and outside the fanout the message went to)."""
        p = self.params
        by_topic: dict[str, list[bytes]] = {}
        for window in list(self._history)[: p.history_gossip]:
            for message_id, topic in window:
                by_topic.setdefault(topic, []).append(message_id)
        out: Frames = []
        for topic, ids in by_topic.items():
            skip = self.mesh.get(topic) or self.fanout.get(topic) or set()
            others = [
                q
                for q, s in self._peers.items()
                if s.mesh
                and q not in skip
                and s.topics is not None
                and topic in s.topics
                and self._score_ok(q, now)
            ]
            if not others:
                continue
            count = max(p.d_lazy, int(p.gossip_factor * len(others)))
            self.rng.shuffle(others)
            if len(ids) > p.max_iwant:
                ids = self.rng.sample(ids, p.max_iwant)
            for peer in others[:count]:
                self.counters["ihave_sent"] += 1
                for i in range(0, len(ids), MAX_CONTROL_ITEMS):
                    out.append((peer, encode_frame([IHAVE, topic, ids[i : i + MAX_CONTROL_ITEMS]])))
        return out

    def _age(self, now: float) -> None:
        """Shift the history a heartbeat (forgetting the oldest window's frames), and
        forget expired backoffs and seen ids."""
        p = self.params
        self._history.appendleft([])
        while len(self._history) > p.history_length:
            for message_id, _ in self._history.pop():
                frame = self._frames.pop(message_id, None)
                if frame is not None:
                    self._frame_bytes -= len(frame)
            self._served = {k: v for k, v in self._served.items() if k[1] in self._frames}
        for key in [k for k, until in self._backoff.items() if until <= now]:
            del self._backoff[key]
        seen = self._seen
        while seen:
            message_id, at = next(iter(seen.items()))
            if now - at <= p.seen_ttl:
                break
            seen.popitem(last=False)

    # -- helpers ----------------------------------------------------------------------------

    def _candidates(self, topic: str, now: float) -> list[P]:
        """Mesh peers that declared ``topic`` and may be grafted on it now."""
        return [
            q
            for q, s in self._peers.items()
            if s.mesh
            and s.topics is not None
            and topic in s.topics
            and self._graftable(q, s, topic, now)
        ]

    def _graftable(self, peer: P, state: _Peer, topic: str, now: float) -> bool:
        return self._backoff.get((peer, topic), 0.0) <= now and self._score(state.key, now) >= 0

    def _score_ok(self, peer: P, now: float) -> bool:
        return self._score(self._peers[peer].key, now) >= 0

    def _control(self, peer: P, kind: int, topics: list[str]) -> Frames:
        self.counters["graft_sent" if kind == GRAFT else "prune_sent"] += 1
        return self._control_list(peer, kind, topics)

    def _control_list(self, peer: P, kind: int, items: list[Any]) -> Frames:
        return [
            (peer, encode_frame([kind, items[i : i + MAX_CONTROL_ITEMS]]))
            for i in range(0, len(items), MAX_CONTROL_ITEMS)
        ]

    def _prune(
        self,
        peer: P,
        topics: list[str],
        now: float,
        *,
        exchange: bool,
        backoff: float | None = None,
    ) -> Frames:
        """PRUNE ``peer`` from ``topics`` with the backoff (``prune_backoff`` unless
        given) and, for a peer in good standing, other peers of the topic to link to
        instead."""
        seconds = math.ceil(self.params.prune_backoff if backoff is None else backoff)
        for topic in topics:
            self._backoff[(peer, topic)] = now + seconds
        px: list[list[str | None]] = []
        if exchange and self.params.px_peers and self._score_ok(peer, now):
            named = set()
            for topic in topics:
                for q in self.mesh.get(topic, ()):
                    s = self._peers[q]
                    if q != peer and s.node_id is not None and s.node_id not in named:
                        named.add(s.node_id)
                        px.append([s.node_id, s.address])
            self.rng.shuffle(px)
            px = px[: self.params.px_peers]
        self.counters["prune_sent"] += 1
        return [
            (peer, encode_frame([PRUNE, topics[i : i + MAX_CONTROL_ITEMS], seconds, px]))
            for i in range(0, len(topics), MAX_CONTROL_ITEMS)
        ]


def is_mesh_control(message: object) -> bool:
    """Whether a decoded frame claims to be one of the mesh's control frames."""
    return (
        isinstance(message, list)
        and len(message) > 0
        and type(message[0]) is int
        and message[0] in _CONTROL_KINDS
    )


def _is_text(value: object, limit: int) -> bool:
    if not isinstance(value, str) or not value or len(value) > limit:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_topic(value: object) -> bool:
    return isinstance(value, str) and _is_text(value, 256) and len(value.encode()) <= 256


def _topics(value: object) -> list[str]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_CONTROL_ITEMS
        or not all(_is_topic(t) for t in value)
    ):
        raise E.MalformedMessage(f"a list of up to {MAX_CONTROL_ITEMS} topics")
    return value


def _ids(value: object) -> list[bytes]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_CONTROL_ITEMS
        or not all(isinstance(i, bytes) and len(i) == 16 for i in value)
    ):
        raise E.MalformedMessage(f"a list of up to {MAX_CONTROL_ITEMS} 16-byte message ids")
    return value
