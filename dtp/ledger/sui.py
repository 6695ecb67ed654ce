"""SuiLedger: the :class:`~dtp.ledger.interface.Ledger` interface on a real Sui network.

Every state-changing method reads the object references it needs from a full node
(shared objects' initial shared versions, once per object; owned objects' versions and
digests), leases gas coins from the signer's pool (:mod:`dtp.ledger.sui_gas`; the
reference gas price is read once an epoch), builds the programmable transaction offline
(:mod:`dtp.ledger.sui_tx`), signs it with ``signer.sign_transaction`` and executes it over
gRPC (:mod:`dtp.ledger.sui_client`). Results come from the effects (created objects by
type) and the events (amounts, sequence numbers; :mod:`dtp.ledger.sui_effects`); Move
aborts become the same :class:`~dtp.errors.ChainError` subclasses as in ``LocalLedger``,
through ``dtp.errors.move_error_from_abort_code``. Threads may share a ledger: their
transactions run side by side, each with gas coins of its own.

Differences from ``LocalLedger`` that callers see: gas is paid from the signer's SUI coins
on top of deposits (``SuiLedger.last_outcome.gas_cost`` tells how much, per thread;
:meth:`SuiLedger.gas_balance` what is left); clock and epochs are the network's; event
cursors are opaque hex strings of ``ListEvents`` watermarks; a transaction Sui's
congestion control cancels is sent again, then :class:`SharedObjectCongestion`.

Configuration (:class:`~dtp.ledger.sui_config.SuiConfig`): a ledger spec through
:func:`dtp.ledger.open_ledger` (``testnet``, ``localnet@http://127.0.0.1:9000``...;
docs/sui.md), or :meth:`SuiLedger.from_env`: ``DTP_SUI_RPC`` (gRPC endpoint,
``https://fullnode.testnet.sui.io:443`` or ``http://127.0.0.1:9000``), ``DTP_SUI_PACKAGE``
(the published ``move/dtp`` package ID) and optionally ``DTP_SUI_KEY`` (a Sui keystring of
a funded Ed25519 key, exposed as :attr:`SuiLedger.default_signer`; kept in memory only),
``DTP_SUI_GAS_BUDGET`` (MIST per transaction) and ``DTP_SUI_TIMEOUT`` (seconds per call).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot

from dtp.errors import (
    ChainError,
    InvalidArgument,
    ObjectNotFound,
    SuiConfigError,
    WrongSigner,
)
from dtp.ledger import sui_tx
from dtp.ledger.economics import (
    ECONOMICS_MODULES,
    EconomicsObject,
    Subscription,
)
from dtp.ledger.interface import Endpoint, Ledger, ResponseEscrow
from dtp.ledger.objects import (
    Broadcast,
    ChainObject,
    Escrow,
    Event,
    EventFilter,
    EventRead,
    Host,
    OpenedConnection,
    Pipe,
    Settlement,
    Sla,
    SpendingCap,
    TransportControl,
    check_signer,
    normalize_id,
)
from dtp.ledger.receipt import Receipt
from dtp.ledger.sui_client import (
    LedgerUnavailable,
    MalformedResponse,
    NodeObject,
    SharedObjectCongestion,
    SuiNode,
    narrowing,
)
from dtp.ledger.sui_codec import (
    MESSAGING_EVENT_LAYOUTS,
    OBJECT_LAYOUTS,
    OBJECT_MODULES,
    RESPONSE_ESCROW_LAYOUT,
    BcsDecodeError,
    decode,
    decode_object,
    table_id,
)
from dtp.ledger.sui_config import DEFAULT_GAS_BUDGET, SuiConfig
from dtp.ledger.sui_economics import (
    decode_economics_object,
    economics_table_id,
)
from dtp.ledger.sui_effects import (
    MissingEvent,
    TxOutcome,
    cancelled_for_congestion,
    event_from_proto,
    execution_error,
    parse_executed,
    short_type,
)
from dtp.ledger.sui_gas import (
    MAX_GAS_COINS,
    GasPool,
    Lease,
    PriceCache,
    settle_from_effects,
    split_transaction,
)
from dtp.ledger.sui_tx import OwnedRef, SharedRef, TxContext

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = [
    "DEFAULT_GAS_BUDGET",
    "MAX_GAS_COINS",
    "MESSAGING_EVENT_LAYOUTS",
    "RESPONSE_ESCROW_LAYOUT",
    "LedgerUnavailable",
    "MissingEvent",
    "SharedObjectCongestion",
    "SuiConfig",
    "SuiConfigError",
    "SuiLedger",
    "TxOutcome",
    "event_from_proto",
    "execution_error",
    "parse_executed",
]

logger = logging.getLogger(__name__)

#: Checkpoint timestamps a SuiLedger remembers (for the events it reads).
_CHECKPOINT_CACHE: Final = 1024
#: Shared objects whose type and initial shared version a SuiLedger remembers.
_SHARED_CACHE: Final = 4096
#: Times a transaction cancelled by congestion control is sent again, after a backoff
#: from _CONGESTION_DELAY s doubling to _CONGESTION_DELAY_CAP s (jittered).
_CONGESTION_RETRIES: Final = 5
_CONGESTION_DELAY: Final = 0.25
_CONGESTION_DELAY_CAP: Final = 4.0
T = TypeVar("T")


# -- argument checks (as LocalLedger makes them, before any node I/O) ----------------------------


def _check_sla(sla: Sla) -> None:
    """``sla`` is an :class:`Sla` of u64 prices (a tuple failed as an AttributeError)."""
    if not isinstance(sla, Sla):
        raise InvalidArgument(f"sla must be an Sla, got {type(sla).__name__}.")
    for value, what in (
        (sla.price_per_kib, "price_per_kib"),
        (sla.price_per_request, "price_per_request"),
        (sla.min_deposit, "min_deposit"),
    ):
        sui_tx.encode_u64(value, what)


def _key(signer: HostIdentity, key: bytes | None, what: str) -> bytes:
    """An optional public-key argument: the signer's own Ed25519 key when None."""
    return signer.ed25519_public if key is None else sui_tx.as_bytes(key, what)


# -- the ledger -----------------------------------------------------------------------------------


#: How Sui refuses, before executing it, a transaction naming an owned object at a
#: version that is not its current one (``ObjectVersionUnavailableForConsumption``).
_STALE_INPUT: Final = "is not available for consumption"


class _InputMoved(Exception):
    """A transaction refused before executing because an owned input was at another
    version, or a gas coin was deleted (``ObjectNotFound``): another SuiLedger or process
    signing with the same key used it. The gas lease is forgotten, so the transaction
    built again gets coins the node has now."""

    def __init__(self, error: ChainError) -> None:
        super().__init__(str(error))
        self.error = error


def _names_object(text: str, object_id: str) -> bool:
    """Whether a node's message names ``object_id`` (Sui writes IDs in full; a form
    without leading zeros is matched too)."""
    digits = object_id[2:].lstrip("0") or "0"
    return re.search(rf"0x0*{digits}(?![0-9a-f])", text, re.IGNORECASE) is not None


def _unique_budget(budget: int) -> int:
    """``budget`` less a random amount below 1 %: the gas budget of one transaction.

    Sui has no nonce: two processes signing the same call with one key and the same coin
    version (the one that had not seen the other's transaction yet) build the same bytes,
    and the node answers the second with the first's effects, as its own (one connection
    opened, two callers each thinking it is theirs). A budget of its own makes each
    transaction's bytes its own, so the stale one is refused (and sent again with the
    coin read anew, :meth:`SuiLedger._execute`)."""
    return budget - secrets.randbelow(budget // 100 + 1)


class SuiLedger(Ledger):
    """The ledger on a Sui network (see the module docs)."""

    def __init__(self, config: SuiConfig) -> None:
        """No I/O happens here; the first method call opens the gRPC channel."""
        self.config = config
        self.package = config.package
        self._packages: tuple[str, ...] = tuple(
            dict.fromkeys([config.package, config.type_package or config.package])
        )
        self._node = SuiNode(config.rpc, timeout=config.timeout, retries=config.retries)
        self._checkpoint_ms: dict[int, int] = {}
        self._checkpoint_lock = threading.Lock()
        #: Shared objects' struct and initial shared version, which never change.
        self._shared_refs: dict[str, tuple[str, int]] = {}
        self._shared_lock = threading.Lock()
        self._pools: dict[str, GasPool] = {}
        self._pools_lock = threading.Lock()
        self._price = PriceCache(lambda: self._node.epoch_info()[1])
        self._local = threading.local()

    @property
    def last_outcome(self) -> TxOutcome | None:
        """The outcome of the last transaction this ledger executed for the calling thread
        (threads sharing a ledger each see their own)."""
        outcome: TxOutcome | None = getattr(self._local, "outcome", None)
        return outcome

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SuiLedger:
        """A ledger configured by ``DTP_SUI_*`` variables (see :meth:`SuiConfig.from_env`)."""
        return cls(SuiConfig.from_env(env))

    @property
    def default_signer(self) -> HostIdentity | None:
        """The identity of ``DTP_SUI_KEY``, if it was set."""
        return self.config.key

    def close(self) -> None:
        self._node.close()

    def __repr__(self) -> str:
        return f"SuiLedger(rpc={self.config.rpc!r}, package={self.package!r})"

    # -- objects ---------------------------------------------------------------------------

    def _load(self, object_id: str, struct: str | None) -> tuple[NodeObject, str]:
        object_id = normalize_id(object_id)
        try:
            obj = self._node.get_object(object_id)
        except ObjectNotFound:
            # named as LocalLedger names it (a node's NOT_FOUND says "Object 0x… not
            # found", which read as a failed call rather than a wrong ID)
            raise ObjectNotFound(
                f"No {struct or 'object'} with ID {object_id} exists on this network."
            ) from None
        short = short_type(obj.type, self._packages)
        name = short.rsplit("::", 1)[-1] if short is not None else None
        if name not in OBJECT_LAYOUTS:
            raise ObjectNotFound(
                f"Object {obj.object_id} is a {obj.type}, not an object of the dtp package "
                f"{self.package} this ledger uses (is that the right package ID?)."
            )
        assert name is not None
        if struct is not None and name != struct:
            raise ObjectNotFound(f"Object {obj.object_id} is a {name}, not a {struct}.")
        return obj, name

    def _shared(self, object_id: str, struct: str) -> SharedRef:
        return self._shared_ref(object_id, struct, lambda: self._load(object_id, struct)[0])

    def _shared_ref(self, object_id: str, struct: str, load: Callable[[], NodeObject]) -> SharedRef:
        """The ``SharedRef`` of a ``struct``, read with ``load`` once per object: a shared
        object's type and initial shared version never change, so a call does not spend
        a round trip on them (a deleted one is refused by the node: ObjectNotFound)."""
        key = normalize_id(object_id)
        with self._shared_lock:
            known = self._shared_refs.get(key)
        if known is not None:
            if known[0] != struct:
                raise ObjectNotFound(f"Object {key} is a {known[0]}, not a {struct}.")
            return SharedRef(key, known[1])
        obj = load()
        if obj.initial_shared_version is None:
            raise ObjectNotFound(f"{struct} {obj.object_id} is not a shared object.")
        with self._shared_lock:
            while len(self._shared_refs) >= _SHARED_CACHE:
                del self._shared_refs[next(iter(self._shared_refs))]
            self._shared_refs[obj.object_id] = (struct, obj.initial_shared_version)
        return SharedRef(obj.object_id, obj.initial_shared_version)

    def _owned(self, signer: HostIdentity, object_id: str, struct: str) -> OwnedRef:
        obj, _ = self._load(object_id, struct)
        if obj.owner != signer.sui_address:
            raise WrongSigner(
                f"{struct} {obj.object_id} is owned by {obj.owner}; only its owner can use it "
                f"(sender {signer.sui_address}).",
                name="ObjectOwnedByAnother",
            )
        return obj.owned_ref()

    def _typed(self, object_id: str, struct: str | None) -> ChainObject:
        obj, name = self._load(object_id, struct)
        entries: dict[str, int] = {}
        table = table_id(name, obj.contents)
        if table is not None:
            entries = self._node.table_entries(table)
        try:
            return decode_object(name, obj.version, obj.contents, entries)
        except BcsDecodeError as exc:
            raise BcsDecodeError(
                f"{name} {obj.object_id} does not decode ({exc}); is DTP_SUI_PACKAGE the "
                "package these objects belong to?"
            ) from None

    def _get(self, object_id: str, struct: str, cls: type[T]) -> T:
        obj = self._typed(object_id, struct)
        assert isinstance(obj, cls)
        return obj

    # -- executing -------------------------------------------------------------------------

    def _pool(self, address: str) -> GasPool:
        with self._pools_lock:
            pool = self._pools.get(address)
            if pool is None:
                pool = GasPool(address, lambda: self._node.gas_coins(address))
                self._pools[address] = pool
            return pool

    def gas_balance(self, address: str) -> int:
        """MIST in ``address``'s SUI coins, which pay its gas (compare with
        ``config.gas_budget``, the most one transaction may cost, to see gas running low)."""
        return sum(balance for _, balance in self._node.gas_coins(normalize_id(address, "address")))

    def _execute(
        self,
        signer: HostIdentity,
        what: str,
        build: Callable[[TxContext], bytes],
        spend: int = 0,
    ) -> TxOutcome:
        """Build (``build`` gets the gas data), sign and execute one transaction, paying
        gas with coins leased from the signer's pool (so that threads sharing this ledger
        never sign two transactions with one coin). A transaction congestion control
        cancelled did not execute: it is built and sent again after a backoff."""
        for attempt in range(_CONGESTION_RETRIES + 1):
            if attempt:
                delay = min(_CONGESTION_DELAY_CAP, _CONGESTION_DELAY * 2 ** (attempt - 1))
                time.sleep(delay / 2 + random.uniform(0.0, delay / 2))
            try:
                executed = self._send(signer, what, build, spend)
            except _InputMoved as moved:
                # the pool forgot the coins and reads the node before the next lease:
                # once more with what the node has now (tests/ledger/test_sui_shared_key.py)
                logger.debug("%s refused (%s): sent again", what, moved.error)
                try:
                    executed = self._send(signer, what, build, spend)
                except _InputMoved as again:
                    raise again.error from None
            if not cancelled_for_congestion(executed):
                outcome = parse_executed(executed, self._packages, what)
                self._local.outcome = outcome
                return outcome
            logger.debug("%s was cancelled for congestion (attempt %d)", what, attempt + 1)
        raise SharedObjectCongestion(
            f"{what} was cancelled by Sui's congestion control {_CONGESTION_RETRIES + 1} times "
            "(the shared objects it writes are too busy). It did not execute: it is safe to "
            "send again later."
        )

    def _send(
        self,
        signer: HostIdentity,
        what: str,
        build: Callable[[TxContext], bytes],
        spend: int,
    ) -> Any:
        """One attempt: lease gas, build, sign, execute; the pool learns the gas coin's new
        version and balance from the effects. Returns the ``ExecutedTransaction``."""
        budget = self.config.gas_budget
        price = self._price.get()  # first: a node that cannot price gas gets no lease
        pool = self._pool(signer.sui_address)
        needed = budget + max(0, spend)
        lease = pool.lease(needed, self.config.timeout)
        if lease.split:
            # this transaction waited for a coin: give the signer more of them first
            amounts = pool.split_amounts(lease.total, budget)
            if amounts:
                split = self._sent(
                    signer,
                    pool,
                    lease,
                    lambda ctx: split_transaction(ctx, amounts),
                    price,
                    amounts,
                    "split the gas coin",
                    split=True,
                )
                parse_executed(split, self._packages, "split the gas coin")
                lease = pool.lease(needed, self.config.timeout)
        splits = [spend] if spend > 0 else []
        return self._sent(signer, pool, lease, build, price, splits, what)

    def _sent(
        self,
        signer: HostIdentity,
        pool: GasPool,
        lease: Lease,
        build: Callable[[TxContext], bytes],
        price: int,
        splits: Sequence[int],
        what: str,
        split: bool = False,
    ) -> Any:
        """Execute with ``lease`` (``splits``: the MIST the transaction splits off the gas
        coin; ``split``: it is the pool's own split, whose new coins' amounts are known)."""
        sender = signer.sui_address
        try:
            gas = sui_tx.GasData(lease.coins, price, _unique_budget(self.config.gas_budget))
            tx_bytes = build(TxContext(self.package, sender, gas))
            signature = signer.sign_transaction(tx_bytes)
        except BaseException:
            pool.release(lease)
            raise
        try:
            executed = self._node.execute(tx_bytes, signature)
        except ChainError as exc:
            text = str(exc)
            lowered = text.lower()
            # refused for an input another signer of this key moved on (a stale version)
            # or deleted (a gas coin merged into another: ObjectNotFound naming it)
            moved = _STALE_INPUT in lowered or (
                isinstance(exc, ObjectNotFound)
                and any(_names_object(text, ref.object_id) for ref in lease.coins)
            )
            if moved:
                pool.forget(lease, moved_elsewhere=True)
            elif isinstance(exc, LedgerUnavailable | MalformedResponse) or "gas object" in lowered:
                pool.forget(lease)  # maybe executed, or the coins were not what we thought
            else:
                pool.release(lease)  # refused before execution: the coins are unchanged
            if "reference gas price" in lowered:
                self._price.invalidate()
            if isinstance(exc, ObjectNotFound):
                with self._shared_lock:
                    self._shared_refs.clear()  # an input was deleted: forget the refs
            if moved:
                raise _InputMoved(exc) from exc
            raise
        except BaseException:
            pool.forget(lease)
            raise
        settle_from_effects(pool, lease, executed, splits, split)
        return executed

    @staticmethod
    def _amount(value: int, what: str) -> int:
        sui_tx.encode_u64(value, what)
        return value

    # -- host ------------------------------------------------------------------------------

    def create_host(
        self, signer: HostIdentity, noise_static_key: bytes, endpoints: Sequence[Endpoint] = ()
    ) -> str:
        check_signer(signer)
        # converted here, before any node I/O: bytes(32) would be 32 zero bytes, and
        # list("a:1") three endpoints (as_bytes_list refuses a single value)
        key = sui_tx.as_bytes(noise_static_key, "noise_static_key")
        eps = sui_tx.as_bytes_list(endpoints)
        out = self._execute(signer, "host::create", lambda ctx: sui_tx.create_host(ctx, key, eps))
        return out.created_of("Host") or str(out.event("HostCreated")["host"])

    def _host_call(
        self,
        signer: HostIdentity,
        host_id: str,
        function: str,
        build: Callable[[TxContext, SharedRef], bytes],
    ) -> None:
        host = self._shared(host_id, "Host")
        self._execute(signer, f"host::{function}", lambda ctx: build(ctx, host))

    def set_authority(self, signer: HostIdentity, host_id: str, new_authority: str) -> None:
        check_signer(signer)
        new_authority = normalize_id(new_authority, "address")
        self._host_call(
            signer,
            host_id,
            "set_authority",
            lambda ctx, h: sui_tx.set_authority(ctx, h, new_authority),
        )

    def set_noise_static_key(self, signer: HostIdentity, host_id: str, key: bytes) -> None:
        check_signer(signer)
        raw = sui_tx.as_bytes(key, "key")
        self._host_call(
            signer,
            host_id,
            "set_noise_static_key",
            lambda ctx, h: sui_tx.set_noise_static_key(ctx, h, raw),
        )

    def set_endpoints(
        self, signer: HostIdentity, host_id: str, endpoints: Sequence[Endpoint]
    ) -> None:
        check_signer(signer)
        eps = sui_tx.as_bytes_list(endpoints)
        self._host_call(
            signer, host_id, "set_endpoints", lambda ctx, h: sui_tx.set_endpoints(ctx, h, eps)
        )

    def set_firewall_mode(self, signer: HostIdentity, host_id: str, mode: int) -> None:
        check_signer(signer)
        sui_tx.encode_u8(mode, "The firewall mode")
        self._host_call(
            signer,
            host_id,
            "set_firewall_mode",
            lambda ctx, h: sui_tx.set_firewall_mode(ctx, h, mode),
        )

    def _firewall_list(self, fn: str, signer: HostIdentity, host_id: str, client: str) -> None:
        client = normalize_id(client, "address")
        build = sui_tx.BUILDERS[fn]
        self._host_call(signer, host_id, fn, lambda ctx, h: build(ctx, h, client))

    def allow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("allow", signer, host_id, client)

    def disallow(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("disallow", signer, host_id, client)

    def deny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("deny", signer, host_id, client)

    def undeny(self, signer: HostIdentity, host_id: str, client: str) -> None:
        check_signer(signer)
        self._firewall_list("undeny", signer, host_id, client)

    def set_client_limits(
        self,
        signer: HostIdentity,
        host_id: str,
        max_connections_per_client: int,
        max_bytes_per_sec: int,
        max_requests_per_sec: int,
    ) -> None:
        check_signer(signer)
        limits = (max_connections_per_client, max_bytes_per_sec, max_requests_per_sec)
        for value, what in zip(
            limits,
            ("max_connections_per_client", "max_bytes_per_sec", "max_requests_per_sec"),
            strict=True,
        ):
            self._amount(value, what)
        self._host_call(
            signer,
            host_id,
            "set_client_limits",
            lambda ctx, h: sui_tx.set_client_limits(ctx, h, *limits),
        )

    @staticmethod
    def _check_port(port: int) -> None:
        # in LocalLedger's words, so both ledgers refuse a port alike (sui_tx.encode_u16
        # says it in its own)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"A port is a u16 (0..65535), got {port!r}.")

    def add_service(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        kind: str | bytes,
        sla: Sla,
        max_connections: int = 0,
    ) -> None:
        check_signer(signer)
        self._check_port(port)
        sui_tx.as_bytes(kind, "kind")  # the builder encodes it the same way, after I/O
        _check_sla(sla)
        self._amount(max_connections, "max_connections")
        self._host_call(
            signer,
            host_id,
            "add_service",
            lambda ctx, h: sui_tx.add_service(ctx, h, port, kind, sla, max_connections),
        )

    def update_service(
        self, signer: HostIdentity, host_id: str, port: int, sla: Sla, max_connections: int = 0
    ) -> None:
        check_signer(signer)
        self._check_port(port)
        _check_sla(sla)
        self._amount(max_connections, "max_connections")
        self._host_call(
            signer,
            host_id,
            "update_service",
            lambda ctx, h: sui_tx.update_service(ctx, h, port, sla, max_connections),
        )

    def remove_service(self, signer: HostIdentity, host_id: str, port: int) -> None:
        check_signer(signer)
        self._check_port(port)
        self._host_call(
            signer, host_id, "remove_service", lambda ctx, h: sui_tx.remove_service(ctx, h, port)
        )

    # -- spending cap ----------------------------------------------------------------------

    def create_spending_cap(self, signer: HostIdentity, max_per_epoch: int) -> str:
        check_signer(signer)
        self._amount(max_per_epoch, "max_per_epoch")
        out = self._execute(
            signer,
            "spending_cap::create",
            lambda ctx: sui_tx.create_spending_cap(ctx, max_per_epoch),
        )
        return out.created_of("SpendingCap") or str(out.event("SpendingCapCreated")["cap"])

    def set_max_per_epoch(self, signer: HostIdentity, cap_id: str, max_per_epoch: int) -> None:
        check_signer(signer)
        self._amount(max_per_epoch, "max_per_epoch")
        cap = self._shared(cap_id, "SpendingCap")
        self._execute(
            signer,
            "spending_cap::set_max_per_epoch",
            lambda ctx: sui_tx.set_max_per_epoch(ctx, cap, max_per_epoch),
        )

    # -- connections and escrow ------------------------------------------------------------

    def open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> OpenedConnection:
        check_signer(signer)
        self._check_port(port)
        self._amount(deposit, "the deposit")
        key = _key(signer, client_public_key, "client_public_key")
        host = self._shared(host_id, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "transport_control::open",
            lambda ctx: sui_tx.open_connection(ctx, host, port, cap, deposit, key),
            spend=deposit,
        )
        connection = out.created_of("TransportControl")
        escrow = out.created_of("Escrow")
        if connection is None or escrow is None:
            opened = out.event("ConnectionOpened")
            connection, escrow = str(opened["connection"]), str(opened["escrow"])
        return OpenedConnection(connection, escrow)

    def top_up(
        self, signer: HostIdentity, escrow_id: str, amount: int, *, cap_id: str | None = None
    ) -> None:
        check_signer(signer)
        self._amount(amount, "the top-up amount")
        if cap_id is None:
            cap_id = self.get_escrow(escrow_id).spending_cap
        escrow = self._shared(escrow_id, "Escrow")
        cap = self._shared(cap_id, "SpendingCap")
        self._execute(
            signer,
            "escrow::top_up",
            lambda ctx: sui_tx.top_up(ctx, escrow, cap, amount),
            spend=amount,
        )

    @staticmethod
    def _check_receipt(receipt: Receipt) -> None:
        if not isinstance(receipt, Receipt):
            raise InvalidArgument(f"receipt must be a Receipt, got {type(receipt).__name__}.")
        sui_tx.as_bytes(receipt.signature, "signature")
        for value, what in (
            (receipt.total_bytes, "total_bytes"),
            (receipt.total_requests, "total_requests"),
            (receipt.total_amount, "total_amount"),
            (receipt.nonce, "nonce"),
        ):
            sui_tx.encode_u64(value, what)

    def claim(self, signer: HostIdentity, escrow_id: str, receipt: Receipt) -> int:
        check_signer(signer)
        self._check_receipt(receipt)
        escrow = self._shared(escrow_id, "Escrow")
        out = self._execute(signer, "escrow::claim", lambda ctx: sui_tx.claim(ctx, escrow, receipt))
        return int(out.event("ReceiptClaimed")["paid"])

    def _settle_refs(
        self, connection_id: str, escrow_id: str | None, cap_id: str | None
    ) -> tuple[SharedRef, SharedRef, SharedRef]:
        """The connection's, its escrow's and its cap's references (``escrow_id`` and
        ``cap_id`` passing others explicitly)."""
        conn = self.get_connection(connection_id)
        tc = self._shared(conn.id, "TransportControl")
        escrow = self._shared(escrow_id if escrow_id is not None else conn.escrow, "Escrow")
        cap = self._shared(cap_id if cap_id is not None else conn.spending_cap, "SpendingCap")
        return tc, escrow, cap

    def close_connection(self, signer: HostIdentity, connection_id: str) -> None:
        check_signer(signer)
        tc = self._shared(connection_id, "TransportControl")
        self._execute(
            signer, "transport_control::close", lambda ctx: sui_tx.close_connection(ctx, tc)
        )

    def finalize(self, signer: HostIdentity, connection_id: str) -> None:
        check_signer(signer)
        tc = self._shared(connection_id, "TransportControl")
        self._execute(signer, "transport_control::finalize", lambda ctx: sui_tx.finalize(ctx, tc))

    def settle(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        check_signer(signer)
        tc, escrow, cap = self._settle_refs(connection_id, escrow_id, cap_id)
        out = self._execute(
            signer,
            "transport_control::settle",
            lambda ctx: sui_tx.settle(ctx, tc, escrow, cap),
        )
        settled = out.event("ConnectionSettled")
        return Settlement(0, int(settled["claimed"]), int(settled["refunded"]))

    def settle_with_receipt(
        self,
        signer: HostIdentity,
        connection_id: str,
        receipt: Receipt,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        check_signer(signer)
        self._check_receipt(receipt)
        tc, escrow, cap = self._settle_refs(connection_id, escrow_id, cap_id)
        out = self._execute(
            signer,
            "transport_control::settle_with_receipt",
            lambda ctx: sui_tx.settle_with_receipt(ctx, tc, escrow, cap, receipt),
        )
        settled = out.event("ConnectionSettled")
        paid = int(out.event("ReceiptClaimed")["paid"])
        return Settlement(paid, int(settled["claimed"]), int(settled["refunded"]))

    # -- pipes -----------------------------------------------------------------------------

    def create_pipe(self, signer: HostIdentity, connection_id: str, inner_count: int) -> str:
        check_signer(signer)
        self._amount(inner_count, "inner_count")
        tc = self._shared(connection_id, "TransportControl")
        out = self._execute(
            signer, "pipe::create", lambda ctx: sui_tx.create_pipe(ctx, tc, inner_count)
        )
        return out.created_of("Pipe") or str(out.event("PipeCreated")["pipe"])

    def pipe_send(self, signer: HostIdentity, pipe_id: str, inner: int, data: bytes) -> int:
        check_signer(signer)
        self._amount(inner, "inner")
        payload = sui_tx.as_bytes(data, "data")
        pipe = self._owned(signer, pipe_id, "Pipe")
        out = self._execute(
            signer, "pipe::send", lambda ctx: sui_tx.pipe_send(ctx, pipe, inner, payload)
        )
        return int(out.event("PipeDataSent")["seq"])

    def pipe_sync(self, signer: HostIdentity, pipe_id: str, inner: int, acked: int) -> None:
        check_signer(signer)
        self._amount(inner, "inner")
        self._amount(acked, "acked")
        pipe = self._owned(signer, pipe_id, "Pipe")
        self._execute(signer, "pipe::sync", lambda ctx: sui_tx.pipe_sync(ctx, pipe, inner, acked))

    def destroy_pipe(self, signer: HostIdentity, pipe_id: str) -> None:
        check_signer(signer)
        pipe = self._owned(signer, pipe_id, "Pipe")
        self._execute(signer, "pipe::destroy", lambda ctx: sui_tx.destroy_pipe(ctx, pipe))

    # -- broadcast -------------------------------------------------------------------------

    def create_broadcast(
        self, signer: HostIdentity, channel: str | bytes, slot_price: int, slot_ms: int
    ) -> str:
        check_signer(signer)
        sui_tx.as_bytes(channel, "channel")
        self._amount(slot_price, "slot_price")
        self._amount(slot_ms, "slot_ms")
        out = self._execute(
            signer,
            "broadcast::create",
            lambda ctx: sui_tx.create_broadcast(ctx, channel, slot_price, slot_ms),
        )
        return out.created_of("Broadcast") or str(out.event("BroadcastCreated")["broadcast"])

    def _broadcast_call(
        self,
        signer: HostIdentity,
        broadcast_id: str,
        function: str,
        build: Callable[[TxContext, SharedRef], bytes],
        spend: int = 0,
    ) -> TxOutcome:
        b = self._shared(broadcast_id, "Broadcast")
        return self._execute(signer, f"broadcast::{function}", lambda ctx: build(ctx, b), spend)

    def broadcast_contribute(self, signer: HostIdentity, broadcast_id: str, amount: int) -> None:
        check_signer(signer)
        self._amount(amount, "the contribution")
        self._broadcast_call(
            signer,
            broadcast_id,
            "contribute",
            lambda ctx, b: sui_tx.broadcast_contribute(ctx, b, amount),
            spend=amount,
        )

    def broadcast_transmit(self, signer: HostIdentity, broadcast_id: str, data: bytes) -> int:
        check_signer(signer)
        payload = sui_tx.as_bytes(data, "data")
        out = self._broadcast_call(
            signer,
            broadcast_id,
            "transmit",
            lambda ctx, b: sui_tx.broadcast_transmit(ctx, b, payload),
        )
        return int(out.event("BroadcastTransmitted")["seq"])

    def broadcast_claim(self, signer: HostIdentity, broadcast_id: str) -> int:
        check_signer(signer)
        out = self._broadcast_call(signer, broadcast_id, "claim", sui_tx.broadcast_claim)
        return int(out.event("BroadcastClaimed")["amount"])

    def broadcast_cancel(self, signer: HostIdentity, broadcast_id: str) -> None:
        check_signer(signer)
        self._broadcast_call(signer, broadcast_id, "cancel", sui_tx.broadcast_cancel)

    def broadcast_withdraw(self, signer: HostIdentity, broadcast_id: str) -> int:
        check_signer(signer)
        out = self._broadcast_call(signer, broadcast_id, "withdraw", sui_tx.broadcast_withdraw)
        return int(out.event("ContributionRefunded")["amount"])

    # -- mailbox and response escrow --------------------------------------------------------

    def _response_escrow_object(self, escrow_id: str) -> NodeObject:
        obj = self._node.get_object(normalize_id(escrow_id))
        if short_type(obj.type, self._packages) != "dtp::response_escrow::ResponseEscrow":
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not a ResponseEscrow.")
        return obj

    def _response_escrow_ref(self, escrow_id: str) -> SharedRef:
        return self._shared_ref(
            escrow_id, "ResponseEscrow", lambda: self._response_escrow_object(escrow_id)
        )

    def pay(self, signer: HostIdentity, recipient: str, amount: int, memo: bytes = b"") -> None:
        check_signer(signer)
        self._amount(amount, "the amount")
        to = normalize_id(recipient, "recipient address")
        raw = sui_tx.as_bytes(memo, "memo")
        self._execute(signer, "payment::pay", lambda ctx: sui_tx.pay(ctx, to, amount, raw), amount)

    def mailbox_send(self, signer: HostIdentity, host_id: str, payload: bytes) -> None:
        check_signer(signer)
        raw = sui_tx.as_bytes(payload, "payload")
        host = self._shared(host_id, "Host")
        self._execute(signer, "mailbox::send", lambda ctx: sui_tx.mailbox_send(ctx, host, raw))

    def response_escrow_deposit(
        self,
        signer: HostIdentity,
        server: str,
        request_id: bytes,
        amount: int,
        deadline_ms: int,
        requester_public_key: bytes | None = None,
    ) -> str:
        check_signer(signer)
        # in LocalLedger's order and words (sui_tx names the server "server")
        normalize_id(server, "address")
        request = sui_tx.as_bytes(request_id, "request_id")
        key = _key(signer, requester_public_key, "requester_public_key")
        self._amount(deadline_ms, "the deadline")
        self._amount(amount, "the response fee")
        out = self._execute(
            signer,
            "response_escrow::deposit",
            lambda ctx: sui_tx.response_escrow_deposit(
                ctx, server, request, key, deadline_ms, amount
            ),
            spend=amount,
        )
        return str(out.event("ResponseFeeDeposited")["escrow"])

    def response_escrow_claim(
        self, signer: HostIdentity, escrow_id: str, response_hash: bytes, signature: bytes
    ) -> int:
        check_signer(signer)
        digest = sui_tx.as_bytes(response_hash, "response_hash")
        sig = sui_tx.as_bytes(signature, "signature")
        e = self._response_escrow_ref(escrow_id)
        out = self._execute(
            signer,
            "response_escrow::claim",
            lambda ctx: sui_tx.response_escrow_claim(ctx, e, digest, sig),
        )
        return int(out.event("ResponseFeeClaimed")["amount"])

    def response_escrow_deliver(self, signer: HostIdentity, escrow_id: str, response: bytes) -> int:
        check_signer(signer)
        raw = sui_tx.as_bytes(response, "response")
        e = self._response_escrow_ref(escrow_id)
        out = self._execute(
            signer,
            "response_escrow::deliver",
            lambda ctx: sui_tx.response_escrow_deliver(ctx, e, raw),
        )
        return int(out.event("ResponseDelivered")["amount"])

    def response_escrow_refund(self, signer: HostIdentity, escrow_id: str) -> int:
        check_signer(signer)
        e = self._response_escrow_ref(escrow_id)
        out = self._execute(
            signer, "response_escrow::refund", lambda ctx: sui_tx.response_escrow_refund(ctx, e)
        )
        return int(out.event("ResponseFeeRefunded")["amount"])

    def get_response_escrow(self, escrow_id: str) -> ResponseEscrow:
        obj = self._response_escrow_object(escrow_id)
        d = decode(RESPONSE_ESCROW_LAYOUT, obj.contents)
        return ResponseEscrow.from_fields(obj.object_id, obj.version, d)

    # -- payment models (docs/escrow.md §13-16) ---------------------------------------------

    def _model_object(self, object_id: str, struct: str) -> NodeObject:
        obj = self._node.get_object(normalize_id(object_id))
        if short_type(obj.type, self._packages) != f"dtp::{ECONOMICS_MODULES[struct]}::{struct}":
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not a {struct}.")
        return obj

    def _model_ref(self, object_id: str, struct: str) -> SharedRef:
        return self._shared_ref(object_id, struct, lambda: self._model_object(object_id, struct))

    def _model(self, object_id: str, struct: str) -> EconomicsObject:
        obj = self._model_object(object_id, struct)
        table = economics_table_id(struct, obj.contents)
        entries = self._node.table_entries(table) if table is not None else {}
        return decode_economics_object(struct, obj.version, obj.contents, entries)

    def _opened(self, out: TxOutcome) -> OpenedConnection:
        opened = out.event("ConnectionOpened")
        return OpenedConnection(str(opened["connection"]), str(opened["escrow"]))

    def create_subscription_offer(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        price_per_epoch: int,
        period_epochs: int = 1,
    ) -> str:
        check_signer(signer)
        self._check_port(port)
        self._amount(price_per_epoch, "price_per_epoch")
        self._amount(period_epochs, "period_epochs")
        host = self._shared(host_id, "Host")
        out = self._execute(
            signer,
            "subscription::create_offer",
            lambda ctx: sui_tx.create_subscription_offer(
                ctx, host, port, price_per_epoch, period_epochs
            ),
        )
        return str(out.event("SubscriptionOfferCreated")["offer"])

    def subscribe(self, signer: HostIdentity, offer_id: str, epochs: int) -> str:
        check_signer(signer)
        self._amount(epochs, "epochs")
        offer = self.get_subscription_offer(offer_id)
        ref = self._model_ref(offer_id, "SubscriptionOffer")
        payment = self._amount(epochs * offer.price_per_epoch, "the payment")
        out = self._execute(
            signer,
            "subscription::subscribe",
            lambda ctx: sui_tx.subscribe(ctx, ref, epochs, payment),
            spend=payment,
        )
        return str(out.event("Subscribed")["subscription"])

    def _sub_refs(self, subscription_id: str) -> tuple[Subscription, SharedRef, SharedRef]:
        sub = self.get_subscription(subscription_id)
        return (
            sub,
            self._model_ref(subscription_id, "Subscription"),
            self._model_ref(sub.offer, "SubscriptionOffer"),
        )

    def renew_subscription(self, signer: HostIdentity, subscription_id: str, epochs: int) -> int:
        check_signer(signer)
        self._amount(epochs, "epochs")
        sub, ref, offer = self._sub_refs(subscription_id)
        payment = self._amount(epochs * sub.price_per_epoch, "the payment")
        out = self._execute(
            signer,
            "subscription::renew",
            lambda ctx: sui_tx.renew_subscription(ctx, ref, offer, epochs, payment),
            spend=payment,
        )
        return int(out.event("SubscriptionRenewed")["expires_epoch"])

    def claim_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        check_signer(signer)
        _, ref, offer = self._sub_refs(subscription_id)
        out = self._execute(
            signer,
            "subscription::claim",
            lambda ctx: sui_tx.claim_subscription(ctx, ref, offer),
        )
        return int(out.event("SubscriptionClaimed")["amount"])

    def withdraw_subscription_offer(self, signer: HostIdentity, offer_id: str) -> None:
        check_signer(signer)
        ref = self._model_ref(offer_id, "SubscriptionOffer")
        self._execute(
            signer,
            "subscription::withdraw_offer",
            lambda ctx: sui_tx.withdraw_subscription_offer(ctx, ref),
        )

    def refund_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        check_signer(signer)
        _, ref, offer = self._sub_refs(subscription_id)
        out = self._execute(
            signer,
            "subscription::refund",
            lambda ctx: sui_tx.refund_subscription(ctx, ref, offer),
        )
        return int(out.event("SubscriptionRefunded")["amount"])

    def open_subscribed_connection(
        self,
        signer: HostIdentity,
        subscription_id: str,
        cap_id: str,
        deposit: int = 0,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
    ) -> OpenedConnection:
        check_signer(signer)
        self._amount(deposit, "the deposit")
        key = _key(signer, client_public_key, "client_public_key")
        sub, ref, offer = self._sub_refs(subscription_id)
        if host_id is None:
            host_id = self.get_subscription_offer(sub.offer).host
        host = self._shared(host_id, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "subscription::open_connection",
            lambda ctx: sui_tx.open_subscribed_connection(ctx, ref, offer, host, cap, deposit, key),
            spend=deposit,
        )
        return self._opened(out)

    def create_sponsor_pool(
        self, signer: HostIdentity, host_id: str, port: int, share_bps: int
    ) -> str:
        check_signer(signer)
        self._check_port(port)
        self._amount(share_bps, "share_bps")
        host = self._shared(host_id, "Host")
        out = self._execute(
            signer,
            "sponsor::create",
            lambda ctx: sui_tx.create_sponsor_pool(ctx, host, port, share_bps),
        )
        return str(out.event("SponsorPoolCreated")["pool"])

    def fund_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        check_signer(signer)
        self._amount(amount, "the amount")
        ref = self._model_ref(pool_id, "SponsorPool")
        self._execute(
            signer,
            "sponsor::fund",
            lambda ctx: sui_tx.fund_sponsor_pool(ctx, ref, amount),
            spend=amount,
        )

    def withdraw_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        check_signer(signer)
        self._amount(amount, "the amount")
        ref = self._model_ref(pool_id, "SponsorPool")
        self._execute(
            signer,
            "sponsor::withdraw",
            lambda ctx: sui_tx.withdraw_sponsor_pool(ctx, ref, amount),
        )

    def open_sponsored_connection(
        self,
        signer: HostIdentity,
        pool_id: str,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
    ) -> OpenedConnection:
        check_signer(signer)
        self._amount(deposit, "the deposit")
        key = _key(signer, client_public_key, "client_public_key")
        ref = self._model_ref(pool_id, "SponsorPool")
        host = self._shared(host_id or self.get_sponsor_pool(pool_id).host, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "sponsor::open_connection",
            lambda ctx: sui_tx.open_sponsored_connection(ctx, ref, host, cap, deposit, key),
            spend=deposit,
        )
        return self._opened(out)

    def reimburse(
        self,
        signer: HostIdentity,
        pool_id: str,
        connection_id: str,
        escrow_id: str | None = None,
    ) -> int:
        check_signer(signer)
        ref = self._model_ref(pool_id, "SponsorPool")
        tc = self.get_connection(connection_id)
        tc_ref = self._shared(tc.id, "TransportControl")
        escrow = self._shared(escrow_id or tc.escrow, "Escrow")
        out = self._execute(
            signer,
            "sponsor::reimburse",
            lambda ctx: sui_tx.reimburse(ctx, ref, tc_ref, escrow),
        )
        return int(out.event("SponsorReimbursed")["amount"])

    def create_ticket_sale(
        self,
        signer: HostIdentity,
        title: str | bytes,
        ticket_price: int,
        min_tickets: int,
        max_tickets: int,
        deadline_ms: int,
    ) -> str:
        check_signer(signer)
        sui_tx.as_bytes(title, "title")
        for value, what in (
            (ticket_price, "ticket_price"),
            (min_tickets, "min_tickets"),
            (max_tickets, "max_tickets"),
            (deadline_ms, "deadline_ms"),
        ):
            self._amount(value, what)
        out = self._execute(
            signer,
            "tickets::create",
            lambda ctx: sui_tx.create_ticket_sale(
                ctx, title, ticket_price, min_tickets, max_tickets, deadline_ms
            ),
        )
        return str(out.event("TicketSaleCreated")["sale"])

    def create_ticketed_broadcast(
        self,
        signer: HostIdentity,
        sale_id: str,
        channel: str | bytes,
        slot_price: int,
        slot_ms: int,
    ) -> str:
        check_signer(signer)
        sui_tx.as_bytes(channel, "channel")
        self._amount(slot_price, "slot_price")
        self._amount(slot_ms, "slot_ms")
        sale = self._model_ref(sale_id, "TicketSale")
        out = self._execute(
            signer,
            "broadcast::create_ticketed",
            lambda ctx: sui_tx.create_ticketed_broadcast(ctx, sale, channel, slot_price, slot_ms),
        )
        return out.created_of("Broadcast") or str(out.event("BroadcastCreated")["broadcast"])

    def buy_tickets(self, signer: HostIdentity, sale_id: str, count: int) -> None:
        check_signer(signer)
        self._amount(count, "count")
        sale = self.get_ticket_sale(sale_id)
        ref = self._model_ref(sale_id, "TicketSale")
        payment = self._amount(count * sale.ticket_price, "the payment")
        self._execute(
            signer,
            "tickets::buy",
            lambda ctx: sui_tx.buy_tickets(ctx, ref, count, payment),
            spend=payment,
        )

    def _sale_call(
        self, signer: HostIdentity, sale_id: str, fn: str, build: Callable[..., bytes]
    ) -> TxOutcome:
        ref = self._model_ref(sale_id, "TicketSale")
        return self._execute(signer, f"tickets::{fn}", lambda ctx: build(ctx, ref))

    def go_on_air(self, signer: HostIdentity, sale_id: str) -> int:
        check_signer(signer)
        out = self._sale_call(signer, sale_id, "go_on_air", sui_tx.go_on_air)
        return int(out.event("TicketedEventOnAir")["revenue"])

    def cancel_ticket_sale(self, signer: HostIdentity, sale_id: str) -> None:
        check_signer(signer)
        self._sale_call(signer, sale_id, "cancel", sui_tx.cancel_ticket_sale)

    def refund_tickets(self, signer: HostIdentity, sale_id: str) -> int:
        check_signer(signer)
        out = self._sale_call(signer, sale_id, "refund", sui_tx.refund_tickets)
        return int(out.event("TicketsRefunded")["amount"])

    def create_retention_terms(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        check_signer(signer)
        self._check_port(port)
        self._amount(retention_ms, "retention_ms")
        self._amount(storage_price_per_byte, "storage_price_per_byte")
        host = self._shared(host_id, "Host")
        out = self._execute(
            signer,
            "retention::create_terms",
            lambda ctx: sui_tx.create_retention_terms(
                ctx, host, port, retention_ms, storage_price_per_byte
            ),
        )
        return str(out.event("RetentionTermsCreated")["terms"])

    def send_retained(
        self, signer: HostIdentity, pipe_id: str, terms_id: str, inner: int, data: bytes
    ) -> str:
        check_signer(signer)
        # before len(): the deposit is for the bytes sent (len() of an array('I') counts
        # items, and retention::send aborts EWrongDeposit unless deposit == bytes * price)
        payload = sui_tx.as_bytes(data, "data")
        self._amount(inner, "inner")
        pipe = self.get_pipe(pipe_id)
        pipe_ref = self._owned(signer, pipe_id, "Pipe")
        tc = self._shared(pipe.connection, "TransportControl")
        terms = self.get_retention_terms(terms_id)
        terms_ref = self._model_ref(terms_id, "RetentionTerms")
        deposit = self._amount(terms.deposit_for(len(payload)), "the storage deposit")
        first = [pipe_ref]

        def build(ctx: TxContext) -> bytes:
            # sent again after a congestion cancellation, the pipe is at a new version (a
            # cancelled transaction still bumps its owned inputs): read it again
            ref = first.pop() if first else self._owned(signer, pipe_id, "Pipe")
            return sui_tx.send_retained(ctx, ref, tc, terms_ref, inner, payload, deposit)

        out = self._execute(signer, "retention::send", build, spend=deposit)
        return str(out.event("RecordRetained")["record"])

    def confirm_consumed(self, signer: HostIdentity, record_id: str) -> None:
        check_signer(signer)
        ref = self._model_ref(record_id, "RetainedRecord")
        self._execute(signer, "retention::confirm", lambda ctx: sui_tx.confirm_consumed(ctx, ref))

    def delete_retained(self, signer: HostIdentity, record_id: str) -> int:
        check_signer(signer)
        ref = self._model_ref(record_id, "RetainedRecord")
        out = self._execute(
            signer, "retention::delete", lambda ctx: sui_tx.delete_retained(ctx, ref)
        )
        return int(out.event("RecordDeleted")["refunded"])

    # -- reading ---------------------------------------------------------------------------

    def get_object(self, object_id: str) -> ChainObject:
        return self._typed(object_id, None)

    def get_host(self, host_id: str) -> Host:
        return self._get(host_id, "Host", Host)

    def get_cap(self, cap_id: str) -> SpendingCap:
        return self._get(cap_id, "SpendingCap", SpendingCap)

    def get_connection(self, connection_id: str) -> TransportControl:
        return self._get(connection_id, "TransportControl", TransportControl)

    def get_escrow(self, escrow_id: str) -> Escrow:
        return self._get(escrow_id, "Escrow", Escrow)

    def get_pipe(self, pipe_id: str) -> Pipe:
        return self._get(pipe_id, "Pipe", Pipe)

    def get_broadcast(self, broadcast_id: str) -> Broadcast:
        return self._get(broadcast_id, "Broadcast", Broadcast)

    def is_on_air(self, broadcast_id: str) -> bool:
        """``broadcast::is_on_air`` at the network clock."""
        return self.get_broadcast(broadcast_id).is_on_air(self.clock_ms())

    def balance(self, address: str) -> int:
        return self._node.balance(normalize_id(address, "address"))

    def gas_coin_count(self, address: str) -> int | None:
        return len(self._node.gas_coins(normalize_id(address, "address")))

    def clock_ms(self) -> int:
        clock = self._node.get_object(sui_tx.CLOCK_ID)
        if len(clock.contents) < 40:
            raise BcsDecodeError("The Clock object's contents are too short.")
        return int.from_bytes(clock.contents[32:40], "little")

    def epoch(self) -> int:
        return self._node.epoch_info()[0]

    # -- events ----------------------------------------------------------------------------

    @staticmethod
    def _cursor_bytes(cursor: str | None) -> bytes | None:
        if cursor is None or cursor == "":
            return None
        try:
            return bytes.fromhex(cursor)
        except (ValueError, TypeError):  # TypeError: not a str at all
            raise InvalidArgument(f"{cursor!r} is not a SuiLedger event cursor.") from None

    def _timestamp(self, checkpoint: int | None) -> int:
        if checkpoint is None:
            return 0
        cached = self._checkpoint_ms.get(checkpoint)
        if cached is None:
            cached = self._node.checkpoint_timestamp_ms(checkpoint)
            # a reader of events runs for days on a chain making checkpoints every few
            # hundred ms: keep the latest ones only (events come in checkpoint order)
            with self._checkpoint_lock:  # threads share it
                while len(self._checkpoint_ms) >= _CHECKPOINT_CACHE:
                    del self._checkpoint_ms[next(iter(self._checkpoint_ms))]
                self._checkpoint_ms[checkpoint] = cached
        return cached

    def events(
        self,
        cursor: str | None = None,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        read = self.read_events(cursor, filter, limit)
        return read.events, read.cursor

    def read_events(
        self,
        cursor: str | None = None,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> EventRead:
        """At the end when the node ended the stream at its indexed tip
        (``QUERY_END_REASON_LEDGER_TIP``), or, from a node that gives no reason, when the
        cursor did not move."""
        after = self._cursor_bytes(cursor)
        # as LocalLedger checks them (a str limit raised TypeError, a str filter
        # AttributeError at the first event)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise InvalidArgument(f"limit must be an integer, got {limit!r}.")
        if filter is not None and not isinstance(filter, EventFilter):
            raise InvalidArgument(f"filter must be an EventFilter or None, got {filter!r}.")
        if limit <= 0:
            return EventRead([], cursor, False)
        page = self._node.scan_events(
            self.config.type_package or self.package, after, limit, **narrowing(filter)
        )
        out: list[Event] = []
        for ev, position in page.frames:
            event = event_from_proto(ev, self._packages, position.hex())
            if event is None or (filter is not None and not filter.matches(event)):
                continue
            # the timestamp is a GetCheckpoint each: read for the events returned only (the
            # filter looks at no timestamp), not for every event the filter drops
            out.append(dataclasses.replace(event, timestamp_ms=self._timestamp(ev.checkpoint)))
        reasons = sui_prot.QueryEndReason
        at_end = page.end == reasons.LEDGER_TIP or (
            page.end in (None, reasons.UNKNOWN) and page.last == after
        )
        return EventRead(out, page.last.hex() if page.last else cursor, at_end)

    def head_cursor(self) -> str | None:
        """The cursor after the newest event now on the network (None: no events yet).

        The generic rule (read until the cursor stops moving) may never end on a live
        network: a ``ListEvents`` watermark also advances over the checkpoints that hold
        no dtp event (sui.rpc.v2's scan-progress frames), so each read to the tip can
        return a later cursor than the last as long as checkpoints are made. The read
        here ends when the node says it reached its indexed tip
        (``QUERY_END_REASON_LEDGER_TIP``), or, from a node that gives no reason, when the
        cursor stops moving; the events read are not decoded. A watermark that goes back
        to a cursor already passed (watermarks never regress) is
        :class:`MalformedResponse`: the read would otherwise go round for ever."""
        package = self.config.type_package or self.package
        after: bytes | None = None
        passed: set[bytes] = set()
        while True:
            page = self._node.scan_events(package, after, 1000)
            last = page.last or after
            if page.end == sui_prot.QueryEndReason.LEDGER_TIP or last == after:
                return last.hex() if last else None
            assert last is not None  # (it differs from after)
            if last in passed:
                raise MalformedResponse(
                    f"Sui node {self.config.rpc} sent a ListEvents watermark that went back "
                    "to a cursor it had already passed: the newest event cannot be found."
                )
            passed.add(last)
            after = last

    def wait_events(
        self,
        cursor: str | None,
        timeout: float,
        filter: EventFilter | None = None,
        limit: int = 1000,
    ) -> tuple[list[Event], str | None]:
        """Polls :meth:`events` every ``config.poll_interval`` seconds until something
        matches or ``timeout`` passes."""
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout != timeout:
            raise InvalidArgument(f"timeout must be a number of seconds, got {timeout!r}.")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            events, cursor = self.events(cursor, filter, limit)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events, cursor
            time.sleep(min(remaining, self.config.poll_interval))


# Object types this ledger reads, for documentation and tests.
OBJECT_TYPES: Final = {name: f"dtp::{OBJECT_MODULES[name]}::{name}" for name in OBJECT_LAYOUTS}
