"""The replies of a stream a blocking RPC server serves (:class:`StreamReplies`): what the
protocol queued is sent without waiting for the client (a writer thread waits for the
rest), the reading holds off while answers back up, and a failed request is answered."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from dtp.errors import DTPError
from dtp.messaging.protocol import RequestReceived
from dtp.messaging.rpc.blocking_server_state import ServedStreamState
from dtp.messaging.rpc.server_base import CallContext, end_request, error_reply, failure_reply
from dtp.messaging.rpc.streams import UNSENT_CAP, send_answer, send_nowait

# the logger is named after the public module, which applications configure
logger = logging.getLogger("dtp.messaging.rpc.blocking_server")


class StreamReplies(ServedStreamState):
    """How a served stream answers: sending, backing up, and the errors it answers."""

    def flush(self) -> None:
        """Send what the protocol queued without waiting for the client: what it does
        not take now is left to a writer thread of the stream's, which waits for it.
        So a client that does not read its answers holds up neither a pool worker
        (nor, through the pool, other connections) nor the stream's reading."""
        with self.lock:
            if self.sending:
                return
            data = self.proto.data_to_send()
            if not data or self.failed:  # (failed: it cannot be sent, and is let go)
                return
            self.sending = True
        try:
            while True:
                rest = self._send_now(data)
                if rest:
                    threading.Thread(
                        target=self._send_rest, args=(rest,), name="dtp-rpc-writer", daemon=True
                    ).start()
                    return  # the writer is the sender now
                with self.lock:
                    data = self.proto.data_to_send()
                    if not data:
                        self.sending = False
                        return
        except BaseException:
            with self.lock:
                self.sending = False
            raise

    def _send_now(self, data: bytes) -> bytes:
        """Send what the stream takes of ``data`` now; returns the rest."""
        if not self.dontwait:
            send_answer(self.stream, data, self.server._closed)
            return b""
        return send_nowait(self.stream, data)

    def _send_rest(self, data: bytes) -> None:
        """The writer thread: send ``data`` however long the client takes (until the
        server closes or the stream fails), then what was queued meanwhile."""
        try:
            while True:
                send_answer(self.stream, data, self.server._closed)
                self.progress.set()  # (a read loop held up by backed_up() goes on)
                with self.lock:
                    data = self.proto.data_to_send()
                    if not data:
                        self.sending = False
                        return
        except (DTPError, OSError) as exc:
            # the stream is done for: its reading ends too (run_general), and what was
            # queued meanwhile, or is later, is let go (flush): left with the sending
            # role, the read loop would go on taking requests and queuing their answers
            # for good
            logger.debug("RPC answers not sent: %s", exc)
            with self.lock:
                self.failed = True
                self.sending = False
                self.proto.clear_output()
        except BaseException:
            with self.lock:
                self.sending = False
            raise
        finally:
            self.progress.set()

    def backed_up(self) -> bool:
        """Whether the writer thread waits for the client with more than the cap of
        answers queued behind it (:data:`UNSENT_CAP`, or two messages of the cap)."""
        if not self.sending:  # (the usual case, without the lock: a stale answer is
            return False  # corrected at the next read)
        with self.lock:
            if not self.sending or self.failed:
                return False
            self.progress.clear()
            queued = self.proto.queued_bytes
        return queued > max(UNSENT_CAP, 2 * self.server.max_message_size)

    def forget_context(self, request_id: int, ctx: CallContext | None) -> None:
        """(``lock`` held) Forget ``ctx``, the context of a request that ended -- not a
        later request's of the same id (the client may reuse the id of a request it
        cancelled, or whose deadline passed, while that one's handler still runs)."""
        if ctx is not None and self.contexts.get(request_id) is ctx:
            del self.contexts[request_id]

    def release_escrow(self, ctx: CallContext | None) -> None:
        """The request of ``ctx`` ended with no response: the ResponseFeePolicy forgets
        its prepaid escrow (it kept it to stop a second request using it meanwhile)."""
        if ctx is not None and ctx.escrow_id is not None:
            end_request(self.fees, ctx.request_id, ctx.escrow_id, None)

    def answer_error(self, request: list[Any], exc: BaseException) -> bytes:
        """The frame answering a request from RpcProtocol.take_request whose plain
        handler raised ``exc`` (the stream's thread only, no pool, no fees)."""
        code, message, data = failure_reply(request[2], exc)
        return self.proto.error_frame(request[1], code, message, data)

    def fail_fatally(
        self, event: RequestReceived, ctx: CallContext | None, exc: BaseException
    ) -> None:
        """A handler raised ``exc``, a BaseException that is not an Exception
        (KeyboardInterrupt, SystemExit...): answer its request as any failure and send
        what is queued now, before ``exc`` goes on up (RpcServer's class doc)."""
        code, message, data = error_reply(exc)
        with self.lock:
            self.forget_context(event.request_id, ctx)
            self.proto.send_error(event.request_id, code, message, data, request=event)
        with contextlib.suppress(DTPError, OSError):
            self.flush()
