"""LocalLedger: the embedded ledger, persisted in SQLite, following the Move rules exactly.

What it models of Sui:

- **Objects** with 32-byte IDs (``0x`` + 64 hex) derived like Sui's from the transaction
  digest and a creation index; owners (``"shared"`` or an address — a Pipe is owned by
  its sender and unusable by anyone else); versions (1 at creation, +1 on every
  transaction that changes the object).
- **Transactions**: every call is encoded canonically (:mod:`dtp.ledger.local._tx`);
  :meth:`LocalLedger.execute` verifies the Sui intent signature over the bytes
  (``identity.sign_transaction``) against the claimed sender before it runs (one a
  HostIdentity of this process has just made is known to verify:
  :func:`dtp.identity.keys.verify_transaction` looks it up instead), while the ledger's own calls
  with a HostIdentity in hand run as its address without a signature made to be found;
  each (sender, nonce) pair executes at most once.
  :meth:`LocalLedger.execute` takes raw bytes and a signature, so forged and replayed
  transactions can be tried.
- **Atomicity**: each call is one SQLite transaction; a failing call (any check, any
  error) changes nothing, not even the nonce. A transaction reads and runs its rule
  first and takes the write lock only to write its effects: should another writer have
  committed in between, it runs again from the start. The file is in WAL mode with a
  busy timeout, so every process on the machine can share it.
- **Money**: SUI balances per address in MIST. Coins are not modelled one by one: a
  ``Coin<SUI>`` argument is split off the sender's balance, payments are added to the
  receiver's. **Gas is free.** :meth:`LocalLedger.faucet` mints test SUI and counts it,
  so conservation can be audited: minted == balances + escrows + broadcast pools and
  earnings (:meth:`LocalLedger.audit`).
- **Events** in one global order; cursors are decimal strings of their position.
- **Time**: the clock follows wall time (ms since the Unix epoch) plus an offset, never
  going backwards, unless frozen (:meth:`freeze_clock`, :meth:`set_clock`, or
  ``LocalLedger(path, clock_ms=0)``), in which case it moves only by
  :meth:`advance_clock` / :meth:`set_clock`. It ends at :data:`CLOCK_MAX_MS` (2**63-1,
  what SQLite stores). Epochs start at 0 and advance only by :meth:`advance_epoch`.
  Clock and epoch are ledger state, shared by all processes.
"""

from dtp.ledger._objects import normalize_id
from dtp.ledger.local._ledger import LocalLedger
from dtp.ledger.local._store import CLOCK_MAX_MS, TxResult, default_ledger_path

__all__ = ["CLOCK_MAX_MS", "LocalLedger", "TxResult", "default_ledger_path", "normalize_id"]
