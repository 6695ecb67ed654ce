"""Fetching sealed messages from the ledger mailbox after the saved cursor, in turns
(one fetch at a time reads and settles, so the cursor only moves forward)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from dtp.messaging import errors as E
from dtp.messaging.inbox_delivery import InboxDelivery
from dtp.messaging.sealed_messages import OpenedMessage

if TYPE_CHECKING:
    from collections.abc import Callable


class InboxFetching(InboxDelivery):
    """The mailbox fetches of :class:`~dtp.messaging.sealed.SealedInbox`."""

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
        from dtp.ledger.objects import EventFilter

        if self.ledger is None:
            raise E.SealedError("this inbox has no ledger")
        self._check_open()
        if not self._key_checked:
            # (once per inbox) with another identity than the host's, every mail failed to
            # open and was skipped, the cursor moving (and saved) past all of it for good
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
