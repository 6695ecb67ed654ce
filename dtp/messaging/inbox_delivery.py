"""Delivering sealed messages once: opening them, claiming their ids (a copy waits for a
delivery of it under way, or is a duplicate), settling the claims and saving them; and
direct delivery, by :meth:`~dtp.messaging.sealed.SealedInbox.accept` and the
``sealed.deliver`` RPC method."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from dtp.messaging import errors as E
from dtp.messaging.inbox_state import InboxState
from dtp.messaging.sealed_messages import OpenedMessage, _canonical, open_sealed

if TYPE_CHECKING:
    from dtp.messaging.rpc import RpcServer


class InboxDelivery(InboxState):
    """Claiming, settling and direct delivery of :class:`~dtp.messaging.sealed.SealedInbox`."""

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
