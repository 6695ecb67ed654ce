"""The asyncio paid server's lifetime
(:class:`~dtp.hostid.paid.asyncio_server.PaidAioServer` is made of this part and others):
the start (the store recovered, the listener opened, the endpoint published), the close
-- also when the event loop ends with the server open -- and the release once the last
connection ended and settled (the receipt writer stopped, the store :func:`serve` opened
closed), which :meth:`~AioServerLifetime.wait_released` waits for. The twin of
:mod:`dtp.hostid.paid.blocking_server_lifetime`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dtp.errors import LocalProtocolError
from dtp.hostid.paid.asyncio_server_state import PaidAioServerState
from dtp.hostid.paid.server_admission import PaidAdmission, ReportedConnections
from dtp.hostid.paid.server_steps import release_store, served_host, writer_done
from dtp.payments.serving import RECOVERY_CLOSE_WAIT, Recovery, recover_store
from dtp.payments.settlement import publish_endpoint

if TYPE_CHECKING:
    from dtp.hostid.paid.server_core import ServerOptions

# the server's own logger, where an operator filters for its lines
logger = logging.getLogger("dtp.hostid.paid.asyncio_server")

# seconds between wait_released()'s looks at a receipt writer still writing after the
# release (a stalled disk: rare, and then long)
_WRITER_POLL = 0.05


class AioServerLifetime(PaidAioServerState):
    """Starting, closing (also at the event loop's end), and the release (a part of
    :class:`~dtp.hostid.paid.asyncio_server.PaidAioServer`)."""

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address

    async def _start(self, options: ServerOptions) -> None:
        """Recover the store, listen on the ``options``' address (with their handshake
        bounds, as :func:`dtp.aio.start_server`'s) and publish the endpoint."""
        from dtp.hostid.asyncio import start_server

        host = await asyncio.to_thread(served_host, self.ledger, self.host_id, self.port)
        # In a thread: it may wait up to BUSY_TIMEOUT for another process holding the
        # store's lock file, and the loop serves on meanwhile. Shielded: a cancellation
        # cannot stop the thread, so an attach it makes after we stopped waiting is
        # undone when it ends (else the store would count this server for good).
        attaching = asyncio.ensure_future(asyncio.to_thread(self.store.attach_server))
        try:
            alone = await asyncio.shield(attaching)
        except asyncio.CancelledError:
            attaching.add_done_callback(self._attached_too_late)
            raise
        self.core.attached = True
        self.recovered = await asyncio.to_thread(
            functools.partial(
                recover_store, self.ledger, self.identity, self.store, alone, deferred=self.deferred
            )
        )
        # a coroutine per verdict, which the DTPServer awaits: the verdict is given on
        # the event loop (_admit), where close() runs, and from there to the callback
        # nothing yields to the loop, so close() cannot come between the two
        self.admission = PaidAdmission(
            self._admit,
            ReportedConnections(self._refused_at_limit),
            self.ledger,
            self.host_id,
            self.port,
            self._open_grace,
        )
        self.server = await start_server(
            self._handle,
            options.address[0],
            options.address[1],
            identity=self.identity,
            config=options.config,
            admit=self.admission,
            backlog=options.backlog,
            max_handshakes=options.max_handshakes,
            max_handshakes_per_address=options.max_handshakes_per_address,
            max_waiting_per_address=options.max_waiting_per_address,
        )
        endpoint = options.endpoint or self.address
        await asyncio.to_thread(
            publish_endpoint, self.ledger, self.identity, self.host_id, endpoint
        )
        self.core.start(host, time.monotonic())
        self._policy_task = asyncio.ensure_future(self._policy_loop())
        self._recovery = Recovery(
            self.ledger, self.identity, self.store, self.recovered, self.retries, self.deferred
        )
        self._recovery.start()
        # The server lives no longer than its event loop: asyncio.run ending with it
        # open (this task cancelled) closes it as close() does, or its receipt writer's
        # thread would run on, and the store it opened stay open. The connections' tasks,
        # cancelled with it, still settle (_end waits for the settlement through the
        # cancellation, then re-raises it).
        self._lifetime = asyncio.ensure_future(self._closing.wait())
        self._lifetime.add_done_callback(self._lifetime_ended)

    def _lifetime_ended(self, lifetime: asyncio.Task[bool]) -> None:
        """close() was called, or the loop is ending (the task cancelled): then the
        release runs on the loop at once, so that the store is closed before the loop
        is (in a thread, it raced the loop's end)."""
        if lifetime.cancelled():
            self._loop_ending = True
        self.close()

    def _attached_too_late(self, attaching: asyncio.Future[bool]) -> None:
        """The start was cancelled while attach_server() ran in its thread: what it
        attached, nobody detaches at the release, so it is detached here."""
        if not attaching.cancelled() and attaching.exception() is None:
            self.store.detach_server()

    def close(self) -> None:
        """Stop accepting and refreshing. Open connections finish and settle; once the
        last has (at once when there are none), the receipt writer writes what it holds
        and stops (waited for in a thread, not on the event loop; inline only when the
        loop is ending), and a store :func:`serve` opened from ``receipts`` (a path) is
        closed. A :class:`ReceiptStore` passed in stays open: the caller's to close, once
        :meth:`wait_released` returned True. A client admitted as the server closes is
        refused and its ledger connection settled at once, nothing claimed, before the
        release."""
        release_now = self.core.close()
        if release_now is None:
            return
        self._closing.set()
        if self._policy_task is not None:
            self._policy_task.cancel()
        if self._recovery is not None:
            self._recovery.stop()
        if self.server is not None:
            self.server.close()
        if release_now:
            self._release()
        else:
            # what is waiting is written now (the last connection to end stops the
            # writer). Waited for in a thread: a commit held up (a stalled disk, another
            # process holding the store's lock) froze the loop, every connection's I/O
            # and timers with it, for the flush's timeout.
            threading.Thread(
                target=self.receipt_writer.flush,
                kwargs={"timeout": 5.0},
                name="dtp-paid-aio-flush",
                daemon=True,
            ).start()

    def _release(self) -> None:
        """Stop the receipt writer and close our own store (once, when the server is
        closed and no connection can write any more): in the loop's executor (joining
        the writer may wait for a stalled commit, up to RELEASE_WRITER_WAIT; asyncio.run
        waits for the executor's jobs before it returns, so the store is closed by
        then -- unless the writer is still writing after that wait: then its thread
        detaches and closes, once it stops), which sets ``_released`` when done; inline
        when no loop runs or it is ending (its executor shut down)."""
        job: asyncio.Future[None] | None = None
        if not self._loop_ending:
            with contextlib.suppress(RuntimeError):  # no loop, or its executor shut down
                job = asyncio.get_running_loop().run_in_executor(None, self._release_store)
        if job is None:
            try:
                self._release_store(inline=True)
            finally:
                # (as the executor's job: set when it failed too, the failure raised
                # here where the job's is logged; unset, wait_released() said False)
                self._released.set()
        else:
            job.add_done_callback(self._store_released)

    def _store_released(self, job: asyncio.Future[None]) -> None:
        if not job.cancelled() and job.exception() is not None:
            logger.error("releasing the receipt store failed", exc_info=job.exception())
        self._released.set()

    def _release_store(self, inline: bool = False) -> None:
        # (the wait for a recovery under way bounded inline, for the loop's own thread
        # runs this when the loop is ending: a claim that takes longer has its
        # "claimed" mark logged as not written, the claim made)
        release_store(
            self.core,
            self.receipt_writer,
            self.store,
            self._own_store,
            self._recovery,
            RECOVERY_CLOSE_WAIT if inline else None,
        )

    async def wait_closed(self) -> None:
        """Wait until the listener is closed (connections being served go on: see
        :meth:`wait_released`)."""
        if self.server is not None:
            await self.server.wait_closed()

    def wait_released(self, timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        """After :meth:`close`: wait until every connection the server was serving
        ended and settled and the receipt writer stopped (True), or ``timeout`` seconds
        (False). Then a :class:`ReceiptStore` passed in may be closed: closed before,
        a settlement still to come failed on it, its fees unclaimed. Waits as long as a
        client keeps its connection open, and for a receipt writer the release left
        still writing. (False at once when the server is not closed.)

        Not from a callback: it would wait for its own connection
        (:class:`~dtp.errors.LocalProtocolError`, as the blocking server's; raised by
        the call itself, so ``asyncio.wait_for(server.wait_released(), t)`` there is
        refused too). A task the callback started (an admin "stop": close, wait, exit)
        may call it: it waits for the callback's connection too, which ends once the
        callback returns. So a callback must not await such a task: it would wait
        until ``timeout``."""
        # (checked at the call, in the caller's task: wait_for() on Python 3.11 runs
        # the coroutine in a task of its own)
        try:
            caller = asyncio.current_task()
        except RuntimeError:  # (made off the loop, for run_coroutine_threadsafe())
            caller = None
        if caller is not None and caller in self._callback_tasks:
            raise LocalProtocolError("wait_released() in a callback waits for its own connection")
        return self._await_released(timeout)

    async def _await_released(self, timeout: float | None) -> bool:
        if not self.core.closed:
            return False
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout)
        if not self._released.is_set():
            return False
        # (writer_done(…, 0) only looks: the writer's thread is told to stop already)
        while not writer_done(self.receipt_writer, 0):
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(_WRITER_POLL)
        return True

    async def serve_forever(self) -> None:
        assert self.server is not None
        await self.server.serve_forever()
