"""The WebSocket carrier for the blocking API: a socket pair whose far end an asyncio
:class:`~dtp.transport.carriers._websocket.WebSocketTransport` drives.

The blocking engine (dtp.transport.blocking._engine) runs on a file descriptor: it polls
it, writes whole records with ``sendmsg`` and reads with ``recv_into``. A WebSocket is a
stream of messages over TCP (or TLS), framed and masked, with its own close handshake
and breach rules (docs/protocol.md §13). Rather than teach the engine to frame, the
engine gets one end of a ``socketpair`` -- over which the records travel as the TCP byte
stream they are (§13: the concatenated messages *are* that stream) -- and the other end
is bridged to the same :class:`WebSocketTransport` the asyncio API uses (its
:func:`~dtp.transport.carriers._websocket.connect_websocket`), on one event loop thread
shared by every blocking WebSocket connection of the process. Every carrier rule is the
asyncio side's: one record per binary message, 1002/1003/1009 on a breach (the engine
then reads the end of its stream: ``ConnectionLost``), close 1000 with the peer's close
awaited, ``wss://`` through the standard library's :mod:`ssl`.

(``websockets``' own blocking client, :mod:`websockets.sync.client`, was the other way:
its API is a message at a time from blocking calls, with a thread of its own per
connection, so bridging it to the engine's descriptor would take two more threads per
connection, and its breach and close rules would be a second copy of this carrier's.)

The bridge loop starts with the first such connection and stops once the last one's
carrier has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Any

from dtp.errors import ConnectionLost, DTPError, HandshakeError
from dtp.transport.carriers._tcp import unreachable
from dtp.transport.carriers._websocket import WebSocketTransport, connect_websocket

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["open_websocket_carrier"]

#: Passes the bridge loop runs once its last carrier ended, before it stops.
SETTLE_PASSES = 10
#: Seconds the pair stays half-closed after the WebSocket ended, for the engine to read
#: what it holds and close its end (it does at once: this bounds one never closed).
PAIR_LINGER = 30.0


class _EngineEnd(socket.socket):
    """The engine's end of the pair. When the WebSocket ended for a reason (a breach of
    §13's rules, a broken frame), the end of its reads is that reason: the carrier's
    :class:`~dtp.errors.ConnectionLost` -- an OSError, which the engine takes as the
    carrier failing and puts in the connection's error -- rather than a bare end of
    stream, as the asyncio client reports it."""

    __slots__ = ("failure",)

    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        # (socket.socket's signature: its dup() makes another of this class)
        super().__init__(family, type, proto, fileno)
        #: Set by the bridge, before it closes its end, when the WebSocket failed
        self.failure: BaseException | None = None

    def lost_error(self) -> BaseException | None:
        """The failure, None while the WebSocket has not failed: asked by the engine as
        its carrier ends, whichever read saw the end (its C read lane reads the
        descriptor, not these methods)."""
        return self.failure

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if not data and bufsize and self.failure is not None:
            raise self.failure
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        if not n and self.failure is not None and (nbytes or memoryview(buffer).nbytes):
            raise self.failure
        return n


class _BridgeLoop:
    """The event loop the bridges run on: a thread started for the first carrier and
    stopped when the last one ends (:meth:`acquire` / :meth:`release`)."""

    _lock = threading.Lock()
    _current: _BridgeLoop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self.thread = threading.Thread(target=self._run, name="dtp-websocket-bridge", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @classmethod
    def acquire(cls) -> _BridgeLoop:
        with cls._lock:
            current = cls._current
            if current is None:
                current = cls._current = _BridgeLoop()
            current.users += 1
            return current

    def release(self) -> None:
        with _BridgeLoop._lock:
            self.users -= 1
            if self.users > 0:
                return
            if _BridgeLoop._current is self:
                _BridgeLoop._current = None
        with contextlib.suppress(RuntimeError):  # (closed already)
            asyncio.run_coroutine_threadsafe(self._settle_and_stop(), self.loop)

    async def _settle_and_stop(self) -> None:
        # a few more passes first: a transport closed in the last one (a refused
        # upgrade's TCP connection) still runs its connection_lost, which a closed loop
        # would leave undone (a ResourceWarning wherever the collector finds it)
        for _ in range(SETTLE_PASSES):
            await asyncio.sleep(0)
        self.loop.stop()


class _PairSide(asyncio.Protocol):
    """The loop's end of the socket pair: what the engine writes goes to the WebSocket
    (whose transport cuts it into records, one message each); the engine's end of the
    stream closes the WebSocket (close 1000, the peer's close awaited)."""

    def __init__(self, bridge: _Bridge) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes) -> None:
        ws = self.bridge.ws
        if ws is not None:
            ws.write(data)

    def eof_received(self) -> bool:
        bridge = self.bridge
        bridge.engine_ended = True
        if bridge.ws_ended and bridge.pair is not None:
            bridge.pair.close()  # (both ends done)
        else:
            bridge.close_ws()
        return True  # (the pair stays open for what the peer still sends, until the ws ends)

    def connection_lost(self, exc: Exception | None) -> None:
        bridge = self.bridge
        bridge.pair_lost = True
        if bridge.linger is not None:
            bridge.linger.cancel()
        bridge.close_ws()
        bridge.maybe_release()

    def pause_writing(self) -> None:
        # the engine reads slower than the WebSocket brings records: stop reading it
        ws = self.bridge.ws
        if ws is not None:
            ws.pause_reading()

    def resume_writing(self) -> None:
        ws = self.bridge.ws
        if ws is not None:
            ws.resume_reading()


class _WsSide(asyncio.Protocol):
    """The WebSocket carrier's protocol: each record it hands over goes to the engine;
    its end (the peer's close, a breach, a lost TCP connection) ends the engine's
    stream."""

    def __init__(self, bridge: _Bridge) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes) -> None:
        pair = self.bridge.pair
        if pair is not None and not pair.is_closing():
            pair.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.ws_lost()

    def pause_writing(self) -> None:
        pair = self.bridge.pair
        if pair is not None:
            pair.pause_reading()

    def resume_writing(self) -> None:
        pair = self.bridge.pair
        if pair is not None and not pair.is_closing():
            pair.resume_reading()


class _Bridge:
    """One carrier: the pair's far end and the WebSocket, on the bridge loop."""

    def __init__(self, owner: _BridgeLoop, near: _EngineEnd) -> None:
        self.owner = owner
        self.near = near
        self.pair: asyncio.Transport | None = None
        self.ws: WebSocketTransport | None = None
        self.pair_lost = False
        self.ws_ended = False
        self.engine_ended = False  # (the engine's end of the stream came)
        self.linger: asyncio.TimerHandle | None = None
        self.released = False

    async def open(
        self,
        far: socket.socket,
        url: str,
        origin: str | None,
        ssl: _ssl.SSLContext | None,
        bound: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(lambda: _PairSide(self), sock=far)
        self.pair = transport
        async with asyncio.timeout(bound):
            self.ws = await connect_websocket(url, _WsSide(self), origin=origin, ssl=ssl)

    def close_ws(self) -> None:
        if self.ws is not None and not self.ws_ended:
            self.ws.close()  # (its close handshake; ws_lost follows)

    def ws_lost(self) -> None:
        self.ws_ended = True
        failure = getattr(self.ws, "_error", None)  # (the carrier's account of a breach)
        if isinstance(failure, ConnectionLost):
            self.near.failure = failure
        pair = self.pair
        if pair is not None and not pair.is_closing():
            if self.engine_ended or not pair.can_write_eof():
                pair.close()  # (after what it holds for the engine; pair_lost follows)
            else:
                # half-closed, as a TCP peer's FIN: the engine reads the end of its
                # stream after what the pair holds, and what it writes meanwhile is read
                # and dropped. A pair closed whole fails the engine's next write (EPIPE)
                # before it read the records that came last -- a refusal's CLOSE behind
                # message 2, taken for a lost carrier. Closed whole once the engine ends
                # its side, or after PAIR_LINGER.
                pair.write_eof()
                loop = asyncio.get_running_loop()
                self.linger = loop.call_later(PAIR_LINGER, pair.close)
        self.maybe_release()

    def maybe_release(self) -> None:
        """Once both sides are closed for good, the bridge loop may stop (its last)."""
        if self.pair_lost and (self.ws_ended or self.ws is None) and not self.released:
            self.released = True
            self.owner.release()


def open_websocket_carrier(
    url: str,
    *,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    bound: float | None,
) -> socket.socket:
    """A socket carrying DTP records to and from the WebSocket at ``url`` (``ws://`` or
    ``wss://``), once the upgrade is done: the blocking engine's carrier. ``bound``:
    seconds the TCP (TLS) connect and the upgrade may take together (None: no bound),
    past which TimeoutError. Raises ConnectionRefused when the server refuses the
    upgrade (its HTTP answer in the reason), OSError when the connect fails (an
    :class:`ssl.SSLError` when the certificate does not verify)."""
    pair, far = socket.socketpair()
    near = _EngineEnd(pair.family, pair.type, pair.proto, fileno=pair.detach())
    owner = _BridgeLoop.acquire()
    bridge = _Bridge(owner, near)
    future = asyncio.run_coroutine_threadsafe(bridge.open(far, url, origin, ssl, bound), owner.loop)
    try:
        future.result()
    except BaseException:
        future.cancel()
        near.close()

        def undo() -> None:
            # (the upgrade failed or was given up: no WebSocket was handed over)
            if bridge.ws is not None:
                bridge.ws.abort()
            if bridge.pair is not None:
                bridge.pair.abort()  # (pair_lost follows, and the release)
            else:
                far.close()
                bridge.released = True
                owner.release()

        with contextlib.suppress(RuntimeError):
            owner.loop.call_soon_threadsafe(undo)
        raise
    return near


def websocket_connect_error(url: str, exc: BaseException, upgrade_bound: float | None) -> Any:
    """The DTP error for a failed WebSocket carrier connect, as the asyncio API raises
    it: HandshakeError when the upgrade outlasted ``upgrade_bound``, CarrierRefused /
    ConnectionLost for the TCP or TLS connect (the OS's reason), ConnectionRefused and
    other DTP errors as they are."""
    if isinstance(exc, DTPError):
        return exc  # (ConnectionRefused is an OSError too)
    if isinstance(exc, TimeoutError):
        return HandshakeError(f"{url}: the WebSocket upgrade timed out ({upgrade_bound:g} s)")
    if isinstance(exc, OSError):
        return unreachable(url, exc)
    return exc if isinstance(exc, Exception) else ConnectionLost(str(exc))
