"""The stand-in node's answers to the ``sui.rpc.v2`` reads, built from its state as a full
node builds them: objects with owner, version, digest, full Move type and BCS contents;
gas coins with their balance; dynamic fields; epochs with the reference gas price (and the
system state's); checkpoints; events, streamed with watermarks and an end reason.

Every answer honours the request's read mask, with the defaults the API documents (a
field the caller did not ask for is not sent, as a node leaves it out).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import pysui.sui.sui_grpc.suimsgs.google.rpc as google_rpc
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
from grpclib.const import Status

from dtp.errors import ChainError
from dtp.identity._bcs import BcsError, BcsReader
from dtp.identity._schemes import InvalidSignature, check_signature
from dtp.identity.keys import personal_message_digest
from dtp.ledger._objects import normalize_id
from dtp.testing.sui_node._execute import owner_message
from dtp.testing.sui_node._objects import COIN_TYPE, full_address
from dtp.testing.sui_node._ptb import Refusal
from dtp.testing.sui_node._state import NodeState, ObjectRow, Position

__all__ = [
    "DEFAULT_MASKS",
    "balance",
    "batch_get_objects",
    "checkpoint",
    "dynamic_fields",
    "epoch",
    "event_frames",
    "get_object",
    "masked",
    "normalize_type",
    "owned_objects",
    "service_info",
    "timestamp",
]

#: Read masks a node applies when the request has none (sui.rpc.v2 documentation).
DEFAULT_MASKS: Final = {
    "GetObject": ("object_id", "version", "digest"),
    "BatchGetObjects": ("object_id", "version", "digest"),
    "GetCheckpoint": ("sequence_number", "digest"),
    "GetEpoch": ("epoch",),
    "ListDynamicFields": ("parent", "field_id"),
    "ListOwnedObjects": ("object_id", "version", "object_type"),
    "ExecuteTransaction": ("effects.status", "checkpoint"),
    "GetTransaction": ("digest",),
}
#: ``ListOwnedObjects`` / ``ListDynamicFields`` page sizes and ``ListEvents`` limits.
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 1000
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def timestamp(ms: int) -> datetime.datetime:
    """A protobuf timestamp of ``ms`` since the Unix epoch."""
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def invalid(message: str) -> Refusal:
    return Refusal(Status.INVALID_ARGUMENT, message)


def _id(value: str | None, what: str) -> str:
    if value is None:
        raise invalid(f"invalid {what}: None")
    try:
        return full_address(normalize_id(value, what))
    except (ChainError, AttributeError, TypeError):
        raise invalid(f"invalid {what}: {value!r}") from None


def normalize_type(text: str) -> str:
    """A Move type string with every address in full (``0x2::coin::Coin<0x2::sui::SUI>``
    and the full form are one type)."""
    return _ADDRESS.sub(lambda m: full_address(m.group(0).lower()), text.replace(" ", ""))


# -- read masks ----------------------------------------------------------------------------------


def _tree(paths: Sequence[str]) -> dict[str, Any]:
    """Paths as a tree: ``{}`` keeps a field whole, a non-empty dict keeps those of its
    fields ("a" and "a.b" keep all of a)."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is not None and not child:
                break  # kept whole already
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = {}
    return tree


def _apply(message: Any, tree: dict[str, Any]) -> None:
    blank = type(message)()
    for f in dataclasses.fields(message):
        sub = tree.get(f.name)
        value = getattr(message, f.name)
        if sub is None:
            setattr(message, f.name, getattr(blank, f.name))
        elif sub:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if item is not None and dataclasses.is_dataclass(item):
                    _apply(item, sub)


def masked(message: Any, mask: Any, method: str, root: str = "") -> Any:
    """``message`` with only the fields the read ``mask`` (a FieldMask, or None for the
    method's default) names; ``root`` is the field the paths are relative to."""
    paths = list(mask.paths) if mask is not None and mask.paths else list(DEFAULT_MASKS[method])
    if "*" in paths:
        return message
    if root:
        paths = [p[len(root) + 1 :] for p in paths if p.startswith(root + ".")]
        if not paths:
            return type(message)()
    _apply(message, _tree(paths))
    return message


# -- objects --------------------------------------------------------------------------------------


def object_message(row: ObjectRow) -> sui_prot.Object:
    """The ``sui.rpc.v2.Object`` of a row, every field filled (a mask trims it)."""
    return sui_prot.Object(
        object_id=row.id,
        version=row.version,
        digest=row.digest,
        owner=owner_message(row),
        object_type=row.type,
        has_public_transfer=row.type == COIN_TYPE,
        contents=sui_prot.Bcs(
            name=row.type.split("<", 1)[0].rsplit("::", 1)[-1], value=row.contents
        ),
        previous_transaction=row.previous_tx or None,
        storage_rebate=row.storage_rebate,
        balance=row.balance,
    )


def get_object(
    state: NodeState, request: sui_prot.GetObjectRequest, method: str = "GetObject"
) -> sui_prot.GetObjectResponse:
    object_id = _id(request.object_id, "object_id")
    row = state.object(object_id)
    if row is None or (request.version is not None and request.version != row.version):
        at = "" if request.version is None else f" at version {request.version}"
        raise Refusal(Status.NOT_FOUND, f"Object {object_id}{at} not found")
    obj = masked(object_message(row), request.read_mask, method)
    return sui_prot.GetObjectResponse(object=obj)


#: Objects one BatchGetObjects may ask for (a full node's limit; Mysten's SDK sends 50).
MAX_BATCH_OBJECTS: Final = 1000


def batch_get_objects(
    state: NodeState,
    request: sui_prot.BatchGetObjectsRequest,
    hidden: Callable[[str], bool] = lambda _: False,
) -> sui_prot.BatchGetObjectsResponse:
    """One ``GetObjectResult`` per request, in order: the object (under the batch's read
    mask), or the error GetObject would have answered, as a ``google.rpc.Status`` (the
    batch itself fails only for a bad request: too many objects, a malformed ID).
    ``hidden(id)``: an object the node has not indexed yet (``index_lag``)."""
    if len(request.requests) > MAX_BATCH_OBJECTS:
        raise invalid(f"at most {MAX_BATCH_OBJECTS} objects per BatchGetObjects")
    results = []
    for one in request.requests:
        single = sui_prot.GetObjectRequest(
            object_id=one.object_id, version=one.version, read_mask=request.read_mask
        )
        try:
            if hidden(one.object_id or ""):
                raise Refusal(Status.NOT_FOUND, f"Object {one.object_id} not found")
            found = get_object(state, single, "BatchGetObjects").object
            results.append(sui_prot.GetObjectResult(object=found))
        except Refusal as refusal:
            if refusal.status == Status.INVALID_ARGUMENT:
                raise
            status = google_rpc.Status(code=refusal.status.value, message=refusal.message)
            results.append(sui_prot.GetObjectResult(error=status))
    return sui_prot.BatchGetObjectsResponse(objects=results)


def _page_token(token: bytes | None) -> str:
    if not token:
        return ""
    if len(token) != 32:
        raise invalid("invalid page_token")
    return "0x" + bytes(token).hex()


def _page_size(size: int | None) -> int:
    return DEFAULT_PAGE if not size else min(int(size), MAX_PAGE)


def owned_objects(
    state: NodeState, request: sui_prot.ListOwnedObjectsRequest
) -> sui_prot.ListOwnedObjectsResponse:
    owner = _id(request.owner, "owner")
    size = _page_size(request.page_size)
    type_ = normalize_type(request.object_type) if request.object_type else None
    exact = type_
    if type_ is not None and "<" not in type_:
        exact = None  # "0x2::coin::Coin": any Coin<T>
    rows = state.owned(owner, exact, _page_token(request.page_token), 1 << 30)
    if type_ is not None and exact is None:
        rows = [r for r in rows if r.type.split("<", 1)[0] == type_]
    page = rows[:size]
    more = len(rows) > size
    return sui_prot.ListOwnedObjectsResponse(
        objects=[masked(object_message(r), request.read_mask, "ListOwnedObjects") for r in page],
        next_page_token=bytes.fromhex(page[-1].id[2:]) if more else None,
    )


def dynamic_fields(
    state: NodeState, request: sui_prot.ListDynamicFieldsRequest
) -> sui_prot.ListDynamicFieldsResponse:
    parent = _id(request.parent, "parent")
    size = _page_size(request.page_size)
    rows = state.fields(parent, _page_token(request.page_token), size + 1)
    out = []
    for row in rows[:size]:
        # Field<K, V> { id, name: K (an address or an ID, 32 bytes; a u16, 2), value: V }
        key_type, value_type = row.type.split("<", 1)[1][:-1].split(",", 1)
        end = 32 + (2 if key_type.strip() == "u16" else 32)
        field = sui_prot.DynamicField(
            kind=sui_prot.DynamicFieldDynamicFieldKind.FIELD,
            parent=parent,
            field_id=row.id,
            field_object=object_message(row),
            name=sui_prot.Bcs(name=key_type.strip(), value=row.contents[32:end]),
            value=sui_prot.Bcs(name=value_type.strip(), value=row.contents[end:]),
            value_type=value_type.strip(),
        )
        out.append(masked(field, request.read_mask, "ListDynamicFields"))
    more = len(rows) > size
    return sui_prot.ListDynamicFieldsResponse(
        dynamic_fields=out,
        next_page_token=bytes.fromhex(rows[size - 1].id[2:]) if more else None,
    )


def balance(state: NodeState, request: sui_prot.GetBalanceRequest) -> sui_prot.GetBalanceResponse:
    owner = _id(request.owner, "owner")
    coin = normalize_type(request.coin_type or "0x2::sui::SUI")
    # the stand-in holds SUI only
    total = state.coin_balance(owner) if coin == normalize_type("0x2::sui::SUI") else 0
    return sui_prot.GetBalanceResponse(
        balance=sui_prot.Balance(
            coin_type=coin, balance=total, address_balance=0, coin_balance=total
        )
    )


# -- epochs, checkpoints, service ----------------------------------------------------------------


def epoch(
    state: NodeState, request: sui_prot.GetEpochRequest, with_price: bool = True
) -> sui_prot.GetEpochResponse:
    """The current epoch (or the one asked for). ``with_price`` False leaves the epoch's
    ``reference_gas_price`` out, as a full node without RPC indexes does; the system
    state carries it still."""
    current = state.epoch()
    number = current if request.epoch is None else int(request.epoch)
    if number > current:
        raise Refusal(Status.NOT_FOUND, f"Epoch {number} not found")
    start = state.epoch_start_ms() if number == current else None
    message = sui_prot.Epoch(
        epoch=number,
        reference_gas_price=state.gas_price if with_price else None,
        start=timestamp(start) if start is not None else None,
        system_state=sui_prot.SystemState(
            epoch=number,
            protocol_version=1,
            reference_gas_price=state.gas_price,
            epoch_start_timestamp_ms=start,
            safe_mode=False,
        ),
    )
    return sui_prot.GetEpochResponse(epoch=masked(message, request.read_mask, "GetEpoch"))


def checkpoint(
    state: NodeState, request: sui_prot.GetCheckpointRequest
) -> sui_prot.GetCheckpointResponse:
    if request.digest is not None:
        found = None
        for seq in range(state.latest_checkpoint() + 1):
            row = state.checkpoint(seq)
            if row is not None and row[1] == request.digest:
                found = row
                break
    else:
        found = state.checkpoint(request.sequence_number)
    if found is None:
        raise Refusal(Status.NOT_FOUND, "Checkpoint not found")
    seq, digest, ms, epoch_number = found
    message = sui_prot.Checkpoint(
        sequence_number=seq,
        digest=digest,
        summary=sui_prot.CheckpointSummary(
            digest=digest,
            epoch=epoch_number,
            sequence_number=seq,
            total_network_transactions=seq,
            timestamp=timestamp(ms),
        ),
    )
    return sui_prot.GetCheckpointResponse(
        checkpoint=masked(message, request.read_mask, "GetCheckpoint")
    )


def service_info(state: NodeState) -> sui_prot.GetServiceInfoResponse:
    genesis = state.checkpoint(0)
    latest = state.checkpoint(None)
    assert genesis is not None and latest is not None
    return sui_prot.GetServiceInfoResponse(
        chain_id=genesis[1],
        chain="localnet",
        epoch=state.epoch(),
        checkpoint_height=latest[0],
        timestamp=timestamp(latest[2]),
        lowest_available_checkpoint=0,
        lowest_available_checkpoint_objects=0,
        server="dtp-sui-node-stand-in",
    )


# -- events ---------------------------------------------------------------------------------------

_POSITION_MAX: Final = 0xFFFFFFFF


def cursor(position: Position) -> bytes:
    """The opaque cursor of a ledger position: checkpoint (u64), transaction index and
    event index (u32 each), big-endian, so that byte order is ledger order."""
    seq, tx, index = position
    return seq.to_bytes(8, "big") + tx.to_bytes(4, "big") + index.to_bytes(4, "big")


def _position(raw: bytes | None, what: str) -> Position | None:
    if raw is None:
        return None
    if len(raw) != 16:
        raise invalid(f"invalid {what} cursor")
    return (
        int.from_bytes(raw[:8], "big"),
        int.from_bytes(raw[8:12], "big"),
        int.from_bytes(raw[12:], "big"),
    )


def _matches(
    request_filter: sui_prot.EventFilter | None, type_: str, sender: str, module: str
) -> bool:
    if request_filter is None:
        return True
    if not request_filter.terms:
        raise invalid("an event filter must have at least one term")
    for term in request_filter.terms:
        if all(_literal(lit, type_, sender, module) for lit in term.literals):
            return True
    return False


def _literal(lit: sui_prot.EventLiteral, type_: str, sender: str, module: str) -> bool:
    if lit.event_type is not None:
        wanted = normalize_type(lit.event_type.event_type or "")
        hit = type_ == wanted or (
            "<" not in wanted
            and (type_.startswith(wanted + "::") or type_.startswith(wanted + "<"))
        )
    elif lit.sender is not None:
        hit = sender == _id(lit.sender.address, "sender")
    elif lit.emit_module is not None:
        wanted = normalize_type(lit.emit_module.module or "")
        package = type_.split("::", 1)[0]
        hit = wanted in (package, f"{package}::{module}")
    else:
        raise Refusal(Status.UNIMPLEMENTED, "The Sui node stand-in filters events by type, "
                      "sender and emitting module only.")  # fmt: skip
    return hit != bool(lit.negated)


def event_frames(
    state: NodeState, request: sui_prot.ListEventsRequest, scan_limit: int | None = None
) -> Iterator[sui_prot.ListEventsResponse]:
    """The frames of one ``ListEvents`` stream (sui.rpc.v2 semantics: a watermark on every
    frame, ``end`` on the last; ``scan_limit`` bounds the events examined, as a node's
    per-request budget does)."""
    options = request.options or sui_prot.QueryOptions()
    after = _position(options.after, "after")
    before = _position(options.before, "before")
    descending = options.ordering == sui_prot.Ordering.DESCENDING
    limit = DEFAULT_PAGE if not options.limit else min(int(options.limit), MAX_PAGE)
    low_cp = request.start_checkpoint
    high_cp = request.end_checkpoint
    tip = state.latest_checkpoint()
    reasons = sui_prot.QueryEndReason
    sent = scanned = 0
    last: Position | None = after if not descending else before
    for position, digest, sender, type_, module, contents in state.events(
        after, before, descending
    ):
        seq = position[0]
        if low_cp is not None and seq < low_cp:
            if descending:
                break
            continue
        if high_cp is not None and seq >= high_cp:
            if not descending:
                break
            continue
        scanned += 1
        last = position
        if scan_limit is not None and scanned > scan_limit:
            yield _frame(None, position, reasons.SCAN_LIMIT)
            return
        if not _matches(request.filter, type_, sender, module):
            continue
        sent += 1
        event = sui_prot.Event(
            package_id=type_.split("::", 1)[0],
            module=module,
            sender=sender,
            event_type=type_,
            contents=sui_prot.Bcs(name=type_, value=contents),
            checkpoint=seq,
            transaction_digest=digest,
            transaction_index=position[1],
            event_index=position[2],
        )
        event = masked(event, request.read_mask, "ListEvents") if request.read_mask else event
        if sent >= limit:
            yield _frame(event, position, reasons.ITEM_LIMIT)
            return
        yield _frame(event, position, None)
    if descending:
        end = (low_cp, 0, 0) if low_cp is not None else (0, 0, 0)
        reason = reasons.CHECKPOINT_BOUND if low_cp is not None else reasons.LEDGER_TIP
        yield _frame(None, min(end, last) if last is not None else end, reason)
        return
    if before is not None:
        yield _frame(None, before, reasons.CURSOR_BOUND)
    elif high_cp is not None and high_cp <= tip:
        yield _frame(None, (high_cp - 1, _POSITION_MAX, _POSITION_MAX), reasons.CHECKPOINT_BOUND)
    else:
        yield _frame(None, (tip, _POSITION_MAX, _POSITION_MAX), reasons.LEDGER_TIP, tip)


def _frame(
    event: sui_prot.Event | None, position: Position, reason: Any, covered: int | None = None
) -> sui_prot.ListEventsResponse:
    return sui_prot.ListEventsResponse(
        event=event,
        watermark=sui_prot.Watermark(cursor=cursor(position), checkpoint=covered),
        end=sui_prot.QueryEnd(reason=reason) if reason is not None else None,
    )


def verify_signature(request: sui_prot.VerifySignatureRequest) -> Any:
    """``VerifySignature`` as a full node answers it (sui-rpc-api): a ``PersonalMessage``
    (a BCS ``vector<u8>``), the signature of any scheme checked as DTP checks it
    (:mod:`dtp.identity._schemes`), the address, when given, compared with the one the
    signature proves. A zkLogin proof's Groth16 part is beyond this stand-in (no
    verifying key, no issuer keys): it answers such a proof invalid, saying why."""
    message = request.message
    if message is None or message.name != "PersonalMessage" or message.value is None:
        raise Refusal(Status.INVALID_ARGUMENT, "message: this stand-in checks PersonalMessage only")
    reader = BcsReader(bytes(message.value))
    try:
        text = reader.vector()
        reader.done()
    except BcsError as exc:
        raise Refusal(Status.INVALID_ARGUMENT, f"message: invalid message: {exc}") from None
    user = request.signature
    if user is None or user.bcs is None or not user.bcs.value:
        raise Refusal(Status.INVALID_ARGUMENT, "signature: field missing")

    def verdict(reason: str | None) -> Any:
        return sui_prot.VerifySignatureResponse(is_valid=reason is None, reason=reason)

    try:
        signer = check_signature(bytes(user.bcs.value), personal_message_digest(text))
    except InvalidSignature as exc:
        return verdict(str(exc))
    if request.address and normalize_id(request.address, "address") != signer.address:
        return verdict(
            f"provided address `{request.address}` does not match derived address "
            f"`{signer.address}`"
        )
    if signer.node_check is not None:
        return verdict("this node stand-in verifies no zkLogin proof (no Groth16 verifying key)")
    return verdict(None)
