"""The WebSocket carrier for the blocking API: a socket pair whose far end an asyncio
:class:`~dtp.transport.carriers._websocket.WebSocketTransport` drives.

The blocking engine runs on a file descriptor (poll, ``sendmsg``, ``recv_into``); rather
than teach it WebSocket framing, it gets one end of a ``socketpair``, over which the
records travel as the byte stream they are (docs/protocol.md §13), and the other end is
bridged to the asyncio API's own :class:`WebSocketTransport`, on one event loop thread
shared by the process's blocking WebSocket connections (started with the first, stopped
after the last): every carrier rule is the asyncio side's, a breach read by the engine
as ``ConnectionLost``. (``websockets.sync.client`` would have taken two more threads per
connection, and a second copy of the breach and close rules.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Any

from dtp.errors import ConnectionLost, DTPError, HandshakeError
from dtp.transport.carriers._bridged_end import BridgedEnd
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

    def __init__(self, owner: _BridgeLoop, near: BridgedEnd) -> None:
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
                # stream after what the pair holds (closed whole, the pair failed the
                # engine's next write before it read the records that came last: a
                # refusal's CLOSE). Closed whole once the engine ends its side, or after
                # PAIR_LINGER.
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
    near = BridgedEnd(pair.family, pair.type, pair.proto, fileno=pair.detach())
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
