"""The rules' common ground: object data as JSON, the execution context (:class:`Exec`)
that a rule reads and writes objects through, and Move's checked arithmetic and strings."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from dtp.errors import (
    ChainError,
    InsufficientFunds,
    LedgerUnavailable,
    ObjectNotFound,
    foreign_abort,
    move_error,
)
from dtp.ledger._entry_functions import MOVE_CALLS, OBJECT_KINDS, Entry
from dtp.ledger._objects import U64_MAX, owned_by_another
from dtp.ledger._versions import ADMIN_CAP, PACKAGE_VERSION, VERSIONED, stored_version
from dtp.ledger.local._tx import derive_object_id

SHARED: Final = "shared"

#: Short Move type names of LocalLedger objects, by struct name.
OBJECT_TYPES: Final = {
    "Host": "dtp::host::Host",
    "SpendingCap": "dtp::spending_cap::SpendingCap",
    "TransportControl": "dtp::transport_control::TransportControl",
    "Escrow": "dtp::escrow::Escrow",
    "Pipe": "dtp::pipe::Pipe",
    "Broadcast": "dtp::broadcast::Broadcast",
    "ResponseEscrow": "dtp::response_escrow::ResponseEscrow",
    ADMIN_CAP: "dtp::version::AdminCap",
}


# -- JSON with bytes -------------------------------------------------------------------------


def _bytes_to_json(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$b": obj.hex()}
    raise TypeError(f"cannot store {type(obj).__name__}")


def _bytes_from_json(obj: dict[str, Any]) -> Any:
    # (the key first: no len call for the other objects of a text that holds bytes)
    if "$b" in obj and len(obj) == 1:
        return bytes.fromhex(obj["$b"])
    return obj


# One encoder and one decoder for every call: json.dumps/loads with options build a new
# one each time, and a transaction encodes and decodes every object it touches.
_ENCODER: Final = json.JSONEncoder(default=_bytes_to_json, sort_keys=True, separators=(",", ":"))
_DECODER: Final = json.JSONDecoder(object_hook=_bytes_from_json)
# Without the hook the C decoder calls no Python per object: for data holding no bytes
# (no "$b" key can be in a text without that substring, as to_json writes it)
_PLAIN_DECODER: Final = json.JSONDecoder()
# their scanners, which decode calls (from_json calls them directly)
_Scan = Callable[[str, int], tuple[Any, int]]
_SCAN: Final[_Scan] = _DECODER.scan_once  # type: ignore[attr-defined]
_PLAIN_SCAN: Final[_Scan] = _PLAIN_DECODER.scan_once  # type: ignore[attr-defined]


def _one_shot_encoder() -> Callable[[Any, int], Any] | None:
    """_ENCODER's C encoder, made once: ``encode`` makes one for every call (and checks
    and joins around it), some five calls of each of the objects and events every
    transaction writes. Made without the markers that catch a cycle, which no object's
    data has (it is parsed JSON or dicts a rule builds), so one serves every thread.
    None where the C encoder is missing or takes other arguments."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder: Callable[[Any, int], Any] = make(
            None,
            _bytes_to_json,
            json.encoder.encode_basestring_ascii,
            None,
            ":",
            ",",
            True,
            False,
            True,
        )
        sample = {"b": [1, b"\x00", None, True], "a": {"z": "\u00e9", "y": -5}}
        if "".join(encoder(sample, 0)) != _ENCODER.encode(sample):
            return None
    except Exception:  # any failure: the encoder of every other case
        return None
    return encoder


_ONE_SHOT: Final = _one_shot_encoder()


def to_json(value: Any) -> str:
    """Canonical JSON of object data; bytes become ``{"$b": hex}``."""
    if _ONE_SHOT is not None:
        return "".join(_ONE_SHOT(value, 0))
    return _ENCODER.encode(value)


class DamagedData(LedgerUnavailable):
    """Stored data that does not read back (a ledger file damaged, or edited by something
    else): a :class:`~dtp.errors.LedgerUnavailable`, as every other failure of the file,
    rather than the bare ValueError of a decoder that no caller of a ledger expects."""

    module = "ledger"
    #: The ledger file named in the message, once the ledger has worded it (None before).
    ledger: str | None = None


def wrong_shape(what: str, exc: BaseException) -> DamagedData:
    """:class:`DamagedData` for stored data (``what``: "object 0x…") that parses but is
    not what the ledger writes (a missing field, a list for an object, text for a
    number), found as the ``exc`` that reading it raised."""
    return DamagedData(
        f"the stored data of {what} has the wrong shape ({type(exc).__name__}: {exc!s:.80})"
    )


def from_json(text: str) -> Any:
    """Inverse of :func:`to_json`; :class:`DamagedData` for a text it cannot have written."""
    try:
        plain = '"$b"' not in text
        decoder, scan = (_PLAIN_DECODER, _PLAIN_SCAN) if plain else (_DECODER, _SCAN)
        # The scanner alone for a text as to_json writes it (one value, nothing around
        # it): decode's whitespace matches and raw_decode around it are some seven calls
        # of every object a transaction reads. Any other text goes through decode, which
        # gives the same value or raises its own error.
        try:
            value, end = scan(text, 0)
        except StopIteration:
            return decoder.decode(text)
        if end != len(text):
            return decoder.decode(text)
        return value
    except (ValueError, TypeError, AttributeError) as exc:
        # not JSON, a "$b" that is not hex, or not text at all (a row rewritten as a blob)
        raise DamagedData(f"stored data does not parse ({exc})") from None


def stored_int(value: Any) -> int:
    """A number as stored (a balance or a meta value: decimal text, as the ledger
    writes it, or an INTEGER); :class:`DamagedData` for anything else."""
    number = parse_stored_int(value)
    if number is None:
        raise DamagedData(f"a stored number is not an integer ({value!r:.60})")
    return number


def parse_stored_int(value: Any) -> int | None:
    """:func:`stored_int`, None instead of raising."""
    if type(value) is int:
        return value
    if type(value) is str:
        # The text the ledger writes, str() of the number, in one step (no call): it is
        # read on every transaction (the clock's meta values, the balances it moves)
        try:
            number = int(value)
        except ValueError:
            return None  # (no text the checks below take fails int())
        if -(10**20) < number < 10**20 and str(number) == value:
            return number
        # int() alone would also take " 5", "5_0", "+5" and non-ASCII digits, none of
        # which the ledger writes (a clock offset is the one negative value it keeps),
        # and a float's fraction would be cut
        digits = value[1:] if value[:1] == "-" else value
        if 0 < len(digits) <= 20 and digits.isascii() and digits.isdecimal():
            return int(value)
    return None


# -- execution context -------------------------------------------------------------------------


class Store(Protocol):
    """What rules read from the ledger's storage (inside the current transaction)."""

    def load(self, object_id: str) -> tuple[str, str, int, dict[str, Any]] | None:
        """(type, owner, version, data) of a live object, or None."""

    def load_stored(self, object_id: str) -> tuple[str, str, int, dict[str, Any], str] | None:
        """:meth:`load` plus the data as stored (:func:`to_json` of it)."""

    def balance(self, address: str) -> int:
        """SUI balance of ``address``."""


@dataclass
class Obj:
    """An object touched by the current transaction."""

    id: str
    type: str
    owner: str
    version: int
    data: dict[str, Any]
    before: str | None  # JSON at load; None for objects created here
    deleted: bool = False


@dataclass
class Exec:
    """One transaction's execution: sender, time, and the changes it makes."""

    store: Store
    sender: str
    digest: bytes
    now_ms: int
    epoch: int
    #: The package ID the rules run as: Move's ``type_name::get_with_original_ids`` of
    #: its own types, which receipts name (docs/escrow.md §6).
    package: str
    #: The package version whose code runs (``version::VERSION``): LocalLedger's
    #: ``package_version``, its stand-in for an upgrade (docs/escrow.md "Versions").
    code_version: int = PACKAGE_VERSION
    objects: dict[str, Obj] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    created: int = 0

    # objects

    def load(self, object_id: str, struct: str) -> dict[str, Any]:
        """The data of ``object_id``, which must be a live ``struct`` usable by the sender."""
        if object_id in self.objects and not self.objects[object_id].deleted:
            obj = self.objects[object_id]
        else:
            row = self.store.load_stored(object_id)
            if row is None:
                raise ObjectNotFound(f"No object with ID {object_id} exists on this ledger.")
            # the stored text is the canonical JSON of the data: what the object is
            # compared with at the end, to write only what changed
            type_, owner, version, data, stored = row
            obj = Obj(object_id, type_, owner, version, data, stored)
            self.objects[object_id] = obj
        if obj.type != OBJECT_TYPES[struct]:
            raise ObjectNotFound(
                f"Object {object_id} is a {obj.type.rsplit('::', 1)[-1]}, not a {struct}."
            )
        if obj.owner not in (SHARED, self.sender):
            raise owned_by_another(struct, object_id, obj.owner, self.sender)
        return obj.data

    def create(self, struct: str, owner: str, data: dict[str, Any]) -> str:
        """Create an object (shared when ``owner`` is ``"shared"``) and return its ID; a
        versioned one records the version of the code that made it."""
        if struct in VERSIONED:
            data.setdefault("version", self.code_version)
        object_id = self.new_id()
        self.objects[object_id] = Obj(object_id, OBJECT_TYPES[struct], owner, 0, data, None)
        return object_id

    def new_id(self) -> str:
        """A fresh object ID, derived like Sui's from the digest and a creation index."""
        object_id = derive_object_id(self.digest, self.created)
        self.created += 1
        return object_id

    def delete(self, object_id: str) -> None:
        self.objects[object_id].deleted = True

    def check_loaded_version(self, data: dict[str, Any], object_id: str, struct: str) -> None:
        """``check_version`` of ``data``, which :meth:`load` gave for ``object_id``:
        ``version::EWrongVersion`` unless it records the version of the code that runs."""
        version = stored_version(data)
        if version != self.code_version:
            raise move_error(
                "version",
                "EWrongVersion",
                f"{struct} {object_id} is of package version {version}, the code called is "
                f"version {self.code_version}",
            )

    # money

    def take_coin(self, amount: int) -> int:
        """Split ``amount`` MIST off the sender's balance (a ``Coin<SUI>`` argument)."""
        self.check_coin(amount)
        self.credits[self.sender] = self.credits.get(self.sender, 0) - amount
        return amount

    def check_coin(self, amount: int) -> None:
        """The ``SplitCoins`` of :meth:`take_coin`, which runs before any Move code:
        InsufficientFunds unless the sender holds ``amount``."""
        available = self.store.balance(self.sender) + self.credits.get(self.sender, 0)
        if amount > available:
            raise InsufficientFunds(
                f"Address {self.sender} has {available} MIST, {amount} are needed.",
                name="InsufficientCoinBalance",
                module="sui",
            )

    def pay(self, address: str, amount: int) -> None:
        """Transfer a coin of ``amount`` MIST to ``address`` (nothing when 0)."""
        if amount:
            self.credits[address] = self.credits.get(address, 0) + amount

    def pay_all(self, obj: dict[str, Any], field: str, address: str) -> int:
        """The whole balance ``obj[field]`` paid to ``address`` (Move's
        ``balance::withdraw_all`` then a transfer); returns the MIST paid."""
        amount: int = obj[field]
        obj[field] = 0
        self.pay(address, amount)
        return amount

    def require_sender(self, who: str, module: str, error: str, what: str) -> None:
        """Abort ``module::error`` unless the sender is ``who`` (the one role of ``what``
        that may make the call)."""
        if self.sender != who:
            raise move_error(module, error, f"{self.sender} on {what}")

    # events

    def emit(self, module: str, name: str, fields: dict[str, Any]) -> None:
        self.events.append((f"dtp::{module}::{name}", fields))


def add_u64(a: int, b: int) -> int:
    """``a + b`` with Move's overflow abort."""
    total = a + b
    if total > U64_MAX:
        raise ChainError(
            "Arithmetic overflow: a u64 sum exceeds 2**64-1.", name="ArithmeticError", module="sui"
        )
    return total


Handler = Callable[..., Any]

#: How a transaction carries the kinds of MOVE_CALLS that are not one value: an Sla and a
#: Receipt as their fields (``LocalStore._move_args``), the Clock not at all.
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "clock": (),
    "sla": ("u64",) * 4,
    "receipt": ("u64",) * 4 + ("bytes",),
}


def _schema(call: Entry) -> tuple[str, ...]:
    kinds: list[str] = []
    for kind, what in call.args:
        if kind in OBJECT_KINDS:
            kinds.append(f"obj:{what}")
        else:
            kinds += _FIELDS.get(kind, (kind,))
    return tuple(kinds)


#: Each entry function's argument kinds, as its transaction carries them: "u8", "u16",
#: "u64", "bytes", "utf8", "address", "vec_bytes", "coin" (u64 MIST split from the
#: sender's balance) and "obj:<Struct>" (an object ID), from its row of
#: :data:`~dtp.ledger._entry_functions.MOVE_CALLS`, the table the Sui builders read. "utf8"
#: is a ``vector<u8>`` the Move code turns into a String itself (``string::utf8``), passed
#: on as bytes for the handler to decode (:func:`utf8`) where Move does, so that bytes
#: which are not UTF-8 abort there as they do on Sui.
SCHEMAS: Final = {(call.module, call.function): _schema(call) for call in MOVE_CALLS.values()}


#: Every entry function's rule and argument kinds: ``(module, function)`` -> (kinds,
#: rule), as :func:`rule` registers them (:data:`dtp.ledger.local.rules.FUNCTIONS`).
FUNCTIONS: Final[dict[tuple[str, str], tuple[tuple[str, ...], Handler]]] = {}

_H = TypeVar("_H", bound=Handler)


def rule(target: str) -> Callable[[_H], _H]:
    """A decorator: the function is the rule of the entry function ``target``
    (``"module::function"``), registered in :data:`FUNCTIONS` with its :data:`SCHEMAS`."""
    module, function = target.split("::")

    def register(handler: _H) -> _H:
        FUNCTIONS[module, function] = (SCHEMAS[module, function], handler)
        return handler

    return register


#: ``std::string::EInvalidUTF8``, the abort code of ``string::utf8`` (module ``0x1::string``).
EINVALID_UTF8: Final = 1

#: The Move standard library's package ID as Sui reports an abort's location: 64 hex
#: digits, as the package of any other module (a node never shortens it to ``0x1``).
MOVE_STDLIB: Final = "0x" + "1".rjust(64, "0")


def utf8(raw: bytes, what: str) -> str:
    """``string::utf8(raw)``: the text of a ``vector<u8>`` argument, or the abort of
    ``std::string`` for bytes that are not UTF-8 (Sui takes any bytes as a ``vector<u8>``,
    so the check is the Move code's, made at the point the ``.move`` file calls it)."""
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise foreign_abort(
            MOVE_STDLIB,
            "string",
            EINVALID_UTF8,
            f"the {what} is not UTF-8 ({e.reason} at byte {e.start}; std::string::EInvalidUTF8)",
        ) from None
