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
:class:`SealedInbox` is here whole (its parts: docs/architecture.md, "apps: messaging").
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dtp.identity._files import companion, lock_exclusive
from dtp.messaging import errors as E
from dtp.messaging._inbox_state_file import InboxStateFile, mark_seen
from dtp.messaging._sealed_messages import (
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
    from collections.abc import Callable

    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.messaging.rpc import RpcServer

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


#: How many times ``max_seen`` ids an inbox with ``max_age`` keeps while they are too
#: young to forget (see SealedInbox._evict).
_PROTECTED_SEEN: Final = 4


def _real_path(path: Path) -> Path:
    """``path`` with its symlinks resolved: the snapshot replaced a link to the state
    file with a file of its own, and the journal went next to the link, so the next
    inbox opened by the file's real name read a state that knew none of it."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (reading it fails)
        return path


class SealedInbox:
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
            # (checked here: -1 or "10" would fail only at the first message, and untyped)
            raise ValueError(f"max_seen must be a number of ids (an int >= 0), not {max_seen!r}")
        self.max_age = max_age
        self.identity = identity
        if not isinstance(host_id, str):
            raise TypeError(f"host_id must be a str, not {type(host_id).__name__!r}")
        if ledger is not None:
            from dtp.errors import InvalidObjectId
            from dtp.ledger._objects import normalize_id

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

    # -- what it knows -------------------------------------------------------------------------

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

    # -- delivery: opening, claiming, settling -------------------------------------------------

    def accept(self, data: bytes, via: str = "direct") -> OpenedMessage | None:
        """Open ``data``; returns the message, or None for a duplicate. Raises the typed
        errors of :func:`open_sealed` (and counts them in :attr:`rejected`), SealedError
        once the inbox is closed."""
        self._check_open()  # (before opening: a closed inbox looks at nothing)
        message = self._open(data, via)
        if not self._claim(message.message_id):
            return None
        self._settle(message.message_id, delivered=True)
        return message

    def _open(self, data: bytes, via: str) -> OpenedMessage:
        try:
            ledger = self.ledger if self.verify_hosts else None
            message = open_sealed(self.identity, data, ledger=ledger)
        except E.SealedError as exc:
            self._reject(type(exc).__name__)
            raise
        if message.recipient_host is not None and _canonical(message.recipient_host) != (
            self.host_id
        ):
            self._reject("WrongRecipient")
            raise E.SealedDecryptError()
        if self.max_age is not None:
            now_ms = time.time_ns() // 1_000_000
            window = int(self.max_age * 1000)
            if not now_ms - window <= message.sent_ms <= now_ms + window:
                # a copy of a message delivered long ago, whose id may be forgotten; or
                # one dated so far ahead that its copies would be taken until that date
                self._reject("SealedExpired")
                which = "older than" if message.sent_ms < now_ms else "ahead of now by more than"
                raise E.SealedExpired(
                    f"sealed message dated {message.sent_ms} ms, {which} max_age ({self.max_age} s)"
                )
        return OpenedMessage(**{**message.__dict__, "via": via})

    def _claim(self, message_id: bytes) -> bool:
        """Take ``message_id`` for delivery: False (a counted duplicate) if it was seen.
        While another thread is delivering it, wait for that to end: seen if it
        succeeded, ours to deliver if it failed. While this thread is (an on_message
        handler calling :meth:`fetch` or :meth:`accept`), or one that waits for this
        thread's own deliveries to end, it is a duplicate: that wait would never end."""
        me = threading.get_ident()
        with self._settled:
            while message_id in self._pending:
                cycle = self._cycle(self._pending[message_id])
                if cycle is not None and not any(cycle):
                    self.duplicates += 1
                    return False
                # (a cycle through a fetch's turn is broken by the fetch waiting for its
                # turn: it gives up once woken, see _take_turn)
                self._waits[me] = (self._pending[message_id], False)
                if cycle is not None:
                    self._settled.notify_all()
                try:
                    self._settled.wait()
                finally:
                    del self._waits[me]
            self._check_open()
            if message_id in self._seen:
                self.duplicates += 1
                return False
            self._pending[message_id] = me
            return True

    def _cycle(self, owner: int) -> list[bool] | None:
        """(lock held) Whether waiting for thread ``owner`` would wait for this thread:
        the kinds of the waits from ``owner`` back to it (True: for a fetch's turn; []
        when ``owner`` is this thread), or None when it would not."""
        me = threading.get_ident()
        kinds: list[bool] = []
        thread = owner
        while thread != me:
            if thread not in self._waits or len(kinds) > len(self._waits):
                return None  # (the second: a cycle not through us, which cannot form)
            thread, turn = self._waits[thread]
            kinds.append(turn)
        return kinds

    def _settle(self, message_id: bytes, delivered: bool) -> None:
        """End a :meth:`_claim`: remember the id if the message was delivered."""
        self._settle_all([message_id], delivered)

    def _settle_all(
        self,
        message_ids: list[bytes],
        delivered: bool,
        cursor: str | None = None,
        *,
        handed_over: bool = False,
    ) -> None:
        """End the :meth:`_claim` of each of ``message_ids``: remember them if they were
        delivered, and then ``cursor`` when given; the state file is written once.

        When writing the state fails (a full disk...), its OSError propagates, and the
        ids and the cursor are forgotten again: the caller did not hand the messages
        over, so the next copy or ``fetch`` delivers them. ``handed_over``: the
        application has them already, and they stay seen (in memory).

        Once the inbox is closed its state file is the next inbox's: nothing is written,
        and (unless ``handed_over``) SealedError is raised, the messages left for the
        next inbox to deliver."""
        with self._settled:
            try:
                for message_id in message_ids:
                    self._pending.pop(message_id, None)
                if not delivered:
                    return
                if self._closed:
                    # a fetch or an accept that was under way when close() released the
                    # state file: writing it now would overwrite the next inbox's state
                    # (its cursor moved back, its ids forgotten), and the messages would
                    # reach the application twice, from this inbox and from the next
                    if not handed_over:
                        raise E.SealedError(
                            "this SealedInbox was closed while it delivered: nothing was "
                            "delivered (the next inbox on its state file delivers it)"
                        )
                    self._see(message_ids)
                    return
                old_cursor = self.cursor
                self._see(message_ids)
                try:
                    moved = cursor is not None and cursor != self.cursor
                    if moved:
                        self.cursor = cursor
                    self._remember(message_ids, moved)  # the ids, then the cursor
                except BaseException:
                    if not handed_over:
                        self.cursor = old_cursor
                        for message_id in message_ids:
                            self._seen.pop(message_id, None)
                    raise
                # (after the write: what a failed one forgets is only what it added)
                self._evict()
            finally:
                # whatever happened: a thread waiting in _claim for one of these ids
                # would otherwise wait for ever
                self._settled.notify_all()

    def register(self, server: RpcServer, on_message: Any) -> None:
        """Serve ``sealed.deliver`` on ``server``: each new message goes to
        ``on_message(message)``; the caller gets True (new) or False (duplicate), or a
        typed error for bad bytes. A message counts as seen only once ``on_message``
        returned: if it raises, the caller gets an internal error and the message is
        delivered again when resent."""

        def deliver(params: Any) -> bool:
            if not isinstance(params, bytes):
                raise E.InvalidParams("sealed.deliver takes the sealed bytes")
            # (before opening: a closed inbox looks at nothing, and answers -32603, not
            # InvalidParams, whatever the bytes: send_sealed then uses the mailbox)
            self._check_open()
            try:
                message = self._open(params, "direct")
            except E.SealedError as exc:
                raise E.InvalidParams(f"refused: {type(exc).__name__}") from None
            if not self._claim(message.message_id):
                return False
            delivered = False
            try:
                on_message(message)
                delivered = True
            finally:
                self._settle_all([message.message_id], delivered, handed_over=True)
            return True

        server.register("sealed.deliver", deliver)

    # -- fetching from the ledger mailbox, in turns --------------------------------------------

    def fetch(
        self,
        limit: int = 1000,
        *,
        wait: float = 0.0,
        on_message: Callable[[OpenedMessage], object] | None = None,
    ) -> list[OpenedMessage]:
        """Read the ledger mailbox after the saved cursor (waiting up to ``wait`` seconds
        for something new); returns the new messages. Bad mail is skipped and counted.

        Without ``on_message`` the batch is taken as delivered (its ids and the cursor
        saved) before it is returned: a process that stops before it has stored the
        messages loses them. With ``on_message`` each new message is handed to it first,
        in mailbox order, and its id is saved once it returned (the cursor once the
        whole batch was): a stop while a handler runs leaves that message, and the rest
        of the batch, to the next fetch, after a restart too. If the handler raises, the
        messages it took stay seen, the rest are not, the cursor stays, and the error
        propagates. (A stop between the handler's return and the saving of its id
        delivers that message again: a handler that stores it should do so keyed by its
        ``message_id``.)

        The batch is all or nothing: when reading or checking it fails (the ledger is
        unreachable...), the error propagates and neither the cursor nor the messages'
        ids are remembered, so the next call reads the same mail again.

        Fetches in several threads take turns, each reading from where the last one
        ended; the wait for something new is not part of a turn. A fetch from an
        ``on_message`` handler (see :meth:`register`) while another fetch waits for that
        handler's message returns [] at once: the other fetch delivers the mail."""
        from dtp.ledger._objects import EventFilter

        if self.ledger is None:
            raise E.SealedError("this inbox has no ledger")
        self._check_open()
        if not self._key_checked:
            # (once per inbox) with another identity than the host's, no mail would open:
            # refused before the cursor moves (and is saved) past any of it
            published = self.ledger.get_host(self.host_id).noise_static_key
            if published != self.identity.noise_public:
                raise E.SealedError(
                    f"host {self.host_id} publishes another Noise key than this inbox's "
                    "identity: none of its mail would open (the mail is left unread)"
                )
            self._key_checked = True
        flt = EventFilter(type="MailDeposited", object_id=self.host_id)
        deadline = time.monotonic() + wait if wait > 0 else None
        while True:
            if not self._take_turn():
                return []
            try:
                cursor = self.cursor
                events, after = self.ledger.events(cursor, flt, limit)
                out = self._take_batch(events, after, on_message)
            finally:
                with self._settled:
                    self._fetcher = None
                    self._settled.notify_all()
            remaining = 0.0 if deadline is None else deadline - time.monotonic()
            if events or remaining <= 0:
                return out
            # nothing yet: wait outside the turn (a handler's fetch, another thread's,
            # would otherwise wait behind this one's wait), then read in turn again
            self.ledger.wait_events(after, remaining, flt, limit)

    def _take_turn(self) -> bool:
        """Wait for the fetch under way in another thread to end, and start this one's:
        False (this fetch gives up) when that fetch waits, itself or through others, for
        this thread -- an ``on_message`` handler whose message it came upon."""
        me = threading.get_ident()
        with self._settled:
            while self._fetcher is not None:
                if self._cycle(self._fetcher) is not None:
                    return False
                self._waits[me] = (self._fetcher, True)
                try:
                    self._settled.wait()
                finally:
                    del self._waits[me]
            self._check_open()
            self._fetcher = me
            return True

    def _take_batch(
        self,
        events: list[Any],
        cursor: str | None,
        on_message: Callable[[OpenedMessage], object] | None = None,
    ) -> list[OpenedMessage]:
        """(in this thread's fetch turn) Open and claim the batch read from the mailbox,
        then remember its ids and ``cursor``, the batch's end, all or nothing; with
        ``on_message``, hand each message over first (see :meth:`fetch`)."""
        out: list[OpenedMessage] = []
        claimed: dict[bytes, None] = {}  # in mailbox order (the oldest seen go first)
        try:
            for event in events:
                if event.fields.get("recipient_host") != self.host_id:
                    continue
                payload = event.fields.get("payload")
                if not isinstance(payload, bytes):
                    continue
                try:
                    message = self._open(payload, "mailbox")
                except E.SealedError:
                    continue
                if not self._claim(message.message_id):
                    continue
                claimed[message.message_id] = None
                out.append(message)
        except BaseException:
            # nothing was handed over: forget the claims, keep the old cursor
            self._settle_all(list(claimed), delivered=False)
            raise
        if on_message is None:
            self._settle_all(list(claimed), delivered=True, cursor=cursor)
        else:
            self._hand_over(out, on_message)
            # (each id is saved already; closed by now, the cursor is left to the next
            # inbox, which reads this batch again and finds it seen)
            self._settle_all([], delivered=True, cursor=cursor, handed_over=True)
        return out

    def _hand_over(
        self, messages: list[OpenedMessage], on_message: Callable[[OpenedMessage], object]
    ) -> None:
        """Give each claimed message to ``on_message``, saving its id once it returned:
        the ids are saved before the cursor, so a stop at any point leaves what was not
        handed over in the mailbox after the old cursor, for the next fetch."""
        for index, message in enumerate(messages):
            try:
                # (closed: the next inbox owns the state file and delivers the rest)
                self._check_open()
                on_message(message)
            except BaseException:
                self._settle_all([m.message_id for m in messages[index:]], delivered=False)
                raise
            try:
                self._settle_all([message.message_id], delivered=True, handed_over=True)
            except BaseException:
                # (the handler has this one: it stays seen in memory, see _settle_all)
                self._settle_all([m.message_id for m in messages[index + 1 :]], delivered=False)
                raise
