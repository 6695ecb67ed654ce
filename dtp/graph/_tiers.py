"""The graph's privacy tiers, one API shape for the three: docs/graph.md, "Privacy
tiers", says the tiers, their handles and (in "Private spaces") how an author keeps
the private tier's keys.

Every write a handle makes goes through the graph's one write path
(:meth:`Graph._write <dtp.graph._store.Graph._write>`) with the tier's :class:`Sealer`
-- :class:`Signer` for the public and protected tiers, the space's for the private
one -- so the rules judge it and a tracked node gets a version, as for ``put``. Each
record of a private space's key node is written once or flips one reader on or off,
so the author's devices may change the key node at the same time and their records
merge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dtp.errors import ErrorCode, LocalProtocolError, NotAReader, NotTheAuthor, PrivateDataError
from dtp.graph import _private as private
from dtp.graph import namespace, sea
from dtp.graph._arguments import name_text, utf8_name
from dtp.graph._changes import Change, Subscription
from dtp.graph.values import JSON, decode_value
from dtp.identity.keys import HostIdentity, noise_key_object

if TYPE_CHECKING:
    from dtp.graph._history import History, Version
    from dtp.graph.collab import Access, CollabArray, CollabMap, CollabText

logger = logging.getLogger("dtp.graph._store")


class Sealer(Protocol):
    """How one local write stores its values and reads them back (per tier): what
    :meth:`Graph._write <dtp.graph._store.Graph._write>` takes."""

    def seal(self, soul: bytes, field: bytes, state: float, text: bytes) -> bytes:
        """The stored value of a field holding the Gun text ``text`` at ``state``."""
        ...

    def open(self, soul: bytes, field: bytes, state: float, stored: bytes) -> JSON:
        """A stored value read back (a tracked node's heads and versions)."""
        ...


class TieredGraph(Protocol):
    """What a tier's handles use of their graph (a :class:`~dtp.graph._store.Graph`)."""

    @property
    def identity(self) -> HostIdentity | None: ...

    @property
    def history(self) -> History: ...

    def put(self, soul: str, data: Mapping[str, Any]) -> float: ...

    def get(self, soul: str) -> dict[str, JSON] | None: ...

    def get_field(self, soul: str, field: str, default: Any = None) -> JSON: ...

    def state_of(self, soul: str, field: str) -> float | None: ...

    def stored_node(self, soul: str) -> list[tuple[bytes, float, bytes]]: ...

    def subscribe(
        self, soul: str, callback: Callable[[Change], None], *, field: str | None = None
    ) -> Subscription: ...

    def _fields_of(
        self, soul: str, data: Mapping[str, Any]
    ) -> list[tuple[bytes, bytes, bytes]]: ...

    def _write(
        self,
        data: Sequence[tuple[bytes, bytes, bytes]],
        sealer: Sealer,
        records: Sequence[tuple[bytes, bytes, Callable[[float], bytes]]] = (),
        *,
        versioned: bool = True,
    ) -> float: ...


class Signer:
    """The sealer of the public and protected tiers: a public soul's value is its Gun
    text, a ``~0x<address>/...`` one is signed by ``identity`` (which must own it); a
    write to a Gun user space (only SEA's owner signs there) is refused."""

    def __init__(self, identity: HostIdentity | None) -> None:
        self.identity = identity

    def seal(self, soul: bytes, field: bytes, state: float, text: bytes) -> bytes:
        refusal = sea.check_stored(soul, field, state, text)
        if refusal is not None:
            # a Gun user space (~<pub>): only SEA's owner signs there, and the signature
            # covers the state this write just took
            raise LocalProtocolError(
                f"put() to {soul.decode(errors='replace')[:80]!r} breaks a rule of Gun's "
                f"user spaces: {refusal.message} (docs/graph.md, 'Gun user spaces')",
                ErrorCode.ARG,
            )
        if not namespace.is_user_space(soul):
            return text
        if self.identity is None:
            raise LocalProtocolError(
                f"put() to the user-space soul {soul.decode()[:80]!r} is signed by its "
                f"owner {namespace.owner_of(soul)}: open the graph with "
                "Graph(identity=<the owner's HostIdentity>), or write with "
                "graph.protected(path, identity) (docs/graph.md, 'Signed namespaces')",
                ErrorCode.ARG,
            )
        return namespace.seal(self.identity, soul, field, state, text)

    def open(self, soul: bytes, field: bytes, state: float, stored: bytes) -> JSON:
        return signed_value(soul, stored)


def signed_value(soul: bytes, stored: bytes) -> JSON:
    """The value of a public or protected field as stored (a ``~0x<address>/...`` one
    in its envelope): what the graph's reads give."""
    if namespace.is_user_space(soul):
        stored = namespace.open_envelope(stored)
    return decode_value(stored)


PUBLIC = "public"
PROTECTED = "protected"
PRIVATE = "private"


def _check_fields(fields: object) -> Mapping[str, Any]:
    if not isinstance(fields, Mapping):
        raise LocalProtocolError(
            f"put() takes a mapping of fields, not {type(fields).__name__}", ErrorCode.ARG
        )
    return fields


def _child_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise LocalProtocolError("a child's name is a non-empty string", ErrorCode.ARG)
    return name


def _identity(value: object, what: str) -> HostIdentity | None:
    if value is not None and not isinstance(value, HostIdentity):
        raise TypeError(f"{what} must be a HostIdentity or None, not {type(value).__name__}")
    return value


def _author(identity: HostIdentity | None, author: object) -> str:
    if author is None:
        if identity is None:
            raise LocalProtocolError(
                "name the space's author: author=<Sui address>, or an identity",
                ErrorCode.ARG,
            )
        return identity.sui_address
    if not isinstance(author, str) or namespace.owner_of(f"~{author}".encode()) != author:
        raise LocalProtocolError(
            f"author must be a Sui address (0x + 64 lowercase hex), not {author!r:.80}",
            ErrorCode.ARG,
        )
    return author


def _must_author(identity: HostIdentity | None, author: str, soul: str, what: str) -> HostIdentity:
    if identity is None:
        raise NotTheAuthor(f"{what} {soul[:80]!r} needs its author's identity ({author})")
    if identity.sui_address != author:
        raise NotTheAuthor(
            f"{what} {soul[:80]!r}: only its author {author} signs there, "
            f"not {identity.sui_address}"
        )
    return identity


class _Node:
    """What the three tiers' handles share: the graph and the soul."""

    tier: ClassVar[str]

    def __init__(self, graph: TieredGraph, soul: str) -> None:
        self.graph = graph
        self.soul = soul
        """The node's soul, as :class:`~dtp.graph._store.Graph` names it."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.soul!r}>"

    def _access(self) -> Access:
        raise NotImplementedError

    def _collab(self, kind: str, field: str) -> Any:
        from dtp.graph import collab  # (pycrdt: the collab extra, on first use)

        return collab.open_value(kind, self._access(), self.soul, field)

    def text(self, field: str) -> CollabText:
        """A replica of the collaborative text in ``field`` (docs/graph.md,
        "Collaborative values"): edits merged by Yjs, written through the tier."""
        return cast("CollabText", self._collab("text", field))

    def array(self, field: str) -> CollabArray:
        """A replica of the collaborative array (a list) in ``field``."""
        return cast("CollabArray", self._collab("array", field))

    def map(self, field: str) -> CollabMap:
        """A replica of the collaborative map in ``field``."""
        return cast("CollabMap", self._collab("map", field))


class _StoredNode(_Node):
    """What the public and protected handles read as the graph holds it (a protected
    node's fields each verified when they were merged)."""

    def get(self) -> dict[str, JSON] | None:
        """The node's fields, or None for an unknown node."""
        return self.graph.get(self.soul)

    def get_field(self, field: str, default: Any = None) -> JSON:
        """One field's value, or ``default`` when there is none."""
        return self.graph.get_field(self.soul, field, default)

    def history(self) -> list[Version]:
        """The node's versions, oldest first, when its history is tracked
        (``graph.history(soul)``; docs/graph.md, "History"; in a protected node each
        signed by the author: ``verified``)."""
        return self.graph.history(self.soul)

    def subscribe(
        self, callback: Callable[[Change], None], *, field: str | None = None
    ) -> Subscription:
        """``callback(change)`` for every change of the node (or of one field)."""
        return self.graph.subscribe(self.soul, callback, field=field)


class PublicNode(_StoredNode):
    """A public node: anyone reads and writes (``graph.put``/``graph.get`` on it)."""

    tier = PUBLIC

    def put(self, fields: Mapping[str, Any]) -> float:
        """Write fields (as :meth:`Graph.put`); returns their state."""
        return self.graph.put(self.soul, _check_fields(fields))

    def _access(self) -> Access:
        from dtp.graph.collab import Access

        graph = self.graph

        def write(writes: list[tuple[bytes, bytes, bytes]]) -> float:
            return graph._write(writes, Signer(graph.identity), versioned=False)

        return Access(graph, write, Signer(None).open, PUBLIC)

    def child(self, name: str) -> PublicNode:
        """The node ``<soul>/<name>`` (where a nested mapping in put() lands)."""
        return PublicNode(self.graph, f"{self.soul}/{_child_name(name)}")


class ProtectedNode(_StoredNode):
    """A node of an author's signed space ``~<author>/<path>``: anyone reads, only the
    author writes (every value signed by its Ed25519 key; peers refuse the rest)."""

    tier = PROTECTED

    def __init__(
        self, graph: TieredGraph, soul: str, author: str, identity: HostIdentity | None
    ) -> None:
        super().__init__(graph, soul)
        self.author = author
        """The author's Sui address."""
        self.identity = identity

    def put(self, fields: Mapping[str, Any]) -> float:
        """Write fields, signed by the author; :class:`~dtp.errors.NotTheAuthor` for
        anyone else (nothing written)."""
        identity = _must_author(self.identity, self.author, self.soul, "writing to")
        writes = self.graph._fields_of(self.soul, _check_fields(fields))
        return self.graph._write(writes, Signer(identity))

    def _access(self) -> Access:
        from dtp.graph.collab import Access

        def write(writes: list[tuple[bytes, bytes, bytes]]) -> float:
            identity = _must_author(self.identity, self.author, self.soul, "writing to")
            return self.graph._write(writes, Signer(identity), versioned=False)

        return Access(self.graph, write, Signer(None).open, PROTECTED)

    def child(self, name: str) -> ProtectedNode:
        """The node ``<soul>/<name>`` of the same space."""
        return ProtectedNode(
            self.graph, f"{self.soul}/{_child_name(name)}", self.author, self.identity
        )


# -- the private tier --------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    key_id: bytes
    key: bytes
    text: bytes


@dataclass(frozen=True)
class _Wrap:
    key: bytes
    reader: bytes


@dataclass(frozen=True)
class _Reader:
    on: bool


_Item = _Value | _Wrap | _Reader


@dataclass
class _KeyNode:
    """A space's key node as read: readers (key -> (state, on)) and wraps (key id ->
    reader -> (state, body))."""

    readers: dict[bytes, tuple[float, bool]]
    wraps: dict[bytes, dict[bytes, tuple[float, bytes]]]

    def current(self) -> set[bytes]:
        return {r for r, (_, on) in self.readers.items() if on}

    def removed(self) -> set[bytes]:
        return {r for r, (_, on) in self.readers.items() if not on}


class _Space:
    """One private space as one identity sees it: its souls, the content keys that
    identity has unwrapped (cached), and the author's writes."""

    def __init__(
        self, graph: TieredGraph, author: str, name: str, identity: HostIdentity | None
    ) -> None:
        self.graph = graph
        self.author = author
        self.name = name
        self.root = private.space_soul(author, name)
        self.keys_soul = private.key_soul(author, name)
        self._keys_b = self.keys_soul.encode()
        self.identity = identity
        self._secret: X25519PrivateKey | None = None
        self.reader_key: bytes | None = None
        if identity is not None:
            raw = identity.noise_private_bytes()
            self._secret = noise_key_object(raw) or X25519PrivateKey.from_private_bytes(raw)
            self.reader_key = identity.noise_public
        self._content: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def key_node(self) -> _KeyNode:
        node = _KeyNode({}, {})
        for field, state, stored in self.graph.stored_node(self.keys_soul):
            kind = private.parse_key_field(field)
            body = private.body_of(stored)
            if kind is None or body is None:
                continue  # (the merge let no such thing in)
            what, reader, key_id = kind
            if what == "r":
                node.readers[reader] = (state, body[1:2] == b"\x01")
            elif key_id is not None:
                node.wraps.setdefault(key_id, {})[reader] = (state, body)
        return node

    def content_key(self, key_id: bytes, node: _KeyNode | None = None) -> bytes:
        """The content key ``key_id``, unwrapped with this identity's key (cached);
        NotAReader when no wrap to it exists."""
        with self._lock:
            key = self._content.get(key_id)
        if key is not None:
            return key
        if self._secret is None or self.reader_key is None:
            raise NotAReader(f"reading {self.root!r} needs a reader's identity")
        node = node if node is not None else self.key_node()
        wrapped = node.wraps.get(key_id, {}).get(self.reader_key)
        if wrapped is None:
            raise NotAReader(
                f"{self.identity.sui_address if self.identity else '?'} (reader key "
                f"{self.reader_key.hex()[:16]}...) holds no key {key_id.hex()} of "
                f"{self.root!r}: not a reader when the value was written"
            )
        field = private.wrap_field(key_id, self.reader_key).encode()
        key = private.unwrap(self._secret, self._keys_b, field, wrapped[0], wrapped[1])
        with self._lock:
            self._content[key_id] = key
        return key

    def open(self, soul: bytes, field: bytes, state: float, stored: bytes | str) -> JSON:
        """The plaintext value of a field of this space."""
        body = private.body_of(stored)
        key_id = None if body is None else private.value_key_id(body)
        if body is None or key_id is None:
            raise PrivateDataError(f"field {field[:64]!r} of {soul[:80]!r} holds no private value")
        text = private.open_value(self.content_key(key_id), soul, field, state, body)
        try:
            return decode_value(text)
        except LocalProtocolError as exc:  # (a value the author's own put() refused)
            raise PrivateDataError(f"field {field[:64]!r} of {soul[:80]!r}: {exc}") from None

    # -- writing (the author) ------------------------------------------------------------

    def _author_identity(self, what: str) -> HostIdentity:
        return _must_author(self.identity, self.author, self.root, what)

    def _plan(self, node: _KeyNode) -> tuple[bytes, bytes, list[tuple[bytes, bytes, _Item]]]:
        """The content key the author writes with now (key id, key) and the wraps it
        still needs: the newest key wrapped to the author and to no removed reader,
        wrapped to the current readers it misses; else a new key for them all."""
        me = cast(bytes, self.reader_key)
        removed = node.removed()
        best: tuple[float, bytes] | None = None
        for key_id, wraps in node.wraps.items():
            mine = wraps.get(me)
            if mine is None or not removed.isdisjoint(wraps):
                continue
            if best is None or (mine[0], key_id) > best:
                best = (mine[0], key_id)
        if best is None:
            key_id, key = private.new_content_key()
            recipients = {me} | node.current()
        else:
            key_id = best[1]
            key = self.content_key(key_id, node)
            recipients = node.current() - node.wraps[key_id].keys()
        items: list[tuple[bytes, bytes, _Item]] = [
            (self._keys_b, private.wrap_field(key_id, r).encode(), _Wrap(key, r))
            for r in sorted(recipients)
        ]
        return key_id, key, items

    def seal(self, soul: bytes, field: bytes, state: float, item: _Item) -> bytes:
        identity = cast(HostIdentity, self.identity)
        if isinstance(item, _Value):
            body = private.seal_value(item.key, item.key_id, soul, field, state, item.text)
        elif isinstance(item, _Wrap):
            body = private.wrap(item.key, item.reader, soul, field, state)
        else:
            body = bytes([private.READER, 1 if item.on else 0])
        return private.sign(identity, soul, field, state, body)

    def write(self, writes: list[tuple[bytes, bytes, bytes]], *, versioned: bool = True) -> float:
        self._author_identity("writing to")
        for soul, _, _ in writes:
            parsed = private.parse_soul(soul)
            if parsed is None or parsed.keys or b"~" in soul or b"#" in soul:
                # (a nested mapping makes <soul>/<field>: a field name may not make it
                # leave the space, nor hold what Gun's relays guard)
                raise LocalProtocolError(
                    f"not a node of a private space: {soul[:80].decode(errors='replace')!r} "
                    "(a private soul's path holds no '~' or '#')",
                    ErrorCode.ARG,
                )
        key_id, key, items = self._plan(self.key_node())
        sealer = _SpaceSealer(self, (key_id, key))
        return self.graph._write(writes, sealer, self._records(items), versioned=versioned)

    def _records(
        self, items: list[tuple[bytes, bytes, _Item]]
    ) -> list[tuple[bytes, bytes, Callable[[float], bytes]]]:
        """The key node's records, each sealed at the write's state."""
        return [(s, f, self._record(s, f, item)) for s, f, item in items]

    def _record(self, soul: bytes, field: bytes, item: _Item) -> Callable[[float], bytes]:
        return lambda state: self.seal(soul, field, state, item)

    def set_reader(self, reader: bytes, on: bool) -> bool:
        """Add (``on``) or remove a reader; False when nothing had to change."""
        self._author_identity("changing the readers of")
        if reader == self.reader_key:
            raise LocalProtocolError(
                "the author always reads its own space: it is no reader to add or remove",
                ErrorCode.ARG,
            )
        node = self.key_node()
        was = node.readers.get(reader, (0.0, False))[1]
        items: list[tuple[bytes, bytes, _Item]] = []
        if on:
            # every key of the space, so that a reader reads its past too
            me = cast(bytes, self.reader_key)
            for key_id, wraps in sorted(node.wraps.items()):
                if me in wraps and reader not in wraps:
                    key = self.content_key(key_id, node)
                    field = private.wrap_field(key_id, reader).encode()
                    items.append((self._keys_b, field, _Wrap(key, reader)))
        elif was:
            # a new content key for what comes next, wrapped to the readers that stay
            node.readers[reader] = (0.0, False)
            key_id, key = private.new_content_key()
            for r in sorted({cast(bytes, self.reader_key)} | node.current()):
                items.append((self._keys_b, private.wrap_field(key_id, r).encode(), _Wrap(key, r)))
        if was != on:
            items.insert(0, (self._keys_b, private.reader_field(reader).encode(), _Reader(on)))
        if not items:
            return False
        self.graph._write((), _SpaceSealer(self, None), self._records(items))
        return was != on


class _SpaceSealer:
    """The sealer of a private space's data (values, and a tracked node's history):
    encrypted under the content key the write took, signed by the author."""

    def __init__(self, space: _Space, key: tuple[bytes, bytes] | None) -> None:
        self._space = space
        self._key = key  # (key id, content key): None for a write of key records alone

    def seal(self, soul: bytes, field: bytes, state: float, text: bytes) -> bytes:
        if self._key is None:
            raise AssertionError("a private value sealed without a content key")
        key_id, key = self._key
        return self._space.seal(soul, field, state, _Value(key_id, key, text))

    def open(self, soul: bytes, field: bytes, state: float, stored: bytes) -> JSON:
        return self._space.open(soul, field, state, stored)


def _reader_key(reader: object) -> bytes:
    """A reader's X25519 public key from the key or a HostIdentity (its Noise key)."""
    if isinstance(reader, HostIdentity):
        return reader.noise_public
    if not isinstance(reader, bytes | bytearray) or len(reader) != 32:
        raise LocalProtocolError(
            "a reader is a 32-byte X25519 public key (a host's Noise static key) or a "
            f"HostIdentity, not {type(reader).__name__}",
            ErrorCode.ARG,
        )
    key = bytes(reader)
    try:  # a low-order point would wrap the key to everyone (the shared secret is zero)
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(key))
    except ValueError:
        raise LocalProtocolError(
            f"not a usable X25519 public key: {key.hex()}", ErrorCode.ARG
        ) from None
    return key


class PrivateSubscription:
    """A subscription to a private node: :meth:`cancel` ends it (or use ``with``)."""

    def __init__(self, data: Subscription, keys: Subscription) -> None:
        self._subs = (data, keys)

    @property
    def active(self) -> bool:
        return self._subs[0].active

    def cancel(self) -> None:
        """Stop receiving changes (idempotent)."""
        for sub in self._subs:
            sub.cancel()

    def __enter__(self) -> PrivateSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class PrivateNode(_Node):
    """A node of an author's private space: values encrypted to the space's readers,
    readable by them and the author only, written by the author only. Peers that are
    not readers store, merge and forward it all the same."""

    tier = PRIVATE

    def __init__(self, space: _Space, soul: str) -> None:
        super().__init__(space.graph, soul)
        self._space = space
        self._soul_b = soul.encode()

    @property
    def author(self) -> str:
        """The author's Sui address."""
        return self._space.author

    @property
    def space(self) -> str:
        """The space's name."""
        return self._space.name

    @property
    def key_soul(self) -> str:
        """The soul of the space's key node (readers and wrapped keys)."""
        return self._space.keys_soul

    def put(self, fields: Mapping[str, Any]) -> float:
        """Write fields, encrypted to the space's readers and signed by the author
        (nested mappings become nodes of the same space, encrypted too); returns their
        state. :class:`~dtp.errors.NotTheAuthor` for anyone else (nothing written)."""
        self._space._author_identity("writing to")
        return self._space.write(self.graph._fields_of(self.soul, _check_fields(fields)))

    def _access(self) -> Access:
        from dtp.graph.collab import Access

        space = self._space
        return Access(self.graph, lambda w: space.write(w, versioned=False), space.open, PRIVATE)

    def get(self) -> dict[str, JSON] | None:
        """The node's fields in plaintext, or None for an unknown node. Fields written
        under a key this identity does not hold (after it was removed) are left out;
        :class:`~dtp.errors.NotAReader` when it holds the key of none of them."""
        stored = self.graph.stored_node(self.soul)
        if not stored:
            return None
        node: dict[str, JSON] = {}
        unreadable: NotAReader | None = None
        for field, state, value in stored:
            name = name_text(field)
            if name is None:
                continue
            try:
                node[name] = self._space.open(self._soul_b, field, state, value)
            except NotAReader as exc:
                unreadable = exc
        if not node and unreadable is not None:
            raise unreadable
        return node

    def get_field(self, field: str, default: Any = None) -> JSON:
        """One field in plaintext, or ``default`` when there is none;
        :class:`~dtp.errors.NotAReader` when this identity holds no key for it."""
        f = utf8_name(field, "a field name")
        for name, at, value in self.graph.stored_node(self.soul):
            if name == f:
                return self._space.open(self._soul_b, f, at, value)
        return default  # type: ignore[no-any-return]

    def child(self, name: str) -> PrivateNode:
        """The node ``<soul>/<name>`` of the same space (where a nested mapping lands)."""
        return PrivateNode(self._space, f"{self.soul}/{_child_name(name)}")

    def history(self) -> list[Version]:
        """The node's versions in plaintext, oldest first, when its history is tracked:
        those this identity can read (each checked against its id as it is decrypted;
        signed by the author: ``verified``)."""
        space = self._space
        return self.graph.history.versions_with(self.soul, space.open)

    def readers(self) -> list[bytes]:
        """The readers' X25519 keys, sorted (the author, who always reads, is not
        listed). Anyone may ask: the list is in the graph, signed by the author."""
        return sorted(self._space.key_node().current())

    def add_reader(self, reader: bytes | HostIdentity) -> bool:
        """Let ``reader`` (its X25519 key, or a HostIdentity: its Noise static key) read
        the whole space, what was written before included; False when it already
        could. Author only (:class:`~dtp.errors.NotTheAuthor`)."""
        self._space._author_identity("changing the readers of")
        return self._space.set_reader(_reader_key(reader), True)

    def remove_reader(self, reader: bytes | HostIdentity) -> bool:
        """Stop ``reader`` from reading what is written from now on (a new content key,
        wrapped to the readers that remain); False when it was no reader. What it could
        read before stays readable to it. Author only."""
        self._space._author_identity("changing the readers of")
        return self._space.set_reader(_reader_key(reader), False)

    def subscribe(
        self, callback: Callable[[Change], None], *, field: str | None = None
    ) -> PrivateSubscription:
        """``callback(change)`` with the plaintext value for every change of the node
        (or of one field) this identity can read. A value that arrives before the key
        it was written under (sync brings nodes in any order) is delivered once the
        key does, if it is still the field's value."""
        space = self._space
        waiting: dict[str, Change] = {}
        lock = threading.Lock()

        def deliver(change: Change) -> None:
            try:
                value = space.open(self._soul_b, change.field.encode(), change.state, _text(change))
            except NotAReader:
                with lock:
                    waiting[change.field] = change
                return
            except PrivateDataError:
                logger.warning("graph: %s.%s does not authenticate", change.soul, change.field)
                return
            with lock:
                if change.field in waiting and waiting[change.field].state <= change.state:
                    del waiting[change.field]
            callback(Change(change.soul, change.field, value, change.state))

        def key_arrived(change: Change) -> None:
            me = space.reader_key
            if me is None or not change.field.endswith(":" + me.hex()):
                return
            with lock:
                retry = list(waiting.values())
                waiting.clear()
            for old in retry:
                if self.graph.state_of(self.soul, old.field) == old.state:
                    deliver(old)

        data = self.graph.subscribe(self.soul, deliver, field=field)
        keys = self.graph.subscribe(space.keys_soul, key_arrived)
        return PrivateSubscription(data, keys)


def _text(change: Change) -> bytes | str:
    return change.value if isinstance(change.value, str) else b""


# -- the graph's part --------------------------------------------------------------------


def _check_path(path: object) -> tuple[str, str]:
    """A private node's path ``<space>[/<path>]``, split and checked."""
    if not isinstance(path, str) or not path:
        raise LocalProtocolError("a private node's path is a non-empty string", ErrorCode.ARG)
    utf8_name(path, "a private node's path")
    name, _, rest = path.partition("/")
    if private.SPACE_NAME.fullmatch(name) is None:
        raise LocalProtocolError(
            f"a private space's name is 1..64 of A-Z a-z 0-9 _ . - (then /<node path>), "
            f"not {name!r:.80}",
            ErrorCode.ARG,
        )
    if "/" in path and (not rest or "" in rest.split("/") or "~" in rest or "#" in rest):
        raise LocalProtocolError(
            f"a private node's path has no empty part, '~' or '#': {path!r:.80}", ErrorCode.ARG
        )
    return name, rest


def public_node(graph: TieredGraph, soul: str) -> PublicNode:
    """:meth:`Graph.public <dtp.graph._store.Graph.public>`: the handle, once ``soul`` is
    known to be of the public tier."""
    s = utf8_name(soul, "a soul")
    if not s:
        raise LocalProtocolError("a soul is a non-empty string", ErrorCode.ARG)
    if namespace.is_user_space(s) or private.is_private(s) or sea.is_guarded(soul):
        raise LocalProtocolError(
            f"{soul[:80]!r} is no public soul: use graph.protected() or graph.private() "
            "(docs/graph.md, 'Privacy tiers')",
            ErrorCode.ARG,
        )
    return PublicNode(graph, soul)


def protected_node(
    graph: TieredGraph, path: str, identity: HostIdentity | None, author: str | None
) -> ProtectedNode:
    """:meth:`Graph.protected <dtp.graph._store.Graph.protected>`: the handle, its
    arguments checked."""
    ident, writer = _signer_and_author(graph, identity, author)
    if not isinstance(path, str):
        raise LocalProtocolError("a protected node's path is a string", ErrorCode.ARG)
    return ProtectedNode(graph, namespace.user_soul(writer, path), writer, ident)


def private_node(
    graph: TieredGraph, path: str, identity: HostIdentity | None, author: str | None
) -> PrivateNode:
    """:meth:`Graph.private <dtp.graph._store.Graph.private>`: the handle on a node of
    the space ``path`` names."""
    ident, writer = _signer_and_author(graph, identity, author)
    name, rest = _check_path(path)
    space = _Space(graph, writer, name, ident)
    return PrivateNode(space, space.root + (f"/{rest}" if rest else ""))


def _signer_and_author(
    graph: TieredGraph, identity: object, author: object
) -> tuple[HostIdentity | None, str]:
    """The identity a handle uses (``identity``, else the graph's) and the author it
    names (``author``, else that identity's address)."""
    ident = _identity(identity, "identity") or graph.identity
    return ident, _author(ident, author)


__all__ = [
    "PRIVATE",
    "PROTECTED",
    "PUBLIC",
    "PrivateNode",
    "PrivateSubscription",
    "ProtectedNode",
    "PublicNode",
]
