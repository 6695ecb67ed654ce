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

Each builder is a row of :data:`MOVE_CALLS`: the Move function and the kinds of its
arguments in the order it takes them, which is the order their inputs join the
transaction (and so fixes its bytes); one function, ``_build``, turns a row and the
builder's values into the transaction.

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
from dtp.ledger._objects import MAX_PURE_BYTES, Sla, as_bytes, as_bytes_list, normalize_id
from dtp.ledger.interface import Endpoint

__all__ = [
    "BUILDERS",
    "CLOCK",
    "CLOCK_ID",
    "MAX_SETTLE_BATCH",
    "MOVE_CALLS",
    "TARGETS",
    "GasData",
    "OwnedRef",
    "SharedRef",
    "TxContext",
    "add_service",
    "allow",
    "as_bytes",
    "as_bytes_list",
    "broadcast_cancel",
    "broadcast_claim",
    "broadcast_contribute",
    "broadcast_heartbeat",
    "broadcast_leave",
    "broadcast_transmit",
    "broadcast_withdraw",
    "claim",
    "close_connection",
    "create_broadcast",
    "create_host",
    "create_pipe",
    "create_spending_cap",
    "deny",
    "destroy_pipe",
    "disallow",
    "encode_address",
    "encode_bytes",
    "encode_u8",
    "encode_u16",
    "encode_u64",
    "encode_uleb128",
    "encode_vec_bytes",
    "finalize",
    "open_connection",
    "open_session_connection",
    "pipe_send",
    "pipe_sync",
    "remove_service",
    "set_authority",
    "set_client_limits",
    "set_endpoints",
    "set_firewall_mode",
    "set_max_per_epoch",
    "set_noise_static_key",
    "settle",
    "settle_batch",
    "settle_with_receipt",
    "top_up",
    "transfer_sui",
    "undeny",
    "update_service",
]

#: The shared Clock object and its initial shared version (genesis).
CLOCK_ID: Final = "0x" + "6".rjust(64, "0")
#: Sui's ``max_pure_argument_size``: a pure input must be shorter than this.
_MAX_PURE_ARGUMENT: Final = 16 * 1024
U64_MAX: Final = 2**64 - 1
#: Bitcoin's base58 alphabet, which Sui digests use (no 0, O, I, l, +, /, =).
_BASE58: Final = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")

# -- pure values ----------------------------------------------------------------------------


def encode_uleb128(n: int) -> bytes:
    """ULEB128, as BCS writes lengths (0 to ``2**32-1``)."""
    return bcs_uleb128(n)


def _uint(value: int, bits: int, what: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
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
        known = self._objects.get(object_id)
        if known is not None:
            # a transaction lists an object once: a second use must be the same object
            # ref, or the call would get whatever the first use put there
            previous = self.ptb.inputs[known[0]].value
            if previous.enum_name != "SharedObject":
                raise InvalidArgument(
                    f"Object {object_id} is used both as an owned and as a shared object."
                )
            if previous.value.SequenceNumber != ref.initial_shared_version:
                raise InvalidArgument(
                    f"Shared object {object_id} is given with two initial shared versions "
                    f"({previous.value.SequenceNumber} and {ref.initial_shared_version})."
                )
            if mutable and not previous.value.Mutable:
                self.ptb.inputs[known[0]] = bcs.CallArg("Object", arg)
            return known[1]
        key = bcs.BuilderArg("Object", bcs.Address.from_str(object_id))
        argument: bcs.Argument = self.ptb.input_obj(key, arg)
        self._objects[object_id] = (key, argument)
        return argument

    def owned(self, ref: OwnedRef) -> bcs.Argument:
        """An address-owned object input (once per ID)."""
        object_id = normalize_id(ref.object_id)
        obj_arg = bcs.ObjectArg("ImmOrOwnedObject", ref.to_bcs())
        known = self._objects.get(object_id)
        if known is not None:
            previous = self.ptb.inputs[known[0]].value
            if previous.enum_name != "ImmOrOwnedObject":
                raise InvalidArgument(
                    f"Object {object_id} is used both as an owned and as a shared object."
                )
            if previous.value.serialize() != obj_arg.value.serialize():
                raise InvalidArgument(f"Owned object {object_id} is given at two versions.")
            return known[1]
        key = bcs.BuilderArg("Object", bcs.Address.from_str(object_id))
        argument: bcs.Argument = self.ptb.input_obj(key, obj_arg)
        self._objects[object_id] = (key, argument)
        return argument

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
        """``host::new_sla(price_per_kib, price_per_request, min_deposit)``."""
        return self.call(
            "host",
            "new_sla",
            [
                self.pure(encode_u64(sla.price_per_kib, "price_per_kib")),
                self.pure(encode_u64(sla.price_per_request, "price_per_request")),
                self.pure(encode_u64(sla.min_deposit, "min_deposit")),
            ],
        )

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


#: Argument kinds of :data:`MOVE_CALLS` that name no value (the Clock takes none).
_CLOCK: Final = ("clock", "")
_MUT: Final = ("mut", "")
_IMM: Final = ("imm", "")
_OWNED: Final = ("owned", "")
_SLA: Final = ("sla", "")
_RECEIPT: Final = ("receipt", "")
_PORT: Final = ("u16", "A port")

#: Each builder's Move call: module, function and its arguments' kinds in the order
#: the call takes them, which is the order the inputs join the transaction (and so
#: fixes its bytes): "mut"/"imm" a shared object taken ``&mut``/``&``, "owned" an owned
#: one, "clock" the Clock (no value given), "coin" ``SplitCoins(GasCoin, [amount])``,
#: "sla" ``host::new_sla``, "receipt" its five fields, else a pure value; the text names
#: the value in errors.
MOVE_CALLS: Final[dict[str, tuple[str, str, tuple[tuple[str, str], ...]]]] = {
    "create_host": ("host", "create", (("bytes", "noise_static_key"), ("vec_bytes", "endpoint"))),
    "set_authority": ("host", "set_authority", (_MUT, ("address", "address"))),
    "set_noise_static_key": ("host", "set_noise_static_key", (_MUT, ("bytes", "key"))),
    "set_endpoints": ("host", "set_endpoints", (_MUT, ("vec_bytes", "endpoint"))),
    "set_firewall_mode": ("host", "set_firewall_mode", (_MUT, ("u8", "The firewall mode"))),
    "allow": ("host", "allow", (_MUT, ("address", "client address"))),
    "disallow": ("host", "disallow", (_MUT, ("address", "client address"))),
    "deny": ("host", "deny", (_MUT, ("address", "client address"))),
    "undeny": ("host", "undeny", (_MUT, ("address", "client address"))),
    "set_client_limits": (
        "host",
        "set_client_limits",
        (
            _MUT,
            ("u64", "max_connections_per_client"),
            ("u64", "max_bytes_per_sec"),
            ("u64", "max_requests_per_sec"),
        ),
    ),
    "add_service": (
        "host",
        "add_service",
        (_MUT, _PORT, ("bytes", "kind"), _SLA, ("u64", "max_connections")),
    ),
    "update_service": ("host", "update_service", (_MUT, _PORT, _SLA, ("u64", "max_connections"))),
    "remove_service": ("host", "remove_service", (_MUT, _PORT)),
    "create_spending_cap": ("spending_cap", "create", (("u64", "max_per_epoch"),)),
    "set_max_per_epoch": ("spending_cap", "set_max_per_epoch", (_MUT, ("u64", "max_per_epoch"))),
    "open_connection": (
        "transport_control",
        "open",
        (_IMM, _PORT, _MUT, ("bytes", "client_public_key"), ("coin", "the deposit"), _CLOCK),
    ),
    "open_session_connection": (
        "transport_control",
        "open_with_session_key",
        (_IMM, _PORT, _MUT, ("bytes", "session_public_key"), ("coin", "the deposit"), _CLOCK),
    ),
    "top_up": ("escrow", "top_up", (_MUT, _MUT, ("coin", "the top-up amount"))),
    "claim": ("escrow", "claim", (_MUT, _RECEIPT)),
    "close_connection": ("transport_control", "close", (_MUT, _CLOCK)),
    "finalize": ("transport_control", "finalize", (_MUT, _CLOCK)),
    "settle": ("transport_control", "settle", (_MUT, _MUT, _MUT, _CLOCK)),
    "settle_with_receipt": (
        "transport_control",
        "settle_with_receipt",
        (_MUT, _MUT, _MUT, _RECEIPT, _CLOCK),
    ),
    "create_pipe": ("pipe", "create", (_IMM, ("u64", "inner_count"))),
    "pipe_send": ("pipe", "send", (_OWNED, ("u64", "inner"), ("bytes", "data"))),
    "pipe_sync": ("pipe", "sync", (_OWNED, ("u64", "inner"), ("u64", "acked"))),
    "destroy_pipe": ("pipe", "destroy", (_OWNED,)),
    "create_broadcast": (
        "broadcast",
        "create",
        (("bytes", "channel"), ("u64", "slot_price"), ("u64", "slot_ms"), _CLOCK),
    ),
    "broadcast_contribute": (
        "broadcast",
        "contribute",
        (_MUT, ("coin", "the contribution"), _CLOCK),
    ),
    "broadcast_transmit": ("broadcast", "transmit", (_MUT, ("bytes", "data"), _CLOCK)),
    "broadcast_claim": ("broadcast", "claim", (_MUT, _CLOCK)),
    "broadcast_cancel": ("broadcast", "cancel", (_MUT, _CLOCK)),
    "broadcast_withdraw": ("broadcast", "withdraw", (_MUT,)),
    "broadcast_leave": ("broadcast", "leave", (_MUT, _CLOCK)),
    "broadcast_heartbeat": ("broadcast", "heartbeat", (_MUT, _CLOCK)),
    "mailbox_send": ("mailbox", "send", (_IMM, ("bytes", "payload"))),
    "response_escrow_deposit": (
        "response_escrow",
        "deposit",
        (
            ("address", "server"),
            ("bytes", "request_id"),
            ("bytes", "requester_public_key"),
            ("u64", "deadline_ms"),
            ("coin", "the response fee"),
            _CLOCK,
        ),
    ),
    "response_escrow_claim": (
        "response_escrow",
        "claim",
        (_MUT, ("bytes", "response_hash"), ("bytes", "signature")),
    ),
    "response_escrow_deliver": (
        "response_escrow",
        "deliver",
        (_MUT, ("bytes", "response"), _CLOCK),
    ),
    "response_escrow_refund": ("response_escrow", "refund", (_MUT, _CLOCK)),
    "create_subscription_offer": (
        "subscription",
        "create_offer",
        (_IMM, _PORT, ("u64", "price_per_epoch"), ("u64", "period_epochs")),
    ),
    "subscribe": ("subscription", "subscribe", (_IMM, ("u64", "epochs"), ("coin", "the payment"))),
    "renew_subscription": (
        "subscription",
        "renew",
        (_MUT, _IMM, ("u64", "epochs"), ("coin", "the payment")),
    ),
    "claim_subscription": ("subscription", "claim", (_MUT, _IMM)),
    "refund_subscription": ("subscription", "refund", (_MUT, _IMM)),
    "withdraw_subscription_offer": ("subscription", "withdraw_offer", (_MUT,)),
    "open_subscribed_connection": (
        "subscription",
        "open_connection",
        (_IMM, _IMM, _IMM, _MUT, ("bytes", "client_public_key"), ("coin", "the deposit"), _CLOCK),
    ),
    "end_subscribed_connection": (
        "subscription",
        "end_connection",
        (_IMM, _IMM, _MUT, _MUT, _MUT, _CLOCK),
    ),
    "create_sponsor_pool": (
        "sponsor",
        "create",
        (_IMM, _PORT, ("u64", "share_bps"), ("u64", "max_pledge")),
    ),
    "fund_sponsor_pool": ("sponsor", "fund", (_MUT, ("coin", "the amount"))),
    "set_sponsor_max_pledge": ("sponsor", "set_max_pledge", (_MUT, ("u64", "max_pledge"))),
    "withdraw_sponsor_pool": ("sponsor", "withdraw", (_MUT, ("u64", "the amount"))),
    "open_sponsored_connection": (
        "sponsor",
        "open_connection",
        (_MUT, _IMM, _MUT, ("bytes", "client_public_key"), ("coin", "the deposit"), _CLOCK),
    ),
    "reimburse": ("sponsor", "reimburse", (_MUT, _IMM, _IMM)),
    "create_ticket_sale": (
        "tickets",
        "create",
        (
            ("bytes", "title"),
            ("u64", "ticket_price"),
            ("u64", "min_tickets"),
            ("u64", "max_tickets"),
            ("u64", "deadline_ms"),
            _CLOCK,
        ),
    ),
    "create_ticketed_broadcast": (
        "broadcast",
        "create_ticketed",
        (_IMM, ("bytes", "channel"), ("u64", "slot_price"), ("u64", "slot_ms"), _CLOCK),
    ),
    "pay": (
        "payment",
        "pay",
        (("coin", "the amount"), ("address", "recipient"), ("bytes", "memo")),
    ),
    "create_registry": ("registry", "create", ()),
    "registry_admit": ("registry", "admit", (_MUT, ("address", "member address"))),
    "registry_revoke": ("registry", "revoke", (_MUT, ("address", "member address"))),
    "acquire_lease": (
        "registry",
        "acquire",
        (_MUT, ("bytes", "lease name"), ("bytes", "holder"), ("u64", "duration_ms"), _CLOCK),
    ),
    "renew_lease": (
        "registry",
        "renew",
        (_MUT, ("bytes", "lease name"), ("u64", "token"), ("u64", "duration_ms"), _CLOCK),
    ),
    "release_lease": ("registry", "release", (_MUT, ("bytes", "lease name"), ("u64", "token"))),
    "registry_put": (
        "registry",
        "put",
        (
            _MUT,
            ("bytes", "lease name"),
            ("u64", "token"),
            ("bytes", "key"),
            ("bytes", "value"),
            _CLOCK,
        ),
    ),
    "registry_remove": (
        "registry",
        "remove",
        (_MUT, ("bytes", "lease name"), ("u64", "token"), ("bytes", "key"), _CLOCK),
    ),
    "buy_tickets": ("tickets", "buy", (_MUT, ("u64", "count"), ("coin", "the payment"), _CLOCK)),
    "go_on_air": ("tickets", "go_on_air", (_MUT, _CLOCK)),
    "cancel_ticket_sale": ("tickets", "cancel", (_MUT,)),
    "refund_tickets": ("tickets", "refund", (_MUT, _CLOCK)),
    "create_retention_terms": (
        "retention",
        "create_terms",
        (_IMM, _PORT, ("u64", "retention_ms"), ("u64", "storage_price_per_byte")),
    ),
    "retire_retention_terms": ("retention", "retire_terms", (_MUT, _IMM)),
    "replace_retention_terms": (
        "retention",
        "replace_terms",
        (_MUT, _IMM, ("u64", "retention_ms"), ("u64", "storage_price_per_byte")),
    ),
    "send_retained": (
        "retention",
        "send",
        (
            _OWNED,
            _IMM,
            _IMM,
            ("u64", "inner"),
            ("bytes", "data"),
            ("coin", "the storage deposit"),
            _CLOCK,
        ),
    ),
    "confirm_consumed": ("retention", "confirm", (_MUT,)),
    "delete_retained": ("retention", "delete", (_MUT, _CLOCK)),
}

_ENCODERS: Final[dict[str, Callable[[Any, str], bytes]]] = {
    "u8": encode_u8,
    "u16": encode_u16,
    "u64": encode_u64,
    "address": encode_address,
    "bytes": encode_bytes,
    "vec_bytes": encode_vec_bytes,
}


def _build(ctx: TxContext, builder: str, *values: Any) -> bytes:
    """The transaction of ``builder``'s row of :data:`MOVE_CALLS`, given the values of its
    arguments (all but the Clock) in the order the Move call takes them."""
    tx = _Tx(ctx)
    _add_call(tx, builder, *values)
    return tx.finish()


def _add_call(tx: _Tx, builder: str, *values: Any) -> None:
    """``builder``'s Move call (its row of :data:`MOVE_CALLS`), added to ``tx``."""
    module, function, kinds = MOVE_CALLS[builder]
    args: list[bcs.Argument] = []
    given = iter(values)
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


# -- host ---------------------------------------------------------------------------------------


def create_host(
    ctx: TxContext, noise_static_key: bytes, endpoints: Sequence[Endpoint] = ()
) -> bytes:
    """``host::create(noise_static_key, endpoints)``."""
    return _build(ctx, "create_host", noise_static_key, endpoints)


def set_authority(ctx: TxContext, host: SharedRef, new_authority: str) -> bytes:
    """``host::set_authority(&mut host, new_authority)``."""
    return _build(ctx, "set_authority", host, new_authority)


def set_noise_static_key(ctx: TxContext, host: SharedRef, key: bytes) -> bytes:
    """``host::set_noise_static_key(&mut host, key)``."""
    return _build(ctx, "set_noise_static_key", host, key)


def set_endpoints(ctx: TxContext, host: SharedRef, endpoints: Sequence[Endpoint]) -> bytes:
    """``host::set_endpoints(&mut host, endpoints)``."""
    return _build(ctx, "set_endpoints", host, endpoints)


def set_firewall_mode(ctx: TxContext, host: SharedRef, mode: int) -> bytes:
    """``host::set_firewall_mode(&mut host, mode: u8)``."""
    return _build(ctx, "set_firewall_mode", host, mode)


def allow(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::allow(&mut host, client)``."""
    return _build(ctx, "allow", host, client)


def disallow(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::disallow(&mut host, client)``."""
    return _build(ctx, "disallow", host, client)


def deny(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::deny(&mut host, client)``."""
    return _build(ctx, "deny", host, client)


def undeny(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::undeny(&mut host, client)``."""
    return _build(ctx, "undeny", host, client)


def set_client_limits(
    ctx: TxContext,
    host: SharedRef,
    max_connections_per_client: int,
    max_bytes_per_sec: int,
    max_requests_per_sec: int,
) -> bytes:
    """``host::set_client_limits(&mut host, u64, u64, u64)``."""
    return _build(
        ctx,
        "set_client_limits",
        host,
        max_connections_per_client,
        max_bytes_per_sec,
        max_requests_per_sec,
    )


def add_service(
    ctx: TxContext,
    host: SharedRef,
    port: int,
    kind: str | bytes,
    sla: Sla,
    max_connections: int = 0,
) -> bytes:
    """``host::new_sla(...)`` then ``host::add_service(&mut host, port, kind, sla, max)``."""
    return _build(ctx, "add_service", host, port, kind, sla, max_connections)


def update_service(
    ctx: TxContext, host: SharedRef, port: int, sla: Sla, max_connections: int = 0
) -> bytes:
    """``host::new_sla(...)`` then ``host::update_service(&mut host, port, sla, max)``."""
    return _build(ctx, "update_service", host, port, sla, max_connections)


def remove_service(ctx: TxContext, host: SharedRef, port: int) -> bytes:
    """``host::remove_service(&mut host, port)``."""
    return _build(ctx, "remove_service", host, port)


# -- spending cap -------------------------------------------------------------------------------


def create_spending_cap(ctx: TxContext, max_per_epoch: int) -> bytes:
    """``spending_cap::create(max_per_epoch)``."""
    return _build(ctx, "create_spending_cap", max_per_epoch)


def set_max_per_epoch(ctx: TxContext, cap: SharedRef, max_per_epoch: int) -> bytes:
    """``spending_cap::set_max_per_epoch(&mut cap, max_per_epoch)``."""
    return _build(ctx, "set_max_per_epoch", cap, max_per_epoch)


# -- connections and escrow ---------------------------------------------------------------------


def open_connection(
    ctx: TxContext,
    host: SharedRef,
    port: int,
    cap: SharedRef,
    deposit: int,
    client_public_key: bytes,
) -> bytes:
    """``SplitCoins(GasCoin, [deposit])`` then
    ``transport_control::open(&host, port, &mut cap, client_public_key, coin, &clock)``:
    the Host read-only, so that opens of one host run concurrently on Sui."""
    return _build(ctx, "open_connection", host, port, cap, client_public_key, deposit)


def open_session_connection(
    ctx: TxContext,
    host: SharedRef,
    port: int,
    cap: SharedRef,
    deposit: int,
    session_public_key: bytes,
) -> bytes:
    """``SplitCoins(GasCoin, [deposit])`` then ``transport_control::open_with_session_key(
    &host, port, &mut cap, session_public_key, coin, &clock)`` (docs/escrow.md §6.2)."""
    return _build(ctx, "open_session_connection", host, port, cap, session_public_key, deposit)


def top_up(ctx: TxContext, escrow: SharedRef, cap: SharedRef, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``escrow::top_up(&mut escrow, &mut cap,
    coin)``."""
    return _build(ctx, "top_up", escrow, cap, amount)


def _receipt_args(tx: _Tx, receipt: Any) -> list[bcs.Argument]:
    return [
        tx.pure(encode_u64(receipt.total_bytes, "total_bytes")),
        tx.pure(encode_u64(receipt.total_requests, "total_requests")),
        tx.pure(encode_u64(receipt.total_amount, "total_amount")),
        tx.pure(encode_u64(receipt.nonce, "nonce")),
        tx.pure(encode_bytes(receipt.signature, "signature")),
    ]


def claim(ctx: TxContext, escrow: SharedRef, receipt: Any) -> bytes:
    """``escrow::claim(&mut escrow, total_bytes, total_requests, total_amount, nonce,
    signature)`` (``receipt`` is a :class:`dtp.ledger.receipt.Receipt`)."""
    return _build(ctx, "claim", escrow, receipt)


def close_connection(ctx: TxContext, connection: SharedRef) -> bytes:
    """``transport_control::close(&mut tc, &clock)``."""
    return _build(ctx, "close_connection", connection)


def finalize(ctx: TxContext, connection: SharedRef) -> bytes:
    """``transport_control::finalize(&mut tc, &clock)``."""
    return _build(ctx, "finalize", connection)


def settle(ctx: TxContext, connection: SharedRef, escrow: SharedRef, cap: SharedRef) -> bytes:
    """``transport_control::settle(&mut tc, &mut escrow, &mut cap, &clock)``."""
    return _build(ctx, "settle", connection, escrow, cap)


def settle_with_receipt(
    ctx: TxContext, connection: SharedRef, escrow: SharedRef, cap: SharedRef, receipt: Any
) -> bytes:
    """``transport_control::settle_with_receipt(&mut tc, &mut escrow, &mut cap,
    total_bytes, total_requests, total_amount, nonce, signature, &clock)``."""
    return _build(ctx, "settle_with_receipt", connection, escrow, cap, receipt)


#: The most connections one ``settle_batch`` transaction settles: well within Sui's
#: limits on a programmable transaction's commands (1024), inputs (2048) and size
#: (128 KiB; a settlement with its receipt adds about 300 bytes).
MAX_SETTLE_BATCH: Final = 64


def settle_batch(
    ctx: TxContext, items: Sequence[tuple[SharedRef, SharedRef, SharedRef, Any]]
) -> bytes:
    """One programmable transaction of several settlements, in order: for each
    ``(connection, escrow, cap, receipt)``, ``transport_control::settle_with_receipt``
    (as :func:`settle_with_receipt` builds it), or ``transport_control::settle`` when
    the receipt is None. Objects two of them share (a client's cap) are one input; the
    Clock is one. All or nothing: one that aborts undoes the others. At most
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


# -- pipes ----------------------------------------------------------------------------------------


def create_pipe(ctx: TxContext, connection: SharedRef, inner_count: int) -> bytes:
    """``pipe::create(&tc, inner_count)``."""
    return _build(ctx, "create_pipe", connection, inner_count)


def pipe_send(ctx: TxContext, pipe: OwnedRef, inner: int, data: bytes) -> bytes:
    """``pipe::send(&mut pipe, inner, data)``."""
    return _build(ctx, "pipe_send", pipe, inner, data)


def pipe_sync(ctx: TxContext, pipe: OwnedRef, inner: int, acked: int) -> bytes:
    """``pipe::sync(&mut pipe, inner, acked)``."""
    return _build(ctx, "pipe_sync", pipe, inner, acked)


def destroy_pipe(ctx: TxContext, pipe: OwnedRef) -> bytes:
    """``pipe::destroy(pipe)`` (by value)."""
    return _build(ctx, "destroy_pipe", pipe)


# -- broadcast ------------------------------------------------------------------------------------


def create_broadcast(ctx: TxContext, channel: str | bytes, slot_price: int, slot_ms: int) -> bytes:
    """``broadcast::create(channel, slot_price, slot_ms, &clock)``."""
    return _build(ctx, "create_broadcast", channel, slot_price, slot_ms)


def broadcast_contribute(ctx: TxContext, broadcast: SharedRef, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``broadcast::contribute(&mut b, coin, &clock)``."""
    return _build(ctx, "broadcast_contribute", broadcast, amount)


def broadcast_transmit(ctx: TxContext, broadcast: SharedRef, data: bytes) -> bytes:
    """``broadcast::transmit(&mut b, data, &clock)``."""
    return _build(ctx, "broadcast_transmit", broadcast, data)


def broadcast_claim(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::claim(&mut b, &clock)``."""
    return _build(ctx, "broadcast_claim", broadcast)


def broadcast_cancel(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::cancel(&mut b, &clock)``."""
    return _build(ctx, "broadcast_cancel", broadcast)


def broadcast_withdraw(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::withdraw(&mut b)``."""
    return _build(ctx, "broadcast_withdraw", broadcast)


def broadcast_leave(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::leave(&mut b, &clock)``."""
    return _build(ctx, "broadcast_leave", broadcast)


def broadcast_heartbeat(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::heartbeat(&mut b, &clock)``."""
    return _build(ctx, "broadcast_heartbeat", broadcast)


# -- mailbox and response escrow ------------------------------------------------------------------


def mailbox_send(ctx: TxContext, host: SharedRef, payload: bytes) -> bytes:
    """``mailbox::send(&host, payload)``."""
    return _build(ctx, "mailbox_send", host, payload)


def response_escrow_deposit(
    ctx: TxContext,
    server: str,
    request_id: bytes,
    requester_public_key: bytes,
    deadline_ms: int,
    amount: int,
) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``response_escrow::deposit(server,
    request_id, key, deadline_ms, coin, &clock)``."""
    return _build(
        ctx,
        "response_escrow_deposit",
        server,
        request_id,
        requester_public_key,
        deadline_ms,
        amount,
    )


def response_escrow_claim(
    ctx: TxContext, escrow: SharedRef, response_hash: bytes, signature: bytes
) -> bytes:
    """``response_escrow::claim(&mut e, response_hash, signature)``."""
    return _build(ctx, "response_escrow_claim", escrow, response_hash, signature)


def response_escrow_deliver(ctx: TxContext, escrow: SharedRef, response: bytes) -> bytes:
    """``response_escrow::deliver(&mut e, response, &clock)``."""
    return _build(ctx, "response_escrow_deliver", escrow, response)


def response_escrow_refund(ctx: TxContext, escrow: SharedRef) -> bytes:
    """``response_escrow::refund(&mut e, &clock)``."""
    return _build(ctx, "response_escrow_refund", escrow)


# -- payment models (docs/escrow.md §13-16) -------------------------------------------------------


def create_subscription_offer(
    ctx: TxContext, host: SharedRef, port: int, price_per_epoch: int, period_epochs: int
) -> bytes:
    """``subscription::create_offer(&host, port, price_per_epoch, period_epochs)``."""
    return _build(ctx, "create_subscription_offer", host, port, price_per_epoch, period_epochs)


def subscribe(ctx: TxContext, offer: SharedRef, epochs: int, payment: int) -> bytes:
    """``SplitCoins(GasCoin, [payment])`` then ``subscription::subscribe(&offer, epochs,
    coin)``."""
    return _build(ctx, "subscribe", offer, epochs, payment)


def renew_subscription(
    ctx: TxContext, subscription: SharedRef, offer: SharedRef, epochs: int, payment: int
) -> bytes:
    """``SplitCoins(GasCoin, [payment])`` then ``subscription::renew(&mut sub, &offer,
    epochs, coin)``."""
    return _build(ctx, "renew_subscription", subscription, offer, epochs, payment)


def claim_subscription(ctx: TxContext, subscription: SharedRef, offer: SharedRef) -> bytes:
    """``subscription::claim(&mut sub, &offer)``."""
    return _build(ctx, "claim_subscription", subscription, offer)


def refund_subscription(ctx: TxContext, subscription: SharedRef, offer: SharedRef) -> bytes:
    """``subscription::refund(&mut sub, &offer)``."""
    return _build(ctx, "refund_subscription", subscription, offer)


def withdraw_subscription_offer(ctx: TxContext, offer: SharedRef) -> bytes:
    """``subscription::withdraw_offer(&mut offer)``."""
    return _build(ctx, "withdraw_subscription_offer", offer)


def open_subscribed_connection(
    ctx: TxContext,
    subscription: SharedRef,
    offer: SharedRef,
    host: SharedRef,
    cap: SharedRef,
    deposit: int,
    client_public_key: bytes,
) -> bytes:
    """``SplitCoins(GasCoin, [deposit])`` then ``subscription::open_connection(&sub,
    &offer, &host, &mut cap, client_public_key, coin, &clock)``."""
    return _build(
        ctx,
        "open_subscribed_connection",
        subscription,
        offer,
        host,
        cap,
        client_public_key,
        deposit,
    )


def end_subscribed_connection(
    ctx: TxContext,
    subscription: SharedRef,
    offer: SharedRef,
    connection: SharedRef,
    escrow: SharedRef,
    cap: SharedRef,
) -> bytes:
    """``subscription::end_connection(&sub, &offer, &mut tc, &mut escrow, &mut cap,
    &clock)``."""
    return _build(ctx, "end_subscribed_connection", subscription, offer, connection, escrow, cap)


def create_sponsor_pool(
    ctx: TxContext, host: SharedRef, port: int, share_bps: int, max_pledge: int
) -> bytes:
    """``sponsor::create(&host, port, share_bps, max_pledge)``."""
    return _build(ctx, "create_sponsor_pool", host, port, share_bps, max_pledge)


def set_sponsor_max_pledge(ctx: TxContext, pool: SharedRef, max_pledge: int) -> bytes:
    """``sponsor::set_max_pledge(&mut pool, max_pledge)``."""
    return _build(ctx, "set_sponsor_max_pledge", pool, max_pledge)


def fund_sponsor_pool(ctx: TxContext, pool: SharedRef, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``sponsor::fund(&mut pool, coin)``."""
    return _build(ctx, "fund_sponsor_pool", pool, amount)


def withdraw_sponsor_pool(ctx: TxContext, pool: SharedRef, amount: int) -> bytes:
    """``sponsor::withdraw(&mut pool, amount)``."""
    return _build(ctx, "withdraw_sponsor_pool", pool, amount)


def open_sponsored_connection(
    ctx: TxContext,
    pool: SharedRef,
    host: SharedRef,
    cap: SharedRef,
    deposit: int,
    client_public_key: bytes,
) -> bytes:
    """``SplitCoins(GasCoin, [deposit])`` then ``sponsor::open_connection(&mut pool,
    &host, &mut cap, client_public_key, coin, &clock)``."""
    return _build(ctx, "open_sponsored_connection", pool, host, cap, client_public_key, deposit)


def reimburse(ctx: TxContext, pool: SharedRef, connection: SharedRef, escrow: SharedRef) -> bytes:
    """``sponsor::reimburse(&mut pool, &tc, &escrow)``."""
    return _build(ctx, "reimburse", pool, connection, escrow)


def create_ticket_sale(
    ctx: TxContext,
    title: str | bytes,
    ticket_price: int,
    min_tickets: int,
    max_tickets: int,
    deadline_ms: int,
) -> bytes:
    """``tickets::create(title, ticket_price, min_tickets, max_tickets, deadline_ms,
    &clock)``."""
    return _build(
        ctx, "create_ticket_sale", title, ticket_price, min_tickets, max_tickets, deadline_ms
    )


def create_ticketed_broadcast(
    ctx: TxContext, sale: SharedRef, channel: str | bytes, slot_price: int, slot_ms: int
) -> bytes:
    """``broadcast::create_ticketed(&sale, channel, slot_price, slot_ms, &clock)``."""
    return _build(ctx, "create_ticketed_broadcast", sale, channel, slot_price, slot_ms)


def pay(ctx: TxContext, recipient: str, amount: int, memo: bytes) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``payment::pay(coin, recipient, memo)``."""
    return _build(ctx, "pay", amount, recipient, memo)


def transfer_sui(ctx: TxContext, recipient: str, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``TransferObjects([coin], recipient)``: a
    plain transfer of SUI, as ``sui client transfer-sui`` makes, no Move call (so no
    package and no event; :func:`pay` is the package's, with its ``PaymentSent``)."""
    tx = _Tx(ctx)
    coin = tx.coin(amount, "the amount")
    to = tx.pure(encode_address(recipient, "recipient address"))
    tx.ptb.command(bcs.Command("TransferObjects", bcs.TransferObjects([coin], to)))
    return tx.finish()


def buy_tickets(ctx: TxContext, sale: SharedRef, count: int, payment: int) -> bytes:
    """``SplitCoins(GasCoin, [payment])`` then ``tickets::buy(&mut sale, count, coin,
    &clock)``."""
    return _build(ctx, "buy_tickets", sale, count, payment)


def go_on_air(ctx: TxContext, sale: SharedRef) -> bytes:
    """``tickets::go_on_air(&mut sale, &clock)``."""
    return _build(ctx, "go_on_air", sale)


def cancel_ticket_sale(ctx: TxContext, sale: SharedRef) -> bytes:
    """``tickets::cancel(&mut sale)``."""
    return _build(ctx, "cancel_ticket_sale", sale)


def refund_tickets(ctx: TxContext, sale: SharedRef) -> bytes:
    """``tickets::refund(&mut sale, &clock)``."""
    return _build(ctx, "refund_tickets", sale)


def create_retention_terms(
    ctx: TxContext,
    host: SharedRef,
    port: int,
    retention_ms: int,
    storage_price_per_byte: int,
) -> bytes:
    """``retention::create_terms(&host, port, retention_ms, storage_price_per_byte)``."""
    return _build(ctx, "create_retention_terms", host, port, retention_ms, storage_price_per_byte)


def retire_retention_terms(ctx: TxContext, terms: SharedRef, host: SharedRef) -> bytes:
    """``retention::retire_terms(&mut terms, &host)``."""
    return _build(ctx, "retire_retention_terms", terms, host)


def replace_retention_terms(
    ctx: TxContext,
    terms: SharedRef,
    host: SharedRef,
    retention_ms: int,
    storage_price_per_byte: int,
) -> bytes:
    """``retention::replace_terms(&mut terms, &host, retention_ms,
    storage_price_per_byte)``."""
    return _build(ctx, "replace_retention_terms", terms, host, retention_ms, storage_price_per_byte)


def send_retained(
    ctx: TxContext,
    pipe: OwnedRef,
    connection: SharedRef,
    terms: SharedRef,
    inner: int,
    data: bytes,
    deposit: int,
) -> bytes:
    """``SplitCoins(GasCoin, [deposit])`` then ``retention::send(&mut pipe, &tc, &terms,
    inner, data, coin, &clock)``."""
    return _build(ctx, "send_retained", pipe, connection, terms, inner, data, deposit)


def confirm_consumed(ctx: TxContext, record: SharedRef) -> bytes:
    """``retention::confirm(&mut record)``."""
    return _build(ctx, "confirm_consumed", record)


def delete_retained(ctx: TxContext, record: SharedRef) -> bytes:
    """``retention::delete(record, &clock)`` (by value: the shared record is deleted)."""
    return _build(ctx, "delete_retained", record)


# -- registry (docs/escrow.md §21) --------------------------------------------------------------


def create_registry(ctx: TxContext) -> bytes:
    """``registry::create()``."""
    return _build(ctx, "create_registry")


def registry_admit(ctx: TxContext, registry: SharedRef, member: str) -> bytes:
    """``registry::admit(&mut registry, member)``."""
    return _build(ctx, "registry_admit", registry, member)


def registry_revoke(ctx: TxContext, registry: SharedRef, member: str) -> bytes:
    """``registry::revoke(&mut registry, member)``."""
    return _build(ctx, "registry_revoke", registry, member)


def acquire_lease(
    ctx: TxContext, registry: SharedRef, name: bytes, holder: bytes, duration_ms: int
) -> bytes:
    """``registry::acquire(&mut registry, name, holder, duration_ms, &clock)``."""
    return _build(ctx, "acquire_lease", registry, name, holder, duration_ms)


def renew_lease(
    ctx: TxContext, registry: SharedRef, name: bytes, token: int, duration_ms: int
) -> bytes:
    """``registry::renew(&mut registry, name, token, duration_ms, &clock)``."""
    return _build(ctx, "renew_lease", registry, name, token, duration_ms)


def release_lease(ctx: TxContext, registry: SharedRef, name: bytes, token: int) -> bytes:
    """``registry::release(&mut registry, name, token)``."""
    return _build(ctx, "release_lease", registry, name, token)


def registry_put(
    ctx: TxContext, registry: SharedRef, name: bytes, token: int, key: bytes, value: bytes
) -> bytes:
    """``registry::put(&mut registry, name, token, key, value, &clock)``."""
    return _build(ctx, "registry_put", registry, name, token, key, value)


def registry_remove(
    ctx: TxContext, registry: SharedRef, name: bytes, token: int, key: bytes
) -> bytes:
    """``registry::remove(&mut registry, name, token, key, &clock)``."""
    return _build(ctx, "registry_remove", registry, name, token, key)


#: Builders of the registry's entry points (dtp.ledger._coordination.Coordination), kept
#: apart from :data:`BUILDERS` as the payment models' are.
COORDINATION_BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    fn.__name__: fn
    for fn in (
        create_registry,
        registry_admit,
        registry_revoke,
        acquire_lease,
        renew_lease,
        release_lease,
        registry_put,
        registry_remove,
    )
}

#: Ledger method name -> the Move function its transaction calls (registry).
COORDINATION_TARGETS: Final[dict[str, tuple[str, str]]] = {
    name: MOVE_CALLS[name][:2] for name in COORDINATION_BUILDERS
}


#: Ledger method name -> the Move function its transaction calls (payment models).
ECONOMICS_TARGETS: Final[dict[str, tuple[str, str]]] = {
    name: MOVE_CALLS[name][:2]
    for name in (
        "create_subscription_offer",
        "subscribe",
        "renew_subscription",
        "claim_subscription",
        "withdraw_subscription_offer",
        "refund_subscription",
        "open_subscribed_connection",
        "end_subscribed_connection",
        "create_sponsor_pool",
        "fund_sponsor_pool",
        "withdraw_sponsor_pool",
        "set_sponsor_max_pledge",
        "open_sponsored_connection",
        "reimburse",
        "create_ticketed_broadcast",
        "pay",
        "create_ticket_sale",
        "buy_tickets",
        "go_on_air",
        "cancel_ticket_sale",
        "refund_tickets",
        "create_retention_terms",
        "retire_retention_terms",
        "replace_retention_terms",
        "send_retained",
        "confirm_consumed",
        "delete_retained",
    )
}

#: Builders of the payment models' entry points (apart from :data:`BUILDERS`, which lists
#: exactly the abstract methods of :class:`~dtp.ledger.interface.Ledger`).
ECONOMICS_BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    name: globals()[name] for name in ECONOMICS_TARGETS
}


#: Builders of the messaging entry points (kept apart from :data:`BUILDERS`, which lists
#: exactly the abstract methods of :class:`~dtp.ledger.interface.Ledger`).
MESSAGING_BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    fn.__name__: fn
    for fn in (
        mailbox_send,
        response_escrow_deposit,
        response_escrow_claim,
        response_escrow_deliver,
        response_escrow_refund,
    )
}

#: Ledger method name -> the Move function its transaction calls (messaging entry points).
MESSAGING_TARGETS: Final[dict[str, tuple[str, str]]] = {
    name: MOVE_CALLS[name][:2] for name in MESSAGING_BUILDERS
}


#: Ledger method name -> builder.
BUILDERS: Final[dict[str, Callable[..., bytes]]] = {
    fn.__name__: fn
    for fn in (
        create_host,
        set_authority,
        set_noise_static_key,
        set_endpoints,
        set_firewall_mode,
        allow,
        disallow,
        deny,
        undeny,
        set_client_limits,
        add_service,
        update_service,
        remove_service,
        create_spending_cap,
        set_max_per_epoch,
        open_connection,
        open_session_connection,
        top_up,
        claim,
        close_connection,
        finalize,
        settle,
        settle_with_receipt,
        create_pipe,
        pipe_send,
        pipe_sync,
        destroy_pipe,
        create_broadcast,
        broadcast_contribute,
        broadcast_transmit,
        broadcast_claim,
        broadcast_cancel,
        broadcast_withdraw,
        broadcast_leave,
        broadcast_heartbeat,
    )
}

#: Ledger method name -> the Move function its transaction calls last (module, function).
TARGETS: Final[dict[str, tuple[str, str]]] = {name: MOVE_CALLS[name][:2] for name in BUILDERS}
