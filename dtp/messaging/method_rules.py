"""Per-method access and prices for a provider's RPC and JSON-RPC methods
(docs/messaging.md §2.5: the rules' vocabulary and its TOML form).

A :class:`MethodRules` is an ordered list of :class:`MethodRule`: the first rule whose
``name`` matches a method (exactly, or as a shell-style pattern such as ``"eth_get*"``)
decides whether a client may call it and what it costs; a method no rule names is
allowed or refused as ``default`` says. Clients are named by Sui address, ``"*"`` or a
named list (``"@partners"``: addresses, or any ``address -> bool`` function such as
:class:`LedgerList`, the Host's firewall lists); deny entries win over allow ones.

The rules are sans-I/O: :meth:`MethodRules.check` takes the method and the client's
address and answers the price (or raises :class:`~dtp.messaging.errors.MethodNotAllowed`);
the servers call it before the request's fee is taken, so a refused request costs
nothing. A ``price`` is in MIST, a multiple of the connection's ``price_per_request``:
receipts count requests (docs/escrow.md §3), so a method priced at five times the SLA's
request price counts as five requests; no price is the SLA's own (one request), 0 free."""

from __future__ import annotations

import fnmatch
import os
import threading
import time
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from dtp.errors import InvalidObjectId
from dtp.ledger._objects import Sla, normalize_id
from dtp.messaging import errors as E

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger

__all__ = [
    "EVERYONE",
    "LedgerList",
    "MethodRule",
    "MethodRules",
    "requests_for",
]

#: The client entry that names every client, the anonymous ones too.
EVERYONE: Final = "*"
#: The largest price a rule may set (a u64, as every ledger amount).
_MAX_PRICE: Final = (1 << 64) - 1

#: What a named list is: addresses, or a function telling whether an address is on it.
ClientList = Collection[str] | Callable[[str], bool]


def requests_for(sla: Sla, price: int | None) -> int:
    """How many requests of ``sla`` a method priced ``price`` MIST counts as (None: the
    SLA's own price, one request). ValueError when the price is not a multiple of the
    SLA's ``price_per_request``: no receipt can pay it exactly (a provider's mistake,
    answered as an internal error)."""
    if price is None:
        return 1
    if price == 0:
        return 0
    step = sla.price_per_request
    if step <= 0 or price % step:
        raise ValueError(
            f"a method priced {price} MIST on a connection whose price_per_request is "
            f"{step}: a method's price must be a multiple of it (receipts count requests)"
        )
    return price // step


def _client_entry(entry: object, where: str) -> str:
    if not isinstance(entry, str):
        raise TypeError(f"{where}: a client entry is a str, not {type(entry).__name__!r}")
    if entry == EVERYONE:
        return entry
    if entry.startswith("@"):
        if len(entry) == 1:
            raise ValueError(f"{where}: a list entry names its list, '@name'")
        return entry
    try:
        return normalize_id(entry, "client address")
    except InvalidObjectId:
        raise ValueError(
            f"{where}: {entry!r} is no Sui address ('0x' + hex), '*' or '@list'"
        ) from None


@dataclass(frozen=True)
class MethodRule:
    """One rule: who may call the methods ``name`` matches, and their price."""

    name: str
    """A method name, or a shell-style pattern (``*``, ``?``, ``[…]``) of names."""
    allow: tuple[str, ...] = (EVERYONE,)
    """The clients allowed (addresses, ``"*"``, ``"@list"``); empty: nobody."""
    deny: tuple[str, ...] = ()
    """The clients refused, whatever ``allow`` says."""
    price: int | None = None
    """MIST per call (a multiple of the SLA's ``price_per_request``); None: the SLA's
    own request price; 0: free."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a method rule names a method or a pattern (a non-empty str)")
        where = f"method rule {self.name!r}"
        for what in ("allow", "deny"):
            value = getattr(self, what)
            if isinstance(value, str):  # (a lone string is one entry, not its letters)
                value = (value,)
            entries = tuple(_client_entry(e, f"{where}: {what}") for e in value)
            object.__setattr__(self, what, entries)
        price = self.price
        if price is not None and (type(price) is not int or not 0 <= price <= _MAX_PRICE):
            raise ValueError(f"{where}: price is an int of MIST from 0 to 2**64-1, got {price!r}")

    def matches(self, method: str) -> bool:
        """Whether this rule decides ``method``."""
        return method == self.name or fnmatch.fnmatchcase(method, self.name)


class MethodRules:
    """An ordered list of :class:`MethodRule` (the first that matches a method decides),
    ``default`` for the methods none matches, and the named lists the rules' ``"@name"``
    entries refer to. Thread-safe: it is only read once made."""

    def __init__(
        self,
        rules: Iterable[MethodRule] = (),
        *,
        default: Literal["allow", "deny"] = "allow",
        lists: Mapping[str, ClientList] | None = None,
    ) -> None:
        self.rules: tuple[MethodRule, ...] = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, MethodRule):
                raise TypeError(f"rules are MethodRule objects, not {type(rule).__name__!r}")
        if default not in ("allow", "deny"):
            raise ValueError(f'default is "allow" or "deny", not {default!r}')
        self.default = default
        self.lists: dict[str, Callable[[str], bool]] = {}
        for name, members in (lists or {}).items():
            self.lists[name] = _as_test(name, members)
        for rule in self.rules:
            for entry in (*rule.allow, *rule.deny):
                if entry.startswith("@") and entry[1:] not in self.lists:
                    raise ValueError(f"method rule {rule.name!r} names an unknown list {entry}")

    @classmethod
    def from_config(
        cls,
        doc: Mapping[str, Any],
        *,
        ledger: Ledger | None = None,
        host_id: str | None = None,
    ) -> MethodRules:
        """The rules of a mapping in the documented vocabulary (a parsed TOML table):
        ``default``, ``lists`` (name → addresses, or ``"host.allow"`` / ``"host.deny"``:
        the Host's firewall lists on ``ledger``, which then needs ``host_id``) and
        ``method``, an array of tables with ``name``, ``allow``, ``deny``, ``price``.
        Unknown keys are refused (ValueError naming them): a misspelt ``alow`` would
        otherwise let everyone in."""
        _only(doc, {"default", "lists", "method"}, "method rules")
        lists: dict[str, ClientList] = {}
        for name, value in dict(doc.get("lists", {})).items():
            if isinstance(value, str):
                if value not in ("host.allow", "host.deny"):
                    raise ValueError(
                        f'lists.{name}: a list is an array of addresses, "host.allow" or '
                        f'"host.deny", not {value!r}'
                    )
                if ledger is None or host_id is None:
                    raise ValueError(f"lists.{name}: {value} needs a ledger and the host ID")
                which: Literal["allow", "deny"] = "allow" if value == "host.allow" else "deny"
                lists[name] = LedgerList(ledger, host_id, which)
            elif isinstance(value, list):
                lists[name] = frozenset(_client_entry(a, f"lists.{name}") for a in value)
            else:
                raise ValueError(f"lists.{name}: expected an array of addresses or a str")
        rules = []
        methods = doc.get("method", [])
        if not isinstance(methods, list):
            raise ValueError("method: expected an array of tables ([[method]])")
        for i, entry in enumerate(methods):
            if not isinstance(entry, Mapping):
                raise ValueError(f"method[{i}]: expected a table")
            _only(entry, {"name", "allow", "deny", "price"}, f"method[{i}]")
            if "name" not in entry:
                raise ValueError(f"method[{i}]: name is required")
            rules.append(
                MethodRule(
                    entry["name"],
                    allow=tuple(entry.get("allow", (EVERYONE,))),
                    deny=tuple(entry.get("deny", ())),
                    price=entry.get("price"),
                )
            )
        return cls(rules, default=doc.get("default", "allow"), lists=lists)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        ledger: Ledger | None = None,
        host_id: str | None = None,
    ) -> MethodRules:
        """:meth:`from_config` of a TOML file (examples/jsonrpc_rules.toml); a mistake
        is a ValueError naming the file."""
        with open(path, "rb") as f:
            try:
                doc = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{os.fspath(path)}: {exc}") from None
        try:
            return cls.from_config(doc, ledger=ledger, host_id=host_id)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    def rule_for(self, method: str) -> MethodRule | None:
        """The rule that decides ``method`` (None: ``default`` does)."""
        for rule in self.rules:
            if rule.matches(method):
                return rule
        return None

    def check(self, method: str, client: str | None) -> int | None:
        """The price of ``method`` for ``client`` (its Sui address; None: anonymous) --
        MIST, or None for the SLA's own request price -- or
        :class:`~dtp.messaging.errors.MethodNotAllowed` when the rules refuse it."""
        rule = self.rule_for(method)
        if rule is None:
            if self.default == "allow":
                return None
            raise _refused(method, client)
        if client is not None:
            try:
                client = normalize_id(client, "client address")
            except InvalidObjectId:
                client = None
        if self._names(rule.deny, client) or not self._names(rule.allow, client):
            raise _refused(method, client)
        return rule.price

    def allowed(self, method: str, client: str | None) -> bool:
        """Whether ``client`` may call ``method``."""
        try:
            self.check(method, client)
        except E.MethodNotAllowed:
            return False
        return True

    def _names(self, entries: Sequence[str], client: str | None) -> bool:
        for entry in entries:
            if entry == EVERYONE:
                return True
            if client is None:
                continue
            if entry.startswith("@"):
                if self.lists[entry[1:]](client):
                    return True
            elif entry == client:
                return True
        return False


def _refused(method: str, client: str | None) -> E.MethodNotAllowed:
    who = client if client is not None else "an anonymous client"
    return E.MethodNotAllowed(
        f"method {method!r} is not allowed for {who}", data={"method": method}
    )


def _only(doc: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _as_test(name: str, members: ClientList) -> Callable[[str], bool]:
    if callable(members):
        return members
    if isinstance(members, str):
        raise TypeError(f"list {name!r}: a collection of addresses, not one str")
    known = frozenset(_client_entry(a, f"list {name!r}") for a in members)
    return known.__contains__


@dataclass
class LedgerList:
    """One of the Host's firewall lists on the ledger (``which``: ``"allow"`` or
    ``"deny"``) as a named list of :class:`MethodRules`: each client is looked up
    (``Ledger.is_allowed`` / ``is_denied``: one Table lookup), and the answer kept for
    ``ttl`` seconds, so that a list changed on the ledger reaches the rules within it
    while a busy client costs one read per ``ttl``. A ledger that cannot be read keeps
    the last answer; with none, the rules fail closed: a client is taken as off an
    allow list and on a deny list."""

    ledger: Ledger
    host_id: str
    which: Literal["allow", "deny"]
    ttl: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _known: dict[str, tuple[bool, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.which not in ("allow", "deny"):
            raise ValueError(f'which is "allow" or "deny", not {self.which!r}')

    def __call__(self, client: str) -> bool:
        from dtp.errors import ChainError

        now = self.clock()
        with self._lock:
            known = self._known.get(client)
        if known is not None and now - known[1] < self.ttl:
            return known[0]
        lookup = self.ledger.is_allowed if self.which == "allow" else self.ledger.is_denied
        try:
            on = bool(lookup(self.host_id, client))
        except ChainError:
            return self.which == "deny" if known is None else known[0]
        with self._lock:
            if len(self._known) >= 4096:  # (bounded: the oldest answers go first)
                for key in list(self._known)[:1024]:
                    del self._known[key]
            self._known[client] = (on, now)
        return on
