"""Transaction bytes as the stand-in node reads them: pysui's ``bcs.TransactionData``
turned into plain values (inputs, commands, gas), and pure arguments decoded per the
argument kinds of :data:`dtp.ledger.local.rules.FUNCTIONS`.

Only what the dtp package's transactions use is modelled: programmable transactions of
``SplitCoins`` (from the gas coin), ``TransferObjects`` and ``MoveCall`` commands, owned
and shared object inputs, gas paid by the sender. Anything else is refused with a
:class:`Refusal` saying the stand-in does not model it, never run approximately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from grpclib.const import Status
from pysui.sui.sui_bcs import bcs

from dtp.ledger.local._tx import Address, TxValue
from dtp.ledger.sui._codec import BcsDecodeError, decode
from dtp.testing.sui_node._grpc_web import Refusal

__all__ = [
    "MAX_PURE_ARGUMENT",
    "Arg",
    "Command",
    "ObjectInput",
    "ParsedTx",
    "Refusal",
    "decode_pure",
    "parse_tx",
]

#: Sui's ``max_pure_argument_size``: a pure input must be shorter.
MAX_PURE_ARGUMENT: Final = 16 * 1024
#: Sui's ``max_gas_payment_objects``.
MAX_GAS_OBJECTS: Final = 256


@dataclass(frozen=True)
class Arg:
    """A command argument: ``gas`` (the gas coin), ``input`` (``index``), ``result``
    (``index``, all of a command's results) or ``nested`` (``index``, ``sub``)."""

    kind: str
    index: int = 0
    sub: int = 0


@dataclass(frozen=True)
class ObjectInput:
    """An object input: ``owned`` (``ImmOrOwnedObject`` at ``version``/``digest``) or
    ``shared`` (``version`` is the initial shared version)."""

    object_id: str
    kind: str
    version: int
    digest: str | None
    mutable: bool


@dataclass(frozen=True)
class Command:
    """``split`` (``coin``, ``amounts``), ``transfer`` (``objects``, ``address``) or
    ``call`` (``package``, ``module``, ``function``, ``args``)."""

    kind: str
    coin: Arg | None = None
    amounts: tuple[Arg, ...] = ()
    objects: tuple[Arg, ...] = ()
    address: Arg | None = None
    package: str = ""
    module: str = ""
    function: str = ""
    args: tuple[Arg, ...] = ()


@dataclass(frozen=True)
class ParsedTx:
    """A ``TransactionData::V1`` holding a programmable transaction."""

    sender: str
    inputs: tuple[ObjectInput | bytes, ...]
    commands: tuple[Command, ...]
    gas_payment: tuple[tuple[str, int, str], ...]
    gas_owner: str
    gas_price: int
    gas_budget: int
    #: The epoch after which it expires (None: never).
    expiration: int | None


def _address(value: Any) -> str:
    return "0x" + bytes(value.serialize()).hex()


def _digest(value: Any) -> str:
    from dtp.ledger.local._tx import base58

    raw = bytes(value.serialize())
    return base58(raw[1:])  # a length byte, then the 32 bytes


def _arg(value: Any) -> Arg:
    name = value.enum_name
    if name == "GasCoin":
        return Arg("gas")
    if name == "Input":
        return Arg("input", int(value.value))
    if name == "Result":
        return Arg("result", int(value.value))
    index, sub = value.value
    return Arg("nested", int(index), int(sub))


def _unmodelled(what: str) -> Refusal:
    return Refusal(Status.UNIMPLEMENTED, f"The Sui node stand-in does not model {what}.")


def _input(value: Any) -> ObjectInput | bytes:
    if value.enum_name == "Pure":
        raw = bytes(value.value)
        if len(raw) >= MAX_PURE_ARGUMENT:
            raise Refusal(
                Status.INVALID_ARGUMENT,
                f"Invalid transaction: SizeLimitExceeded {{ limit: max_pure_argument_size, "
                f"value: {len(raw)} }}",
            )
        return raw
    if value.enum_name != "Object":
        raise _unmodelled(f"{value.enum_name} inputs")
    arg = value.value
    if arg.enum_name == "ImmOrOwnedObject":
        ref = arg.value
        return ObjectInput(
            _address(ref.ObjectID),
            "owned",
            int(ref.SequenceNumber),
            _digest(ref.ObjectDigest),
            True,
        )
    if arg.enum_name == "SharedObject":
        ref = arg.value
        return ObjectInput(
            _address(ref.ObjectID), "shared", int(ref.SequenceNumber), None, bool(ref.Mutable)
        )
    raise _unmodelled(f"{arg.enum_name} object inputs")


def _command(value: Any) -> Command:
    name, body = value.enum_name, value.value
    if name == "SplitCoin":
        return Command("split", coin=_arg(body.FromCoin), amounts=tuple(map(_arg, body.Amount)))
    if name == "TransferObjects":
        return Command(
            "transfer", objects=tuple(map(_arg, body.Objects)), address=_arg(body.Address)
        )
    if name == "MoveCall":
        if body.Type_Arguments:
            raise _unmodelled("type arguments (no dtp function takes any)")
        return Command(
            "call",
            package=_address(body.Package),
            module=str(body.Module),
            function=str(body.Function),
            args=tuple(map(_arg, body.Arguments)),
        )
    raise _unmodelled(f"{name} commands")


def parse_tx(tx_bytes: bytes) -> ParsedTx:
    """Decode transaction bytes; a :class:`Refusal` for bytes that are no transaction or
    a transaction the stand-in does not model."""
    try:
        data = bcs.TransactionData.from_bytes(tx_bytes)
    except Exception as exc:  # pysui/canoser raise assorted types for bad bytes
        raise Refusal(
            Status.INVALID_ARGUMENT, f"Invalid transaction: could not deserialize ({exc})"
        ) from None
    if data.enum_name != "V1":
        raise _unmodelled(f"TransactionData {data.enum_name}")
    v1 = data.value
    kind = v1.TransactionKind
    if kind.enum_name != "ProgrammableTransaction":
        raise Refusal(
            Status.INVALID_ARGUMENT,
            f"Invalid transaction: {kind.enum_name} is a system transaction kind",
        )
    expiration = v1.TransactionExpiration
    if expiration.enum_name not in ("None", "Epoch"):
        raise _unmodelled(f"the {expiration.enum_name} expiration")
    gas = v1.GasData
    if len(gas.Payment) > MAX_GAS_OBJECTS:
        raise Refusal(
            Status.INVALID_ARGUMENT,
            f"Invalid transaction: SizeLimitExceeded {{ limit: max_gas_payment_objects, "
            f"value: {len(gas.Payment)} }}",
        )
    return ParsedTx(
        _address(v1.Sender),
        tuple(_input(i) for i in kind.value.Inputs),
        tuple(_command(c) for c in kind.value.Command),
        tuple(
            (_address(p.ObjectID), int(p.SequenceNumber), _digest(p.ObjectDigest))
            for p in gas.Payment
        ),
        _address(gas.Owner),
        int(gas.Price),
        int(gas.Budget),
        int(expiration.value) if expiration.enum_name == "Epoch" else None,
    )


#: BCS layouts of the pure argument kinds of local_rules.FUNCTIONS ("utf8" is a
#: ``vector<u8>`` the Move code turns into a String itself).
_PURE_LAYOUTS: Final[dict[str, Any]] = {
    "u8": "u8",
    "u16": "u16",
    "u64": "u64",
    "bytes": "bytes",
    "utf8": "bytes",
    "address": "address",
    "vec_bytes": ("vec", "bytes"),
}


def decode_pure(kind: str, raw: bytes) -> TxValue:
    """A pure argument's value as the rules take it; ValueError when the bytes are not
    exactly one value of that kind (Sui's ``InvalidBCSBytes``)."""
    layout = _PURE_LAYOUTS.get(kind)
    if layout is None:
        raise ValueError(f"a pure argument cannot be a {kind}")
    try:
        value = decode(layout, raw)
    except BcsDecodeError as exc:
        raise ValueError(str(exc)) from None
    if kind == "address":
        return Address(value)
    if kind == "vec_bytes":
        return list(value)
    return value  # type: ignore[no-any-return]
