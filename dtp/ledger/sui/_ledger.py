"""SuiLedger's core (:class:`SuiLedgerCore`): object references read from the node, gas
leases, executing a transaction (retried on stale inputs and congestion), reads and events."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot

from dtp.errors import ChainError, InvalidArgument, ObjectNotFound
from dtp.identity._zklogin import NodeVerifier
from dtp.ledger._economics import ECONOMICS_MODULES, EconomicsObject
from dtp.ledger._gas import EndGas, GasSpent
from dtp.ledger._move_call import Id, MoveCall
from dtp.ledger._objects import (
    ChainObject,
    Event,
    EventFilter,
    EventRead,
    OpenedConnection,
    Service,
    Settlement,
    check_firewall_list,
    check_port,
    normalize_id,
    owned_by_another,
    service_from_fields,
)
from dtp.ledger.interface import TypedReads
from dtp.ledger.receipt import Receipt
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import (
    LedgerUnavailable,
    MalformedResponse,
    NodeObject,
    SharedObjectCongestion,
    SuiNode,
    narrowing,
)
from dtp.ledger.sui._codec import (
    OBJECT_LAYOUTS,
    OBJECT_MODULES,
    BcsDecodeError,
    address_field_id,
    decode_object,
    decode_service,
    decode_table_values,
    host_tables,
    port_field_id,
    table_id,
    table_key_length,
)
from dtp.ledger.sui._config import SuiConfig
from dtp.ledger.sui._economics import decode_economics_object, economics_table_id
from dtp.ledger.sui._effects import (
    TxOutcome,
    cancelled_for_congestion,
    event_from_proto,
    gas_used,
    parse_executed,
    short_type,
)
from dtp.ledger.sui._gas import (
    SETTLE_BATCH,
    GasBook,
    GasPool,
    Lease,
    PriceCache,
    settle_from_effects,
    split_transaction,
)
from dtp.ledger.sui._tx import OwnedRef, SharedRef, TxContext

if TYPE_CHECKING:
    from dtp.identity._zklogin import ZkLoginCheck
    from dtp.identity.keys import HostIdentity


# the logger of the package, named in docs/architecture.md, not of this module
logger = logging.getLogger("dtp.ledger.sui")

#: Checkpoint timestamps a SuiLedger remembers (for the events it reads).
_CHECKPOINT_CACHE: Final = 1024
#: Shared objects whose type and initial shared version a SuiLedger remembers.
_SHARED_CACHE: Final = 4096
#: The type of a firewall list's entry: a dynamic field of the list's Table (the
#: framework's address in full or short, spaces left out).
_FIREWALL_ENTRY_TYPE: Final = re.compile(r"0x0{0,63}2::dynamic_field::Field<address,bool>")
#: The type of a service's entry: a dynamic field of the Host's services Table, its value
#: a ``host::Service`` of a package (checked to be this ledger's).
_SERVICE_ENTRY_TYPE: Final = re.compile(
    r"0x0{0,63}2::dynamic_field::Field<u16,(0x[0-9a-fA-F]{1,64})::host::Service>"
)
#: Times a transaction cancelled by congestion control is sent again, after a backoff
#: from _CONGESTION_DELAY s doubling to _CONGESTION_DELAY_CAP s (jittered).
_CONGESTION_RETRIES: Final = 5
_CONGESTION_DELAY: Final = 0.25
_CONGESTION_DELAY_CAP: Final = 4.0
T = TypeVar("T")


def _host_tables(contents: bytes) -> tuple[str, str, str]:
    """The UIDs of a Host's allow, deny and services Tables."""
    allow, deny = host_tables(contents)
    services = table_id("Host", contents)
    assert services is not None
    return allow, deny, services


#: Each Move call's row of MOVE_CALLS, by its module and function.
_BUILDER_OF: Final = {(row[0], row[1]): name for name, row in sui_tx.MOVE_CALLS.items()}


def _builder_order(builder: str, values: Sequence[Any]) -> list[Any]:
    """``values``, given in the order the Move call takes them, in the order its builder
    takes them: its row's ``order`` (where the builder takes the deposit before the
    key) names, for each of the call's arguments, its place among the builder's."""
    order = getattr(sui_tx.MOVE_CALLS[builder], "order", None)
    if order is None:
        return list(values)
    out: list[Any] = [None] * len(values)
    for place, value in zip(order, values, strict=True):
        out[place] = value
    return out


# -- the ledger -----------------------------------------------------------------------------------


#: How Sui refuses, before executing it, a transaction naming an owned object at a
#: version that is not its current one (``ObjectVersionUnavailableForConsumption``).
_STALE_INPUT: Final = "is not available for consumption"

#: The shared objects beside the core and the payment models, by struct: their modules
#: (read by :meth:`SuiLedgerCore._app_object`).
_APP_MODULES: Final = {"ResponseEscrow": "response_escrow", "Registry": "registry"}


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


class SuiLedgerCore(TypedReads):
    """SuiLedger's core: reading objects from the node, gas, building, signing and
    executing a transaction, and the reads and events (the calls are mixins)."""

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
        #: The UIDs of each Host's allow, deny and services Tables, which never change
        #: either.
        self._host_tables: dict[str, tuple[str, str, str]] = {}
        #: The UID of each SponsorLane's pledges Table, which never changes.
        self._pledge_tables: dict[str, str] = {}
        self._shared_lock = threading.Lock()
        self._pools: dict[str, GasPool] = {}
        self._pools_lock = threading.Lock()
        self._price = PriceCache(lambda: self._node.epoch_info()[1])
        self._local = threading.local()
        #: What this ledger's transactions paid in gas, and what an end costs
        self._gas_book = GasBook()
        self._end_gas: EndGas | None = None  # (the last estimate: the node may be away)

    @property
    def last_outcome(self) -> TxOutcome | None:
        """The outcome of the last transaction this ledger executed for the calling thread
        (threads sharing a ledger each see their own)."""
        outcome: TxOutcome | None = getattr(self._local, "outcome", None)
        return outcome

    @property
    def default_signer(self) -> HostIdentity | None:
        """The identity of ``DTP_SUI_KEY``, if it was set."""
        return self.config.key

    @property
    def package_id(self) -> str:
        """The package's original ID: ``SuiConfig.type_package`` after an upgrade, else
        ``SuiConfig.package`` (what receipts name, docs/escrow.md §6)."""
        return self.config.type_package or self.config.package

    def verify_zklogin(self, check: ZkLoginCheck) -> None:
        """Have this ledger's node confirm a zkLogin identity proof: its epoch, then its
        ``VerifySignature`` against the issuers' on-chain keys (dtp.identity._zklogin)."""
        NodeVerifier(self._node).verify_zklogin(check)

    def close(self) -> None:
        self._node.close()

    def __repr__(self) -> str:
        return f"SuiLedger(rpc={self.config.rpc!r}, package={self.package!r})"

    # -- objects ---------------------------------------------------------------------------

    def _fetch(self, object_id: str, what: str) -> tuple[NodeObject, str | None]:
        """The object and its short type (None: not of this package's). A missing one is
        named as LocalLedger names it (a node's NOT_FOUND says "Object 0x… not found",
        which read as a failed call rather than a wrong ID)."""
        object_id = normalize_id(object_id)
        try:
            obj = self._node.get_object(object_id)
        except ObjectNotFound:
            raise ObjectNotFound(f"No {what} with ID {object_id} exists on this network.") from None
        return obj, short_type(obj.type, self._packages)

    def _load(self, object_id: str, struct: str | None) -> tuple[NodeObject, str]:
        obj, short = self._fetch(object_id, struct or "object")
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
        """A shared object's reference: a payment model's, a response escrow's, a
        registry's or a core object's, each read its own way the first time."""

        def load() -> NodeObject:
            if struct in ECONOMICS_MODULES:
                return self._model_object(object_id, struct)
            if struct in _APP_MODULES:
                return self._app_object(object_id, struct)
            return self._load(object_id, struct)[0]

        return self._shared_ref(object_id, struct, load)

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
            raise owned_by_another(struct, obj.object_id, obj.owner, signer.sui_address)
        return obj.owned_ref()

    def _typed(self, object_id: str, struct: str | None) -> ChainObject:
        obj, name = self._load(object_id, struct)
        entries: dict[str, Any] = {}
        table = table_id(name, obj.contents)
        if table is not None:
            fields = self._node.table_fields(table, table_key_length(name))
            entries = decode_table_values(name, fields)
        try:
            typed = decode_object(name, obj.version, obj.contents, entries)
            if name == "Host":
                self._remember_tables(obj.object_id, _host_tables(obj.contents))
            return typed
        except BcsDecodeError as exc:
            raise BcsDecodeError(
                f"{name} {obj.object_id} does not decode ({exc}); is DTP_SUI_PACKAGE the "
                "package these objects belong to?"
            ) from None

    def _get(self, object_id: str, struct: str, cls: type[T]) -> T:
        obj = self._typed(object_id, struct)
        assert isinstance(obj, cls)
        return obj

    # -- the Host's Tables: the firewall's lists and the services, read entry by entry -------

    def _remember_tables(self, host_id: str, tables: tuple[str, str, str]) -> None:
        self._remember(self._host_tables, host_id, tables)

    def _remember(self, cache: dict[str, Any], key: str, value: Any) -> None:
        """Keep ``value`` of an object that never changes in ``cache``, the oldest
        dropped past :data:`_SHARED_CACHE`."""
        with self._shared_lock:
            while len(cache) >= _SHARED_CACHE:
                del cache[next(iter(cache))]
            cache[key] = value

    def _firewall_table(self, host_id: str, which: str) -> str:
        """The UID of the Host's ``which`` list's Table (``"services"``: its services'):
        remembered from any read of the Host (it never changes), or read with the Host
        once."""
        if which != "services":
            check_firewall_list(which)
        host_id = normalize_id(host_id, "host ID")
        with self._shared_lock:
            tables = self._host_tables.get(host_id)
        if tables is None:
            obj, _ = self._load(host_id, "Host")
            try:
                tables = _host_tables(obj.contents)
            except BcsDecodeError as exc:
                raise BcsDecodeError(f"Host {host_id} does not decode ({exc}).") from None
            self._remember_tables(host_id, tables)
        return tables[("allow", "deny", "services").index(which)]

    def _listed(self, host_id: str, which: str, client: str) -> bool:
        """Whether ``client`` is on the Host's ``which`` list: one GetObject of the entry's
        dynamic field, whose ID is derived from the Table's and the address (absent: not
        listed), whatever the list's length."""
        client = normalize_id(client, "address")
        field_id = address_field_id(self._firewall_table(host_id, which), client)
        try:
            entry = self._node.get_object(field_id)
        except ObjectNotFound:
            return False
        # Field<address, bool> { id, name: the address, value: true }
        expected = bytes.fromhex(field_id[2:] + client[2:] + "01")
        entry_type = entry.type.replace(" ", "")
        if not _FIREWALL_ENTRY_TYPE.fullmatch(entry_type) or entry.contents != expected:
            raise MalformedResponse(
                f"The node sent {entry.type} {field_id} as the {which} list's entry of "
                f"{client} on host {host_id}: not a Field<address, bool> of it."
            )
        return True

    def is_allowed(self, host_id: str, client: str) -> bool:
        return self._listed(host_id, "allow", client)

    def is_denied(self, host_id: str, client: str) -> bool:
        return self._listed(host_id, "deny", client)

    def firewall_list(self, host_id: str, which: str) -> tuple[str, ...]:
        return tuple(sorted(set(self._node.table_keys(self._firewall_table(host_id, which)))))

    def get_service(self, host_id: str, port: int) -> Service | None:
        """One GetObject of the service's dynamic field, whose ID is derived from the
        services Table's and the port (absent: no service on the port), whatever the
        number of the Host's services."""
        # in LocalLedger's words, so both ledgers refuse a port alike (sui_tx.encode_u16
        # says it in its own)
        check_port(port)
        field_id = port_field_id(self._firewall_table(host_id, "services"), port)
        try:
            entry = self._node.get_object(field_id)
        except ObjectNotFound:
            return None
        # Field<u16, Service> { id, name: the port, value: the Service }
        match = _SERVICE_ENTRY_TYPE.fullmatch(entry.type.replace(" ", ""))
        head = bytes.fromhex(field_id[2:]) + port.to_bytes(2, "little")
        if (
            match is None
            or normalize_id(match.group(1), "package ID") not in self._packages
            or not entry.contents.startswith(head)
        ):
            raise MalformedResponse(
                f"The node sent {entry.type} {field_id} as the service on port {port} of "
                f"host {host_id}: not a Field<u16, host::Service> of it."
            )
        try:
            return service_from_fields(decode_service(entry.contents[len(head) :]))
        except (BcsDecodeError, ValueError, KeyError, TypeError) as exc:
            raise BcsDecodeError(
                f"The service on port {port} of host {host_id} does not decode ({exc})."
            ) from None

    # -- executing -------------------------------------------------------------------------

    def _pool(self, address: str) -> GasPool:
        with self._pools_lock:
            pool = self._pools.get(address)
            if pool is None:
                pool = GasPool(address, lambda: self._node.gas_coins(address))
                self._pools[address] = pool
            return pool

    def gas_spent(self, address: str) -> GasSpent:
        """The gas ``address`` paid through this ledger so far, by kind of transaction
        (failed and cancelled ones included: Sui charges them)."""
        return self._gas_book.spent(normalize_id(address, "address"))

    def end_gas(self) -> EndGas:
        """What each transaction of a connection's end costs: the median of the last
        ones this ledger paid for, else the model at the network's gas price
        (:class:`~dtp.ledger.sui._gas.GasBook`). The price is read from the node at most
        once a minute; when it cannot be, the last estimate stands (a ChainError when
        there is none)."""
        try:
            estimate = self._gas_book.end_gas(self._price.get())
        except ChainError:
            if self._end_gas is None:
                raise
            return self._end_gas
        self._end_gas = estimate
        return estimate

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
                if what != SETTLE_BATCH:  # (its sample is per connection: settle_batch)
                    self._gas_book.sample(what, outcome.gas_cost)
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
        # paid whatever the outcome (a failed or cancelled transaction is charged too)
        with contextlib.suppress(Exception):  # (effects a node garbled: settled below)
            self._gas_book.record(sender, what, gas_used(executed.effects))
        settle_from_effects(pool, lease, executed, splits, split)
        return executed

    def _model_object(self, object_id: str, struct: str) -> NodeObject:
        obj, short = self._fetch(object_id, struct)
        if short != f"dtp::{ECONOMICS_MODULES[struct]}::{struct}":
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not a {struct}.")
        return obj

    def _model(self, object_id: str, struct: str) -> EconomicsObject:
        obj = self._model_object(object_id, struct)
        table = economics_table_id(struct, obj.contents)
        entries = self._node.table_entries(table) if table is not None else {}
        return decode_economics_object(struct, obj.version, obj.contents, entries)

    def _opened(self, out: TxOutcome) -> OpenedConnection:
        # (the event carries the SLA and deposit too, as LocalLedger reports them)
        return OpenedConnection.from_event(out.event("ConnectionOpened").fields)

    def _app_object(self, object_id: str, struct: str) -> NodeObject:
        """The ResponseEscrow or Registry ``object_id`` (:data:`_APP_MODULES`)."""
        obj = self._node.get_object(normalize_id(object_id))
        if short_type(obj.type, self._packages) != f"dtp::{_APP_MODULES[struct]}::{struct}":
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not a {struct}.")
        return obj

    # -- a ledger method's Move call, sent --------------------------------------------------

    def _ref(
        self, signer: HostIdentity, arg: Id, kind: tuple[str, str]
    ) -> SharedRef | OwnedRef | str:
        """The reference of an ID argument of ``kind`` (its column of MOVE_CALLS: the
        kind and the struct): owned by the signer, or shared; an address is its text."""
        match kind:
            case ("owned", struct):
                return self._owned(signer, arg.value, struct)
            case ("mut" | "imm", struct):
                return self._shared(arg.value, struct)
        return arg.value

    def _move(self, signer: HostIdentity, call: MoveCall) -> Any:
        """Send ``call`` as the transaction of its row of MOVE_CALLS, its objects by
        reference, ``call.spend`` split off the gas coin; returns what ``call.result``
        names (the created object of ``call.created`` first, when there is one)."""
        builder = _BUILDER_OF[call.module, call.function]
        kinds = [kind for kind in sui_tx.MOVE_CALLS[builder][2] if kind[0] != "clock"]
        refs = {
            i: (arg, kind)
            for i, (arg, kind) in enumerate(zip(call.args, kinds, strict=True))
            if isinstance(arg, Id)
        }
        values = list(call.args)
        for i, (arg, kind) in refs.items():
            values[i] = self._ref(signer, arg, kind)
        again = False

        def build(ctx: TxContext) -> bytes:
            # sent again after a congestion cancellation, an owned object is at a new
            # version (a cancelled transaction still bumps its owned inputs): read again
            nonlocal again
            if again:
                for i, (arg, kind) in refs.items():
                    if kind[0] == "owned":
                        values[i] = self._ref(signer, arg, kind)
            again = True
            tx = sui_tx._Tx(ctx)
            sui_tx._add_call(tx, builder, *_builder_order(builder, values))
            return tx.finish()

        out = self._execute(signer, f"{call.module}::{call.function}", build, call.spend)
        if call.result == "ConnectionOpened":
            return self._opened(out)
        if call.result == "ConnectionSettled":
            settled = out.event("ConnectionSettled")
            receipt = any(isinstance(a, Receipt) for a in call.args)
            paid = int(out.event("ReceiptClaimed")["paid"]) if receipt else 0
            return Settlement.from_event(settled, paid)
        created = out.created_of(call.created) if call.created else None
        if created is not None or not call.result:
            return created
        event, field = call.result.split(".")
        return out.event(event)[field]

    # -- reading ---------------------------------------------------------------------------

    def get_object(self, object_id: str) -> ChainObject:
        return self._typed(object_id, None)

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
    def _event_position(cursor: str | None) -> bytes | None:
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

    def _read_after(
        self, after: bytes | None, cursor: str | None, filter: EventFilter | None, limit: int
    ) -> EventRead:
        """At the end when the node ended the stream at its indexed tip
        (``QUERY_END_REASON_LEDGER_TIP``), or, from a node that gives no reason, when the
        cursor did not move."""
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

    def _await_events(self, remaining: float) -> None:
        """Polls: :meth:`events` is read again every ``config.poll_interval`` seconds."""
        time.sleep(min(remaining, self.config.poll_interval))


# Object types this ledger reads, for documentation and tests.
OBJECT_TYPES: Final = {name: f"dtp::{OBJECT_MODULES[name]}::{name}" for name in OBJECT_LAYOUTS}
