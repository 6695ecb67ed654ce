"""Executing a transaction on the local ledger (:class:`TxExecution`): its signature
checked, its rule run, and its effects written as one SQLite transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dtp.errors import DTPError, InvalidArgument, InvalidTransaction, WrongSigner
from dtp.identity.keys import HostIdentity, InvalidSignature, verify_transaction
from dtp.ledger.local import rules
from dtp.ledger.local.call_arguments import U64_MAX, u64
from dtp.ledger.local.clock import LedgerClock
from dtp.ledger.local.rules import coordination as local_coordination
from dtp.ledger.local.rules import economics as local_economics
from dtp.ledger.local.stored import SHAPE_ERRORS, SqlStore
from dtp.ledger.local.transactions import _UPSERT_BALANCE
from dtp.ledger.local.tx import Address, Tx, TxValue, base58, decode_tx, encode_tx, tx_digest
from dtp.ledger.objects import Event, OpenedConnection, Settlement, check_signer, normalize_id

# LocalLedger's own calls skip decoding the bytes they just encoded below this size (far
# below the decoder's limits: 64 arguments, 1 MiB a field)
_DIRECT_TX_MAX: Final = 4096
_DIRECT_ARGS_MAX: Final = 16

# The payment models' rules (docs/escrow.md §13-16) join the call table.
rules.FUNCTIONS.update(local_economics.FUNCTIONS)
rules.OBJECT_TYPES.update(local_economics.OBJECT_TYPES)
# So do the registry's (docs/escrow.md §21).
rules.FUNCTIONS.update(local_coordination.FUNCTIONS)
rules.OBJECT_TYPES.update(local_coordination.OBJECT_TYPES)


def _tx_value(value: Any, depth: int) -> TxValue:
    """A :meth:`LocalLedger.build_tx` argument checked as the decoder reads it back: an
    Address of a whole ID (a short one would be encoded short and its bytes read as the
    next value's), a u64, bytes, or a vector (two levels at most)."""
    if isinstance(value, Address):
        return Address(normalize_id(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return u64(value, "A transaction argument")
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and depth < 2:
        return [_tx_value(item, depth + 1) for item in value]
    raise InvalidArgument(
        f"A transaction argument must be an Address, a u64, bytes or a list of them (two "
        f"levels at most), got {value!r}."
    )


def _encodes_as_utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _replayed(tx: Tx) -> InvalidTransaction:
    return InvalidTransaction(
        f"Sender {tx.sender} already executed a transaction with nonce {tx.nonce} "
        "(replayed transaction)."
    )


@dataclass(frozen=True)
class TxResult:
    """The effects of one executed transaction."""

    digest: str
    #: The Move function's return value (an ID, MIST amount, seq), or None.
    value: Any
    events: tuple[Event, ...]
    created: tuple[str, ...]
    #: The data of every object the transaction read or wrote, as it left them.
    objects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The epoch it ran in.
    epoch: int = 0


class TxExecution(LedgerClock):
    """Building, signing and executing the transactions of
    :class:`~dtp.ledger.local.store.LocalStore`, and reading their results."""

    def build_tx(self, sender: str, module: str, function: str, args: Sequence[TxValue]) -> bytes:
        """Transaction bytes for ``module::function(args)`` from ``sender`` with a fresh nonce."""
        for what, name in (("module", module), ("function", function)):
            if not isinstance(name, str):
                raise InvalidArgument(f"The {what} must be a str, got {name!r}.")
            if not name.isascii() and not _encodes_as_utf8(name):
                # a lone surrogate has no UTF-8 form: encode_tx would raise a bare
                # UnicodeEncodeError where every other bad argument is InvalidArgument
                raise InvalidArgument(f"The {what} name {name!r:.60} is not valid Unicode text.")
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise InvalidArgument(f"args must be a sequence of values, got {args!r}.")
        nonce = next(self._nonce_counter) & U64_MAX
        values = tuple(_tx_value(arg, 0) for arg in args)
        tx = Tx(normalize_id(sender, "address"), nonce, module, function, values)
        return encode_tx(tx)

    def execute(self, tx_bytes: bytes, signature: bytes) -> TxResult:
        """Verify ``signature`` (a serialized Sui signature) over ``tx_bytes`` against the
        transaction's sender, then run it atomically. Raises :class:`WrongSigner` for a bad
        or foreign signature, :class:`InvalidTransaction` for malformed bytes or a reused
        nonce, and the rule's ChainError if the Move call aborts."""
        if not isinstance(tx_bytes, bytes | bytearray | memoryview):
            # bytes(5) would be five zero bytes, bytes(None) a TypeError
            raise InvalidTransaction(f"Transaction bytes must be bytes, got {tx_bytes!r:.60}.")
        if not isinstance(signature, bytes | bytearray | memoryview):
            raise WrongSigner(f"The transaction signature must be bytes, got {signature!r:.60}.")
        tx_bytes, signature = bytes(tx_bytes), bytes(signature)
        return self._execute(decode_tx(tx_bytes), tx_bytes, signature)

    def _execute(self, tx: Tx, tx_bytes: bytes, signature: bytes | None) -> TxResult:
        """:meth:`execute` of ``tx_bytes``, already decoded as ``tx``; a ``signature`` of
        None is :meth:`_signed`'s for a sender whose own key made the transaction here."""
        if signature is not None:
            try:
                signer = verify_transaction(tx_bytes, signature)
            except InvalidSignature as exc:
                raise WrongSigner(
                    f"The transaction signature is invalid ({exc}); sender {tx.sender}."
                ) from None
            if signer != tx.sender:
                raise WrongSigner(
                    f"The transaction is signed by {signer}, but its sender is {tx.sender}."
                )
        args = rules.check_args(tx.module, tx.function, tx.args)
        handler = rules.FUNCTIONS[(tx.module, tx.function)][1]
        digest = tx_digest(tx_bytes)
        return self._apply(tx, digest, handler, args)

    def _apply(
        self,
        tx: Tx,
        digest: bytes,
        handler: Callable[..., Any],
        args: list[Any],
        package: str | None = None,
    ) -> TxResult:
        """Run a verified transaction: its reads and its rule first, in a read transaction
        (another writer, say another process, is not kept waiting meanwhile), then its
        writes all together. The first write takes the write lock; when another writer
        holds it, or committed since this one's reads (SQLite's BUSY_SNAPSHOT), it fails
        as "locked" and :meth:`_retry` runs the whole transaction again, reads included:
        what it writes always follows from what the ledger holds when it commits."""
        return self._retry(
            lambda: self._transaction(
                "BEGIN", lambda: self._apply_in(tx, digest, handler, args, package)
            )
        )

    def _apply_in(
        self,
        tx: Tx,
        digest: bytes,
        handler: Callable[..., Any],
        args: list[Any],
        package: str | None,
    ) -> TxResult:
        db = self._db
        digest_text = base58(digest)
        # (sender, nonce) executes once: a replay fails here, before the rule runs; the
        # row itself is written with the effects (the primary key guards it too)
        if db.execute(
            "SELECT 1 FROM transactions WHERE sender = ? AND nonce = ?",
            (tx.sender, str(tx.nonce)),
        ).fetchone():
            raise _replayed(tx)
        store = SqlStore(db)
        meta = self._metas()
        now = self._now(meta)
        epoch = rules.stored_int(meta["epoch"])
        x = rules.Exec(store, tx.sender, digest, now, epoch, package or self._package_id)
        try:
            value = handler(x, *args)
        except SHAPE_ERRORS as exc:
            # the arguments were checked (check_args) and the rules raise typed errors:
            # a bare one comes from stored data that is not what the ledger writes (a
            # field missing, text for a number)
            stored = [obj.id for obj in x.objects.values() if obj.before is not None]
            if isinstance(exc, DTPError) or not stored:
                raise
            what = f"object {stored[0]}" if len(stored) == 1 else f"objects {', '.join(stored)}"
            raise rules.wrong_shape(what, exc) from exc
        # The effects, computed from what was read ...
        created: list[str] = []
        deleted: list[tuple[str]] = []
        inserted: list[tuple[str, str, str, str]] = []
        updated: list[tuple[str, str]] = []
        for obj in x.objects.values():
            if obj.deleted:
                deleted.append((obj.id,))
                continue
            data = rules.to_json(obj.data)
            if obj.before is None:
                created.append(obj.id)
                inserted.append((obj.id, obj.type, obj.owner, data))
            elif data != obj.before:
                updated.append((data, obj.id))
        balances = []
        if x.credits:
            held = store.balances(list(x.credits))
            for address, delta in x.credits.items():
                new = held.get(address, 0) + delta
                assert new >= 0, "take_coin guards every withdrawal"
                balances.append((address, str(new)))
        event_values: list[Any] = []
        for type_, fields in x.events:
            event_values += (type_, tx.sender, digest_text, now, rules.to_json(fields))
        # ... then written, one statement for each kind of change
        try:
            db.execute(
                "INSERT INTO transactions VALUES (?, ?, ?)", (tx.sender, str(tx.nonce), digest_text)
            )
        except sqlite3.IntegrityError:
            raise _replayed(tx) from None
        if now != rules.stored_int(meta["clock_floor"]):
            self._set_meta("clock_floor", now)
        if deleted:
            db.executemany("DELETE FROM objects WHERE id = ?", deleted)
        if inserted:
            db.executemany("INSERT INTO objects VALUES (?, ?, ?, 1, ?)", inserted)
        if updated:
            db.executemany(
                "UPDATE objects SET data = ?, version = version + 1 WHERE id = ?", updated
            )
        if balances:
            db.executemany(_UPSERT_BALANCE, balances)
        events = []
        if x.events:
            # one INSERT of all rows: they get consecutive sequence numbers, the last one
            # reported as lastrowid
            rows = ",".join(["(?, ?, ?, ?, ?)"] * len(x.events))
            cursor = db.execute(
                "INSERT INTO events (type, sender, tx_digest, timestamp_ms, fields) VALUES " + rows,
                event_values,
            )
            seq = int(cursor.lastrowid or 0) - len(x.events)
            for type_, fields in x.events:
                seq += 1
                events.append(Event(str(seq), type_, fields, tx.sender, digest_text, now))
        touched = {obj.id: obj.data for obj in x.objects.values() if not obj.deleted}
        return TxResult(digest_text, value, tuple(events), tuple(created), touched, epoch)

    def apply_verified(
        self,
        sender: str,
        digest: bytes,
        run: Callable[[rules.Exec], Any],
        *,
        package: str | None = None,
    ) -> TxResult:
        """Run ``run(x)`` -- the rule calls of one transaction that the caller has already
        verified (signature, inputs, gas) -- atomically as ``sender``'s transaction
        ``digest`` (32 bytes), at the ledger's clock and epoch; ``run`` calls handlers of
        :data:`~dtp.ledger.local.rules.FUNCTIONS` on ``x`` and returns the call's value.

        For a node stand-in that checks Sui transactions as a node does and executes
        their Move calls with these rules (tests/sui_node). As :meth:`execute`: a
        ChainError from ``run`` changes nothing; a digest executes at most once
        (InvalidTransaction). ``package``: the package ID the rules run as (the one
        receipts name, docs/escrow.md §6) when not this file's own -- the node's."""
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise InvalidTransaction(f"A transaction digest is 32 bytes, got {digest!r:.80}.")
        # the digest is the replay key (the transactions table's nonce column)
        tx = Tx(normalize_id(sender, "address"), int.from_bytes(digest, "big"), "", "", ())
        if package is not None:
            package = normalize_id(package, "package ID")
        return self._apply(tx, digest, run, [], package)

    def _call(self, signer: HostIdentity, module: str, function: str, *args: TxValue) -> TxResult:
        return self._execute(*self._signed(signer, module, function, *args))

    def _signed(
        self, signer: HostIdentity, module: str, function: str, *args: TxValue
    ) -> tuple[Tx, bytes, bytes | None]:
        """The transaction, its bytes and ``signer``'s signature, ready for _execute (None
        for the signature of a plain :class:`HostIdentity`: see below)."""
        # The bytes are encoded from this Tx here: decoding them again would give it back
        # (everything else execute() does still runs).
        # Vectors and oversized transactions go through the decoder all the same: it alone
        # enforces the nesting and size limits.
        check_signer(signer)
        nonce = next(self._nonce_counter) & U64_MAX
        tx = Tx(normalize_id(signer.sui_address, "address"), nonce, module, function, args)
        tx_bytes = encode_tx(tx)
        if (
            len(tx_bytes) > _DIRECT_TX_MAX
            or len(args) > _DIRECT_ARGS_MAX
            or any(isinstance(a, list) for a in args)
        ):
            tx = decode_tx(tx_bytes)
        if type(signer) is HostIdentity:
            # The sender's own key is in hand and the sender is its address: a signature
            # would be made only for _execute to find it made here (keys' memo of own
            # signatures) -- an Ed25519 signing and two hashes of the bytes, some 30 us
            # of every call, on the critical path of connecting by host ID (the open) and
            # of a paid server's close (the settlement). A subclass may sign otherwise
            # (another key, a changed bit): its signatures are made and checked.
            return tx, tx_bytes, None
        return tx, tx_bytes, signer.sign_transaction(tx_bytes)

    @staticmethod
    def _settlement(result: TxResult, paid: int) -> Settlement:
        settled = next(e for e in result.events if e.name == "ConnectionSettled")
        return Settlement(paid, int(settled["claimed"]), int(settled["refunded"]))

    @staticmethod
    def _opened(result: TxResult) -> OpenedConnection:
        opened = next(e for e in result.events if e.name == "ConnectionOpened")
        return OpenedConnection.from_event(opened.fields)
