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
from typing import Any, Final, NamedTuple

from pysui.sui.sui_bcs import bcs
from pysui.sui.sui_common.txn_transaction_builder import ProgrammableTransactionBuilder

from dtp.errors import InvalidArgument
from dtp.identity._bcs import bcs_uleb128
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_PURE_BYTES,
    Sla,
    as_bytes,
    as_bytes_list,
    normalize_id,
)
from dtp.ledger._versions import MIGRATE, MIGRATE_BUILDERS
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
    "MoveCall",
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


#: Argument kinds of :data:`MOVE_CALLS` that name no value (the Clock takes none).
_CLOCK: Final = ("clock", "")
_MUT: Final = ("mut", "")
_IMM: Final = ("imm", "")
_OWNED: Final = ("owned", "")
_SLA: Final = ("sla", "")
_RECEIPT: Final = ("receipt", "")
_PORT: Final = ("u16", "A port")
#: Where an open's builder takes the deposit before the key, as the Ledger methods do.
_DEPOSIT_BEFORE_KEY: Final = (0, 1, 2, 4, 3)


class MoveCall(NamedTuple):
    """A builder's Move call: ``module::function`` and its arguments' kinds in the order
    the call takes them, which is the order their inputs join the transaction (and so
    fixes its bytes): "mut"/"imm" a shared object taken ``&mut``/``&`` (or by value:
    "mut"), "owned" an owned one, "clock" the Clock (no value given), "coin"
    ``SplitCoins(GasCoin, [amount])``, "sla" ``host::new_sla`` (:meth:`_Tx.sla`),
    "receipt" its five fields, else a pure value of :data:`_ENCODERS`; the text names the
    value in errors. The builder takes the values (all but the Clock's) in that order, or
    in ``order``'s: the builder's position of each of the call's values."""

    module: str
    function: str
    args: tuple[tuple[str, str], ...]
    order: tuple[int, ...] | None = None


#: The Ledger interface's methods (:data:`BUILDERS`), in its order.
_LEDGER_CALLS: Final = {
    "create_host": MoveCall(
        "host", "create", (("bytes", "noise_static_key"), ("vec_bytes", "endpoint"))
    ),
    "set_authority": MoveCall("host", "set_authority", (_MUT, ("address", "address"))),
    "set_noise_static_key": MoveCall("host", "set_noise_static_key", (_MUT, ("bytes", "key"))),
    "set_endpoints": MoveCall("host", "set_endpoints", (_MUT, ("vec_bytes", "endpoint"))),
    "set_firewall_mode": MoveCall("host", "set_firewall_mode", (_MUT, ("u8", "The firewall mode"))),
    "allow": MoveCall("host", "allow", (_MUT, ("address", "client address"))),
    "disallow": MoveCall("host", "disallow", (_MUT, ("address", "client address"))),
    "deny": MoveCall("host", "deny", (_MUT, ("address", "client address"))),
    "undeny": MoveCall("host", "undeny", (_MUT, ("address", "client address"))),
    "set_client_limits": MoveCall(
        "host",
        "set_client_limits",
        (
            _MUT,
            ("u64", "max_connections_per_client"),
            ("u64", "max_bytes_per_sec"),
            ("u64", "max_requests_per_sec"),
        ),
    ),
    # the SLA is host::new_sla's result, made first (:meth:`_Tx.sla`)
    "add_service": MoveCall(
        "host", "add_service", (_MUT, _PORT, ("bytes", "kind"), _SLA, ("u64", "max_connections"))
    ),
    "update_service": MoveCall(
        "host", "update_service", (_MUT, _PORT, _SLA, ("u64", "max_connections"))
    ),
    "remove_service": MoveCall("host", "remove_service", (_MUT, _PORT)),
    "create_spending_cap": MoveCall("spending_cap", "create", (("u64", "max_per_epoch"),)),
    "set_max_per_epoch": MoveCall(
        "spending_cap", "set_max_per_epoch", (_MUT, ("u64", "max_per_epoch"))
    ),
    # the Host read-only, so that opens of one host run concurrently on Sui
    "open_connection": MoveCall(
        "transport_control",
        "open",
        (_IMM, _PORT, _MUT, ("bytes", "client_public_key"), ("coin", "the deposit"), _CLOCK),
        _DEPOSIT_BEFORE_KEY,
    ),
    # docs/escrow.md §6.2
    "open_session_connection": MoveCall(
        "transport_control",
        "open_with_session_key",
        (_IMM, _PORT, _MUT, ("bytes", "session_public_key"), ("coin", "the deposit"), _CLOCK),
        _DEPOSIT_BEFORE_KEY,
    ),
    "top_up": MoveCall("escrow", "top_up", (_MUT, _MUT, ("coin", "the top-up amount"))),
    # the receipt is a dtp.ledger.receipt.Receipt
    "claim": MoveCall("escrow", "claim", (_MUT, _RECEIPT)),
    "close_connection": MoveCall("transport_control", "close", (_MUT, _CLOCK)),
    "finalize": MoveCall("transport_control", "finalize", (_MUT, _CLOCK)),
    "settle": MoveCall("transport_control", "settle", (_MUT, _MUT, _MUT, _CLOCK)),
    "settle_with_receipt": MoveCall(
        "transport_control", "settle_with_receipt", (_MUT, _MUT, _MUT, _RECEIPT, _CLOCK)
    ),
    "create_pipe": MoveCall("pipe", "create", (_IMM, ("u64", "inner_count"))),
    "pipe_send": MoveCall("pipe", "send", (_OWNED, ("u64", "inner"), ("bytes", "data"))),
    "pipe_sync": MoveCall("pipe", "sync", (_OWNED, ("u64", "inner"), ("u64", "acked"))),
    "destroy_pipe": MoveCall("pipe", "destroy", (_OWNED,)),
    "create_broadcast": MoveCall(
        "broadcast",
        "create",
        (("bytes", "channel"), ("u64", "slot_price"), ("u64", "slot_ms"), _CLOCK),
    ),
    "broadcast_contribute": MoveCall(
        "broadcast", "contribute", (_MUT, ("coin", "the contribution"), _CLOCK)
    ),
    "broadcast_transmit": MoveCall("broadcast", "transmit", (_MUT, ("bytes", "data"), _CLOCK)),
    "broadcast_claim": MoveCall("broadcast", "claim", (_MUT, _CLOCK)),
    "broadcast_cancel": MoveCall("broadcast", "cancel", (_MUT, _CLOCK)),
    "broadcast_withdraw": MoveCall("broadcast", "withdraw", (_MUT,)),
    "broadcast_leave": MoveCall("broadcast", "leave", (_MUT, _CLOCK)),
    "broadcast_heartbeat": MoveCall("broadcast", "heartbeat", (_MUT, _CLOCK)),
}

#: The messaging entry points (mailbox, response escrow).
_MESSAGING_CALLS: Final = {
    "mailbox_send": MoveCall("mailbox", "send", (_IMM, ("bytes", "payload"))),
    "response_escrow_deposit": MoveCall(
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
    "response_escrow_claim": MoveCall(
        "response_escrow", "claim", (_MUT, ("bytes", "response_hash"), ("bytes", "signature"))
    ),
    "response_escrow_deliver": MoveCall(
        "response_escrow", "deliver", (_MUT, ("bytes", "response"), _CLOCK)
    ),
    "response_escrow_refund": MoveCall("response_escrow", "refund", (_MUT, _CLOCK)),
}

#: The payment models' entry points (docs/escrow.md §13-16).
_ECONOMICS_CALLS: Final = {
    "create_subscription_offer": MoveCall(
        "subscription",
        "create_offer",
        (_IMM, _PORT, ("u64", "price_per_epoch"), ("u64", "period_epochs")),
    ),
    "subscribe": MoveCall(
        "subscription", "subscribe", (_IMM, _IMM, ("u64", "epochs"), ("coin", "the payment"))
    ),
    "renew_subscription": MoveCall(
        "subscription", "renew", (_MUT, _IMM, _IMM, ("u64", "epochs"), ("coin", "the payment"))
    ),
    "claim_subscription": MoveCall("subscription", "claim", (_MUT, _IMM)),
    "withdraw_subscription_offer": MoveCall("subscription", "withdraw_offer", (_MUT, _IMM)),
    "refund_subscription": MoveCall("subscription", "refund", (_MUT, _IMM)),
    "open_subscribed_connection": MoveCall(
        "subscription",
        "open_connection",
        (_IMM, _IMM, _IMM, _MUT, ("bytes", "client_public_key"), ("coin", "the deposit"), _CLOCK),
        (0, 1, 2, 3, 5, 4),
    ),
    "end_subscribed_connection": MoveCall(
        "subscription", "end_connection", (_IMM, _IMM, _MUT, _MUT, _MUT, _CLOCK)
    ),
    "create_sponsor_pool": MoveCall(
        "sponsor",
        "create",
        (_IMM, _PORT, ("u64", "share_bps"), ("u64", "max_pledge"), ("u64", "lanes")),
    ),
    # a sponsor pool is read (its terms), the lane written (its money and pledges)
    "fund_sponsor_pool": MoveCall("sponsor", "fund", (_IMM, _MUT, ("coin", "the amount"))),
    "withdraw_sponsor_pool": MoveCall("sponsor", "withdraw", (_IMM, _MUT, ("u64", "the amount"))),
    "set_sponsor_max_pledge": MoveCall("sponsor", "set_max_pledge", (_MUT, ("u64", "max_pledge"))),
    "open_sponsored_connection": MoveCall(
        "sponsor",
        "open_connection",
        (_IMM, _MUT, _IMM, _MUT, ("bytes", "client_public_key"), ("coin", "the deposit"), _CLOCK),
        (0, 1, 2, 3, 5, 4),
    ),
    "reimburse": MoveCall("sponsor", "reimburse", (_IMM, _MUT, _IMM, _IMM)),
    "create_ticketed_broadcast": MoveCall(
        "broadcast",
        "create_ticketed",
        (_IMM, ("bytes", "channel"), ("u64", "slot_price"), ("u64", "slot_ms"), _CLOCK),
    ),
    # the builder takes the recipient first, as Ledger.pay does
    "pay": MoveCall(
        "payment",
        "pay",
        (("coin", "the amount"), ("address", "recipient"), ("bytes", "memo")),
        (1, 0, 2),
    ),
    "create_ticket_sale": MoveCall(
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
    "buy_tickets": MoveCall(
        "tickets", "buy", (_MUT, ("u64", "count"), ("coin", "the payment"), _CLOCK)
    ),
    "go_on_air": MoveCall("tickets", "go_on_air", (_MUT, _CLOCK)),
    "cancel_ticket_sale": MoveCall("tickets", "cancel", (_MUT,)),
    "refund_tickets": MoveCall("tickets", "refund", (_MUT, _CLOCK)),
    "create_retention_terms": MoveCall(
        "retention",
        "create_terms",
        (_IMM, _PORT, ("u64", "retention_ms"), ("u64", "storage_price_per_byte")),
    ),
    "retire_retention_terms": MoveCall("retention", "retire_terms", (_MUT, _IMM)),
    "replace_retention_terms": MoveCall(
        "retention",
        "replace_terms",
        (_MUT, _IMM, ("u64", "retention_ms"), ("u64", "storage_price_per_byte")),
    ),
    "send_retained": MoveCall(
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
    "confirm_consumed": MoveCall("retention", "confirm", (_MUT,)),
    # by value: the shared record is deleted
    "delete_retained": MoveCall("retention", "delete", (_MUT, _CLOCK)),
}

#: The registry's entry points (dtp.ledger._coordination.Coordination; docs/escrow.md §21).
_COORDINATION_CALLS: Final = {
    "create_registry": MoveCall("registry", "create", ()),
    "registry_admit": MoveCall("registry", "admit", (_MUT, ("address", "member address"))),
    "registry_revoke": MoveCall("registry", "revoke", (_MUT, ("address", "member address"))),
    "acquire_lease": MoveCall(
        "registry",
        "acquire",
        (_MUT, ("bytes", "lease name"), ("bytes", "holder"), ("u64", "duration_ms"), _CLOCK),
    ),
    "renew_lease": MoveCall(
        "registry",
        "renew",
        (_MUT, ("bytes", "lease name"), ("u64", "token"), ("u64", "duration_ms"), _CLOCK),
    ),
    "release_lease": MoveCall(
        "registry", "release", (_MUT, ("bytes", "lease name"), ("u64", "token"))
    ),
    "registry_put": MoveCall(
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
    "registry_remove": MoveCall(
        "registry",
        "remove",
        (_MUT, ("bytes", "lease name"), ("u64", "token"), ("bytes", "key"), _CLOCK),
    ),
}

#: Every builder's Move call, by builder name: the groups above, the deletions (their
#: builders are dtp.ledger.sui._tx_deletion's: the objects taken by value, "mut") and each
#: versioned object's migration by the AdminCap's holder (dtp.ledger.sui._tx_versions).
MOVE_CALLS: Final[dict[str, MoveCall]] = {
    **_LEDGER_CALLS,
    **_MESSAGING_CALLS,
    **_ECONOMICS_CALLS,
    **_COORDINATION_CALLS,
    "destroy_connection": MoveCall("transport_control", "destroy", (_MUT, _MUT)),
    # a sponsored connection's deletion: the pool read, the lane written, the objects moved
    "reimburse_and_destroy": MoveCall("sponsor", "reimburse_and_destroy", (_IMM, _MUT, _MUT, _MUT)),
    "destroy_response_escrow": MoveCall("response_escrow", "destroy", (_MUT,)),
    "leave_ticket_sale": MoveCall("tickets", "leave", (_MUT,)),
    "destroy_ticket_sale": MoveCall("tickets", "destroy", (_MUT, _CLOCK)),
    **{
        MIGRATE_BUILDERS[struct]: MoveCall(module, function, (_OWNED, _MUT))
        for struct, (module, function) in MIGRATE.items()
    },
}

_ENCODERS: Final[dict[str, Callable[[Any, str], bytes]]] = {
    "u8": encode_u8,
    "u16": encode_u16,
    "u64": encode_u64,
    "address": encode_address,
    "bytes": encode_bytes,
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


def _group(calls: dict[str, MoveCall]) -> dict[str, Callable[..., bytes]]:
    return {name: MOVE_CALL_BUILDERS[name] for name in calls}


def _targets(calls: dict[str, MoveCall]) -> dict[str, tuple[str, str]]:
    return {name: (call.module, call.function) for name, call in calls.items()}


#: Ledger method name -> builder: exactly the abstract methods of
#: :class:`~dtp.ledger.interface.Ledger`; the other groups are kept apart.
BUILDERS: Final = _group(_LEDGER_CALLS)
#: Ledger method name -> the Move function its transaction calls (module, function).
TARGETS: Final = _targets(_LEDGER_CALLS)
MESSAGING_BUILDERS: Final = _group(_MESSAGING_CALLS)
MESSAGING_TARGETS: Final = _targets(_MESSAGING_CALLS)
ECONOMICS_BUILDERS: Final = _group(_ECONOMICS_CALLS)
ECONOMICS_TARGETS: Final = _targets(_ECONOMICS_CALLS)
COORDINATION_BUILDERS: Final = _group(_COORDINATION_CALLS)
COORDINATION_TARGETS: Final = _targets(_COORDINATION_CALLS)

# the Ledger methods' builders are names of this module too (its __getattr__), as they were
# of dtp.ledger.sui_tx, the 0.0.x path of this module (dtp._retired)
__all__ += list(BUILDERS)
