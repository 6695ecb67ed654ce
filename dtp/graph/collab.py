"""Collaborative values: a field that holds a Yjs document -- a text, a list or a map --
merged by Yjs's own algorithm, so that concurrent edits lose nothing. Needs the
``collab`` extra (``pycrdt``). docs/graph.md, "Collaborative values", says how the
document is stored: a set of **records**, each one Yjs update of one author, written
once each (so HAM never has two values to choose between) in chunks below
``<soul>/<field>``, and judged, signed or encrypted as any field of its tier.

::

    note = graph.text("note/1", "body")      # or graph.public(soul).text(field), ...
    note.insert(0, "hello")
    note.value                                # 'hello'

A reader applies an author's records in order, each once the document has its deps
(:mod:`dtp.graph._ydoc`). Positions in a text are Python ``str`` indices (code points),
converted to what ``pycrdt`` counts (UTF-8 bytes); Yjs in a browser counts UTF-16 code
units, which the updates do not carry (they name items, not positions), so the two
never have to agree on a number.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

from dtp.errors import DTPError, ErrorCode, LocalProtocolError
from dtp.graph._arguments import name_text, utf8_name
from dtp.graph._changes import Change, Subscription
from dtp.graph._ydoc import YDocument, read_varuint, read_vector
from dtp.identity._bcs import uleb128 as _varuint  # (lib0's varuint is ULEB128)

try:
    import pycrdt
except ImportError as exc:  # pragma: no cover - depends on the install
    from dtp import _extras

    raise _extras.missing("collab", "Collaborative values", exc) from exc
from dtp.graph.values import JSON, encode_value, link, link_soul

__all__ = [
    "CHUNK",
    "CollabArray",
    "CollabError",
    "CollabMap",
    "CollabText",
    "Record",
    "decode_record",
    "encode_record",
]

logger = logging.getLogger(__name__)

CHUNK = 64
"""Records per chunk node: a sync that finds a chunk changed sends at most this many."""

PREFIX = "y1:"
"""The start of a record's text (the format's version)."""

_MAX_SAFE = 2**53


class CollabError(LocalProtocolError, ValueError):
    """An edit that cannot be made: a position outside the value, a value a Yjs
    document cannot hold in every peer alike, an update too large for one field."""


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One Yjs update as the graph stores it."""

    client: int
    """Its author: a Yjs client id."""
    seq: int
    """Its number among its author's records, from 0."""
    clock: int
    """The author's Yjs clock after it."""
    deps: dict[int, int]
    """The other authors' clocks the author had that changed since its previous record."""
    update: bytes
    """The Yjs update, format v1."""


def encode_record(record: Record) -> str:
    """The text a record is stored as (see the module's doc)."""
    deps = _varuint(len(record.deps)) + b"".join(
        _varuint(c) + _varuint(t) for c, t in sorted(record.deps.items())
    )
    body = (
        _varuint(record.client) + _varuint(record.seq) + _varuint(record.clock) + deps
    ) + record.update
    return PREFIX + base64.b64encode(body).decode("ascii")


def decode_record(text: object) -> Record | None:
    """A record read back; None for anything else (not a string, another format)."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        return None
    try:
        body = base64.b64decode(text[len(PREFIX) :], validate=True)
        client, at = read_varuint(body, 0)
        seq, at = read_varuint(body, at)
        clock, at = read_varuint(body, at)
        count, at = read_varuint(body, at)
        deps: dict[int, int] = {}
        for _ in range(count):
            c, at = read_varuint(body, at)
            t, at = read_varuint(body, at)
            deps[c] = t
    except (ValueError, binascii.Error):
        return None
    if at >= len(body):
        return None
    return Record(client, seq, clock, deps, body[at:])


def chunk_soul(doc_soul: str, client: int, seq: int) -> str:
    """The soul of the chunk that holds record ``seq`` of ``client``."""
    return f"{doc_soul}/{client}.{seq // CHUNK}"


# -- what a tier gives a collaborative value ----------------------------------------------


class CollabGraph(Protocol):
    """What a collaborative value uses of its graph."""

    def stored_node(self, soul: str) -> list[tuple[bytes, float, bytes]]: ...

    def subscribe(
        self, soul: str, callback: Callable[[Change], None], *, field: str | None = None
    ) -> Subscription: ...


@dataclass(frozen=True)
class Access:
    """How a collaborative value of one tier writes and reads its fields (made by the
    tiers' handles, :mod:`dtp.graph._tiers`)."""

    graph: CollabGraph
    write: Callable[[list[tuple[bytes, bytes, bytes]]], float]
    """Write (soul, field, Gun text) in one batch through the graph's one write path
    (the rules judge it; the tier seals it)."""
    open: Callable[[bytes, bytes, float, Any], JSON]
    """A field's stored value read back (verified, decrypted)."""
    tier: str


# -- the values ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value read from pycrdt, its numbers as Gun reads them (an integral float of at
    most 2**53 in magnitude is an int: Yjs has one number type)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE:
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_item(value: Any, depth: int = 0) -> Any:
    """A list item or map value as every peer will read it: JSON (None, bools, numbers
    a binary64 holds, strings, lists, mappings with string keys)."""
    if depth > 32:
        raise CollabError("a value nested more than 32 deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CollabError("a string holding a lone surrogate (no UTF-8 holds it)") from None
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE:
            raise CollabError(f"an int beyond 2**53 is no number every peer holds: {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CollabError(f"{value!r} is no number every peer holds")
        return value
    if isinstance(value, list | tuple):
        return [_check_item(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CollabError(f"a mapping's keys are strings, not {type(k).__name__}")
            out[k] = _check_item(v, depth + 1)
        return out
    raise CollabError(f"a collaborative value holds JSON, not {type(value).__name__}")


def _position(index: object, size: int, what: str) -> int:
    """A position in a text or an array of ``size`` (0..size), checked."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise CollabError(f"{what} is an int, not {type(index).__name__}")
    if not 0 <= index <= size:
        raise CollabError(f"{what} {index} is outside the value (0..{size})")
    return index


def _span(index: object, length: object, size: int) -> tuple[int, int]:
    """delete()'s (start, end), checked against a text or an array of ``size``."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise CollabError(f"delete() takes a length >= 0, not {length!r:.40}")
    start = _position(index, size, "delete() at")
    if start + length > size:
        raise CollabError(f"delete() of {length} from {start} goes past the end ({size})")
    return start, start + length


class _CollabValue:
    """A replica of one collaborative value: a pycrdt document kept up to date with the
    graph's records (local edits written as records, peers' records applied)."""

    kind: ClassVar[str]
    _type: ClassVar[Any]

    def __init__(self, access: Access, soul: str, field: str) -> None:
        if not isinstance(field, str) or not field:
            raise CollabError("a collaborative value's field is a non-empty string")
        utf8_name(soul, "a soul")
        utf8_name(field, "a field name")
        self._access = access
        self.soul = soul
        """The node whose field holds the value."""
        self.field = field
        """The field that holds it."""
        self.doc_soul = f"{soul}/{field}"
        """The node that lists the value's chunks of records."""
        self.tier = access.tier
        """The tier of the value's node: ``"public"``, ``"protected"`` or ``"private"``."""
        self._lock = threading.RLock()
        self._chunks: dict[str, Subscription] = {}
        self._callbacks: list[Callable[[Any], None]] = []
        self._linked = False  # the field links to the document's node
        self._closed = False
        self.skipped = 0
        """Records left out: not records, in another's place, unreadable (no key: a
        reader removed before they were written), or that pycrdt could not apply."""
        self._start(self._new_client(()))
        self._doc_sub = access.graph.subscribe(self.doc_soul, self._on_doc)
        self._field_sub = access.graph.subscribe(soul, self._on_field, field=field)
        self._load()

    def _start(self, client: int) -> None:
        self._ydoc = YDocument(client_id=client)
        self._client = client
        self._root = self._ydoc.doc.get(self.kind, type=self._type)
        self._captured: list[bytes] = []
        self._capturing = False
        self._observer = self._ydoc.doc.observe(self._captured_update)

    @staticmethod
    def _new_client(taken: Iterable[int]) -> int:
        used = set(taken)
        while True:  # a Yjs client id: 32 random bits, as Yjs draws them
            client = int.from_bytes(os.urandom(4), "big")
            if client not in used:
                return client

    def _captured_update(self, event: Any) -> None:
        if self._capturing:
            self._captured.append(bytes(event.update))

    # -- reading the records ---------------------------------------------------------

    def _load(self) -> None:
        with self._lock:
            self._linked = self._field_links()
            for field, state, stored in self._access.graph.stored_node(self.doc_soul):
                self._follow(field, state, stored)
        self._notify()

    def _field_links(self) -> bool:
        for name, state, stored in self._access.graph.stored_node(self.soul):
            if name == self.field.encode():
                try:
                    value = self._access.open(self.soul.encode(), name, state, stored)
                except DTPError:
                    return False
                return link_soul(value) == self.doc_soul
        return False

    def _follow(self, field: bytes, state: float, stored: bytes) -> bool:
        """A field of the document's node: a chunk to follow when it links to one;
        returns whether records of it were applied."""
        name = name_text(field)
        if name is None:
            return False
        target = f"{self.doc_soul}/{name}"
        if target in self._chunks:
            return False
        try:
            value = self._access.open(self.doc_soul.encode(), field, state, stored)
        except DTPError:  # (NotAReader among them)
            self.skipped += 1
            return False
        if link_soul(value) != target:
            return False
        self._chunks[target] = self._access.graph.subscribe(target, self._on_record)
        took = False
        for f, at, value_stored in self._access.graph.stored_node(target):
            took = self._take(target, f, at, value_stored, None) or took
        return took

    def _take(
        self, chunk: str, field: bytes, state: float, stored: bytes | str | None, value: JSON
    ) -> bool:
        """One record from the graph (``stored`` to open, or its ``value`` read)."""
        if stored is not None:
            try:
                value = self._access.open(chunk.encode(), field, state, stored)
            except DTPError:
                self.skipped += 1
                return False
        record = decode_record(value)
        if (
            record is None
            or name_text(field) != str(record.seq)
            or chunk != chunk_soul(self.doc_soul, record.client, record.seq)
        ):
            self.skipped += 1
            return False
        if record.client == self._client and not self._ydoc.has(record.client, record.seq):
            # another replica drew our client id: take another (Yjs does the same)
            self._restart(avoid=record.client)
            return True
        try:
            applied = self._ydoc.add(
                record.client, record.seq, record.clock, record.deps, record.update
            )
        except ValueError as exc:
            self.skipped += 1
            logger.warning("graph: a record of %s.%s left out: %s", self.soul, self.field, exc)
            return False
        return applied > 0

    def _on_doc(self, change: Change) -> None:
        took = False
        with self._lock:
            if self._closed:
                return
            for field, state, stored in self._access.graph.stored_node(self.doc_soul):
                if name_text(field) == change.field:
                    took = self._follow(field, state, stored)
        if took:
            self._notify()

    def _on_field(self, change: Change) -> None:
        with self._lock:
            self._linked = self._field_links()

    def _on_record(self, change: Change) -> None:
        with self._lock:
            if self._closed:
                return
            f = change.field.encode()
            if self.tier == "private":
                took = self._take(change.soul, f, change.state, _stored_text(change), None)
            else:
                took = self._take(change.soul, f, change.state, None, change.value)
        if took:
            self._notify()

    def _restart(self, avoid: int | None = None) -> None:
        """Read the value again from the records (after a refused write, or when
        another replica drew our client id)."""
        self._observer = None
        taken = {avoid} if avoid is not None else set()
        for chunk in self._chunks:
            author = chunk.rsplit("/", 1)[1].split(".", 1)[0]
            if author.isdigit():
                taken.add(int(author))
        if avoid is None:
            taken.discard(self._client)
            client = self._client if self._client not in taken else self._new_client(taken)
        else:
            client = self._new_client(taken)
        for sub in self._chunks.values():
            sub.cancel()
        self._chunks.clear()
        self._start(client)
        for field, state, stored in self._access.graph.stored_node(self.doc_soul):
            self._follow(field, state, stored)

    # -- local edits ------------------------------------------------------------------

    def _edit(self, change: Callable[[], None]) -> None:
        """Make one local edit and write it as this replica's next record; what raises
        (the rules, the tier, a value too large) leaves the value as it was."""
        with self._lock:
            if self._closed:
                raise LocalProtocolError("the collaborative value is closed", ErrorCode.ARG)
            self._captured.clear()
            self._capturing = True
            try:
                with self._ydoc.doc.transaction():
                    change()
            finally:
                self._capturing = False
            if not self._captured:
                return  # (nothing changed: deleting nothing, setting a missing key away)
            update = (
                self._captured[0]
                if len(self._captured) == 1
                else pycrdt.merge_updates(*self._captured)
            )
            self._captured.clear()
            client = self._client
            clock = self._ydoc.vector().get(client, 0)
            seq, deps = self._ydoc.record_local(client, clock, update)
            record = encode_record(Record(client, seq, clock, deps, update))
            chunk = chunk_soul(self.doc_soul, client, seq)
            writes = [(chunk.encode(), str(seq).encode(), encode_value(record))]
            if seq % CHUNK == 0 or chunk not in self._chunks:
                name = chunk.rsplit("/", 1)[1]
                writes.append((self.doc_soul.encode(), name.encode(), encode_value(link(chunk))))
            if not self._linked:
                writes.append(
                    (self.soul.encode(), self.field.encode(), encode_value(link(self.doc_soul)))
                )
            try:
                self._access.write(writes)
            except BaseException:
                self._restart()
                raise
            self._linked = True
            if chunk not in self._chunks:
                self._chunks[chunk] = self._access.graph.subscribe(chunk, self._on_record)
        self._notify()

    # -- callbacks and the end ---------------------------------------------------------

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """``callback(value)`` after every change of the value, local or a peer's (in
        the thread that made it); returns the function that stops it."""
        if not callable(callback):
            raise LocalProtocolError("subscribe() needs a callable callback", ErrorCode.ARG)
        with self._lock:
            self._callbacks.append(callback)

        def cancel() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return cancel

    def _notify(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        if not callbacks:
            return
        value = self.value
        for callback in callbacks:
            try:
                callback(value)
            except Exception:
                logger.exception("graph: a collaborative value's callback raised")

    @property
    def value(self) -> Any:
        """The value now (a copy: editing it changes nothing)."""
        raise NotImplementedError

    @property
    def client_id(self) -> int:
        """This replica's Yjs client id (the author of its records)."""
        return self._client

    @property
    def waiting(self) -> int:
        """Peers' records here that wait for another they need (a gap, missing deps)."""
        with self._lock:
            return self._ydoc.waiting()

    def state_vector(self) -> dict[int, int]:
        """The document's Yjs state vector: {client id: its next clock}."""
        with self._lock:
            return read_vector(self._ydoc.doc.get_state())

    def as_update(self) -> bytes:
        """The whole document as one Yjs update (format v1), for a Yjs peer that is
        not a graph peer (``Y.applyUpdate``)."""
        with self._lock:
            return bytes(self._ydoc.doc.get_update())

    def close(self) -> None:
        """Stop following the graph (idempotent); the value is then read only."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subs = [self._doc_sub, self._field_sub, *self._chunks.values()]
        for sub in subs:
            sub.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.soul!r}.{self.field!r}>"


KINDS: dict[str, type[_CollabValue]] = {}


def open_value(kind: str, access: Access, soul: str, field: str) -> Any:
    """A replica of the collaborative value of ``kind`` in ``field`` of ``soul``."""
    return KINDS[kind](access, soul, field)


def _stored_text(change: Change) -> str | None:
    """A private field's stored string, as its change carries it."""
    return change.value if isinstance(change.value, str) else None


class CollabText(_CollabValue):
    """A collaborative text (Yjs's ``Y.Text``, the root named ``"text"``).

    Positions are Python ``str`` indices (code points); a position outside the text,
    or a negative one, raises :class:`CollabError`."""

    kind = "text"
    _type = pycrdt.Text

    @property
    def value(self) -> str:
        with self._lock:
            return str(self._root)

    def __str__(self) -> str:
        return self.value

    def __len__(self) -> int:
        return len(self.value)

    @staticmethod
    def _bytes(text: str, index: int) -> int:
        """A code point's index in ``text`` as pycrdt counts: UTF-8 bytes."""
        return len(text[:index].encode("utf-8"))

    def insert(self, index: int, text: str) -> None:
        """Insert ``text`` before the character at ``index`` (``len()``: at the end)."""
        if not isinstance(text, str):
            raise CollabError(f"insert() takes a str, not {type(text).__name__}")
        if not text:
            return
        _check_item(text)
        with self._lock:
            current = str(self._root)
            at = self._bytes(current, _position(index, len(current), "insert() at"))
            self._edit(lambda: self._root.insert(at, text))

    def delete(self, index: int, length: int = 1) -> None:
        """Delete ``length`` characters from ``index``."""
        with self._lock:
            current = str(self._root)
            first, last = _span(index, length, len(current))
            start, end = self._bytes(current, first), self._bytes(current, last)
            if end > start:
                self._edit(lambda: self._root.__delitem__(slice(start, end)))

    def append(self, text: str) -> None:
        """Insert ``text`` at the end."""
        with self._lock:
            self.insert(len(str(self._root)), text)


class CollabArray(_CollabValue):
    """A collaborative array (Yjs's ``Y.Array``, the root named ``"array"``) of JSON
    values: None, bools, numbers, strings, lists and mappings; read as a list."""

    kind = "array"
    _type = pycrdt.Array

    @property
    def value(self) -> list[Any]:
        with self._lock:
            return _plain(self._root.to_py() or [])  # type: ignore[no-any-return]

    def __len__(self) -> int:
        with self._lock:
            return len(self._root)

    def insert(self, index: int, *values: Any) -> None:
        """Insert ``values`` before the item at ``index``."""
        items = [_check_item(v) for v in values]
        if not items:
            return
        with self._lock:
            at = _position(index, len(self._root), "insert() at")
            self._edit(lambda: self._insert(at, items))

    def _insert(self, at: int, items: Sequence[Any]) -> None:
        for offset, item in enumerate(items):
            self._root.insert(at + offset, item)

    def append(self, *values: Any) -> None:
        """Add ``values`` at the end."""
        with self._lock:
            self.insert(len(self._root), *values)

    def delete(self, index: int, length: int = 1) -> None:
        """Delete ``length`` items from ``index``."""
        with self._lock:
            start, end = _span(index, length, len(self._root))
            if end > start:
                self._edit(lambda: self._root.__delitem__(slice(start, end)))


class CollabMap(_CollabValue):
    """A collaborative map (Yjs's ``Y.Map``, the root named ``"map"``): string keys,
    JSON values; concurrent writes of one key keep one of them, as Yjs chooses."""

    kind = "map"
    _type = pycrdt.Map

    @property
    def value(self) -> dict[str, Any]:
        with self._lock:
            return _plain(self._root.to_py() or {})  # type: ignore[no-any-return]

    def __len__(self) -> int:
        with self._lock:
            return len(self._root)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value``."""
        if not isinstance(key, str):
            raise CollabError(f"a map's keys are strings, not {type(key).__name__}")
        item = _check_item(value)
        self._edit(lambda: self._root.__setitem__(key, item))

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several keys in one record."""
        items = {}
        for key, value in values.items():
            if not isinstance(key, str):
                raise CollabError(f"a map's keys are strings, not {type(key).__name__}")
            items[key] = _check_item(value)

        def change() -> None:
            for key, item in items.items():
                self._root[key] = item

        self._edit(change)

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing when it is not there)."""
        with self._lock:
            if key in self._root:
                self._edit(lambda: self._root.pop(key))


KINDS.update(text=CollabText, array=CollabArray, map=CollabMap)
