"""Edit history that replicates: an opt-in chain of versions per node. docs/graph.md,
"History", says the layout (version nodes ``<soul>/.history/<id>``, the heads
``<soul>/.history``), the records, authors, private spaces and limits.

A version's id is the SHA-256 of its record's text, so its soul names its content: no
two peers can hold different versions under one soul. Both nodes merge like any other
data, so concurrent edits leave two heads and the next edit follows both: the history
is a DAG. Tracking registers a rule (:mod:`dtp.graph.rules`) that refuses malformed
version and heads fields under the prefix; in a private space the rule checks only the
names (peers cannot read the rest) and a reader checks the rest as it decrypts
(:meth:`History.versions_with`).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dtp.errors import DTPError
from dtp.graph import _private as private
from dtp.graph import namespace
from dtp.graph._arguments import name_text, utf8_name
from dtp.graph._summaries import SummaryView
from dtp.graph.rules import RuleSet, Update
from dtp.graph.values import (
    JSON,
    GraphValueError,
    decode_value,
    encode_value,
    js_number,
    link_soul,
    value_text,
)
from dtp.identity.keys import HostIdentity

HISTORY = "/.history"
"""What a node's history souls add to its soul: ``<soul>/.history`` (its heads) and
``<soul>/.history/<id>`` (its versions)."""
VERSION_FIELD = "v"
"""The field of a version node that holds its record."""
MAX_PARENTS = 64
"""Parents a version lists at most: the newest heads (the others stay heads, to be
followed by the next edit)."""
_ID = re.compile(r"[0-9a-f]{64}")
_SALT = re.compile(r"[0-9a-f]{32}")
_KEYS = ("author", "fields", "parents", "soul", "state")
_SALTED_KEYS = ("author", "fields", "parents", "salt", "soul", "state")
_NULL = b"null"

Opener = Callable[[bytes, bytes, float, bytes], JSON]
"""How a history reads a stored value: ``open(soul, field, state, stored)``, the value
decoded, or a DTPError (a private value this identity cannot read: NotAReader)."""


def heads_soul(soul: str) -> str:
    """The soul of ``soul``'s heads: ``<soul>/.history``."""
    return soul + HISTORY


def version_soul(soul: str, version_id: str) -> str:
    """The soul of one version of ``soul``: ``<soul>/.history/<id>``."""
    return f"{soul}{HISTORY}/{version_id}"


def is_history_soul(soul: str) -> bool:
    """True for a soul of some node's history (its heads or a version): such souls
    have no history of their own."""
    return soul.endswith(HISTORY) or HISTORY + "/" in soul


@dataclass(frozen=True)
class Version:
    """One version of a node: what one ``put`` wrote to it."""

    id: str
    """The SHA-256 of the version's record, in hex (its soul: ``<soul>/.history/<id>``)."""
    soul: str
    """The node."""
    state: float
    """The HAM state of the edit: milliseconds since the Unix epoch (:attr:`time`)."""
    author: str | None
    """Who wrote it: the signer in a signed space (:attr:`verified`), else what the
    writer claimed (``graph.history.author``: anyone may claim anything)."""
    verified: bool
    """True when :attr:`author` is the signer (a ``~0x<address>/...`` soul, whose
    owner's signature covers the version), False when it is only claimed."""
    parents: tuple[str, ...]
    """The versions this one followed (the heads its writer knew): two or more where
    edits were concurrent, none for the first."""
    fields: dict[str, JSON]
    """What the edit wrote to the node (a null: the field deleted)."""

    @property
    def time(self) -> datetime.datetime:
        """:attr:`state` as a UTC time."""
        return datetime.datetime.fromtimestamp(self.state / 1000, datetime.UTC)


def record_text(
    soul: str,
    state: float,
    author: str | None,
    parents: list[str],
    fields: list[tuple[str, str]],
    salt: str | None = None,
) -> str:
    """A version's record, in its one canonical text: keys sorted, ``fields`` given as
    (name, the value's Gun text) and written sorted by name, ``parents`` sorted; a
    ``salt`` (a private space's versions: :func:`new_salt`) between them and ``soul``."""
    body = ",".join(value_text(name) + ":" + text for name, text in sorted(fields))
    return (
        '{"author":'
        + value_text(author)
        + ',"fields":{'
        + body
        + '},"parents":['
        + ",".join(value_text(p) for p in sorted(parents))
        + "]"
        + ("" if salt is None else ',"salt":' + value_text(salt))
        + ',"soul":'
        + value_text(soul)
        + ',"state":'
        + js_number(state)
        + "}"
    )


def new_salt() -> str:
    """A random salt for a version of a private node: its id hashes the plaintext, and
    without 128 unknown bits anyone could test guesses of the values against it."""
    return os.urandom(16).hex()


def version_id(text: str) -> str:
    """The id of the version whose record is ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Record:
    soul: str
    state: float
    author: str | None
    parents: tuple[str, ...]
    fields: dict[str, JSON]


def parse_record(text: str) -> _Record:
    """A version's record read back; ValueError saying what is wrong when ``text`` is
    not one in its canonical form."""
    try:
        data = decode_value(text.encode("utf-8"))
    except (DTPError, UnicodeEncodeError):
        raise ValueError("a version's record is a JSON object") from None
    if not isinstance(data, dict) or tuple(sorted(data)) not in (_KEYS, _SALTED_KEYS):
        raise ValueError(f"a version's record holds exactly {', '.join(_KEYS)} (and a salt)")
    soul, state, author = data["soul"], data["state"], data["author"]
    parents, fields, salt = data["parents"], data["fields"], data.get("salt")
    if salt is not None and (not isinstance(salt, str) or _SALT.fullmatch(salt) is None):
        raise ValueError("a version's salt is 32 hex digits")
    if not isinstance(soul, str) or not soul:
        raise ValueError("a version's soul is a non-empty string")
    if isinstance(state, bool) or not isinstance(state, int | float) or not math.isfinite(state):
        raise ValueError("a version's state is a finite number")
    if author is not None and not isinstance(author, str):
        raise ValueError("a version's author is a string or null")
    if (
        not isinstance(parents, list)
        or len(parents) > MAX_PARENTS
        or not all(isinstance(p, str) and _ID.fullmatch(p) for p in parents)
        or len(set(parents)) != len(parents)
    ):
        raise ValueError(f"a version's parents are at most {MAX_PARENTS} distinct ids")
    if not isinstance(fields, dict) or not fields:
        raise ValueError("a version's fields are a non-empty object")
    try:
        texts = [(name, value_text(value)) for name, value in fields.items()]
        canonical = record_text(soul, float(state), author, parents, texts, salt)
    except GraphValueError as exc:
        raise ValueError(f"a version holds a value Gun cannot: {exc}") from None
    if canonical != text:
        raise ValueError("a version's record is not in its canonical text")
    return _Record(soul, float(state), author, tuple(parents), fields)


class _Plan:
    """The history writes of one ``put`` (made under the graph's lock)."""

    def __init__(self, author: str | None) -> None:
        self.author = author
        # soul -> (its fields written: (name, Gun text), its heads: ids)
        self.nodes: dict[str, tuple[list[tuple[str, str]], list[str]]] = {}

    @property
    def touched(self) -> list[tuple[bytes, bytes]]:
        """The fields the put will overwrite besides its own: the heads it follows
        (its state must be above theirs)."""
        return [
            (heads_soul(soul).encode(), head.encode())
            for soul, (_, heads) in self.nodes.items()
            for head in heads
        ]

    def writes(self, state: float) -> list[tuple[bytes, bytes, bytes]]:
        """The version nodes and heads to write at ``state``."""
        out: list[tuple[bytes, bytes, bytes]] = []
        for soul, (fields, heads) in self.nodes.items():
            # (in a signed space the author is the owner, who alone signs there)
            owner = signer_of(soul.encode())
            author = self.author if owner is None else owner
            salt = new_salt() if private.is_private(soul.encode()) else None
            text = record_text(soul, state, author, heads, fields, salt)
            vid = version_id(text)
            vsoul = version_soul(soul, vid)
            hsoul = heads_soul(soul).encode()
            out.append((vsoul.encode(), VERSION_FIELD.encode(), encode_value(text)))
            out.append((hsoul, vid.encode(), encode_value({"#": vsoul})))
            out.extend((hsoul, head.encode(), _NULL) for head in heads)
        return out


class HistoryGraph(Protocol):
    """What a history reads of its graph (:class:`~dtp.graph._store.Graph`)."""

    @property
    def identity(self) -> HostIdentity | None: ...
    @property
    def rules(self) -> RuleSet: ...
    @property
    def _lock(self) -> threading.RLock: ...
    @property
    def _table(self) -> Any: ...

    def _check_open(self) -> None: ...

    def _value_of(self, soul: bytes, stored: bytes) -> JSON: ...

    def _ensure_view(self) -> SummaryView: ...


class History:
    """A graph's edit history (``graph.history``): :meth:`track` which nodes keep one,
    ``graph.history(soul)`` to read it (see the module docstring)."""

    def __init__(self, graph: HistoryGraph) -> None:
        self._graph = graph
        self._prefixes: dict[str, str] = {}  # tracked prefix -> its rule's name
        self._edit = threading.Lock()
        self.tracking = False
        """True while some prefix is tracked (what a put asks first)."""
        self._author: str | None = None

    # -- what is tracked --------------------------------------------------------------------

    @property
    def author(self) -> str | None:
        """The author this graph's versions of public souls claim: the identity's Sui
        address by default (None without one). In a signed space the author is always
        the owner, who alone can write there."""
        if self._author is not None:
            return self._author
        identity = self._graph.identity
        return None if identity is None else identity.sui_address

    @author.setter
    def author(self, name: str | None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"an author is a str or None, not {type(name).__name__}")
        self._author = name

    def track(self, prefix: str) -> None:
        """Keep a history of every node whose soul starts with ``prefix`` (an exact
        soul tracks that node, and any whose soul extends it): each later local
        ``put`` to one writes a version. Registers the rule ``history:<prefix>``,
        which refuses malformed history fields under ``prefix``."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("track() takes a non-empty soul prefix")
        utf8_name(prefix, "a soul prefix")
        if is_history_soul(prefix):
            raise ValueError(f"{prefix!r} is a soul of a history: it has none of its own")
        from dtp.graph.rules import MAX_NAME

        name = "history:" + prefix
        if len(name) > MAX_NAME:
            name = name[: MAX_NAME - 9] + "~" + hashlib.sha256(prefix.encode()).hexdigest()[:8]
        pattern = re.escape(prefix) + r".*/\.history(?:/[0-9a-f]{64})?"
        with self._edit:
            if prefix in self._prefixes:
                return
            self._graph.rules.add(name, check_history, prefix=prefix, souls=pattern)
            self._prefixes[prefix] = name
            self.tracking = True

    def untrack(self, prefix: str) -> None:
        """Stop tracking ``prefix`` (KeyError if it is not tracked): later puts write no
        version; what was written stays."""
        with self._edit:
            name = self._prefixes.pop(prefix)
            self._graph.rules.remove(name)
            self.tracking = bool(self._prefixes)

    @property
    def tracked(self) -> tuple[str, ...]:
        """The prefixes tracked."""
        return tuple(self._prefixes)

    def is_tracked(self, soul: str) -> bool:
        """True when a put to ``soul`` writes a version."""
        return not is_history_soul(soul) and any(soul.startswith(p) for p in self._prefixes)

    # -- writing (called by put, the graph's lock held) -----------------------------------

    def plan(self, writes: Sequence[tuple[bytes, bytes, bytes]], open: Opener) -> _Plan | None:
        """What a write of ``writes`` (soul, field, the value's Gun text) adds to the
        tracked nodes' histories, or None; ``open`` reads the heads' stored values (the
        graph's lock held)."""
        plan: _Plan | None = None
        for soul_b, field_b, value in writes:
            soul = soul_b.decode()
            if not self.is_tracked(soul):
                continue
            if plan is None:
                plan = _Plan(self.author)
            node = plan.nodes.get(soul)
            if node is None:
                node = plan.nodes[soul] = ([], self._heads_locked(soul, open))
            node[0].append((field_b.decode(), value.decode()))
        return plan

    def _heads_locked(self, soul: str, open: Opener) -> list[str]:
        """The ids of ``soul``'s heads whose version is here and sound, the newest
        :data:`MAX_PARENTS` of them (lock held)."""
        found = [
            (state, vid)
            for state, vid in self._head_fields(soul, open)
            if self._version_locked(soul, vid, open) is not None
        ]
        found.sort(reverse=True)
        return sorted(vid for _, vid in found[:MAX_PARENTS])

    def _head_fields(self, soul: str, open: Opener) -> list[tuple[float, str]]:
        """(state, id) of each heads field of ``soul`` that links to its version (a
        followed one holds null, lock held)."""
        graph = self._graph
        hsoul = heads_soul(soul).encode()
        out = []
        for f in graph._ensure_view().fields.get(hsoul) or ():
            entry = graph._table.get(hsoul, f)
            vid = name_text(f)
            if entry is None or vid is None or _ID.fullmatch(vid) is None:
                continue
            try:
                target = link_soul(open(hsoul, f, entry[0], entry[1]))
            except DTPError:
                continue
            if target == version_soul(soul, vid):
                out.append((entry[0], vid))
        return out

    def _version_locked(self, soul: str, vid: str, open: Opener) -> _Record | None:
        graph = self._graph
        vsoul = version_soul(soul, vid).encode()
        entry = graph._table.get(vsoul, VERSION_FIELD.encode())
        if entry is None:
            return None
        return _read_version(open, vsoul, soul, vid, entry)

    def _open(self, soul: bytes, field: bytes, state: float, stored: bytes) -> JSON:
        """The opener of every tier but the private one: the stored value decoded."""
        return self._graph._value_of(soul, stored)

    # -- reading ----------------------------------------------------------------------------

    def heads(self, soul: str) -> list[str]:
        """The ids of the versions of ``soul`` nobody has followed yet (two or more
        after concurrent edits, until the next edit follows them all), sorted."""
        return self.heads_with(soul, self._open)

    def heads_with(self, soul: str, open: Opener) -> list[str]:
        """:meth:`heads`, reading stored values with ``open`` (a private node's handle
        decrypts them)."""
        utf8_name(soul, "a soul")
        graph = self._graph
        with graph._lock:
            graph._check_open()
            return sorted(vid for _, vid in self._head_fields(soul, open))

    def __call__(self, soul: str) -> list[Version]:
        """Every version of ``soul`` reachable from its heads, checked, oldest first
        (by state, then id: the same order on every peer holding the same graph). A
        version not here yet (a sync under way) is left out, with what only it leads
        to; so is one whose record does not match its id."""
        return self.versions_with(soul, self._open)

    def versions_with(self, soul: str, open: Opener) -> list[Version]:
        """``history(soul)``, reading stored values with ``open`` (a private node's
        handle decrypts them: :meth:`PrivateNode.history
        <dtp.graph._tiers.PrivateNode.history>`)."""
        utf8_name(soul, "a soul")
        graph = self._graph
        found: dict[str, Version | None] = {}
        with graph._lock:
            graph._check_open()
            stack = sorted(vid for _, vid in self._head_fields(soul, open))
            while stack:
                vid = stack.pop()
                if vid in found:
                    continue
                record = self._version_locked(soul, vid, open)
                if record is None:
                    found[vid] = None
                    continue
                found[vid] = _version(soul, vid, record)
                stack.extend(p for p in record.parents if p not in found)
        versions = [v for v in found.values() if v is not None]
        versions.sort(key=lambda v: (v.state, v.id))
        return versions

    def node_at(self, soul: str, version_id: str) -> dict[str, JSON]:
        """The node as the version ``version_id`` left it: the fields of it and of
        every version before it, each field's value chosen as HAM would (the higher
        state; at equal states, the greater Gun text in UTF-16 order). KeyError when
        the version is not here."""
        return node_at(self(soul), soul, version_id)


def node_at(history: list[Version], soul: str, version_id: str) -> dict[str, JSON]:
    """:meth:`History.node_at` over the versions ``history`` of ``soul``."""
    versions = {v.id: v for v in history}
    if version_id not in versions:
        raise KeyError(f"no version {version_id!r} of {soul!r} here")
    best: dict[str, tuple[float, bytes, JSON]] = {}
    stack, seen = [version_id], set()
    while stack:
        vid = stack.pop()
        version = versions.get(vid)
        if version is None or vid in seen:
            continue
        seen.add(vid)
        stack.extend(version.parents)
        for name, value in version.fields.items():
            key = (version.state, value_text(value).encode("utf-16-be"), value)
            if name not in best or key[:2] > best[name][:2]:
                best[name] = key
    return {name: best[name][2] for name in sorted(best)}


def _read_version(
    open: Opener, vsoul: bytes, soul: str, vid: str, entry: tuple[float, bytes]
) -> _Record | None:
    """A version's record, when it is sound: its text hashes to its id and names its
    node and the state it is stored at."""
    try:
        text = open(vsoul, VERSION_FIELD.encode(), entry[0], entry[1])
    except DTPError:
        return None
    if not isinstance(text, str) or version_id(text) != vid:
        return None
    try:
        record = parse_record(text)
    except ValueError:
        return None
    return record if record.soul == soul and record.state == entry[0] else None


def signer_of(soul: bytes) -> str | None:
    """The author whose key alone signs ``soul``: the owner of a ``~0x<address>/...``
    soul, the author of a private space's ``%0x<address>/...``; None elsewhere."""
    owner = namespace.owner_of(soul)
    if owner is not None:
        return owner
    parsed = private.parse_soul(soul)
    return None if parsed is None else parsed.author


def _version(soul: str, vid: str, record: _Record) -> Version:
    owner = signer_of(soul.encode())
    return Version(
        id=vid,
        soul=soul,
        state=record.state,
        author=owner if owner is not None else record.author,
        verified=owner is not None,
        parents=record.parents,
        fields=dict(record.fields),
    )


def check_history(update: Update) -> str | None:
    """The rule of a tracked prefix's history souls: a heads field links to the
    version it is named by (or is null: followed); a version node holds one field,
    ``v``, whose record hashes to the version's id, in canonical form, naming its node
    and the state it is written at (and, in a signed space, the owner as author).

    In a private space only the names are checked: every peer judges alike, and most
    cannot read the values (the author's signature, verified before any rule, says who
    wrote them; a reader checks the rest as it reads, :meth:`History.versions_with`)."""
    soul = update.soul
    sealed = private.is_private(soul.encode())
    if soul.endswith(HISTORY):
        base = soul[: -len(HISTORY)]
        if _ID.fullmatch(update.field) is None:
            return "a heads field is named by a version's id (64 hex digits)"
        if update.value is None or sealed:
            return None
        if link_soul(update.value) != version_soul(base, update.field):
            return "a heads field links to the version it is named by"
        return None
    base, _, vid = soul.rpartition(HISTORY + "/")
    if update.field != VERSION_FIELD:
        return f"a version node holds one field, {VERSION_FIELD!r}"
    if sealed:
        return None
    if not isinstance(update.value, str):
        return "a version's record is a string"
    if version_id(update.value) != vid:
        return "the version's record does not hash to its id"
    try:
        record = parse_record(update.value)
    except ValueError as exc:
        return str(exc)
    if record.soul != base:
        return "the version names another node"
    if record.state != update.state:
        return "the version is written at another state than it records"
    if update.author is not None and record.author != update.author:
        return "in a signed space a version's author is the owner"
    return None


__all__ = [
    "HISTORY",
    "MAX_PARENTS",
    "VERSION_FIELD",
    "History",
    "Version",
    "check_history",
    "heads_soul",
    "is_history_soul",
    "new_salt",
    "node_at",
    "parse_record",
    "record_text",
    "signer_of",
    "version_id",
    "version_soul",
]
