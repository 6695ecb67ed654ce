"""The writes of a blocking RPC client (:class:`ClientWrites`): a frame written whole by
its deadline whatever timeout the stream's reads left, and the flush of protocol output
that never waits for a peer that does not read."""

from __future__ import annotations

import contextlib
import time

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.rpc.blocking_client_events import ClientEvents
from dtp.messaging.rpc.blocking_client_state import _deadline
from dtp.messaging.rpc.streams import UNSENT_CAP, send_failed, send_nowait

#: How long one wait of a blocked write lasts (seconds) before it looks at its deadline.
_SEND_STEP = 0.25


class ClientWrites(ClientEvents):
    """A blocking RPC client's writes (``_wlock`` orders them on the stream)."""

    def _send(self, data: bytes, deadline: float | None) -> None:
        """Write ``data`` (``_wlock`` held), waiting for the peer's flow control until
        ``deadline`` (``time.monotonic()``; None: no limit). Past it the stream may hold
        part of a frame, so every call fails."""
        if not data:
            return
        try:
            self._write(data, deadline)
        except (DTPError, OSError) as exc:
            error = send_failed(exc)
            with self._lock:
                self._fail_all(error)
            raise error from exc

    def _write(self, data: bytes, deadline: float | None) -> None:
        """``stream.sendall(data)`` by ``deadline`` (TimeoutError past it), whatever
        timeout the last read left on the stream: the timeout is shared by reads and
        writes, and reads set short ones to keep deadlines, which a write held up by the
        peer's flow control must not end at with a frame half sent."""
        stream = self._stream
        send = getattr(stream, "send", None)
        if send is None:  # only sendall: its own timeout applies
            stream.sendall(data)
            return
        current = self._current_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if not (isinstance(current, float | int) and current <= left + 0.05):
                # the stream's timeout (None, unknown or longer) would outlast the deadline
                step = min(max(left, 1e-3), _SEND_STEP)
                stream.settimeout(step)
                self._current_timeout = step
        elif not isinstance(current, float | int):
            # none or unknown: a write the peer holds up waits in steps, to see close()
            stream.settimeout(_SEND_STEP)
            self._current_timeout = _SEND_STEP
        view = memoryview(data)
        while view:
            try:
                n: int = send(view)  # a timeout means nothing of this call was taken
            except TimeoutError:
                if self._closed is not None:  # close(): no thread is left waiting
                    raise self._closed_error() from None
                step = _SEND_STEP
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    step = min(remaining, _SEND_STEP)
                # wait on in steps (the last read's timeout may be a fraction of a ms)
                stream.settimeout(step)
                self._current_timeout = step
                continue
            view = view[n:]

    def _flush_soon(self) -> None:
        """Send queued protocol output (CANCELs, ACKs, refusals) if no writer is busy (it
        would send it anyway). It does not wait for the peer when the stream can say so
        (MSG_DONTWAIT): what the peer does not take now goes back to the head of the
        queue, for the next write (a call's, which waits up to its deadline) or flush. A
        reader waiting here for a peer that does not read would keep its call, and every
        call it reads for, past their deadlines (for good without a client timeout)."""
        while True:
            if not self._wlock.acquire(blocking=False):
                return
            try:
                with self._lock:
                    data = self._proto.data_to_send()
                if data:
                    if self._dontwait:
                        rest = self._send_nowait(data)
                        if rest:
                            with self._lock:  # first: it may hold part of a frame
                                self._proto.put_back(rest)
                                if len(rest) > UNSENT_CAP:
                                    # a peer that sends malformed requests (each answered
                                    # by its id) and never reads: our memory is bounded
                                    self._fail_all(
                                        E.RpcConnectionLost(
                                            "the peer takes none of our answers to its "
                                            f"requests ({len(rest)} bytes wait)"
                                        )
                                    )
                            return
                    else:
                        with contextlib.suppress(E.RpcConnectionLost):
                            self._send(data, _deadline(self.timeout))
            finally:
                self._wlock.release()
            with self._lock:
                if not self._output:
                    return

    def _send_nowait(self, data: bytes) -> bytes:
        """Send what the stream takes of ``data`` now (``_wlock`` held); returns the
        rest. A failed stream fails every call, as in :meth:`_send`."""
        try:
            return send_nowait(self._stream, data)
        except (DTPError, OSError) as exc:
            with self._lock:
                self._fail_all(send_failed(exc))
        return b""
