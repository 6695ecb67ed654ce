"""``SimulateTransaction``: a transaction run by the same rules as ``ExecuteTransaction``
and nothing kept, with the gas chosen by the node when asked.

Mysten's TypeScript SDK builds a transaction through it (``Transaction.build`` with a
``SuiGrpcClient``): when the gas payment or the budget is missing it sends the transaction
in its structured form (``sui.rpc.v2.Transaction``: inputs, commands, gas, no BCS) with
``do_gas_selection`` and reads back the resolved transaction -- sender, gas payment,
expiration, kind -- and the simulated effects' status and epoch.

What is served (sui.rpc.v2 ``SimulateTransactionRequest``):

- the transaction as BCS (``transaction.bcs``) or structured; the structured form is read
  into the same plain values as the bytes are (:mod:`.ptb`): programmable transactions of
  ``MoveCall`` (no type arguments), ``SplitCoins`` and ``TransferObjects``; pure, owned and
  shared inputs, an object input without its version or digest resolved from the node's
  objects (a shared one must say whether it is used mutably); anything else is refused as
  the stand-in refuses it at execution, never run approximately;
- ``do_gas_selection``: the reference gas price when none is given; the sender's SUI
  coins, largest first (at most 256, none that is an input), when no payment is given;
  and when no budget is given, the transaction is run with the largest budget the
  payment covers beside what it splits off the gas coin, and the budget set from its gas
  use: the computation with a margin of
  1000 units of the gas price (the margin Mysten's estimates add), plus the storage
  before rebates, which this node's execution requires the budget to cover
  (``InsufficientGas`` in :mod:`.execute`), and at least the minimum budget;
- checks ``ENABLED`` only: a simulation with the checks disabled (the SDK's
  ``onlyTransactionKind`` builds) is refused as unmodelled.

The answer is an ``ExecutedTransaction`` with the resolved transaction and the effects
(and events) the execution would have, cut by the read mask (its paths are relative to
the response, ``transaction.effects.status``; none: the whole). A transaction that fails
(a Move abort) is a simulation that succeeds with the failed status in its effects, as a
node answers; one the node would refuse outright (a wrong version, too little gas) is
refused here as ``ExecuteTransaction`` refuses it. The signature is not checked: nothing is
signed yet. The effects' ``transaction_digest`` of a structured transaction is the
digest of its resolved form's protobuf bytes, not of its BCS (the stand-in does not write
arbitrary transactions as BCS): the SDK reads only the status and the epoch of them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
from grpclib.const import Status

from dtp.ledger._objects import normalize_id
from dtp.ledger.local._tx import tx_digest
from dtp.testing.sui_node import _answers as answers
from dtp.testing.sui_node import _execute as execute
from dtp.testing.sui_node._objects import COIN_TYPE, full_address
from dtp.testing.sui_node._ptb import (
    MAX_GAS_OBJECTS,
    MAX_PURE_ARGUMENT,
    Arg,
    Command,
    ObjectInput,
    ParsedTx,
    Refusal,
    parse_tx,
)
from dtp.testing.sui_node._state import NodeState

__all__ = ["GAS_SAFE_OVERHEAD", "simulate"]

#: Computation units added to a simulated transaction's computation cost for its budget.
GAS_SAFE_OVERHEAD: Final = 1_000

_KIND = sui_prot.InputInputKind
_ARG = sui_prot.ArgumentArgumentKind
_EXPIRATION = sui_prot.TransactionExpirationTransactionExpirationKind
_CHECKS = sui_prot.SimulateTransactionRequestTransactionChecks


def _unmodelled(what: str) -> Refusal:
    return Refusal(Status.UNIMPLEMENTED, f"The Sui node stand-in does not model {what}.")


def _invalid(message: str) -> Refusal:
    return Refusal(Status.INVALID_ARGUMENT, message)


def _address(value: str | None, what: str) -> str:
    if not value:
        raise _invalid(f"missing {what}")
    try:
        return full_address(normalize_id(value, what))
    except ValueError as exc:
        raise _invalid(f"invalid {what}: {exc}") from None


def _arg(value: sui_prot.Argument | None) -> Arg:
    if value is None:
        raise _invalid("missing argument")
    if value.kind == _ARG.GAS:
        return Arg("gas")
    if value.kind == _ARG.INPUT and value.input is not None:
        return Arg("input", int(value.input))
    if value.kind == _ARG.RESULT and value.result is not None:
        if value.subresult is None:
            return Arg("result", int(value.result))
        return Arg("nested", int(value.result), int(value.subresult))
    raise _invalid(f"invalid argument {value.kind!r}")


def _input(state: NodeState, value: sui_prot.Input) -> ObjectInput | bytes:
    kind = value.kind
    if kind == _KIND.PURE:
        raw = bytes(value.pure or b"")
        if len(raw) >= MAX_PURE_ARGUMENT:
            raise _invalid(
                "Invalid transaction: SizeLimitExceeded { limit: max_pure_argument_size, "
                f"value: {len(raw)} }}"
            )
        return raw
    if kind not in (_KIND.IMMUTABLE_OR_OWNED, _KIND.SHARED, _KIND.INPUT_KIND_UNKNOWN, None):
        raise _unmodelled(f"{_KIND(kind).name} inputs")
    object_id = _address(value.object_id, "object_id")
    row = state.object(object_id)
    if kind in (_KIND.INPUT_KIND_UNKNOWN, None):
        # unresolved: what the object is decides (as a node resolves it)
        if row is None:
            raise _invalid(f"Could not find the referenced object {object_id}.")
        kind = _KIND.SHARED if row.owner_kind == "shared" else _KIND.IMMUTABLE_OR_OWNED
    if kind == _KIND.SHARED:
        version = value.version
        if version is None:
            if row is None or row.initial_shared_version is None:
                raise _invalid(f"Could not find the shared object {object_id}.")
            version = row.initial_shared_version
        if value.mutable is None:
            raise _unmodelled(
                "inferring a shared input's mutability from the Move signature: say `mutable`"
            )
        return ObjectInput(object_id, "shared", int(version), None, bool(value.mutable))
    if value.version is None or not value.digest:
        if row is None:
            raise _invalid(f"Could not find the referenced object {object_id}.")
        return ObjectInput(object_id, "owned", row.version, row.digest, True)
    return ObjectInput(object_id, "owned", int(value.version), value.digest, True)


def _command(value: sui_prot.Command) -> Command:
    if value.move_call is not None:
        call = value.move_call
        if call.type_arguments:
            raise _unmodelled("type arguments (no dtp function takes any)")
        return Command(
            "call",
            package=_address(call.package, "package"),
            module=call.module or "",
            function=call.function or "",
            args=tuple(map(_arg, call.arguments)),
        )
    if value.split_coins is not None:
        split = value.split_coins
        return Command("split", coin=_arg(split.coin), amounts=tuple(map(_arg, split.amounts)))
    if value.transfer_objects is not None:
        moved = value.transfer_objects
        return Command(
            "transfer", objects=tuple(map(_arg, moved.objects)), address=_arg(moved.address)
        )
    which = next(
        (name for name in ("merge_coins", "publish", "make_move_vector", "upgrade")
         if getattr(value, name) is not None),
        "empty",
    )  # fmt: skip
    raise _unmodelled(f"{which} commands")


def _structured(state: NodeState, tx: sui_prot.Transaction) -> tuple[ParsedTx, bool, bool, bool]:
    """``tx`` as :class:`ParsedTx` (gas fields it lacks as 0 / empty), and whether it gave
    its gas payment, price and budget."""
    kind = tx.kind
    ptb = kind.programmable_transaction if kind is not None else None
    if ptb is None:
        raise _invalid("Invalid transaction: only programmable transactions are simulated")
    expiration: int | None = None
    if tx.expiration is not None and tx.expiration.kind not in (None, _EXPIRATION.NONE):
        if tx.expiration.kind != _EXPIRATION.EPOCH or tx.expiration.epoch is None:
            raise _unmodelled(f"the {_EXPIRATION(tx.expiration.kind).name} expiration")
        expiration = int(tx.expiration.epoch)
    sender = _address(tx.sender, "sender")
    gas = tx.gas_payment or sui_prot.GasPayment()
    if len(gas.objects) > MAX_GAS_OBJECTS:
        raise _invalid(
            "Invalid transaction: SizeLimitExceeded { limit: max_gas_payment_objects, "
            f"value: {len(gas.objects)} }}"
        )
    payment = tuple(
        (_address(o.object_id, "gas object_id"), int(o.version or 0), o.digest or "")
        for o in gas.objects
    )
    parsed = ParsedTx(
        sender,
        tuple(_input(state, i) for i in ptb.inputs),
        tuple(_command(c) for c in ptb.commands),
        payment,
        _address(gas.owner, "gas owner") if gas.owner else sender,
        int(gas.price or 0),
        int(gas.budget or 0),
        expiration,
    )
    return parsed, bool(payment), gas.price is not None, gas.budget is not None


def _select_coins(state: NodeState, tx: ParsedTx) -> tuple[tuple[str, int, str], ...]:
    """The sender's SUI coins, largest first (none that is an input of ``tx``)."""
    used = {i.object_id for i in tx.inputs if isinstance(i, ObjectInput)}
    coins = [
        row
        for row in state.owned(tx.sender, COIN_TYPE, "", MAX_GAS_OBJECTS + len(used))
        if row.id not in used
    ]
    coins.sort(key=lambda row: (-int(row.balance or 0), row.id))
    if not coins:
        raise _invalid(f"Unable to select a gas coin: {tx.sender} owns no SUI coin.")
    return tuple((row.id, row.version, row.digest) for row in coins[:MAX_GAS_OBJECTS])


def _payment_balance(state: NodeState, tx: ParsedTx) -> int:
    rows = state.objects([c for c, _, _ in tx.gas_payment])
    return sum(int(row.balance or 0) for row in rows.values())


def _split_off_gas(tx: ParsedTx) -> int:
    """MIST the transaction's ``SplitCoins`` take from the gas coin, as far as its pure
    inputs say (an amount that is a command's result is not known before the run)."""
    total = 0
    for command in tx.commands:
        if command.kind != "split" or command.coin is None or command.coin.kind != "gas":
            continue
        for amount in command.amounts:
            if amount.kind == "input" and amount.index < len(tx.inputs):
                raw = tx.inputs[amount.index]
                if isinstance(raw, bytes) and len(raw) == 8:
                    total += int.from_bytes(raw, "little")
    return total


def _budget(gas: sui_prot.GasCostSummary, price: int) -> int:
    """The budget chosen from a simulation's gas use (see the module docs)."""
    computation = int(gas.computation_cost or 0) + GAS_SAFE_OVERHEAD * price
    return max(computation + int(gas.storage_cost or 0), execute.MIN_BUDGET_UNITS * price)


def _proto_tx(tx: ParsedTx, given: sui_prot.Transaction | None) -> sui_prot.Transaction:
    """The resolved transaction as the answer shows it."""
    inputs = []
    for item in tx.inputs:
        if isinstance(item, bytes):
            inputs.append(sui_prot.Input(kind=_KIND.PURE, pure=item))
        else:
            shared = item.kind == "shared"  # (a shared object has no digest, only mutable)
            inputs.append(
                sui_prot.Input(
                    kind=_KIND.SHARED if shared else _KIND.IMMUTABLE_OR_OWNED,
                    object_id=item.object_id,
                    version=item.version,
                    mutable=item.mutable if shared else None,
                    digest=None if shared else item.digest,
                )
            )
    commands = (
        list(given.kind.programmable_transaction.commands)
        if given is not None and given.kind is not None and given.kind.programmable_transaction
        else [_command_message(c) for c in tx.commands]
    )
    return sui_prot.Transaction(
        version=1,
        kind=sui_prot.TransactionKind(
            kind=sui_prot.TransactionKindKind.PROGRAMMABLE_TRANSACTION,
            programmable_transaction=sui_prot.ProgrammableTransaction(
                inputs=inputs, commands=commands
            ),
        ),
        sender=tx.sender,
        gas_payment=sui_prot.GasPayment(
            objects=[
                sui_prot.ObjectReference(object_id=i, version=v, digest=d)
                for i, v, d in tx.gas_payment
            ],
            owner=tx.gas_owner,
            price=tx.gas_price,
            budget=tx.gas_budget,
        ),
        expiration=sui_prot.TransactionExpiration(
            kind=_EXPIRATION.NONE if tx.expiration is None else _EXPIRATION.EPOCH,
            epoch=tx.expiration,
        ),
    )


def _argument_message(arg: Arg) -> sui_prot.Argument:
    if arg.kind == "gas":
        return sui_prot.Argument(kind=_ARG.GAS)
    if arg.kind == "input":
        return sui_prot.Argument(kind=_ARG.INPUT, input=arg.index)
    if arg.kind == "result":
        return sui_prot.Argument(kind=_ARG.RESULT, result=arg.index)
    return sui_prot.Argument(kind=_ARG.RESULT, result=arg.index, subresult=arg.sub)


def _command_message(command: Command) -> sui_prot.Command:
    if command.kind == "split":
        assert command.coin is not None
        return sui_prot.Command(
            split_coins=sui_prot.SplitCoins(
                coin=_argument_message(command.coin),
                amounts=[_argument_message(a) for a in command.amounts],
            )
        )
    if command.kind == "transfer":
        assert command.address is not None
        return sui_prot.Command(
            transfer_objects=sui_prot.TransferObjects(
                objects=[_argument_message(a) for a in command.objects],
                address=_argument_message(command.address),
            )
        )
    return sui_prot.Command(
        move_call=sui_prot.MoveCall(
            package=command.package,
            module=command.module,
            function=command.function,
            arguments=[_argument_message(a) for a in command.args],
        )
    )


def simulate(state: NodeState, data: bytes) -> sui_prot.SimulateTransactionResponse:
    """Answer a ``SimulateTransactionRequest`` (``data``, its bytes): see the module docs.
    Raises :class:`Refusal` for what the node refuses outright."""
    try:
        request = sui_prot.SimulateTransactionRequest.parse(data)
    except Exception:  # betterproto2 raises assorted types for bad bytes
        raise _invalid("the request does not decode") from None
    if request.checks == _CHECKS.DISABLED:
        raise _unmodelled("simulation with the checks disabled")
    given = request.transaction
    if given is None:
        raise _invalid("missing transaction")
    with state.lock:
        if given.bcs is not None and given.bcs.value:
            raw = bytes(given.bcs.value)
            tx = parse_tx(raw)
            tx_bytes: bytes | None = raw
            has_payment, has_price, has_budget = True, True, True
            structured = None
        else:
            tx_bytes = None
            tx, has_payment, has_price, has_budget = _structured(state, given)
            structured = given
        if request.do_gas_selection:
            if not has_price:
                tx = replace(tx, gas_price=state.gas_price)
            if not has_payment:
                tx = replace(tx, gas_payment=_select_coins(state, tx))
        estimating = bool(request.do_gas_selection) and not has_budget
        if estimating:
            # run with the most the payment covers beside what the transaction splits
            # off the gas coin (a split may use only what is above the budget), then
            # budget what it used
            cover = min(execute.MAX_BUDGET, _payment_balance(state, tx) - _split_off_gas(tx))
            tx = replace(tx, gas_budget=max(cover, tx.gas_price * execute.MIN_BUDGET_UNITS))
        executed = _run(state, tx, tx_bytes, structured)
        if estimating:
            assert executed.effects is not None and executed.effects.gas_used is not None
            tx = replace(tx, gas_budget=_budget(executed.effects.gas_used, tx.gas_price))
            executed = _run(state, tx, tx_bytes, structured)
    executed.transaction = _proto_tx(tx, structured)
    mask = request.read_mask
    if mask is not None and mask.paths:
        executed = answers.masked(executed, mask, "SimulateTransaction", root="transaction")
    return sui_prot.SimulateTransactionResponse(
        transaction=executed, suggested_gas_price=state.gas_price
    )


def _run(
    state: NodeState,
    tx: ParsedTx,
    tx_bytes: bytes | None,
    structured: sui_prot.Transaction | None,
) -> sui_prot.ExecutedTransaction:
    """``tx`` checked as ``ExecuteTransaction`` checks it (but the signature) and run by
    the rules, nothing kept."""
    if tx_bytes is not None:
        digest = tx_digest(tx_bytes)
    else:
        digest = tx_digest(bytes(_proto_tx(tx, structured)))
    checked = execute.check_unsigned(state, tx, tx_bytes or b"", digest)
    return execute.execute(state, checked, commit=False)
