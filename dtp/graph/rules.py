"""Validation rules: an application's checks that run before a local write and before
each peer's update merges, on every path in -- ``put``, a DTP sync session, the Gun
endpoint (docs/graph.md, "Rules", with an example, what an :class:`Update` holds and the
order rules see updates in).

A rule is a function of one :class:`Update` that returns None to let it in, or the
reason it is refused (a str; ``False`` for no reason given), registered for the souls
under a ``prefix``: ``graph.rules.add("tags", one_word, prefix="tags/")``. A refused
update is never stored: a local ``put`` raises :class:`RuleRefused` and writes nothing;
a peer's update is cut out of its batch before the merge, counted and reported (to the
peer too).

Cost: with no rule registered a merge asks one attribute; a batch in which no rule's
prefix appears passes without being decoded, and in the others the C core finds the
updates under the prefixes (:func:`dtp.native.core.find_ham_souls`), decoded here once
per batch under the graph's lock. Rules therefore must be quick and must not write to
the graph (reading it is fine).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from dtp.errors import DTPError, ErrorCode, LocalProtocolError
from dtp.graph import _private as private
from dtp.graph import namespace, sea
from dtp.graph._arguments import name_text
from dtp.graph._batch import batch_count
from dtp.graph.values import JSON, decode_value
from dtp.native.core import decode_ham_batch, find_ham_souls
from dtp.native.reference._limits import HAM_BATCH_HEADER_LEN, HAM_BATCH_VERSION
from dtp.native.types import HamUpdate

logger = logging.getLogger("dtp.graph.rules")

RuleCheck = Callable[["Update"], "str | bool | None"]
"""A rule: ``check(update)`` returns None (or True) to let the update in, a str (the
reason) or False to refuse it."""

RULE = "rule"
"""The reason (``stats["refused_by_reason"]``, :attr:`Refusal.reason`) of an update a
rule refused."""
MAX_NAME = 64
"""Characters of a rule's name at most."""
MAX_MESSAGE = 256
"""Characters of a refusal's message kept (a longer reason is cut)."""

_ONE = bytes([HAM_BATCH_VERSION]) + (1).to_bytes(4, "little")


@dataclass(frozen=True, slots=True)
class Update:
    """What a rule sees of one update (all read under the graph's lock).

    ``value`` and ``current`` are decoded values, with signed envelopes opened (dtp's
    ``~0x`` spaces, SEA's ``{":": v, "~": sig}``); ``current_state`` is None when the
    field does not exist yet (``current`` is None then too, as it is for a field that
    holds null). ``author`` is the signer for a signed space -- the owner's Sui address
    for ``~0x<address>/...`` and for a private space's ``%0x<address>/...``, the SEA
    key ``x.y`` for ``~x.y...`` -- whose signature was verified before any rule runs,
    and None elsewhere (public souls have no author). In a private space ``value`` and
    ``current`` are the stored envelopes (``"dtp/p1:..."`` strings), as every peer sees
    them, readers or not. ``local`` is True for a write of this graph (``put``, a
    tier's handle), False for a peer's update.
    """

    soul: str
    field: str
    value: JSON
    state: float
    author: str | None
    current: JSON
    current_state: float | None
    local: bool
    stored: bytes = dataclasses.field(repr=False)
    """The value's bytes as the table stores them (the envelope included)."""

    @property
    def exists(self) -> bool:
        """True when the field already holds a value (null included)."""
        return self.current_state is not None


@dataclass(frozen=True)
class Refusal:
    """One update refused on its way in, and why.

    ``reason``: ``"rule"`` for a rule's refusal (``rule`` then names it), else the
    reason of the ownership, SEA or private-tier check (``unsigned``, ``wrong_key``,
    ``bad_signature``, ``bad_soul``, ``sea_unverified``, ``private_wrong_key``, ...).
    ``message``: the rule's text, or what the check found. Soul and field are read as
    UTF-8 (errors replaced).
    """

    soul: str
    field: str
    state: float
    reason: str
    message: str
    rule: str | None = None
    update: HamUpdate | None = dataclasses.field(default=None, repr=False, compare=False)
    """The refused update as it came (for rules' refusals: a sync session tries them
    again once its peer's whole exchange is in)."""

    @classmethod
    def of(cls, update: HamUpdate, reason: str, message: str, rule: str | None = None) -> Refusal:
        """The refusal of ``update``."""
        return cls(
            update.soul.decode("utf-8", "replace"),
            update.field.decode("utf-8", "replace"),
            update.state,
            reason,
            message[:MAX_MESSAGE],
            rule,
            update,
        )

    def __str__(self) -> str:
        who = f"rule {self.rule!r}" if self.rule is not None else self.reason
        return f"{self.soul!r}.{self.field!r} refused by {who}: {self.message}"


class RuleRefused(LocalProtocolError):
    """A local write that a rule refused (nothing of it was written): :attr:`refusal`
    says which field, which rule and why."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(
            f"put() refused: {refusal} (docs/graph.md, 'Rules')",
            ErrorCode.ARG,
        )
        self.refusal = refusal


@dataclass(frozen=True)
class Rule:
    """A registered rule (see :meth:`RuleSet.add`)."""

    name: str
    check: RuleCheck = dataclasses.field(repr=False)
    prefix: str = ""
    souls: re.Pattern[str] | None = None

    @property
    def prefix_bytes(self) -> bytes:
        """:attr:`prefix` in UTF-8, as souls are compared."""
        return self.prefix.encode()

    def applies(self, soul: bytes, soul_text: str | None) -> bool:
        """Whether the rule looks at updates of ``soul`` (prefix and pattern)."""
        if not soul.startswith(self.prefix_bytes):
            return False
        if self.souls is None:
            return True
        return soul_text is not None and self.souls.fullmatch(soul_text) is not None


def _author(soul: bytes, soul_text: str | None) -> str | None:
    owner = namespace.owner_of(soul)
    if owner is not None:
        return owner
    space = private.parse_soul(soul)
    if space is not None:
        return space.author
    if soul_text is not None and soul_text.startswith("~") and not namespace.is_user_space(soul):
        return sea.sea_pub(soul_text)
    return None


def _unwrap_sea(value: JSON) -> JSON:
    """The value inside SEA's signed envelope ``{":": v, "~": sig}`` (``value`` itself
    when it is none)."""
    if isinstance(value, str) and value.startswith(("{", "SEA{")):
        try:
            inner = decode_value((value[3:] if value.startswith("SEA") else value).encode())
        except DTPError:
            return value
        if isinstance(inner, dict) and ":" in inner and "~" in inner:
            unwrapped: JSON = inner[":"]
            return unwrapped
    return value


class RuledGraph(Protocol):
    """What the rules read of their graph (:class:`~dtp.graph._store.Graph`):
    its table and a stored value's decoding."""

    @property
    def _table(self) -> Any: ...

    def _value_of(self, soul: bytes, stored: bytes) -> JSON: ...


class RuleSet:
    """The rules of one graph (``graph.rules``): :meth:`add`, :meth:`remove`, and the
    checks the graph runs on every path in.

    Thread-safe: rules may be added and removed while sync sessions merge (a merge uses
    the rules registered when it began)."""

    def __init__(self, graph: RuledGraph) -> None:
        self._graph = graph
        self._rules: dict[str, Rule] = {}
        self._by_prefix: dict[bytes, tuple[Rule, ...]] = {}
        self._edit = threading.Lock()
        self.active = False
        """True while at least one rule is registered (what a merge asks first)."""

    # -- registering ---------------------------------------------------------------------

    def add(
        self,
        name: str,
        check: RuleCheck,
        *,
        prefix: str = "",
        souls: str | re.Pattern[str] | None = None,
    ) -> Rule:
        """Register ``check`` as the rule ``name`` for the souls starting with
        ``prefix`` (all souls: ``""``, which makes every update of every batch be
        decoded) and, when ``souls`` is given, matching it whole (a regular
        expression, ``re.fullmatch``). Returns the :class:`Rule`.

        ValueError when ``name`` is taken or not 1..64 characters; TypeError for a
        ``check`` that is not callable or arguments of the wrong type."""
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise ValueError(f"a rule's name is a str of 1 to {MAX_NAME} characters: {name!r:.80}")
        if not callable(check):
            raise TypeError(f"a rule's check must be callable, not {type(check).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        try:
            prefix.encode()
        except UnicodeEncodeError:
            raise ValueError(f"prefix is not valid Unicode: {prefix!r:.80}") from None
        pattern: re.Pattern[str] | None
        if souls is None or isinstance(souls, re.Pattern):
            pattern = souls
        elif isinstance(souls, str):
            pattern = re.compile(souls, re.DOTALL)
        else:
            raise TypeError(f"souls must be a regular expression, not {type(souls).__name__}")
        rule = Rule(name, check, prefix, pattern)
        with self._edit:
            if name in self._rules:
                raise ValueError(f"a rule named {name!r} is registered already")
            self._rules[name] = rule
            self._reindex()
        return rule

    def remove(self, name: str) -> None:
        """Unregister the rule ``name`` (KeyError when there is none)."""
        with self._edit:
            del self._rules[name]
            self._reindex()

    def _reindex(self) -> None:
        by_prefix: dict[bytes, list[Rule]] = {}
        for rule in self._rules.values():
            by_prefix.setdefault(rule.prefix_bytes, []).append(rule)
        # (replaced whole: a merge in another thread reads the old or the new map)
        self._by_prefix = {p: tuple(rules) for p, rules in by_prefix.items()}
        self.active = bool(self._rules)

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def __iter__(self) -> Iterator[Rule]:
        return iter(list(self._rules.values()))

    def __len__(self) -> int:
        return len(self._rules)

    def __getitem__(self, name: str) -> Rule:
        return self._rules[name]

    # -- checking (the graph's lock held) --------------------------------------------------

    def filter_batch(self, batch: bytes) -> tuple[bytes, list[Refusal]]:
        """A peer's (validated) batch without the updates a rule refuses, and those
        refusals (graph lock held). The input itself when nothing is refused; a batch
        in which no rule's prefix appears is not decoded."""
        by_prefix = self._by_prefix
        spans: dict[int, tuple[int, tuple[Rule, ...]]] = {}
        for prefix, rules in by_prefix.items():
            if prefix and prefix not in batch:
                continue
            for start, end in find_ham_souls(batch, prefix):
                if start in spans:
                    spans[start] = (end, spans[start][1] + rules)
                else:
                    spans[start] = (end, rules)
        if not spans:
            return batch, []
        refusals: list[Refusal] = []
        dropped: list[tuple[int, int]] = []
        for start in sorted(spans):
            end, rules = spans[start]
            (update,) = decode_ham_batch(_ONE + batch[start:end])
            refusal = self._judge(update, rules, local=False)
            if refusal is not None:
                refusals.append(refusal)
                dropped.append((start, end))
        if not dropped:
            return batch, []
        return without(batch, dropped), refusals

    def check_local(self, updates: list[HamUpdate]) -> Refusal | None:
        """The first refusal of a local write's updates, or None (graph lock held)."""
        by_prefix = self._by_prefix
        for update in updates:
            rules = tuple(
                rule
                for prefix, group in by_prefix.items()
                if update.soul.startswith(prefix)
                for rule in group
            )
            if rules:
                refusal = self._judge(update, rules, local=True)
                if refusal is not None:
                    return refusal
        return None

    def _judge(self, update: HamUpdate, rules: tuple[Rule, ...], *, local: bool) -> Refusal | None:
        soul_b, field_b, state, stored = update
        soul = name_text(soul_b)
        rules = tuple(r for r in rules if r.applies(soul_b, soul))
        if not rules:
            return None
        table = self._graph._table
        current = table.get(soul_b, field_b)
        if current is not None and current[0] == state and current[1] == stored:
            return None  # the table holds exactly it: merged, it changes nothing
        fld = name_text(field_b)
        if soul is None or fld is None:
            return Refusal.of(update, RULE, "a soul or field name that is not UTF-8", rules[0].name)
        try:
            value = self._graph._value_of(soul_b, stored)
        except DTPError:
            return Refusal.of(update, RULE, "the value is not JSON", rules[0].name)
        author = _author(soul_b, soul)
        current_value: JSON = None
        if current is not None:
            try:
                current_value = self._graph._value_of(soul_b, current[1])
            except DTPError:
                current_value = None
        if author is not None and not namespace.is_user_space(soul_b) and soul.startswith("~"):
            # (a SEA user space: the value inside gun's signed envelope)
            value, current_value = _unwrap_sea(value), _unwrap_sea(current_value)
        seen = Update(
            soul,
            fld,
            value,
            state,
            author,
            current_value,
            None if current is None else current[0],
            local,
            stored,
        )
        for rule in rules:
            try:
                verdict: Any = rule.check(seen)
            except Exception as exc:
                # a rule that fails cannot vouch for the update: refused (and logged)
                logger.exception("graph: rule %r raised on %r.%r", rule.name, soul, fld)
                return Refusal.of(
                    update, RULE, f"the rule raised {type(exc).__name__}: {exc}", rule.name
                )
            if verdict is None or verdict is True:
                continue
            message = verdict if isinstance(verdict, str) else "refused"
            return Refusal.of(update, RULE, message, rule.name)
        return None


def without(batch: bytes, dropped: list[tuple[int, int]]) -> bytes:
    """``batch`` without the updates at byte spans ``dropped`` (in order): the rest stays
    as it was."""
    parts = [bytes([HAM_BATCH_VERSION]) + (batch_count(batch) - len(dropped)).to_bytes(4, "little")]
    pos = HAM_BATCH_HEADER_LEN
    for start, end in dropped:
        parts.append(batch[pos:start])
        pos = end
    parts.append(batch[pos:])
    return b"".join(parts)


EMPTY_BATCH = bytes([HAM_BATCH_VERSION]) + bytes(4)
"""A batch of no update."""


__all__ = [
    "EMPTY_BATCH",
    "MAX_MESSAGE",
    "MAX_NAME",
    "RULE",
    "Refusal",
    "Rule",
    "RuleCheck",
    "RuleRefused",
    "RuleSet",
    "Update",
    "without",
]
