"""Checking and executing one transaction as a Sui full node does, with LocalLedger's own
rule code for the Move calls.

:func:`check` is what a node does before a transaction is executed (it refuses with a
gRPC status and the node's words): the bytes decode, the one signature is the sender's
(Sui intent signing), the gas coins are the sender's at their current versions and cover
the budget, the budget and price are within bounds, owned inputs are the sender's at
their current versions, shared inputs are shared since the versions given.

:func:`execute` then runs it. The command list is mapped onto
:data:`dtp.ledger.local.rules.FUNCTIONS` generically: ``SplitCoins(GasCoin, [a])``
results are ``coin`` arguments, a ``host::new_sla`` (or
``new_sla_with_half_close_timeout``) result is the four ``u64`` of an Sla the next call
takes, object inputs are ``obj:<Struct>`` IDs, the Clock is passed implicitly, pure
inputs decode per the schema's kind. The rules run inside one LocalLedger transaction
(:meth:`LocalLedger.apply_verified`); so does the gas charge. A failed transaction (Move
abort, bad argument, out of gas) still charges gas and bumps the versions of its
mutable inputs, as on Sui; its other effects are rolled back.

Versions are Lamport timestamps: every object a transaction writes (created, mutated,
or a mutable input it left unchanged) gets one version, greater than all of its inputs'.
Gas: ``computation_cost`` = gas price x 1000 units per command; ``storage_cost`` = 76 MIST
x 100 units per byte of every object written (contents + 100 bytes of header);
``storage_rebate`` = 99% of what the objects it rewrites or deletes paid when written.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
from grpclib.const import Status

from dtp.errors import MOVE_ERRORS, ChainError, InvalidArgument
from dtp.identity.keys import InvalidSignature, verify_transaction
from dtp.ledger.local import rules
from dtp.ledger.local._tx import Address, TxValue, base58, tx_digest
from dtp.testing.sui_node._objects import (
    CLOCK_ID,
    COIN_TYPE,
    MOVE_STDLIB,
    SUI_FRAMEWORK,
    coin_contents,
    event_contents,
    move_type,
    object_contents,
    tables,
)
from dtp.testing.sui_node._ptb import Arg, ObjectInput, ParsedTx, Refusal, decode_pure, parse_tx
from dtp.testing.sui_node._state import NodeState, ObjectRow

__all__ = ["Checked", "check", "check_signature", "check_unsigned", "execute", "gas_rates"]

#: Computation units charged per command (Sui's minimum per transaction is 1000).
UNITS_PER_COMMAND: Final = 1_000
#: Sui's storage gas price (MIST per storage unit) and units per byte stored.
STORAGE_PRICE: Final = 76
STORAGE_UNITS_PER_BYTE: Final = 100
#: Bytes an object takes besides its contents (type, owner, previous transaction…).
OBJECT_OVERHEAD: Final = 100
#: Share of a storage rebate that is paid back (Sui's ``storage_rebate_rate``).
REBATE_BPS: Final = 9_900
#: Sui's ``max_tx_gas`` (50 SUI) and the minimum budget, in units of the gas price.
MAX_BUDGET: Final = 50_000_000_000
MIN_BUDGET_UNITS: Final = 1_000
#: The Move functions the node knows that return a value rather than being the call:
#: struct constructors, with the arguments they take and the rule that makes the values
#: their result stands for (which aborts as the Move constructor does).
_U64S: Final = ("u64", "u64", "u64", "u64")
CONSTRUCTORS: Final[dict[tuple[str, str], tuple[tuple[str, ...], Callable[..., Any]]]] = {
    ("host", "new_sla"): (_U64S[:3], rules.new_sla),
    ("host", "new_sla_with_half_close_timeout"): (_U64S, rules.new_sla),
}
_KINDS = sui_prot.ExecutionErrorExecutionErrorKind
#: What an entry a table did not hold compares unequal to.
_GONE: Final = object()
_ARG_ERRORS = sui_prot.CommandArgumentErrorCommandArgumentErrorKind


def gas_rates() -> dict[str, int]:
    """The gas constants above, for tests that compute an expected charge."""
    return {
        "units_per_command": UNITS_PER_COMMAND,
        "storage_price": STORAGE_PRICE,
        "storage_units_per_byte": STORAGE_UNITS_PER_BYTE,
        "object_overhead": OBJECT_OVERHEAD,
        "rebate_bps": REBATE_BPS,
    }


def _storage(contents: bytes) -> int:
    return (len(contents) + OBJECT_OVERHEAD) * STORAGE_UNITS_PER_BYTE * STORAGE_PRICE


@dataclass
class Checked:
    """A transaction the node accepted for execution."""

    tx: ParsedTx
    tx_bytes: bytes
    digest: bytes
    digest_text: str
    #: Owned inputs and gas coins: ID -> (version, digest) as the transaction names them.
    owned: dict[str, tuple[int, str]]
    #: Shared inputs: ID -> mutable.
    shared: dict[str, bool]


def _refuse(message: str, status: Status = Status.INVALID_ARGUMENT) -> Refusal:
    return Refusal(status, message)


def _ref_text(object_id: str, version: int, digest: str) -> str:
    return f"({object_id}, SequenceNumber({version}), o#{digest})"


def _check_owned(
    state: NodeState, sender: str, object_id: str, version: int, digest: str, what: str
) -> ObjectRow:
    row = state.object(object_id)
    if row is None:
        raise _refuse(f"Could not find the referenced object {object_id} at version {version}.")
    if row.owner_kind == "address" and row.owner != sender:
        raise _refuse(
            f"Transaction was not signed by the correct sender: Object {object_id} is owned "
            f"by account address {row.owner}, but given owner/signer address is {sender}."
        )
    if row.owner_kind not in ("address", "immutable"):
        raise _refuse(f"{what} {object_id} is not an owned object ({row.owner_kind}).")
    if row.version != version or row.digest != digest:
        raise _refuse(
            f"Object {_ref_text(object_id, version, digest)} is not available for "
            f"consumption, its current version: SequenceNumber({row.version})."
        )
    return row


def check_signature(tx: ParsedTx, tx_bytes: bytes, signatures: Sequence[bytes]) -> None:
    """The one signature is the sender's, over the bytes (Sui intent signing)."""
    if len(signatures) != 1:
        raise _refuse(
            f"Invalid user signature: the transaction has {len(signatures)} signatures; a "
            "transaction of one sender has exactly one."
        )
    try:
        signer = verify_transaction(tx_bytes, signatures[0])
    except (InvalidSignature, TypeError, ValueError) as exc:
        raise _refuse(f"Invalid user signature: {exc}") from None
    if signer != tx.sender:
        raise _refuse(
            f"Invalid user signature: Required Signature from {tx.sender} is absent "
            f"(signed by {signer})."
        )


def check(state: NodeState, tx_bytes: bytes, signatures: Sequence[bytes]) -> Checked:
    """Everything a node checks before it executes (see the module docs)."""
    tx = parse_tx(tx_bytes)
    check_signature(tx, tx_bytes, signatures)
    return check_unsigned(state, tx, tx_bytes, tx_digest(tx_bytes))


def check_unsigned(state: NodeState, tx: ParsedTx, tx_bytes: bytes, tx_hash: bytes) -> Checked:
    """What :func:`check` checks but the signature: of a transaction signed already, or
    simulated (SimulateTransaction: :mod:`.simulate`). ``tx_hash``: its 32-byte digest."""
    epoch = state.epoch()
    if tx.expiration is not None and tx.expiration < epoch:
        raise _refuse("Transaction Expired.")
    # gas (Sui's check_gas_data)
    price = state.gas_price
    if tx.gas_owner != tx.sender:
        raise Refusal(Status.UNIMPLEMENTED, "The Sui node stand-in does not model sponsored gas.")
    if not tx.gas_payment:
        raise _refuse("Invalid transaction: MissingGasPayment.")
    if tx.gas_price < price:
        raise _refuse(f"Gas price {tx.gas_price} under reference gas price (RGP) {price}.")
    if tx.gas_budget > MAX_BUDGET:
        raise _refuse(f"Gas budget: {tx.gas_budget} is higher than max: {MAX_BUDGET}.")
    if tx.gas_budget < price * MIN_BUDGET_UNITS:
        raise _refuse(f"Gas budget: {tx.gas_budget} is lower than min: {price * MIN_BUDGET_UNITS}.")
    owned: dict[str, tuple[int, str]] = {}
    total = 0
    for coin_id, version, digest in tx.gas_payment:
        if coin_id in owned:
            raise _refuse(f"Invalid transaction: MutableObjectUsedMoreThanOnce {coin_id}.")
        row = _check_owned(state, tx.sender, coin_id, version, digest, "Gas object")
        if row.type != COIN_TYPE or row.owner_kind != "address":
            raise _refuse(f"Invalid gas object: {coin_id} is a {row.type}, not a SUI coin.")
        owned[coin_id] = (version, digest)
        total += int(row.balance or 0)
    if total < tx.gas_budget:
        raise _refuse(
            f"Balance of gas object {total} is lower than the needed amount: {tx.gas_budget}."
        )
    shared: dict[str, bool] = {}
    for item in tx.inputs:
        if not isinstance(item, ObjectInput):
            continue
        if item.object_id in owned or item.object_id in shared:
            raise _refuse(f"Invalid transaction: MutableObjectUsedMoreThanOnce {item.object_id}.")
        if item.kind == "owned":
            assert item.digest is not None
            _check_owned(state, tx.sender, item.object_id, item.version, item.digest, "Object")
            owned[item.object_id] = (item.version, item.digest)
            continue
        found = state.object(item.object_id)
        if found is None:
            raise _refuse(f"Could not find the referenced object {item.object_id}.")
        if found.owner_kind != "shared":
            raise _refuse(
                f"Invalid transaction: object {item.object_id} is not shared "
                f"({found.owner_kind}) but is given as a shared object."
            )
        if found.initial_shared_version != item.version:
            raise _refuse(
                f"SharedObjectStartingVersionMismatch: {item.object_id} is shared since "
                f"version {found.initial_shared_version}, not {item.version}."
            )
        if found.id == CLOCK_ID and item.mutable:
            raise _refuse(f"Invalid transaction: ImmutableObjectMutableUsage {CLOCK_ID}.")
        shared[item.object_id] = item.mutable
    for command in tx.commands:
        if command.kind == "call" and command.package != state.package:
            raise _refuse(f"Dependent package not found on-chain: {command.package}.")
        if command.kind == "split" and (command.coin is None or command.coin.kind != "gas"):
            raise Refusal(
                Status.UNIMPLEMENTED,
                "The Sui node stand-in models SplitCoins from the gas coin only.",
            )
    return Checked(tx, bytes(tx_bytes), tx_hash, base58(tx_hash), owned, shared)


def recheck(state: NodeState, checked: Checked) -> None:
    """The owned inputs are still at the versions the transaction names (another
    transaction may have used them since :func:`check`)."""
    for object_id, (version, digest) in checked.owned.items():
        _check_owned(state, checked.tx.sender, object_id, version, digest, "Object")


# -- execution ---------------------------------------------------------------------------------


class Failure(Exception):
    """Execution failed: the effects carry ``error``, gas is charged."""

    def __init__(self, error: sui_prot.ExecutionError) -> None:
        super().__init__(error.description or "")
        self.error = error


def _fail(kind: Any, description: str, command: int | None = None, **details: Any) -> Failure:
    return Failure(
        sui_prot.ExecutionError(description=description, command=command, kind=kind, **details)
    )


def _arg_error(kind: Any, argument: int, command: int, text: str) -> Failure:
    return _fail(
        _KINDS.COMMAND_ARGUMENT_ERROR,
        f"CommandArgumentError {{ arg_idx: {argument}, kind: {kind.name} }} in command "
        f"{command}: {text}",
        command,
        command_argument_error=sui_prot.CommandArgumentError(argument=argument, kind=kind),
    )


def clever_code(code: int, line: int) -> int:
    """A clever-error abort code carrying ``#[error(code = N)]`` (docs/escrow.md §10)."""
    return (1 << 63) | ((code & 0xFF) << 48) | ((line & 0xFFFF) << 32)


def _move_abort(
    code: int | None,
    location: sui_prot.MoveLocation,
    command: int,
    message: str,
    clever: sui_prot.CleverError | None = None,
) -> sui_prot.ExecutionError:
    return sui_prot.ExecutionError(
        description=f"MoveAbort in {location.package}::{location.module} with code {code} "
        f"in command {command}: {message}",
        command=command,
        kind=_KINDS.MOVE_ABORT,
        abort=sui_prot.MoveAbort(abort_code=code, location=location, clever_error=clever),
    )


def abort_error(
    exc: ChainError, package: str, command: int, module: str, function: str
) -> sui_prot.ExecutionError:
    """The execution error a node reports for a rule's ChainError."""
    info = MOVE_ERRORS.get((exc.module, exc.name))
    message = str(exc)
    if info is not None:
        line = info.code  # (no source lines here: any stable number)
        location = sui_prot.MoveLocation(
            package=package,
            module=info.module,
            function=0,
            instruction=0,
            function_name=function if info.module == module else None,
        )
        clever = sui_prot.CleverError(
            error_code=info.code,
            line_number=line,
            constant_name=info.name,
            constant_type="vector<u8>",
            rendered=info.message,
        )
        return _move_abort(clever_code(info.code, line), location, command, message, clever)
    if exc.name == "MoveAbort":  # a module outside the package (std::string::utf8)
        where = MOVE_STDLIB if exc.module == "string" else SUI_FRAMEWORK
        location = sui_prot.MoveLocation(package=where, module=exc.module)
        return _move_abort(exc.code, location, command, message)
    kinds = {
        "InsufficientCoinBalance": _KINDS.INSUFFICIENT_COIN_BALANCE,
        "ArithmeticError": _KINDS.MOVE_PRIMITIVE_RUNTIME_ERROR,
        "OBJECT_TOO_BIG": _KINDS.OBJECT_TOO_BIG,
    }
    kind = kinds.get(exc.name)
    if kind is None:
        raise RuntimeError(f"the rules raised {exc!r}, which no Sui execution error stands for")
    return sui_prot.ExecutionError(
        description=f"{kind.name} in command {command}: {message}", command=command, kind=kind
    )


@dataclass
class _Plan:
    """What one execution writes, computed inside the LocalLedger transaction."""

    rows: list[ObjectRow] = field(default_factory=list)
    deleted: list[ObjectRow] = field(default_factory=list)
    changed: list[sui_prot.ChangedObject] = field(default_factory=list)
    #: (LocalLedger type, fields, the module of the call that emitted it)
    events: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    computation: int = 0
    storage: int = 0
    rebate: int = 0
    non_refundable: int = 0

    @property
    def net(self) -> int:
        return self.computation + self.storage - self.rebate


def _owner(row: ObjectRow) -> sui_prot.Owner:
    if row.owner_kind == "shared":
        return sui_prot.Owner(
            kind=sui_prot.OwnerOwnerKind.SHARED, version=row.initial_shared_version
        )
    if row.owner_kind == "object":
        return sui_prot.Owner(kind=sui_prot.OwnerOwnerKind.OBJECT, address=row.owner)
    if row.owner_kind == "immutable":
        return sui_prot.Owner(kind=sui_prot.OwnerOwnerKind.IMMUTABLE)
    return sui_prot.Owner(kind=sui_prot.OwnerOwnerKind.ADDRESS, address=row.owner)


def owner_message(row: ObjectRow) -> sui_prot.Owner:
    """``sui.rpc.v2.Owner`` of an object."""
    return _owner(row)


class _Execution:
    """One transaction's execution (see :func:`execute`); ``__call__`` runs inside the
    LocalLedger transaction and may run again if that transaction is retried."""

    def __init__(self, state: NodeState, checked: Checked, inputs: dict[str, ObjectRow]) -> None:
        self.state = state
        self.checked = checked
        self.tx = checked.tx
        self.inputs = inputs
        self.gas_rows = [inputs[coin_id] for coin_id, _, _ in self.tx.gas_payment]
        self.gas_total = sum(int(r.balance or 0) for r in self.gas_rows)
        self.lamport = 1 + max(row.version for row in inputs.values())
        self.plan = _Plan()
        self.mutable = set(checked.owned) | {i for i, m in checked.shared.items() if m}
        self.computation = self.tx.gas_price * UNITS_PER_COMMAND * max(1, len(self.tx.commands))

    # -- the commands -------------------------------------------------------------------

    def _pure(self, arg: Arg, command: int) -> bytes:
        item = self.tx.inputs[arg.index] if arg.kind == "input" else None
        if not isinstance(item, bytes):
            raise _arg_error(_ARG_ERRORS.TYPE_MISMATCH, arg.index, command, "not a pure input")
        return item

    def __call__(self, x: rules.Exec) -> None:
        self.plan = _Plan()
        tx = self.tx
        results: dict[int, list[tuple[str, Any]]] = {}
        used: set[tuple[int, int]] = set()
        split = 0
        transfers: list[tuple[str, int]] = []
        consumed = 0
        for ci, command in enumerate(tx.commands):
            if command.kind == "split":
                amounts = []
                for arg in command.amounts:
                    raw = self._pure(arg, ci)
                    if len(raw) != 8:
                        raise _arg_error(
                            _ARG_ERRORS.INVALID_BCS_BYTES, arg.index, ci, "a u64 amount"
                        )
                    amounts.append(int.from_bytes(raw, "little"))
                split += sum(amounts)
                if split > self.gas_total - tx.gas_budget:
                    raise _fail(
                        _KINDS.INSUFFICIENT_COIN_BALANCE,
                        f"InsufficientCoinBalance in command {ci}: the gas coin holds "
                        f"{self.gas_total - tx.gas_budget} MIST beyond the budget, "
                        f"{split} are split off",
                        ci,
                    )
                results[ci] = [("coin", a) for a in amounts]
            elif command.kind == "transfer":
                assert command.address is not None
                raw = self._pure(command.address, ci)
                if len(raw) != 32:
                    raise _arg_error(
                        _ARG_ERRORS.INVALID_BCS_BYTES, command.address.index, ci, "an address"
                    )
                recipient = "0x" + raw.hex()
                for ai, arg in enumerate(command.objects):
                    for kind, value in self._results(arg, results, used, ci, ai):
                        if kind != "coin":
                            raise _arg_error(
                                _ARG_ERRORS.INVALID_TRANSFER_OBJECT, ai, ci, "not an object"
                            )
                        transfers.append((recipient, value))
                        x.credits[tx.sender] = x.credits.get(tx.sender, 0) - value
                        x.credits[recipient] = x.credits.get(recipient, 0) + value
            else:
                consumed += self._call(x, ci, command, results, used)
        for ci, values in results.items():
            for sub, (kind, _) in enumerate(values):
                if kind == "coin" and (ci, sub) not in used:
                    raise _fail(
                        _KINDS.UNUSED_VALUE_WITHOUT_DROP,
                        f"UnusedValueWithoutDrop {{ result_idx: {ci}, secondary_idx: {sub} }}",
                    )
        self._effects(x, split, transfers, consumed)

    def _results(
        self,
        arg: Arg,
        results: dict[int, list[tuple[str, Any]]],
        used: set[tuple[int, int]],
        ci: int,
        ai: int,
    ) -> list[tuple[str, Any]]:
        values = results.get(arg.index)
        if values is None:
            raise _arg_error(_ARG_ERRORS.ARGUMENT_WITHOUT_VALUE, ai, ci, "no such result")
        if arg.kind == "result":
            picked = list(enumerate(values))
        elif arg.sub < len(values):
            picked = [(arg.sub, values[arg.sub])]
        else:
            raise _fail(
                _KINDS.COMMAND_ARGUMENT_ERROR,
                f"SecondaryIndexOutOfBounds {{ result_idx: {arg.index}, secondary_idx: "
                f"{arg.sub} }}",
                ci,
            )
        out = []
        for sub, value in picked:
            if value[0] == "coin":
                if (arg.index, sub) in used:
                    raise _arg_error(_ARG_ERRORS.ARGUMENT_WITHOUT_VALUE, ai, ci, "coin moved")
                used.add((arg.index, sub))
            out.append(value)
        return out

    def _call(
        self,
        x: rules.Exec,
        ci: int,
        command: Any,
        results: dict[int, list[tuple[str, Any]]],
        used: set[tuple[int, int]],
    ) -> int:
        """Run one MoveCall; returns the MIST of the coins it consumed."""
        module, function = command.module, command.function
        # (kind, value, argument index): objects as IDs, coins as MIST, pure bytes raw
        flat: list[tuple[str, Any, int]] = []
        for ai, arg in enumerate(command.args):
            if arg.kind == "gas":
                raise _arg_error(_ARG_ERRORS.INVALID_GAS_COIN_USAGE, ai, ci, "the gas coin")
            if arg.kind == "input":
                item = self.tx.inputs[arg.index] if arg.index < len(self.tx.inputs) else None
                if item is None:
                    raise _arg_error(_ARG_ERRORS.INDEX_OUT_OF_BOUNDS, ai, ci, "no such input")
                if isinstance(item, bytes):
                    flat.append(("pure", item, ai))
                elif item.object_id != CLOCK_ID:  # &Clock is passed implicitly
                    flat.append(("obj", Address(item.object_id), ai))
                continue
            for kind, value in self._results(arg, results, used, ci, ai):
                if kind == "coin":
                    flat.append(("coin", value, ai))
                else:
                    flat.extend(("value", v, ai) for v in value)
        constructor = CONSTRUCTORS.get((module, function))
        if constructor is not None:
            shape, make = constructor
            values = self._values(module, function, shape, flat, ci)
            try:
                made = make(*values)
            except ChainError as exc:
                raise Failure(abort_error(exc, self.state.package, ci, module, function)) from None
            results[ci] = [("struct", list(made.values()))]
            return 0
        entry = rules.FUNCTIONS.get((module, function))
        if entry is None:
            raise _fail(
                _KINDS.FUNCTION_NOT_FOUND,
                f"FunctionNotFound: {self.state.package}::{module}::{function}",
                ci,
            )
        schema, _ = entry
        values = self._values(module, function, schema, flat, ci)
        try:
            args = rules.check_args(module, function, tuple(values))
        except InvalidArgument as exc:
            raise _arg_error(_ARG_ERRORS.TYPE_MISMATCH, 0, ci, str(exc)) from None
        before = len(x.events)
        try:
            # (its objects loaded, its coin checked and its objects' versions first, as
            # Sui runs a Move call: docs/escrow.md "Versions")
            rules.call(x, module, function, args)
        except ChainError as exc:
            raise Failure(abort_error(exc, self.state.package, ci, module, function)) from None
        for local_type, fields in x.events[before:]:
            self.plan.events.append((local_type, fields, module))
        results[ci] = []  # the call's return values have drop
        return sum(v for k, v, _ in flat if k == "coin")

    def _values(
        self,
        module: str,
        function: str,
        schema: Sequence[str],
        flat: list[tuple[str, Any, int]],
        ci: int,
    ) -> list[TxValue]:
        if len(flat) != len(schema):
            raise _fail(
                _KINDS.ARITY_MISMATCH,
                f"ArityMismatch: {module}::{function} takes {len(schema)} values, the "
                f"command passes {len(flat)}",
                ci,
            )
        values: list[TxValue] = []
        for kind, (tag, value, ai) in zip(schema, flat, strict=True):
            fits = (
                (tag == "obj" and kind.startswith("obj:"))
                or (tag == "coin" and kind == "coin")
                or (tag == "value" and kind == "u64")
                or (tag == "pure" and not kind.startswith("obj:") and kind != "coin")
            )
            if not fits:
                raise _arg_error(_ARG_ERRORS.TYPE_MISMATCH, ai, ci, f"a {kind} is expected")
            if tag == "pure":
                try:
                    value = decode_pure(kind, value)
                except ValueError as exc:
                    raise _arg_error(_ARG_ERRORS.INVALID_BCS_BYTES, ai, ci, str(exc)) from None
            values.append(value)
        return values

    # -- the effects ----------------------------------------------------------------------

    def _write(self, row: ObjectRow, old: ObjectRow | None) -> None:
        plan = self.plan
        plan.rows.append(row)
        plan.storage += row.storage_rebate
        if old is not None:
            self._refund(old)
        plan.changed.append(self._changed(old, row, None))

    def _refund(self, old: ObjectRow) -> None:
        refund = old.storage_rebate * REBATE_BPS // 10_000
        self.plan.rebate += refund
        self.plan.non_refundable += old.storage_rebate - refund

    def _remove(self, old: ObjectRow) -> None:
        self.plan.deleted.append(old)
        self._refund(old)
        self.plan.changed.append(
            self._changed(old, None, sui_prot.ChangedObjectIdOperation.DELETED)
        )

    def _changed(
        self, old: ObjectRow | None, new: ObjectRow | None, op: Any
    ) -> sui_prot.ChangedObject:
        states_in = sui_prot.ChangedObjectInputObjectState
        states_out = sui_prot.ChangedObjectOutputObjectState
        ids = sui_prot.ChangedObjectIdOperation
        if op is None:
            op = ids.CREATED if old is None else ids.NONE
        some = new if new is not None else old
        assert some is not None
        return sui_prot.ChangedObject(
            object_id=some.id,
            input_state=states_in.DOES_NOT_EXIST if old is None else states_in.EXISTS,
            input_version=None if old is None else old.version,
            input_digest=None if old is None else old.digest,
            input_owner=None if old is None else _owner(old),
            output_state=states_out.DOES_NOT_EXIST if new is None else states_out.OBJECT_WRITE,
            output_version=None if new is None else new.version,
            output_digest=None if new is None else new.digest,
            output_owner=None if new is None else _owner(new),
            id_operation=op,
            object_type=some.type,
        )

    def _row(
        self,
        object_id: str,
        type_: str,
        owner_kind: str,
        owner: str,
        isv: int | None,
        contents: bytes,
        balance: int | None = None,
    ) -> ObjectRow:
        return ObjectRow.make(
            object_id,
            type_,
            owner_kind,
            owner,
            isv,
            self.lamport,
            contents,
            _storage(contents),
            self.checked.digest_text,
            balance,
        )

    def _bump(self, old: ObjectRow) -> None:
        """Rewrite ``old`` unchanged at the transaction's version."""
        self._write(
            self._row(
                old.id,
                old.type,
                old.owner_kind,
                old.owner,
                old.initial_shared_version,
                old.contents,
                old.balance,
            ),
            old,
        )

    def _tables(
        self, struct: str, object_id: str, before: str | None, data: dict[str, Any] | None
    ) -> None:
        """Write the dynamic fields of an object's Tables that changed from ``before`` (the
        object's data as stored when the transaction loaded it, None for an object it
        created) to ``data`` (None for an object it deleted).

        Only the entries whose value changed are encoded, read and written: an entry the
        transaction left alone is in the node as the transaction that last wrote it left
        it, so a call on a Host with a full firewall list costs what one on an empty list
        does. The order of the effects is the node's: the entries written, table by
        table in key order, then those removed, table by table in field-ID order."""
        package, state = self.state.package, self.state
        old_tables = tables(
            package, struct, object_id, None if before is None else rules.from_json(before)
        )
        removed: list[ObjectRow] = []
        for old, new in zip(old_tables, tables(package, struct, object_id, data), strict=True):
            if old.entries == new.entries:
                continue  # (most calls change one table of an object, if any)
            changed = [e for e, v in new.entries.items() if old.entries.get(e, _GONE) != v]
            for entry in sorted(changed):
                written = new.field(entry, new.entries[entry])
                previous = state.object(written.field_id)
                if previous is not None and previous.contents == written.contents:
                    continue
                self._write(
                    self._row(
                        written.field_id,
                        written.type,
                        "object",
                        written.table_id,
                        None,
                        written.contents,
                    ),
                    previous,
                )
            gone = state.objects([old.field_id(e) for e in old.entries.keys() - new.entries])
            removed.extend(gone[field_id] for field_id in sorted(gone))
        for previous in removed:
            self._remove(previous)

    def _gas_coin(self, balance: int) -> None:
        """The first gas coin (holding all the payment coins' MIST: the others are merged
        into it and deleted) left with ``balance``."""
        first = self.gas_rows[0]
        self._write(
            self._row(
                first.id, COIN_TYPE, "address", first.owner, None,
                coin_contents(first.id, balance), balance,
            ),
            first,
        )  # fmt: skip
        for other in self.gas_rows[1:]:
            self._remove(other)

    def _effects(
        self, x: rules.Exec, split: int, transfers: list[tuple[str, int]], consumed: int
    ) -> None:
        tx, plan, state = self.tx, self.plan, self.state
        sender = tx.sender
        # objects the rules touched: each must be an input, written only if mutable
        for obj in x.objects.values():
            if obj.before is None:
                continue
            if obj.id not in self.inputs:
                raise RuntimeError(
                    f"The rules read object {obj.id}, which the transaction does not pass: "
                    "local_rules and the Move signatures disagree."
                )
            if obj.id not in self.mutable and (
                obj.deleted or rules.to_json(obj.data) != obj.before
            ):
                raise _arg_error(
                    _ARG_ERRORS.INVALID_OBJECT_BY_MUT_REF,
                    0,
                    len(tx.commands) - 1,
                    f"object {obj.id} is passed immutably but the call changes it",
                )
        self._gas_coin(0)  # placeholder balance: a coin's size does not depend on it
        for object_id in sorted(self.mutable - {c for c, _, _ in tx.gas_payment}):
            old = self.inputs[object_id]
            changed = x.objects.get(object_id)
            if changed is None:
                self._bump(old)
                continue
            obj = changed
            struct = obj.type.rsplit("::", 1)[-1]
            if obj.deleted:
                self._remove(old)
                self._tables(struct, object_id, obj.before, None)
                continue
            kind = "shared" if obj.owner == rules.SHARED else "address"
            owner = "" if kind == "shared" else obj.owner
            contents = object_contents(struct, object_id, obj.data)
            self._write(
                self._row(object_id, old.type, kind, owner, old.initial_shared_version, contents),
                old,
            )
            self._tables(struct, object_id, obj.before, obj.data)
        for obj in x.objects.values():
            if obj.before is not None or obj.deleted:
                continue
            struct = obj.type.rsplit("::", 1)[-1]
            shared = obj.owner == rules.SHARED
            self._write(
                self._row(
                    obj.id,
                    move_type(state.package, obj.type),
                    "shared" if shared else "address",
                    "" if shared else obj.owner,
                    self.lamport if shared else None,
                    object_contents(struct, obj.id, obj.data),
                ),
                None,
            )
            self._tables(struct, obj.id, None, obj.data)
        # coins: one per TransferObjects'd split, one per recipient of the Move calls'
        # payments (the sender's: what it was credited beyond what it spent)
        paid = dict(x.credits)
        paid[sender] = paid.get(sender, 0) + consumed + sum(v for _, v in transfers)
        for recipient, value in transfers:
            paid[recipient] -= value
        for recipient, value in [*transfers, *sorted(paid.items())]:
            if value > 0:
                coin_id = x.new_id()
                self._write(
                    self._row(
                        coin_id, COIN_TYPE, "address", recipient, None,
                        coin_contents(coin_id, value), value,
                    ),
                    None,
                )  # fmt: skip
            elif value < 0:
                raise RuntimeError(f"{recipient} was debited {-value} MIST outside any coin")
        plan.computation = self.computation
        if plan.computation + plan.storage > tx.gas_budget:
            raise _fail(
                _KINDS.INSUFFICIENT_GAS,
                f"InsufficientGas: the transaction costs {plan.computation + plan.storage} "
                f"MIST before rebates, the budget is {tx.gas_budget}",
            )
        self._finish_gas(x, self.gas_total - split)

    def _finish_gas(self, x: rules.Exec, left: int) -> None:
        """Charge the net gas: to the first gas coin (its row is rewritten with the
        balance left) and to the sender's LocalLedger balance."""
        plan = self.plan
        balance = left - plan.net
        first = plan.rows[0]
        row = self._row(
            first.id, COIN_TYPE, "address", first.owner, None,
            coin_contents(first.id, balance), balance,
        )  # fmt: skip
        plan.rows[0] = row
        plan.changed[0] = self._changed(self.gas_rows[0], row, None)
        x.credits[self.tx.sender] = x.credits.get(self.tx.sender, 0) - plan.net

    def charge_only(self, x: rules.Exec, cancelled: bool) -> None:
        """The effects of a failed (or cancelled) transaction: gas, and the versions of its
        mutable inputs (owned ones only when cancelled: shared ones were never assigned)."""
        self.plan = _Plan()
        self._gas_coin(0)
        gas_ids = {c for c, _, _ in self.tx.gas_payment}
        for object_id in sorted(self.mutable - gas_ids):
            if cancelled and object_id in self.checked.shared:
                continue
            self._bump(self.inputs[object_id])
        plan = self.plan
        charge = min(self.tx.gas_budget, self.computation + plan.storage - plan.rebate)
        plan.computation = max(0, charge - plan.storage + plan.rebate)
        self._finish_gas(x, self.gas_total)


def _digest_of(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)
    return base58(h.digest())


class _Simulated(Exception):
    """Ends a simulated run of the rules: its ledger transaction is rolled back."""


def execute(
    state: NodeState, checked: Checked, congested: Sequence[str] = (), *, commit: bool = True
) -> sui_prot.ExecutedTransaction:
    """Execute ``checked`` (cancelled for congestion on ``congested`` objects if any)
    and record it; returns the ``ExecutedTransaction`` (executing it again returns the
    same effects, as a node does). ``commit`` False simulates it: the same rules run and
    the same effects come back, and nothing is kept (SimulateTransaction)."""
    tx = checked.tx
    with state.lock:
        done = state.transaction(checked.digest_text)
        if done is not None and commit:
            return sui_prot.ExecutedTransaction.parse(done[1])
        recheck(state, checked)
        epoch = state.epoch()
        ids = [c for c, _, _ in tx.gas_payment] + [
            i.object_id for i in tx.inputs if isinstance(i, ObjectInput)
        ]
        inputs = state.objects(ids)
        run = _Execution(state, checked, inputs)
        error: sui_prot.ExecutionError | None = None
        if congested:
            error = sui_prot.ExecutionError(
                description="ExecutionCancelledDueToSharedObjectCongestion { congested_objects: "
                f"[{', '.join(congested)}] }}",
                kind=_KINDS.EXECUTION_CANCELED_DUE_TO_CONSENSUS_OBJECT_CONGESTION,
                congested_objects=sui_prot.CongestedObjects(objects=list(congested)),
            )
        else:
            try:
                # the rules run as the package the node stands for (the package ID
                # receipts name, docs/escrow.md §6), not as the ledger file's own
                _apply(state, checked, run, commit)
            except Failure as failure:
                error = failure.error
        if error is not None:
            cancelled = bool(congested)
            _apply(state, checked, lambda x: run.charge_only(x, cancelled), commit)
        return _record(state, checked, run, epoch, error, commit)


def _apply(state: NodeState, checked: Checked, run: Any, commit: bool) -> None:
    """Run ``run`` as ``checked``'s ledger transaction; rolled back unless ``commit``."""
    if commit:
        state.ledger.apply_verified(checked.tx.sender, checked.digest, run, package=state.package)
        return

    def simulated(x: rules.Exec) -> None:
        run(x)
        raise _Simulated

    with contextlib.suppress(_Simulated):
        state.ledger.apply_verified(
            checked.tx.sender, checked.digest, simulated, package=state.package
        )


def _record(
    state: NodeState,
    checked: Checked,
    run: _Execution,
    epoch: int,
    error: sui_prot.ExecutionError | None,
    commit: bool = True,
) -> sui_prot.ExecutedTransaction:
    tx, plan = checked.tx, run.plan
    now = state.clock_ms()
    events: list[sui_prot.Event] = []
    # (simulated: the effects and events as they would be, nothing written; a checkpoint
    # is what the next one would be)
    with state.write() if commit else contextlib.nullcontext():
        seq = state.new_checkpoint(now) if commit else None
        for row in plan.deleted if commit else ():
            state.delete(row.id)
        for row in plan.rows if commit else ():
            state.put(row)
        for index, (local_type, fields, module) in enumerate(plan.events if error is None else []):
            type_ = move_type(state.package, local_type)
            contents = event_contents(local_type, fields)
            if seq is not None:
                state.record_event(
                    (seq, 0, index), checked.digest_text, tx.sender, type_, module, contents
                )
            events.append(
                sui_prot.Event(
                    package_id=state.package,
                    module=module,
                    sender=tx.sender,
                    event_type=type_,
                    contents=sui_prot.Bcs(name=type_, value=contents),
                    checkpoint=seq,
                    transaction_digest=checked.digest_text,
                    transaction_index=0,
                    event_index=index,
                )
            )
        if commit:
            state.add_gas_paid(tx.sender, plan.net)
        kinds = sui_prot.UnchangedConsensusObjectUnchangedConsensusObjectKind
        cancelled = error is not None and error.congested_objects is not None
        unchanged = [
            sui_prot.UnchangedConsensusObject(
                kind=kinds.CANCELED if cancelled else kinds.READ_ONLY_ROOT,
                object_id=object_id,
                version=run.inputs[object_id].version,
                digest=run.inputs[object_id].digest,
                object_type=run.inputs[object_id].type,
            )
            for object_id, mutable in checked.shared.items()
            if cancelled or not mutable  # (the mutable ones were written)
        ]
        effects = sui_prot.TransactionEffects(
            version=2,
            status=sui_prot.ExecutionStatus(success=error is None, error=error),
            epoch=epoch,
            gas_used=sui_prot.GasCostSummary(
                computation_cost=plan.computation,
                storage_cost=plan.storage,
                storage_rebate=plan.rebate,
                non_refundable_storage_fee=plan.non_refundable,
            ),
            transaction_digest=checked.digest_text,
            gas_object=plan.changed[0],
            events_digest=_digest_of(*(bytes(e) for e in events)) if events else None,
            dependencies=sorted({r.previous_tx for r in run.inputs.values() if r.previous_tx}),
            lamport_version=run.lamport,
            changed_objects=plan.changed,
            unchanged_consensus_objects=unchanged,
        )
        effects.digest = _digest_of(bytes(effects))
        executed = sui_prot.ExecutedTransaction(
            digest=checked.digest_text,
            effects=effects,
            events=sui_prot.TransactionEvents(events=events) if events else None,
        )
        # as read back later: with its checkpoint (an execution's answer has none yet).
        # Those fields come after every field the answer sets, so the message kept is the
        # answer's bytes followed by theirs, without parsing and encoding it all again
        # (the bytes of parsing the answer and setting them: test_sui_node_standin.py)
        if commit:
            assert seq is not None
            where = sui_prot.ExecutedTransaction(checkpoint=seq, timestamp=_timestamp(now))
            state.record_transaction(
                checked.digest_text, seq, tx.sender, bytes(executed) + bytes(where)
            )
    return executed


def _timestamp(ms: int) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
