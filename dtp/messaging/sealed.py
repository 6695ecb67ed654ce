"""Sealed messages to a host: one-way Noise to the recipient's static key
(docs/messaging.md §3).

- ``N`` (anonymous): only the recipient can read the message; the sender stays unknown.
- ``X`` (sender proven): Noise ``X`` authenticates the sender's static X25519 key, and the
  plaintext carries the sender's Sui address with an Ed25519 signature binding it to that
  key, the recipient's key, the message id and the body. A message claiming someone else's
  address, or a host whose published Noise key is not the one that sealed it, is refused
  with :class:`~dtp.messaging.errors.ForgedSender`.

Delivery: directly over any DTP stream (:class:`SealedInbox` registers an RPC method
``sealed.deliver``) when the recipient is online, or through the ledger mailbox
(``mailbox::send`` → ``MailDeposited`` events) when it is not; :meth:`SealedInbox.fetch`
reads the mailbox from a saved cursor. Each message id is delivered to the application
once, whichever way (and however often) it arrived.

:func:`seal` / :func:`open_sealed` are pure functions of their inputs (keys and randomness
are passed in); they live in ``sealed_messages`` with :func:`send_sealed`.
:class:`SealedInbox` is made of its parts: ``inbox_state`` (what it knows),
``inbox_delivery`` (claiming, settling, direct delivery) and ``inbox_fetching`` (the
ledger mailbox); it holds its state file, an ``inbox_state_file.InboxStateFile``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from dtp.identity.files import companion, lock_exclusive
from dtp.messaging import errors as E
from dtp.messaging.inbox_fetching import InboxFetching
from dtp.messaging.inbox_state import _PROTECTED_SEEN as _PROTECTED_SEEN
from dtp.messaging.inbox_state_file import InboxStateFile
from dtp.messaging.sealed_messages import (
    MAX_BODY,
    MAX_SEALED,
    PATTERN_N,
    PATTERN_X,
    PROLOGUE,
    SIGN_DOMAIN,
    VERSION,
    OpenedMessage,
    _canonical,
    open_sealed,
    seal,
    send_sealed,
)

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger

__all__ = [
    "MAX_BODY",
    "MAX_SEALED",
    "PATTERN_N",
    "PATTERN_X",
    "PROLOGUE",
    "SIGN_DOMAIN",
    "VERSION",
    "OpenedMessage",
    "SealedInbox",
    "open_sealed",
    "seal",
    "send_sealed",
]


def _real_path(path: Path) -> Path:
    """``path`` with its symlinks resolved: the snapshot replaced a link to the state
    file with a file of its own, and the journal went next to the link, so the next
    inbox opened by the file's real name read a state that knew none of it."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (reading it fails)
        return path


class SealedInbox(InboxFetching):
    """A host's inbox for sealed messages: opens them, drops duplicates, and remembers
    the mailbox cursor (in ``state_path``, a small JSON file, when given) so that each
    message reaches the application once — across restarts too.

    ``max_seen`` bounds the remembered message ids (oldest forgotten first). Ids seen
    between two saves of the cursor are appended to a journal next to the state file
    (``<state_path>.log``). A state file or journal that is not what the inbox writes
    raises :class:`~dtp.messaging.errors.SealedError` naming it. ``host_id`` and the recipient a
    message names are compared as object IDs (``0xAB`` is ``0x00…ab``); with a ``ledger``,
    ``host_id`` must be one (ValueError), as the mailbox is read by it.

    ``max_age`` (seconds, None: no limit) refuses messages dated earlier than that, or
    more than ``max_age`` ahead of this host's clock
    (:class:`~dtp.messaging.errors.SealedExpired`, counted in :attr:`rejected`): a copy
    of an old message, which anyone may post to the mailbox again, is then refused even
    after its id has left the last ``max_seen`` (a message dated far ahead, by a sender
    whose clock is wrong, would not grow old for years). Choose it shorter than half
    the time ``max_seen`` messages take to arrive, and longer than a message may wait
    in the mailbox (and than the senders' clocks may be off).

    One inbox per state file: it holds an exclusive lock (``flock``) on
    ``<state_path>-lock`` until :meth:`close` (or until it is garbage-collected), and a
    second inbox on the same file, in this process or another, is a SealedError -- two
    would each deliver every message once, and overwrite each other's cursor. A closed
    inbox delivers nothing more (SealedError, ``sealed.deliver`` included), and a
    :meth:`fetch` or :meth:`accept` under way when it closes delivers nothing either
    (SealedError; nothing is saved: those messages are the next inbox's). A state file
    reached through a symlink is the file it links to.

    Any thread may call :meth:`accept` and :meth:`fetch` (fetches take turns, so the
    cursor only moves forward); :attr:`rejected` and :attr:`duplicates` count under
    the inbox's lock.

    A state write that fails (a full disk...) raises its OSError; the messages it was
    for are not taken as seen (for ``sealed.deliver``, whose handler has them, only in
    memory), so a copy or the next :meth:`fetch` delivers them. A new snapshot is
    flushed to the disk (fsync, then its directory) before the journal is emptied; the
    journal's lines are not (one per delivery): a power cut, unlike a crash of the
    process, can forget the last ids delivered.
    """

    def __init__(
        self,
        identity: HostIdentity,
        host_id: str,
        ledger: Ledger | None = None,
        *,
        state_path: str | os.PathLike[str] | None = None,
        max_seen: int = 100_000,
        verify_hosts: bool = True,
        max_age: float | None = None,
    ) -> None:
        if max_age is not None and (
            not isinstance(max_age, int | float)
            or isinstance(max_age, bool)
            or not 0 < max_age < float("inf")
        ):
            raise ValueError(
                f"max_age must be a positive number of seconds or None, not {max_age!r}"
            )
        count: object = max_seen  # (typed int, but callers pass what they have)
        if isinstance(count, float) and count.is_integer():
            count = int(count)  # 1e5
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            # (-1 raised KeyError from an empty dict, "10" TypeError, at the first message)
            raise ValueError(f"max_seen must be a number of ids (an int >= 0), not {max_seen!r}")
        self.max_age = max_age
        self.identity = identity
        if not isinstance(host_id, str):
            raise TypeError(f"host_id must be a str, not {type(host_id).__name__!r}")
        if ledger is not None:
            from dtp.errors import InvalidObjectId
            from dtp.ledger.objects import normalize_id

            # fetch reads the mailbox by it: with anything but an object ID it skipped
            # all the mail, moving (and saving) the cursor past it
            try:
                normalize_id(host_id, "host ID")
            except InvalidObjectId:
                raise ValueError(f"host_id {host_id!r} is not an object ID (0x + hex)") from None
        self.host_id = _canonical(host_id)
        self.ledger = ledger
        self.verify_hosts = verify_hosts
        self.max_seen = count
        self._path = _real_path(Path(state_path)) if state_path is not None else None
        # seen ids, oldest first, each with when (monotonic) it was delivered -- or
        # loaded from the state file: see _evict
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        # the state file, which writes these ids (and the cursor the inbox passes it)
        self._file = (
            None if self._path is None else InboxStateFile(self._path, self.host_id, self._seen)
        )
        self._lock = threading.Lock()
        # ids being handed to register()'s on_message: marked seen only once it
        # returned, and a concurrent copy waits for that outcome (see _claim); the
        # value is the delivering thread's ident
        self._pending: dict[bytes, int] = {}
        self._settled = threading.Condition(self._lock)
        # fetches take turns (the thread whose fetch reads and settles the mailbox now):
        # two at once each read from the cursor they saw, and the later to end wrote its
        # older cursor over the newer one
        self._fetcher: int | None = None
        # thread -> (the thread it waits for, whether for a fetch's turn): waits that
        # would close a cycle are not taken (see _cycle)
        self._waits: dict[int, tuple[int, bool]] = {}
        self.cursor: str | None = None
        self._rejected: dict[str, int] = {}
        self.duplicates = 0
        self._unlock: weakref.finalize[[int], SealedInbox] | None = None
        self._closed = False
        self._key_checked = False  # the host publishes our Noise key (see fetch)
        if self._path is not None:
            try:
                fd = lock_exclusive(companion(self._path))
            except BlockingIOError:
                raise E.SealedError(
                    f"inbox state file {str(self._path)!r} is in use by another SealedInbox "
                    "(this process or another): one state file serves one inbox at a time"
                ) from None
            except OSError as exc:
                raise E.SealedError(
                    f"cannot lock inbox state file {str(self._path)!r}: {exc}"
                ) from exc
            if fd is not None:
                self._unlock = weakref.finalize(self, os.close, fd)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    @property
    def rejected(self) -> dict[str, int]:
        """Messages refused (undecryptable, malformed, forged, expired...), by reason: a
        snapshot, counted under the inbox's lock (threads deliver at once)."""
        with self._lock:
            return dict(self._rejected)

    def close(self) -> None:
        """Release the state file's lock (idempotent). Everything delivered is saved
        already: the inbox writes its state as it goes. A closed inbox delivers nothing
        more (:meth:`accept`, :meth:`fetch` and ``sealed.deliver`` raise SealedError): it
        would deliver again what the next inbox on the file delivers, and write over
        its state."""
        with self._lock:
            self._closed = True
        if self._unlock is not None:
            self._unlock()

    def __enter__(self) -> SealedInbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
