"""A Gun relay over a :class:`~dtp.graph._store.Graph`: what a GunDB relay peer does with
the messages of the peers connected to it, without I/O. docs/graph.md, "The Gun peer",
says what it answers to each message, what a put is refused for and what it sends on.

The driver (:mod:`dtp.graph.gun._server`) hands :meth:`GunRelay.hear` each text frame a
peer sends and gives the relay, per peer, an object whose ``send(text)`` queues a
message for it; it calls :meth:`GunRelay.changed` with every batch the graph's table
changed by (the graph's change listener, brought to the driver's thread). A put is
checked whole and merged as one HAM batch, as a sync peer's batch is
(:meth:`Graph.merge`), so a value written here and in gun are the same bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from dtp.errors import DTPError
from dtp.graph import _private as private
from dtp.graph import namespace, sea
from dtp.graph._arguments import name_text
from dtp.graph._batch import entries
from dtp.graph._store import Graph
from dtp.graph.gun import _wire as wire
from dtp.graph.values import is_gun_value
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

logger = logging.getLogger("dtp.graph.gun")

MAX_SUBSCRIPTIONS = 100_000
"""Nodes one peer may subscribe to (a ``get`` beyond them is answered, not followed)."""
MAX_REPLY_BYTES = 4 << 20
"""About the most a ``get`` of many souls (a LEX on souls) is answered with."""


class PeerLink(Protocol):
    """What the relay needs of a connected peer: a way to queue a message for it."""

    def send(self, text: str) -> None:
        """Queue one message (a JSON object's text) for the peer."""


class _Peer:
    """What the relay knows of one connected peer."""

    __slots__ = ("link", "pid", "souls")

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.pid: str | None = None
        self.souls: set[str] = set()  # the nodes it subscribed to


class GunRelay:
    """The Gun relay of one graph (see the module docstring).

    ``pid``: this peer's ID in the ``?`` greeting (random by default). ``clock``:
    seconds, for the duplicate window. :attr:`stats` counts what was done.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        pid: str | None = None,
        dedup_seconds: float = 9.0,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph = graph
        self.pid = pid if pid is not None else wire.random_id()
        self.dedup_seconds = dedup_seconds
        self.max_subscriptions = max_subscriptions
        self._clock = clock
        self._new_id = wire.IdMaker()
        self._peers: dict[PeerLink, _Peer] = {}
        # soul -> peer -> the fields it asked for (None: the whole node)
        self._subs: dict[str, dict[_Peer, set[str] | None]] = {}
        self._seen: dict[str, float] = {}
        self._seen_order: deque[tuple[float, str]] = deque()
        self.stats: dict[str, Any] = {
            "peers": 0,
            "frames": 0,
            "puts": 0,
            "put_fields": 0,
            "refused_puts": 0,
            "gets": 0,
            "sent_updates": 0,
            "bad_frames": 0,
            "duplicates": 0,
        }

    # -- peers ---------------------------------------------------------------------

    def connect(self, link: PeerLink) -> None:
        """A peer connected: greet it (gun's ``?``, with our ``pid``)."""
        self._peers[link] = _Peer(link)
        self.stats["peers"] = len(self._peers)
        link.send(wire.obj({"#": self._new_id(), "dam": "?", "pid": self.pid}))

    def disconnect(self, link: PeerLink) -> None:
        """A peer left: forget it and its subscriptions."""
        peer = self._peers.pop(link, None)
        self.stats["peers"] = len(self._peers)
        if peer is None:
            return
        for soul in peer.souls:
            subs = self._subs.get(soul)
            if subs is not None:
                subs.pop(peer, None)
                if not subs:
                    del self._subs[soul]
        peer.souls.clear()

    @property
    def peer_count(self) -> int:
        """Peers connected now."""
        return len(self._peers)

    # -- what peers send ---------------------------------------------------------------

    def hear(self, link: PeerLink, text: str) -> None:
        """Handle one text frame of a connected peer."""
        peer = self._peers.get(link)
        if peer is None:
            return
        self.stats["frames"] += 1
        try:
            messages = wire.parse_frame(text)
        except wire.GunWireError as exc:
            self.stats["bad_frames"] += 1
            link.send(wire.obj({"#": self._new_id(), "dam": "!", "err": str(exc)}))
            return
        for msg in messages:
            self._hear_one(peer, msg)

    def _duplicate(self, msg_id: str) -> bool:
        now = self._clock()
        seen, order = self._seen, self._seen_order
        while order and order[0][0] <= now:
            expiry, old = order.popleft()
            if seen.get(old) == expiry:
                del seen[old]
        if msg_id in seen:
            return True
        expiry = now + self.dedup_seconds
        seen[msg_id] = expiry
        order.append((expiry, msg_id))
        return False

    def _hear_one(self, peer: _Peer, msg: dict[str, Any]) -> None:
        msg_id = msg.get("#")
        if not isinstance(msg_id, str) or not msg_id:
            msg_id = self._new_id()  # (gun gives one to a message that came without)
        elif self._duplicate(msg_id):
            self.stats["duplicates"] += 1
            return
        dam = msg.get("dam")
        if dam is not None:
            self._dam(peer, msg_id, msg, dam)
        elif "put" in msg:
            if "@" not in msg:
                self._put(peer, msg_id, msg["put"])
            # (a put answering one of ours: we ask nothing of peers)
        elif "get" in msg:
            self._get(peer, msg_id, msg["get"])
        # acknowledgements of what we sent ("@" alone) need nothing

    def _dam(self, peer: _Peer, msg_id: str, msg: dict[str, Any], dam: object) -> None:
        if dam == "?":
            pid = msg.get("pid")
            if isinstance(pid, str) and peer.pid is None:
                peer.pid = pid
            if "@" not in msg:
                peer.link.send(
                    wire.obj({"#": self._new_id(), "dam": "?", "pid": self.pid, "@": msg_id})
                )
        elif dam == "!":
            logger.info("gun peer %s reports an error: %.200s", peer.pid, msg.get("err"))
        # "hi" (a client starting), "opt", "mob" (mesh hints): nothing to do for a relay

    def _put(self, peer: _Peer, msg_id: str, put: object) -> None:
        self.stats["puts"] += 1
        try:
            fields = [self._check_rules(f) for f in wire.read_put(put)]
        except wire.GunWireError as exc:
            self._refuse(peer, msg_id, str(exc))
            return
        batch = encode_ham_batch(
            [HamUpdate(f.soul_bytes, f.field_bytes, f.state, f.text) for f in fields]
        )
        try:
            # (atomic: a field a rule of the graph refuses keeps the whole put out)
            report = self.graph.merge(batch, origin=peer, atomic=True)
        except DTPError as exc:  # the graph closed, or refused the batch
            self._refuse(peer, msg_id, f"Error: not stored: {exc}")
            return
        if report.refusals:
            first = report.refusals[0]
            who = f"rule {first.rule!r}" if first.rule is not None else first.reason
            self._refuse(
                peer,
                msg_id,
                f"Error: {first.soul[:80]!r}.{first.field[:80]!r} refused by {who}: "
                f"{first.message} -- nothing of the put stored.",
            )
            return
        if report.refused or report.dropped:
            self._refuse(
                peer,
                msg_id,
                f"Error: {report.refused} field(s) refused, {report.dropped} dropped "
                "(the queue of future states is full).",
            )
            return
        self.stats["put_fields"] += len(fields)
        peer.link.send(wire.ack(self._new_id(), msg_id))

    def _refuse(self, peer: _Peer, msg_id: str, reason: str) -> None:
        self.stats["refused_puts"] += 1
        logger.debug("gun peer %s: put %s refused: %s", peer.pid, msg_id, reason)
        peer.link.send(wire.ack(self._new_id(), msg_id, reason))

    @staticmethod
    def _check_rules(f: wire.PutField) -> wire.PutField:
        """The field as the graph stores it, once it passes the tiers' and SEA's rules."""
        if namespace.is_user_space(f.soul_bytes):
            # a signed field comes as its Gun string: stored as the envelope it spells
            stored = namespace.from_wire(f.value)
            update = HamUpdate(f.soul_bytes, f.field_bytes, f.state + 0.0, stored or b"")
            reason = namespace.check(update)
            if reason is not None:
                raise wire.GunWireError(
                    f"Error: {f.soul[:80]!r} is a dtp user space: only its owner's Ed25519 "
                    f"key signs there ({reason}; docs/graph.md, 'Signed namespaces')."
                )
            return dataclasses.replace(f, text=update.value)
        if private.is_private(f.soul_bytes):
            # ciphertexts relay as strings; only the author's signature lets one in
            # (as the merge would refuse it, but refused here before any of the put)
            reason = private.check(HamUpdate(f.soul_bytes, f.field_bytes, f.state + 0.0, f.text))
            if reason is not None:
                raise wire.GunWireError(
                    f"Error: {f.soul[:80]!r} is a dtp private space: only its author's "
                    f"Ed25519 key signs there ({reason}; docs/graph.md, 'Privacy tiers')."
                )
            return f
        refusal = sea.check(f.soul, f.field, f.value, f.state)
        if refusal is not None:
            raise wire.GunWireError(refusal.message)
        return f

    def _get(self, peer: _Peer, msg_id: str, get: object) -> None:
        self.stats["gets"] += 1
        if not isinstance(get, dict):
            peer.link.send(wire.not_found(self._new_id(), msg_id))
            return
        soul = get.get("#")
        has = get.get(".")
        if isinstance(soul, str) and soul:
            node = self._node(soul, has)
            self._subscribe(peer, soul, has)
            if node is None:
                peer.link.send(wire.not_found(self._new_id(), msg_id))
            else:
                peer.link.send(wire.put_message(self._new_id(), [node], msg_id))
            return
        if isinstance(soul, dict):  # a LEX of souls: answered, not followed
            nodes: list[str] = []
            size = 0
            try:
                souls = self.graph.souls()
            except DTPError:
                souls = []
            for name in souls:
                if size > MAX_REPLY_BYTES:
                    break
                if wire.lex_match(name, soul):
                    node = self._node(name, has)
                    if node is not None:
                        nodes.append(node)
                        size += len(node)
            if nodes:
                peer.link.send(wire.put_message(self._new_id(), nodes, msg_id))
                return
        peer.link.send(wire.not_found(self._new_id(), msg_id))

    def _node(self, soul: str, has: object) -> str | None:
        """A node's JSON for a ``get``: its fields that ``has`` asks for (all when
        None) and that a Gun peer can hold; None when there are none."""
        try:
            stored = self.graph.stored_node(soul)
        except DTPError:
            return None
        if not stored:
            return None
        signed = namespace.is_user_space(soul.encode("utf-8", "surrogatepass"))
        fields: list[tuple[str, float, bytes]] = []
        for field_b, state, value in stored:
            name = name_text(field_b)
            if name is None or (has is not None and not wire.lex_match(name, has)):
                continue
            text = _served(signed, value)
            if text is not None:
                fields.append((name, state, text))
        if not fields:
            return None
        fields.sort()  # (gun sorts a node's keys as it answers)
        return wire.node_json(soul, fields)

    def _subscribe(self, peer: _Peer, soul: str, has: object) -> None:
        subs = self._subs.get(soul)
        if subs is None:
            if len(peer.souls) >= self.max_subscriptions:
                return
            subs = self._subs[soul] = {}
        if peer not in subs:
            if len(peer.souls) >= self.max_subscriptions:
                return
            peer.souls.add(soul)
            subs[peer] = set() if isinstance(has, str) else None
        keys = subs[peer]
        if keys is None:
            return
        if isinstance(has, str):
            keys.add(has)
        else:
            subs[peer] = None  # the whole node (or a LEX of its fields: sent whole)

    # -- what the graph changed ----------------------------------------------------------

    def changed(self, batch: bytes, origin: object) -> None:
        """Send every peer subscribed to a changed node the fields it follows (but not
        to the peer the change came from)."""
        if not self._subs:
            return
        pending: dict[_Peer, dict[str, list[tuple[str, float, bytes]]]] = {}
        for soul_b, field_b, state, value, _ in entries(batch):
            soul = name_text(soul_b)
            if soul is None:
                continue
            subs = self._subs.get(soul)
            if not subs:
                continue
            field = name_text(field_b)
            text = None if field is None else _served(namespace.is_user_space(soul_b), value)
            if field is None or text is None:
                continue
            for peer, keys in subs.items():
                if peer is origin or (keys is not None and field not in keys):
                    continue
                pending.setdefault(peer, {}).setdefault(soul, []).append((field, state, text))
        for peer, nodes in pending.items():
            self.stats["sent_updates"] += sum(len(f) for f in nodes.values())
            peer.link.send(
                wire.put_message(
                    self._new_id(), [wire.node_json(soul, f) for soul, f in nodes.items()]
                )
            )


def _served(signed: bool, stored: bytes) -> bytes | None:
    """The Gun text a Gun peer is sent for a stored value (a signed field's envelope as
    its Gun string), or None for a value no Gun peer can hold."""
    if signed:
        text = namespace.to_wire(stored)
        return None if text is None else wire.quote(text).encode()
    return stored if is_gun_value(stored) else None


__all__ = ["MAX_REPLY_BYTES", "MAX_SUBSCRIPTIONS", "GunRelay", "PeerLink"]
