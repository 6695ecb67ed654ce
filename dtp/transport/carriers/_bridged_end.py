"""One end of a socket pair that a bridge drives from its other end (the WebSocket
carrier's for the blocking driver, the ledger carrier's): the driver reads and writes it
as it would a TCP carrier."""

from __future__ import annotations

import socket
from typing import Any


class BridgedEnd(socket.socket):
    """The driver's end of the pair. When the bridge failed (a WebSocket breach, a
    ledger error) it sets :attr:`failure` before it closes its end, and the end of this
    end's reads is that failure (:meth:`_raised`: an OSError, which the drivers take as
    the carrier failing, with its cause) rather than a bare end of stream."""

    __slots__ = ("failure",)

    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        # (socket.socket's signature: its dup() makes another of this class)
        super().__init__(family, type, proto, fileno)
        #: Set by the bridge, before it closes its end, when it failed
        self.failure: BaseException | None = None

    def _raised(self) -> BaseException:
        """What the reads raise once the bridge failed (:attr:`failure` is set)."""
        assert self.failure is not None
        return self.failure

    def lost_error(self) -> BaseException | None:
        """The failure as the reads raise it, None while the bridge has not failed:
        asked by the drivers as their carrier ends, whichever read saw the end (the
        blocking driver's C read lane and uvloop's transports read the descriptor, not
        these methods; :func:`dtp.transport.asyncio._protocol.carrier_failure`)."""
        return None if self.failure is None else self._raised()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if not data and bufsize and self.failure is not None:
            raise self._raised()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if not n and self.failure is not None and (nbytes or memoryview(buffer).nbytes):
            raise self._raised()
        return n
