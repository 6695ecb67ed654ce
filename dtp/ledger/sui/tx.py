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

Coins: deposits, top-ups and contributions are ``SplitCoins(GasCoin, [amount])`` and the
new coin goes straight into the Move call, which consumes it. No function of ``move/dtp``
returns a ``Coin`` (claims, refunds and withdrawals transfer inside Move), so no builder
needs a ``TransferObjects``; unused return values (``ID``, ``u64``) have ``drop``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pysui.sui.sui_bcs import bcs
from pysui.sui.sui_common.txn_transaction_builder import ProgrammableTransactionBuilder

from dtp.errors import InvalidArgument
from dtp.identity.bcs import bcs_uleb128
from dtp.ledger.interface import Endpoint
from dtp.ledger.objects import MAX_PURE_BYTES, Sla, as_bytes, as_bytes_list, normalize_id

__all__ = [
    "BUILDERS",
    "CLOCK",
    "CLOCK_ID",
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
    "settle_with_receipt",
    "top_up",
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


# -- host ---------------------------------------------------------------------------------------


def create_host(
    ctx: TxContext, noise_static_key: bytes, endpoints: Sequence[Endpoint] = ()
) -> bytes:
    """``host::create(noise_static_key, endpoints)``."""
    tx = _Tx(ctx)
    tx.call(
        "host",
        "create",
        [
            tx.pure(encode_bytes(noise_static_key, "noise_static_key")),
            tx.pure(encode_vec_bytes(endpoints)),
        ],
    )
    return tx.finish()


def set_authority(ctx: TxContext, host: SharedRef, new_authority: str) -> bytes:
    """``host::set_authority(&mut host, new_authority)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call("host", "set_authority", [h, tx.pure(encode_address(new_authority))])
    return tx.finish()


def set_noise_static_key(ctx: TxContext, host: SharedRef, key: bytes) -> bytes:
    """``host::set_noise_static_key(&mut host, key)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call("host", "set_noise_static_key", [h, tx.pure(encode_bytes(key, "key"))])
    return tx.finish()


def set_endpoints(ctx: TxContext, host: SharedRef, endpoints: Sequence[Endpoint]) -> bytes:
    """``host::set_endpoints(&mut host, endpoints)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call("host", "set_endpoints", [h, tx.pure(encode_vec_bytes(endpoints))])
    return tx.finish()


def set_firewall_mode(ctx: TxContext, host: SharedRef, mode: int) -> bytes:
    """``host::set_firewall_mode(&mut host, mode: u8)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call("host", "set_firewall_mode", [h, tx.pure(encode_u8(mode, "The firewall mode"))])
    return tx.finish()


def _firewall_list(function: str, ctx: TxContext, host: SharedRef, client: str) -> bytes:
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call("host", function, [h, tx.pure(encode_address(client, "client address"))])
    return tx.finish()


def allow(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::allow(&mut host, client)``."""
    return _firewall_list("allow", ctx, host, client)


def disallow(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::disallow(&mut host, client)``."""
    return _firewall_list("disallow", ctx, host, client)


def deny(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::deny(&mut host, client)``."""
    return _firewall_list("deny", ctx, host, client)


def undeny(ctx: TxContext, host: SharedRef, client: str) -> bytes:
    """``host::undeny(&mut host, client)``."""
    return _firewall_list("undeny", ctx, host, client)


def set_client_limits(
    ctx: TxContext,
    host: SharedRef,
    max_connections_per_client: int,
    max_bytes_per_sec: int,
    max_requests_per_sec: int,
) -> bytes:
    """``host::set_client_limits(&mut host, u64, u64, u64)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call(
        "host",
        "set_client_limits",
        [
            h,
            tx.pure(encode_u64(max_connections_per_client, "max_connections_per_client")),
            tx.pure(encode_u64(max_bytes_per_sec, "max_bytes_per_sec")),
            tx.pure(encode_u64(max_requests_per_sec, "max_requests_per_sec")),
        ],
    )
    return tx.finish()


def add_service(
    ctx: TxContext,
    host: SharedRef,
    port: int,
    kind: str | bytes,
    sla: Sla,
    max_connections: int = 0,
) -> bytes:
    """``host::new_sla(...)`` then ``host::add_service(&mut host, port, kind, sla, max)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    port_arg = tx.pure(encode_u16(port, "A port"))
    kind_arg = tx.pure(encode_bytes(kind, "kind"))
    sla_arg = tx.sla(sla)
    max_arg = tx.pure(encode_u64(max_connections, "max_connections"))
    tx.call("host", "add_service", [h, port_arg, kind_arg, sla_arg, max_arg])
    return tx.finish()


def update_service(
    ctx: TxContext, host: SharedRef, port: int, sla: Sla, max_connections: int = 0
) -> bytes:
    """``host::new_sla(...)`` then ``host::update_service(&mut host, port, sla, max)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    port_arg = tx.pure(encode_u16(port, "A port"))
    sla_arg = tx.sla(sla)
    max_arg = tx.pure(encode_u64(max_connections, "max_connections"))
    tx.call("host", "update_service", [h, port_arg, sla_arg, max_arg])
    return tx.finish()


def remove_service(ctx: TxContext, host: SharedRef, port: int) -> bytes:
    """``host::remove_service(&mut host, port)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=True)
    tx.call("host", "remove_service", [h, tx.pure(encode_u16(port, "A port"))])
    return tx.finish()


# -- spending cap -------------------------------------------------------------------------------


def create_spending_cap(ctx: TxContext, max_per_epoch: int) -> bytes:
    """``spending_cap::create(max_per_epoch)``."""
    tx = _Tx(ctx)
    tx.call("spending_cap", "create", [tx.pure(encode_u64(max_per_epoch, "max_per_epoch"))])
    return tx.finish()


def set_max_per_epoch(ctx: TxContext, cap: SharedRef, max_per_epoch: int) -> bytes:
    """``spending_cap::set_max_per_epoch(&mut cap, max_per_epoch)``."""
    tx = _Tx(ctx)
    c = tx.shared(cap, mutable=True)
    tx.call(
        "spending_cap",
        "set_max_per_epoch",
        [c, tx.pure(encode_u64(max_per_epoch, "max_per_epoch"))],
    )
    return tx.finish()


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
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=False)
    port_arg = tx.pure(encode_u16(port, "A port"))
    c = tx.shared(cap, mutable=True)
    key_arg = tx.pure(encode_bytes(client_public_key, "client_public_key"))
    coin = tx.coin(deposit, "the deposit")
    tx.call("transport_control", "open", [h, port_arg, c, key_arg, coin, tx.clock()])
    return tx.finish()


def top_up(ctx: TxContext, escrow: SharedRef, cap: SharedRef, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``escrow::top_up(&mut escrow, &mut cap,
    coin)``."""
    tx = _Tx(ctx)
    e = tx.shared(escrow, mutable=True)
    c = tx.shared(cap, mutable=True)
    coin = tx.coin(amount, "the top-up amount")
    tx.call("escrow", "top_up", [e, c, coin])
    return tx.finish()


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
    tx = _Tx(ctx)
    e = tx.shared(escrow, mutable=True)
    tx.call("escrow", "claim", [e, *_receipt_args(tx, receipt)])
    return tx.finish()


def close_connection(ctx: TxContext, connection: SharedRef) -> bytes:
    """``transport_control::close(&mut tc, &clock)``."""
    tx = _Tx(ctx)
    t = tx.shared(connection, mutable=True)
    tx.call("transport_control", "close", [t, tx.clock()])
    return tx.finish()


def finalize(ctx: TxContext, connection: SharedRef) -> bytes:
    """``transport_control::finalize(&mut tc, &clock)``."""
    tx = _Tx(ctx)
    t = tx.shared(connection, mutable=True)
    tx.call("transport_control", "finalize", [t, tx.clock()])
    return tx.finish()


def settle(ctx: TxContext, connection: SharedRef, escrow: SharedRef, cap: SharedRef) -> bytes:
    """``transport_control::settle(&mut tc, &mut escrow, &mut cap, &clock)``."""
    tx = _Tx(ctx)
    t = tx.shared(connection, mutable=True)
    e = tx.shared(escrow, mutable=True)
    c = tx.shared(cap, mutable=True)
    tx.call("transport_control", "settle", [t, e, c, tx.clock()])
    return tx.finish()


def settle_with_receipt(
    ctx: TxContext, connection: SharedRef, escrow: SharedRef, cap: SharedRef, receipt: Any
) -> bytes:
    """``transport_control::settle_with_receipt(&mut tc, &mut escrow, &mut cap,
    total_bytes, total_requests, total_amount, nonce, signature, &clock)``."""
    tx = _Tx(ctx)
    t = tx.shared(connection, mutable=True)
    e = tx.shared(escrow, mutable=True)
    c = tx.shared(cap, mutable=True)
    args = _receipt_args(tx, receipt)
    tx.call("transport_control", "settle_with_receipt", [t, e, c, *args, tx.clock()])
    return tx.finish()


# -- pipes ----------------------------------------------------------------------------------------


def create_pipe(ctx: TxContext, connection: SharedRef, inner_count: int) -> bytes:
    """``pipe::create(&tc, inner_count)``."""
    tx = _Tx(ctx)
    t = tx.shared(connection, mutable=False)
    tx.call("pipe", "create", [t, tx.pure(encode_u64(inner_count, "inner_count"))])
    return tx.finish()


def pipe_send(ctx: TxContext, pipe: OwnedRef, inner: int, data: bytes) -> bytes:
    """``pipe::send(&mut pipe, inner, data)``."""
    tx = _Tx(ctx)
    p = tx.owned(pipe)
    tx.call(
        "pipe",
        "send",
        [p, tx.pure(encode_u64(inner, "inner")), tx.pure(encode_bytes(data, "data"))],
    )
    return tx.finish()


def pipe_sync(ctx: TxContext, pipe: OwnedRef, inner: int, acked: int) -> bytes:
    """``pipe::sync(&mut pipe, inner, acked)``."""
    tx = _Tx(ctx)
    p = tx.owned(pipe)
    tx.call(
        "pipe",
        "sync",
        [p, tx.pure(encode_u64(inner, "inner")), tx.pure(encode_u64(acked, "acked"))],
    )
    return tx.finish()


def destroy_pipe(ctx: TxContext, pipe: OwnedRef) -> bytes:
    """``pipe::destroy(pipe)`` (by value)."""
    tx = _Tx(ctx)
    tx.call("pipe", "destroy", [tx.owned(pipe)])
    return tx.finish()


# -- broadcast ------------------------------------------------------------------------------------


def create_broadcast(ctx: TxContext, channel: str | bytes, slot_price: int, slot_ms: int) -> bytes:
    """``broadcast::create(channel, slot_price, slot_ms, &clock)``."""
    tx = _Tx(ctx)
    tx.call(
        "broadcast",
        "create",
        [
            tx.pure(encode_bytes(channel, "channel")),
            tx.pure(encode_u64(slot_price, "slot_price")),
            tx.pure(encode_u64(slot_ms, "slot_ms")),
            tx.clock(),
        ],
    )
    return tx.finish()


def broadcast_contribute(ctx: TxContext, broadcast: SharedRef, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``broadcast::contribute(&mut b, coin, &clock)``."""
    tx = _Tx(ctx)
    b = tx.shared(broadcast, mutable=True)
    coin = tx.coin(amount, "the contribution")
    tx.call("broadcast", "contribute", [b, coin, tx.clock()])
    return tx.finish()


def broadcast_transmit(ctx: TxContext, broadcast: SharedRef, data: bytes) -> bytes:
    """``broadcast::transmit(&mut b, data, &clock)``."""
    tx = _Tx(ctx)
    b = tx.shared(broadcast, mutable=True)
    tx.call("broadcast", "transmit", [b, tx.pure(encode_bytes(data, "data")), tx.clock()])
    return tx.finish()


def broadcast_claim(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::claim(&mut b, &clock)``."""
    tx = _Tx(ctx)
    b = tx.shared(broadcast, mutable=True)
    tx.call("broadcast", "claim", [b, tx.clock()])
    return tx.finish()


def broadcast_cancel(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::cancel(&mut b, &clock)``."""
    tx = _Tx(ctx)
    b = tx.shared(broadcast, mutable=True)
    tx.call("broadcast", "cancel", [b, tx.clock()])
    return tx.finish()


def broadcast_withdraw(ctx: TxContext, broadcast: SharedRef) -> bytes:
    """``broadcast::withdraw(&mut b)``."""
    tx = _Tx(ctx)
    b = tx.shared(broadcast, mutable=True)
    tx.call("broadcast", "withdraw", [b])
    return tx.finish()


# -- mailbox and response escrow ------------------------------------------------------------------


def mailbox_send(ctx: TxContext, host: SharedRef, payload: bytes) -> bytes:
    """``mailbox::send(&host, payload)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=False)
    tx.call("mailbox", "send", [h, tx.pure(encode_bytes(payload, "payload"))])
    return tx.finish()


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
    tx = _Tx(ctx)
    args = [
        tx.pure(encode_address(server, "server")),
        tx.pure(encode_bytes(request_id, "request_id")),
        tx.pure(encode_bytes(requester_public_key, "requester_public_key")),
        tx.pure(encode_u64(deadline_ms, "deadline_ms")),
    ]
    coin = tx.coin(amount, "the response fee")
    tx.call("response_escrow", "deposit", [*args, coin, tx.clock()])
    return tx.finish()


def response_escrow_claim(
    ctx: TxContext, escrow: SharedRef, response_hash: bytes, signature: bytes
) -> bytes:
    """``response_escrow::claim(&mut e, response_hash, signature)``."""
    tx = _Tx(ctx)
    e = tx.shared(escrow, mutable=True)
    tx.call(
        "response_escrow",
        "claim",
        [
            e,
            tx.pure(encode_bytes(response_hash, "response_hash")),
            tx.pure(encode_bytes(signature, "signature")),
        ],
    )
    return tx.finish()


def response_escrow_deliver(ctx: TxContext, escrow: SharedRef, response: bytes) -> bytes:
    """``response_escrow::deliver(&mut e, response, &clock)``."""
    tx = _Tx(ctx)
    e = tx.shared(escrow, mutable=True)
    tx.call(
        "response_escrow",
        "deliver",
        [e, tx.pure(encode_bytes(response, "response")), tx.clock()],
    )
    return tx.finish()


def response_escrow_refund(ctx: TxContext, escrow: SharedRef) -> bytes:
    """``response_escrow::refund(&mut e, &clock)``."""
    tx = _Tx(ctx)
    e = tx.shared(escrow, mutable=True)
    tx.call("response_escrow", "refund", [e, tx.clock()])
    return tx.finish()


# -- payment models (docs/escrow.md §13-16) -------------------------------------------------------


def create_subscription_offer(
    ctx: TxContext, host: SharedRef, port: int, price_per_epoch: int, period_epochs: int
) -> bytes:
    """``subscription::create_offer(&host, port, price_per_epoch, period_epochs)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=False)
    args = [
        tx.pure(encode_u16(port, "A port")),
        tx.pure(encode_u64(price_per_epoch, "price_per_epoch")),
        tx.pure(encode_u64(period_epochs, "period_epochs")),
    ]
    tx.call("subscription", "create_offer", [h, *args])
    return tx.finish()


def subscribe(ctx: TxContext, offer: SharedRef, epochs: int, payment: int) -> bytes:
    """``SplitCoins(GasCoin, [payment])`` then ``subscription::subscribe(&offer, epochs,
    coin)``."""
    tx = _Tx(ctx)
    o = tx.shared(offer, mutable=False)
    epochs_arg = tx.pure(encode_u64(epochs, "epochs"))
    coin = tx.coin(payment, "the payment")
    tx.call("subscription", "subscribe", [o, epochs_arg, coin])
    return tx.finish()


def renew_subscription(
    ctx: TxContext, subscription: SharedRef, offer: SharedRef, epochs: int, payment: int
) -> bytes:
    """``SplitCoins(GasCoin, [payment])`` then ``subscription::renew(&mut sub, &offer,
    epochs, coin)``."""
    tx = _Tx(ctx)
    sub = tx.shared(subscription, mutable=True)
    o = tx.shared(offer, mutable=False)
    epochs_arg = tx.pure(encode_u64(epochs, "epochs"))
    coin = tx.coin(payment, "the payment")
    tx.call("subscription", "renew", [sub, o, epochs_arg, coin])
    return tx.finish()


def _subscription_pair(
    function: str, ctx: TxContext, subscription: SharedRef, offer: SharedRef
) -> bytes:
    tx = _Tx(ctx)
    sub = tx.shared(subscription, mutable=True)
    o = tx.shared(offer, mutable=False)
    tx.call("subscription", function, [sub, o])
    return tx.finish()


def claim_subscription(ctx: TxContext, subscription: SharedRef, offer: SharedRef) -> bytes:
    """``subscription::claim(&mut sub, &offer)``."""
    return _subscription_pair("claim", ctx, subscription, offer)


def refund_subscription(ctx: TxContext, subscription: SharedRef, offer: SharedRef) -> bytes:
    """``subscription::refund(&mut sub, &offer)``."""
    return _subscription_pair("refund", ctx, subscription, offer)


def withdraw_subscription_offer(ctx: TxContext, offer: SharedRef) -> bytes:
    """``subscription::withdraw_offer(&mut offer)``."""
    tx = _Tx(ctx)
    tx.call("subscription", "withdraw_offer", [tx.shared(offer, mutable=True)])
    return tx.finish()


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
    tx = _Tx(ctx)
    sub = tx.shared(subscription, mutable=False)
    o = tx.shared(offer, mutable=False)
    h = tx.shared(host, mutable=False)
    c = tx.shared(cap, mutable=True)
    key_arg = tx.pure(encode_bytes(client_public_key, "client_public_key"))
    coin = tx.coin(deposit, "the deposit")
    tx.call("subscription", "open_connection", [sub, o, h, c, key_arg, coin, tx.clock()])
    return tx.finish()


def create_sponsor_pool(ctx: TxContext, host: SharedRef, port: int, share_bps: int) -> bytes:
    """``sponsor::create(&host, port, share_bps)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=False)
    args = [tx.pure(encode_u16(port, "A port")), tx.pure(encode_u64(share_bps, "share_bps"))]
    tx.call("sponsor", "create", [h, *args])
    return tx.finish()


def fund_sponsor_pool(ctx: TxContext, pool: SharedRef, amount: int) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``sponsor::fund(&mut pool, coin)``."""
    tx = _Tx(ctx)
    p = tx.shared(pool, mutable=True)
    coin = tx.coin(amount, "the amount")
    tx.call("sponsor", "fund", [p, coin])
    return tx.finish()


def withdraw_sponsor_pool(ctx: TxContext, pool: SharedRef, amount: int) -> bytes:
    """``sponsor::withdraw(&mut pool, amount)``."""
    tx = _Tx(ctx)
    p = tx.shared(pool, mutable=True)
    tx.call("sponsor", "withdraw", [p, tx.pure(encode_u64(amount, "the amount"))])
    return tx.finish()


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
    tx = _Tx(ctx)
    p = tx.shared(pool, mutable=True)
    h = tx.shared(host, mutable=False)
    c = tx.shared(cap, mutable=True)
    key_arg = tx.pure(encode_bytes(client_public_key, "client_public_key"))
    coin = tx.coin(deposit, "the deposit")
    tx.call("sponsor", "open_connection", [p, h, c, key_arg, coin, tx.clock()])
    return tx.finish()


def reimburse(ctx: TxContext, pool: SharedRef, connection: SharedRef, escrow: SharedRef) -> bytes:
    """``sponsor::reimburse(&mut pool, &tc, &escrow)``."""
    tx = _Tx(ctx)
    p = tx.shared(pool, mutable=True)
    t = tx.shared(connection, mutable=False)
    e = tx.shared(escrow, mutable=False)
    tx.call("sponsor", "reimburse", [p, t, e])
    return tx.finish()


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
    tx = _Tx(ctx)
    args = [
        tx.pure(encode_bytes(title, "title")),
        tx.pure(encode_u64(ticket_price, "ticket_price")),
        tx.pure(encode_u64(min_tickets, "min_tickets")),
        tx.pure(encode_u64(max_tickets, "max_tickets")),
        tx.pure(encode_u64(deadline_ms, "deadline_ms")),
    ]
    tx.call("tickets", "create", [*args, tx.clock()])
    return tx.finish()


def create_ticketed_broadcast(
    ctx: TxContext, sale: SharedRef, channel: str | bytes, slot_price: int, slot_ms: int
) -> bytes:
    """``broadcast::create_ticketed(&sale, channel, slot_price, slot_ms, &clock)``."""
    tx = _Tx(ctx)
    s = tx.shared(sale, mutable=False)
    args = [
        tx.pure(encode_bytes(channel, "channel")),
        tx.pure(encode_u64(slot_price, "slot_price")),
        tx.pure(encode_u64(slot_ms, "slot_ms")),
    ]
    tx.call("broadcast", "create_ticketed", [s, *args, tx.clock()])
    return tx.finish()


def pay(ctx: TxContext, recipient: str, amount: int, memo: bytes) -> bytes:
    """``SplitCoins(GasCoin, [amount])`` then ``payment::pay(coin, recipient, memo)``."""
    tx = _Tx(ctx)
    coin = tx.coin(amount, "the amount")
    args = [
        tx.pure(encode_address(recipient, "recipient")),
        tx.pure(encode_bytes(memo, "memo")),
    ]
    tx.call("payment", "pay", [coin, *args])
    return tx.finish()


def buy_tickets(ctx: TxContext, sale: SharedRef, count: int, payment: int) -> bytes:
    """``SplitCoins(GasCoin, [payment])`` then ``tickets::buy(&mut sale, count, coin,
    &clock)``."""
    tx = _Tx(ctx)
    s = tx.shared(sale, mutable=True)
    count_arg = tx.pure(encode_u64(count, "count"))
    coin = tx.coin(payment, "the payment")
    tx.call("tickets", "buy", [s, count_arg, coin, tx.clock()])
    return tx.finish()


def go_on_air(ctx: TxContext, sale: SharedRef) -> bytes:
    """``tickets::go_on_air(&mut sale, &clock)``."""
    tx = _Tx(ctx)
    s = tx.shared(sale, mutable=True)
    tx.call("tickets", "go_on_air", [s, tx.clock()])
    return tx.finish()


def cancel_ticket_sale(ctx: TxContext, sale: SharedRef) -> bytes:
    """``tickets::cancel(&mut sale)``."""
    tx = _Tx(ctx)
    tx.call("tickets", "cancel", [tx.shared(sale, mutable=True)])
    return tx.finish()


def refund_tickets(ctx: TxContext, sale: SharedRef) -> bytes:
    """``tickets::refund(&mut sale, &clock)``."""
    tx = _Tx(ctx)
    s = tx.shared(sale, mutable=True)
    tx.call("tickets", "refund", [s, tx.clock()])
    return tx.finish()


def create_retention_terms(
    ctx: TxContext,
    host: SharedRef,
    port: int,
    retention_ms: int,
    storage_price_per_byte: int,
) -> bytes:
    """``retention::create_terms(&host, port, retention_ms, storage_price_per_byte)``."""
    tx = _Tx(ctx)
    h = tx.shared(host, mutable=False)
    args = [
        tx.pure(encode_u16(port, "A port")),
        tx.pure(encode_u64(retention_ms, "retention_ms")),
        tx.pure(encode_u64(storage_price_per_byte, "storage_price_per_byte")),
    ]
    tx.call("retention", "create_terms", [h, *args])
    return tx.finish()


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
    tx = _Tx(ctx)
    p = tx.owned(pipe)
    t = tx.shared(connection, mutable=False)
    r = tx.shared(terms, mutable=False)
    inner_arg = tx.pure(encode_u64(inner, "inner"))
    data_arg = tx.pure(encode_bytes(data, "data"))
    coin = tx.coin(deposit, "the storage deposit")
    tx.call("retention", "send", [p, t, r, inner_arg, data_arg, coin, tx.clock()])
    return tx.finish()


def confirm_consumed(ctx: TxContext, record: SharedRef) -> bytes:
    """``retention::confirm(&mut record)``."""
    tx = _Tx(ctx)
    tx.call("retention", "confirm", [tx.shared(record, mutable=True)])
    return tx.finish()


def delete_retained(ctx: TxContext, record: SharedRef) -> bytes:
    """``retention::delete(record, &clock)`` (by value: the shared record is deleted)."""
    tx = _Tx(ctx)
    r = tx.shared(record, mutable=True)
    tx.call("retention", "delete", [r, tx.clock()])
    return tx.finish()


#: Ledger method name -> the Move function its transaction calls (payment models).
ECONOMICS_TARGETS: Final[dict[str, tuple[str, str]]] = {
    "create_subscription_offer": ("subscription", "create_offer"),
    "subscribe": ("subscription", "subscribe"),
    "renew_subscription": ("subscription", "renew"),
    "claim_subscription": ("subscription", "claim"),
    "withdraw_subscription_offer": ("subscription", "withdraw_offer"),
    "refund_subscription": ("subscription", "refund"),
    "open_subscribed_connection": ("subscription", "open_connection"),
    "create_sponsor_pool": ("sponsor", "create"),
    "fund_sponsor_pool": ("sponsor", "fund"),
    "withdraw_sponsor_pool": ("sponsor", "withdraw"),
    "open_sponsored_connection": ("sponsor", "open_connection"),
    "reimburse": ("sponsor", "reimburse"),
    "create_ticketed_broadcast": ("broadcast", "create_ticketed"),
    "pay": ("payment", "pay"),
    "create_ticket_sale": ("tickets", "create"),
    "buy_tickets": ("tickets", "buy"),
    "go_on_air": ("tickets", "go_on_air"),
    "cancel_ticket_sale": ("tickets", "cancel"),
    "refund_tickets": ("tickets", "refund"),
    "create_retention_terms": ("retention", "create_terms"),
    "send_retained": ("retention", "send"),
    "confirm_consumed": ("retention", "confirm"),
    "delete_retained": ("retention", "delete"),
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
    "mailbox_send": ("mailbox", "send"),
    "response_escrow_deposit": ("response_escrow", "deposit"),
    "response_escrow_claim": ("response_escrow", "claim"),
    "response_escrow_deliver": ("response_escrow", "deliver"),
    "response_escrow_refund": ("response_escrow", "refund"),
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
    )
}

#: Ledger method name -> the Move function its transaction calls last (module, function).
TARGETS: Final[dict[str, tuple[str, str]]] = {
    "create_host": ("host", "create"),
    "set_authority": ("host", "set_authority"),
    "set_noise_static_key": ("host", "set_noise_static_key"),
    "set_endpoints": ("host", "set_endpoints"),
    "set_firewall_mode": ("host", "set_firewall_mode"),
    "allow": ("host", "allow"),
    "disallow": ("host", "disallow"),
    "deny": ("host", "deny"),
    "undeny": ("host", "undeny"),
    "set_client_limits": ("host", "set_client_limits"),
    "add_service": ("host", "add_service"),
    "update_service": ("host", "update_service"),
    "remove_service": ("host", "remove_service"),
    "create_spending_cap": ("spending_cap", "create"),
    "set_max_per_epoch": ("spending_cap", "set_max_per_epoch"),
    "open_connection": ("transport_control", "open"),
    "top_up": ("escrow", "top_up"),
    "claim": ("escrow", "claim"),
    "close_connection": ("transport_control", "close"),
    "finalize": ("transport_control", "finalize"),
    "settle": ("transport_control", "settle"),
    "settle_with_receipt": ("transport_control", "settle_with_receipt"),
    "create_pipe": ("pipe", "create"),
    "pipe_send": ("pipe", "send"),
    "pipe_sync": ("pipe", "sync"),
    "destroy_pipe": ("pipe", "destroy"),
    "create_broadcast": ("broadcast", "create"),
    "broadcast_contribute": ("broadcast", "contribute"),
    "broadcast_transmit": ("broadcast", "transmit"),
    "broadcast_claim": ("broadcast", "claim"),
    "broadcast_cancel": ("broadcast", "cancel"),
    "broadcast_withdraw": ("broadcast", "withdraw"),
}
