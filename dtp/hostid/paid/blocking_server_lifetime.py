"""The blocking paid server's lifetime
(:class:`~dtp.hostid.paid.blocking_server.PaidServer` is made of this part and others):
serving until closed, the close, and the release once the last connection ended and
settled (the receipt writer stopped, the store the server opened closed), which
:meth:`~ServerLifetime.wait_released` waits for. The twin of
:mod:`dtp.hostid.paid.asyncio_server_lifetime`."""

from __future__ import annotations

import threading
import time

from dtp.errors import LocalProtocolError
from dtp.hostid.paid.blocking_server_state import PaidServerState
from dtp.hostid.paid.server_steps import release_store, writer_done
from dtp.payments.serving import RECOVERY_CLOSE_WAIT

#: How long one wait of :meth:`ServerLifetime.wait_released` without a timeout lasts for a
#: receipt writer still writing, before it waits again (seconds).
_WRITER_WAIT = 60.0


class ServerLifetime(PaidServerState):
    """Serving until closed, closing, and the release (a part of
    :class:`~dtp.hostid.paid.blocking_server.PaidServer`)."""

    def serve_forever(self) -> None:
        """Block until :meth:`close`."""
        self._closed.wait()

    def close(self) -> None:
        """Stop accepting and refreshing. Open connections finish and settle (in their
        own threads, after this returns); once the last has (at once when there are
        none), the receipt writer writes what it holds and stops, and a store the server
        opened from ``receipts`` (a path) is closed. A :class:`ReceiptStore` passed in
        stays open: the caller's to close, once :meth:`wait_released` returned True.
        A client whose admission or handshake ends as the server closes is refused (or
        its connection aborted) and its ledger connection settled at once, nothing
        claimed, before the release. May be called from a handler (its own connection
        is then one still served)."""
        with self._live_lock:
            idle = self.core.close()
            if idle is None:
                return
            self._closed.set()
        if self._recovery is not None:
            self._recovery.stop()
        if self.server is not None:
            self.server.close()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(5.0)
        if idle:
            if self._recovery is None or self._recovery.join(RECOVERY_CLOSE_WAIT):
                self._release()
            else:
                # a claim under way takes longer (a ledger slow to answer): released
                # once it ends, in a thread of its own -- close() returns, and
                # wait_released() is the wait with a bound of the caller's choosing
                threading.Thread(target=self._release, name="dtp-paid-release", daemon=True).start()
        else:
            # what is waiting is written now; the last connection to end stops the writer
            self.receipt_writer.flush(timeout=5.0)

    def _release(self) -> None:
        """Stop the receipt writer and close our own store (once, when the server is
        closed and no connection can write any more)."""
        try:
            release_store(
                self.core, self.receipt_writer, self.store, self._own_store, self._recovery
            )
        finally:
            # also when the detach (or the store's close) raised: the writer has stopped
            # all the same, and unset, wait_released() said False for good (while the
            # same failure in the writer's last step is only logged)
            self._released.set()

    def wait_released(self, timeout: float | None = None) -> bool:
        """After :meth:`close`: wait until every connection the server was serving
        ended and settled and the receipt writer stopped (True), or ``timeout`` seconds
        (False). Then a :class:`ReceiptStore` passed in may be closed: closed before,
        a settlement still to come failed on it, its fees unclaimed. Waits as long as a
        client keeps its connection open. (False at once when the server is not
        closed.) Not from a handler: it would wait for its own connection
        (:class:`~dtp.errors.LocalProtocolError`)."""
        if getattr(self._in_handler, "active", False):
            raise LocalProtocolError("wait_released() in a handler waits for its own connection")
        if not self._closed.is_set():
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._released.wait(timeout):
            return False
        while True:
            left = _WRITER_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            if writer_done(self.receipt_writer, left):
                return True
            if deadline is not None:
                return False
