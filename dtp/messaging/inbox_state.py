"""What a :class:`~dtp.messaging.sealed.SealedInbox` knows: its identity and limits, the
ids it has seen (and the bound on them), the deliveries and fetches under way, its
mailbox cursor and its state file's bookkeeping; with the helpers every part uses
(the inbox is made of this and its parts)."""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dtp.messaging import errors as E
from dtp.messaging.inbox_state_file import InboxStateFile, mark_seen

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.sealed import SealedInbox


#: How many times ``max_seen`` ids an inbox with ``max_age`` keeps while they are too
#: young to forget (see SealedInbox._evict).
_PROTECTED_SEEN: Final = 4


class InboxState:
    """The state of a sealed inbox, declared once for every part of
    :class:`~dtp.messaging.sealed.SealedInbox` (each attribute is described where the
    inbox's ``__init__`` sets it), and the helpers on its seen ids."""

    max_age: float | None
    identity: HostIdentity
    host_id: str
    ledger: Ledger | None
    verify_hosts: bool
    max_seen: int
    _path: Path | None
    _file: InboxStateFile | None
    _seen: OrderedDict[bytes, float]
    _lock: threading.Lock
    _pending: dict[bytes, int]
    _settled: threading.Condition
    _fetcher: int | None
    _waits: dict[int, tuple[int, bool]]
    cursor: str | None
    _rejected: dict[str, int]
    duplicates: int
    _unlock: weakref.finalize[[int], SealedInbox] | None
    _closed: bool
    _key_checked: bool

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def _check_open(self) -> None:
        if self._closed:
            raise E.SealedError("this SealedInbox is closed")

    def _see(self, message_ids: list[bytes]) -> None:
        """(lock held, or loading) Mark ``message_ids`` seen, now (see :meth:`_evict`)."""
        mark_seen(self._seen, message_ids)

    def _evict(self) -> None:
        """(lock held, or loading) Forget the oldest seen ids beyond ``max_seen`` --
        except, with ``max_age``, those delivered (or loaded) less than twice ``max_age``
        ago, whose copies the age check could still let through: anyone can seal a
        message to us, and a flood of them pushed out the id of a message still young,
        whose copy was then delivered again as from its sender. Those are kept up to
        :data:`_PROTECTED_SEEN` times ``max_seen`` ids (beyond that, the oldest go)."""
        seen = self._seen
        excess = len(seen) - self.max_seen
        if excess <= 0:
            return
        young_after = math.inf if self.max_age is None else time.monotonic() - 2 * self.max_age
        over_bound = len(seen) - _PROTECTED_SEEN * self.max_seen
        while excess > 0:
            if next(iter(seen.values())) > young_after and over_bound <= 0:
                break  # (delivered in order: every id after it is younger still)
            seen.popitem(last=False)
            excess -= 1
            over_bound -= 1

    def _load(self) -> None:
        """Take the state file's ids and cursor (see :meth:`InboxStateFile.load`), then
        forget the ids beyond the bound."""
        if self._file is None:
            return
        self.cursor = self._file.load()
        self._evict()

    def _remember(self, message_ids: list[bytes], cursor_moved: bool = False) -> None:
        """(lock held) Persist newly seen ids, and the cursor when it moved (see
        :meth:`InboxStateFile.remember`)."""
        if self._file is not None:
            self._file.remember(message_ids, self.cursor, cursor_moved)
