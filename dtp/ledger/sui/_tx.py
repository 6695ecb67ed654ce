"""Offline building of the Sui transactions behind every state-changing Ledger method.

Nothing here talks to a node: each builder takes the object references it needs (owned
objects by ``(id, version, digest)``, shared objects by ``(id, initial_shared_version)``),
the package ID, the sender and the gas data, and returns the BCS bytes of a
``TransactionData::V1`` that ``HostIdentity.sign_transaction`` signs.

Built with pysui's low-level ``ProgrammableTransactionBuilder`` (pysui 1.5.1), with every
pure argument encoded here to exact BCS (``u8``/``u16``/``u64`` little-endian,
``address`` as 32 bytes, ``vector<u8>`` as ``uleb128(len) || bytes``) so that pysui's
width-guessing ``PureInput`` is never involved. Object inputs are deduplicated by ID (a
transaction may list an object once; a shared object used both ways is mutable).

Each builder is a row of :data:`MOVE_CALLS` (:mod:`dtp.ledger._entry_functions`, the
table LocalLedger checks its calls against too): the Move function and the kinds of its
arguments in the order it takes them, which is the order their inputs join the
transaction (and so fixes its bytes); one function, ``_add_call``, turns a row and the
builder's values into the call. A builder is this module's attribute of its row's name
(``_tx.open_connection(ctx, host, port, cap, deposit, key)``); :func:`settle_batch` and
:func:`transfer_sui` alone are written out.

Coins: deposits, top-ups and contributions are ``SplitCoins(GasCoin, [amount])`` and the
new coin goes straight into the Move call, which consumes it. No function of ``move/dtp``
returns a ``Coin`` (claims, refunds and withdrawals transfer inside Move), so no builder
needs a ``TransferObjects`` -- but :func:`transfer_sui`, a plain transfer of SUI between
addresses, which calls no Move function; unused return values (``ID``, ``u64``) have
``drop``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pysui.sui.sui_bcs import bcs
from pysui.sui.sui_common.txn_transaction_builder import ProgrammableTransactionBuilder

from dtp.errors import InvalidArgument
from dtp.identity._bcs import bcs_uleb128
from dtp.ledger._entry_functions import (
    COORDINATION_CALLS,
    ECONOMICS_CALLS,
    LEDGER_CALLS,
    MESSAGING_CALLS,
    MOVE_CALLS,
    Entry,
)
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_PURE_BYTES,
    Sla,
    as_bytes,
    as_bytes_list,
    is_whole,
    normalize_id,
)
from dtp.ledger.interface import Endpoint

__all__ = [
    "BUILDERS",
    "CLOCK",
    "CLOCK_ID",
    "COORDINATION_BUILDERS",
    "COORDINATION_TARGETS",
    "ECONOMICS_BUILDERS",
    "ECONOMICS_TARGETS",
    "MAX_SETTLE_BATCH",
    "MESSAGING_BUILDERS",
    "MESSAGING_TARGETS",
    "MOVE_CALLS",
    "MOVE_CALL_BUILDERS",
    "TARGETS",
    "GasData",
    "OwnedRef",
    "SharedRef",
    "TxContext",
    "as_bytes",
    "as_bytes_list",
    "encode_address",
    "encode_bytes",
    "encode_u8",
    "encode_u16",
    "encode_u64",
    "encode_uleb128",
    "encode_vec_bytes",
    "settle_batch",
    "transfer_sui",
]

#: The shared Clock object and its initial shared version (genesis).
CLOCK_ID: Final = "0x" + "6".rjust(64, "0")
#: Sui's ``max_pure_argument_size``: a pure input must be shorter than this.
_MAX_PURE_ARGUMENT: Final = 16 * 1024
#: Bitcoin's base58 alphabet, which Sui digests use (no 0, O, I, l, +, /, =).
_BASE58: Final = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")

# -- pure values ----------------------------------------------------------------------------


def encode_uleb128(n: int) -> bytes:
    """ULEB128, as BCS writes lengths (0 to ``2**32-1``)."""
    return bcs_uleb128(n)


def _uint(value: int, bits: int, what: str) -> bytes:
    if not is_whole(value, 0, (1 << bits) - 1):
        raise InvalidArgument(f"{what} must be an integer from 0 to 2**{bits}-1, got {value!r}.")
    return value.to_bytes(bits // 8, "little")


def encode_u8(value: int, what: str = "a u8") -> bytes:
    """BCS ``u8``; raises :class:`InvalidArgument` out of range."""
    return _uint(value, 8, what)


def encode_u16(value: int, what: str = "a u16") -> bytes:
    """BCS ``u16`` (little-endian)."""
    return _uint(value, 16, what)


def encode_u64(value: int, what: str = "a u64") -> bytes:
    """BCS ``u64`` (little-endian)."""
    return _uint(value, 64, what)


def encode_address(value: str, what: str = "address") -> bytes:
    """The 32 bytes of an address or object ID (``0x`` + hex, short forms padded)."""
    return bytes.fromhex(normalize_id(value, what)[2:])


def encode_bytes(value: bytes | bytearray | memoryview | str, what: str = "bytes") -> bytes:
    """BCS ``vector<u8>``: ``uleb128(len) || bytes`` (text is encoded as UTF-8)."""
    raw = as_bytes(value, what)
    return encode_uleb128(len(raw)) + raw


def encode_vec_bytes(values: Sequence[Endpoint], what: str = "endpoint") -> bytes:
    """BCS ``vector<vector<u8>>`` (the items as :func:`as_bytes_list` takes them)."""
    items = as_bytes_list(values, what)
    return encode_uleb128(len(items)) + b"".join(encode_uleb128(len(i)) + i for i in items)


# -- object references and gas --------------------------------------------------------------


@dataclass(frozen=True)
class OwnedRef:
    """An address-owned (or immutable) object at one version: ``ImmOrOwnedObject``."""

    object_id: str
    version: int
    #: Base58 object digest, as Sui shows it.
    digest: str

    def to_bcs(self) -> bcs.ObjectReference:
        """pysui's ``ObjectReference``."""
        _uint(self.version, 64, "an object version")
        bad_digest = InvalidArgument(
            f"{self.digest!r} is not an object digest (base58 of 32 bytes)."
        )
        # pysui decodes a string that is not base58 as base64: Sui shows digests only in
        # base58, so anything else is a mistake that must not become 32 signed bytes
        if not isinstance(self.digest, str) or _BASE58.fullmatch(self.digest) is None:
            raise bad_digest
        try:
            digest = bcs.Digest.from_str(self.digest)
        except (ValueError, TypeError, AttributeError):
            # pysui raises binascii.Error (it falls back to base64), a TypeError on the
            # length or an AttributeError for a non-str: none says which argument it was
            raise bad_digest from None
        return bcs.ObjectReference(
            bcs.Address.from_str(normalize_id(self.object_id)), self.version, digest
        )


@dataclass(frozen=True)
class SharedRef:
    """A shared object: its ID and the version at which it became shared."""

    object_id: str
    initial_shared_version: int


#: The Clock (0x6), shared since genesis (initial shared version 1); always immutable.
CLOCK: Final = SharedRef(CLOCK_ID, 1)


@dataclass(frozen=True)
class GasData:
    """Gas payment: the coins (merged into ``GasCoin``), price and budget in MIST."""

    payment: tuple[OwnedRef, ...]
    price: int
    budget: int
    #: Who pays; the sender when None.
    owner: str | None = None


@dataclass(frozen=True)
class TxContext:
    """What every transaction needs besides its call: package, sender and gas."""

    package: str
    sender: str
    gas: GasData


# -- the builder ------------------------------------------------------------------------------


class _Tx:
    """One programmable transaction under construction."""

    def __init__(self, ctx: TxContext) -> None:
        self.ctx = ctx
        self.ptb = ProgrammableTransactionBuilder(compress_inputs=False)
        self._objects: dict[str, tuple[bcs.BuilderArg, bcs.Argument]] = {}

    def pure(self, encoded: bytes) -> bcs.Argument:
        """A pure input from exact BCS bytes (under 16384 of them: Sui refuses a larger
        one before any Move code runs, as a SizeLimitExceeded input error)."""
        if len(encoded) >= _MAX_PURE_ARGUMENT:
            raise InvalidArgument(
                f"A pure argument of {len(encoded)} bytes is over Sui's limit (under "
                f"{_MAX_PURE_ARGUMENT}): byte strings take at most {MAX_PURE_BYTES} bytes."
            )
        argument: bcs.Argument = self.ptb.input_pure(bcs.BuilderArg("Pure", list(encoded)))
        return argument

    def shared(self, ref: SharedRef, *, mutable: bool) -> bcs.Argument:
        """A shared object input (once per ID; mutable if any use is)."""
        object_id = normalize_id(ref.object_id)
        _uint(ref.initial_shared_version, 64, "an initial shared version")
        if object_id == CLOCK_ID:
            mutable = False
        arg = bcs.ObjectArg(
            "SharedObject",
            bcs.SharedObjectReference(
                bcs.Address.from_str(object_id), ref.initial_shared_version, mutable
            ),
        )
        argument, previous = self._input(object_id, arg)
        if previous is not None:
            # a second use must be the same object ref, or the call would get whatever
            # the first use put there
            if previous.value.SequenceNumber != ref.initial_shared_version:
                raise InvalidArgument(
                    f"Shared object {object_id} is given with two initial shared versions "
                    f"({previous.value.SequenceNumber} and {ref.initial_shared_version})."
                )
            if mutable and not previous.value.Mutable:
                self.ptb.inputs[self._objects[object_id][0]] = bcs.CallArg("Object", arg)
        return argument

    def owned(self, ref: OwnedRef) -> bcs.Argument:
        """An address-owned object input (once per ID)."""
        object_id = normalize_id(ref.object_id)
        arg = bcs.ObjectArg("ImmOrOwnedObject", ref.to_bcs())
        argument, previous = self._input(object_id, arg)
        if previous is not None and previous.value.serialize() != arg.value.serialize():
            raise InvalidArgument(f"Owned object {object_id} is given at two versions.")
        return argument

    def _input(self, object_id: str, arg: bcs.ObjectArg) -> tuple[bcs.Argument, Any]:
        """The input of ``object_id`` and the ``ObjectArg`` it already held (None: a new
        input of ``arg``): a transaction lists an object once."""
        known = self._objects.get(object_id)
        if known is not None:
            previous = self.ptb.inputs[known[0]].value
            if previous.enum_name != arg.enum_name:
                raise InvalidArgument(
                    f"Object {object_id} is used both as an owned and as a shared object."
                )
            return known[1], previous
        key = bcs.BuilderArg("Object", bcs.Address.from_str(object_id))
        argument: bcs.Argument = self.ptb.input_obj(key, arg)
        self._objects[object_id] = (key, argument)
        return argument, None

    def clock(self) -> bcs.Argument:
        """The Clock, shared immutable."""
        return self.shared(CLOCK, mutable=False)

    def coin(self, amount: int, what: str) -> bcs.Argument:
        """``SplitCoins(GasCoin, [amount])``; the new coin as ``NestedResult(i, 0)``."""
        amount_arg = self.pure(encode_u64(amount, what))
        index = len(self.ptb.commands)
        self.ptb.command(
            bcs.Command("SplitCoin", bcs.SplitCoin(bcs.Argument("GasCoin"), [amount_arg]))
        )
        return bcs.Argument("NestedResult", (index, 0))

    def call(self, module: str, function: str, args: list[bcs.Argument]) -> bcs.Argument:
        """``MoveCall package::module::function(args)`` with no type arguments."""
        index = len(self.ptb.commands)
        self.ptb.command(
            bcs.Command(
                "MoveCall",
                bcs.ProgrammableMoveCall(
                    bcs.Address.from_str(normalize_id(self.ctx.package, "package ID")),
                    module,
                    function,
                    [],
                    args,
                ),
            )
        )
        return bcs.Argument("Result", index)

    def sla(self, sla: Sla) -> bcs.Argument:
        """``host::new_sla(price_per_kib, price_per_request, min_deposit)`` for terms of
        the default half-close timeout (the transactions built before the timeout was a
        term, byte for byte), else ``host::new_sla_with_half_close_timeout(..., ms)``."""
        args = [
            self.pure(encode_u64(sla.price_per_kib, "price_per_kib")),
            self.pure(encode_u64(sla.price_per_request, "price_per_request")),
            self.pure(encode_u64(sla.min_deposit, "min_deposit")),
        ]
        if sla.half_close_timeout_ms == HALF_CLOSE_TIMEOUT_MS:
            return self.call("host", "new_sla", args)
        args.append(self.pure(encode_u64(sla.half_close_timeout_ms, "half_close_timeout_ms")))
        return self.call("host", "new_sla_with_half_close_timeout", args)

    def finish(self) -> bytes:
        """The serialized ``TransactionData::V1``."""
        ctx = self.ctx
        gas = ctx.gas
        if not gas.payment:
            raise InvalidArgument("A transaction needs at least one gas coin.")
        coins: set[str] = set()
        for coin in gas.payment:
            if not isinstance(coin, OwnedRef):
                raise InvalidArgument(
                    f"A gas coin must be an OwnedRef (id, version, digest), got {coin!r}."
                )
            coin_id = normalize_id(coin.object_id, "gas coin ID")
            # Sui refuses a mutable object used twice (MutableObjectUsedMoreThanOnce):
            # a coin listed twice, or a gas coin that is also an input
            if coin_id in coins or coin_id in self._objects:
                raise InvalidArgument(f"Gas coin {coin_id} is used twice in the transaction.")
            coins.add(coin_id)
        sender = bcs.Address.from_str(normalize_id(ctx.sender, "sender address"))
        owner = bcs.Address.from_str(normalize_id(gas.owner or ctx.sender, "gas owner"))
        data = bcs.TransactionData(
            "V1",
            bcs.TransactionDataV1(
                self.ptb.finish_for_inspect(),
                sender,
                bcs.GasData(
                    [p.to_bcs() for p in gas.payment],
                    owner,
                    int.from_bytes(encode_u64(gas.price, "the gas price"), "little"),
                    int.from_bytes(encode_u64(gas.budget, "the gas budget"), "little"),
                ),
                bcs.TransactionExpiration("None"),
            ),
        )
        return bytes(data.serialize())


_ENCODERS: Final[dict[str, Callable[[Any, str], bytes]]] = {
    "u8": encode_u8,
    "u16": encode_u16,
    "u64": encode_u64,
    "address": encode_address,
    "bytes": encode_bytes,
    "utf8": encode_bytes,
    "vec_bytes": encode_vec_bytes,
}


def _receipt_args(tx: _Tx, receipt: Any) -> list[bcs.Argument]:
    return [
        tx.pure(encode_u64(receipt.total_bytes, "total_bytes")),
        tx.pure(encode_u64(receipt.total_requests, "total_requests")),
        tx.pure(encode_u64(receipt.total_amount, "total_amount")),
        tx.pure(encode_u64(receipt.nonce, "nonce")),
        tx.pure(encode_bytes(receipt.signature, "signature")),
    ]


def _add_call(tx: _Tx, builder: str, *values: Any) -> None:
    """``builder``'s Move call (its row of :data:`MOVE_CALLS`) added to ``tx``, given the
    values of its arguments (all but the Clock's) in the order the builder takes them."""
    module, function, kinds, order = MOVE_CALLS[builder]
    wanted = sum(kind != "clock" for kind, _ in kinds)
    if len(values) != wanted:
        raise TypeError(f"{builder}() takes {wanted} values after the TxContext, not {len(values)}")
    given = iter(values if order is None else [values[i] for i in order])
    args: list[bcs.Argument] = []
    for kind, what in kinds:
        if kind == "clock":
            args.append(tx.clock())
            continue
        value = next(given)
        if kind == "mut" or kind == "imm":
            args.append(tx.shared(value, mutable=kind == "mut"))
        elif kind == "owned":
            args.append(tx.owned(value))
        elif kind == "coin":
            args.append(tx.coin(value, what))
        elif kind == "sla":
            args.append(tx.sla(value))
        elif kind == "receipt":
            args.extend(_receipt_args(tx, value))
        else:
            args.append(tx.pure(_ENCODERS[kind](value, what)))
    tx.call(module, function, args)


def _builder(name: str) -> Callable[..., bytes]:
    """The builder of ``name``'s row: a transaction of that one Move call."""

    def build(ctx: TxContext, *values: Any) -> bytes:
        tx = _Tx(ctx)
        _add_call(tx, name, *values)
        return tx.finish()

    module, function = MOVE_CALLS[name][:2]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"The transaction of ``{module}::{function}``: its row of MOVE_CALLS."
    return build


#: Builder name -> builder: ``builder(ctx, *values)``, the values as :data:`MOVE_CALLS`
#: says; each is also this module's attribute of its name (``_tx.open_connection``).
MOVE_CALL_BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    name: _builder(name) for name in MOVE_CALLS
}


def __getattr__(name: str) -> Callable[..., bytes]:
    """A builder by its name (:data:`MOVE_CALL_BUILDERS`)."""
    try:
        return MOVE_CALL_BUILDERS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


#: The most connections one ``settle_batch`` transaction settles: well within Sui's
#: limits on a programmable transaction's commands (1024), inputs (2048) and size
#: (128 KiB; a settlement with its receipt adds about 300 bytes).
MAX_SETTLE_BATCH: Final = 64


def settle_batch(
    ctx: TxContext, items: Sequence[tuple[SharedRef, SharedRef, SharedRef, Any]]
) -> bytes:
    """One programmable transaction of several settlements, in order: for each
    ``(connection, escrow, cap, receipt)``, ``transport_control::settle_with_receipt``
    (as the ``settle_with_receipt`` builder makes it), or ``transport_control::settle``
    when the receipt is None. Objects two of them share (a client's cap) are one input;
    the Clock is one. All or nothing: one that aborts undoes the others. At most
    :data:`MAX_SETTLE_BATCH` of them, and at least one."""
    if not items:
        raise InvalidArgument("A batch of settlements needs at least one.")
    if len(items) > MAX_SETTLE_BATCH:
        raise InvalidArgument(
            f"A batch settles at most {MAX_SETTLE_BATCH} connections, not {len(items)}."
        )
    tx = _Tx(ctx)
    for connection, escrow, cap, receipt in items:
        if receipt is None:
            _add_call(tx, "settle", connection, escrow, cap)
        else:
            _add_call(tx, "settle_with_receipt", connection, escrow, cap, receipt)
    return tx.finish()


def transfer_sui(ctx: TxContext, recipient: str, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``TransferObjects([coin], recipient)``: a
    plain transfer of SUI, as ``sui client transfer-sui`` makes, no Move call (so no
    package and no event; the ``pay`` builder is the package's, with its ``PaymentSent``)."""
    tx = _Tx(ctx)
    coin = tx.coin(amount, "the amount")
    to = tx.pure(encode_address(recipient, "recipient address"))
    tx.ptb.command(bcs.Command("TransferObjects", bcs.TransferObjects([coin], to)))
    return tx.finish()


def _group(calls: dict[str, Entry]) -> dict[str, Callable[..., bytes]]:
    return {name: MOVE_CALL_BUILDERS[name] for name in calls}


def _targets(calls: dict[str, Entry]) -> dict[str, tuple[str, str]]:
    return {name: (call.module, call.function) for name, call in calls.items()}


#: Ledger method name -> builder: exactly the abstract methods of
#: :class:`~dtp.ledger.interface.Ledger`; the other groups are kept apart.
BUILDERS: Final = _group(LEDGER_CALLS)
#: Ledger method name -> the Move function its transaction calls (module, function).
TARGETS: Final = _targets(LEDGER_CALLS)
MESSAGING_BUILDERS: Final = _group(MESSAGING_CALLS)
MESSAGING_TARGETS: Final = _targets(MESSAGING_CALLS)
ECONOMICS_BUILDERS: Final = _group(ECONOMICS_CALLS)
ECONOMICS_TARGETS: Final = _targets(ECONOMICS_CALLS)
COORDINATION_BUILDERS: Final = _group(COORDINATION_CALLS)
COORDINATION_TARGETS: Final = _targets(COORDINATION_CALLS)

# the Ledger methods' builders are names of this module too (its __getattr__), as they were
# of dtp.ledger.sui_tx, the 0.0.x path of this module (dtp._retired)
__all__ += list(BUILDERS)
