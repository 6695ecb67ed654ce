"""The Gun endpoint: a WebSocket server (``websockets``, on asyncio) that speaks Gun's
wire to browsers and gun.js peers on ``/gun``, and serves web pages over the same port:
gun's browser files, ``yjs`` (:mod:`._yjs`) and a site (docs/graph.md, "The Gun peer",
says which paths).

    async with GunServer(graph, "127.0.0.1", 8765) as server:
        print(server.url)            # http://127.0.0.1:8765/ -- the demo page
        await server.serve_forever()

:func:`serve_in_thread` runs one in a thread of its own, for blocking programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import mimetypes
import os
import threading
from pathlib import Path
from typing import Any

from dtp._extras import missing

try:  # (the gun extra: without it, one error naming it)
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.datastructures import Headers
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
except ImportError as exc:
    raise missing("gun", "The Gun peer", exc) from None

from dtp.errors import DTPTimeoutError, ErrorCode, LocalProtocolError
from dtp.graph._store import Graph
from dtp.graph.gun import _yjs
from dtp.graph.gun._relay import GunRelay

logger = logging.getLogger("dtp.graph.gun")

DEMO_SITE = Path(__file__).resolve().parent / "demo"
"""The demo chat page (``index.html``, ``demo.js``, ``demo.css``)."""
DEFAULT_PORT = 8765
"""gun's own default port."""
MAX_MESSAGE = 8 << 20
"""The largest frame a Gun peer may send (bytes)."""
MAX_BACKLOG = 32 << 20
"""The most a peer may leave unread (bytes queued for it) before it is cut off."""
MAX_PEERS = 1024
"""Gun peers connected at once; one more is turned away (close code 1013)."""
_FRAME_BYTES = 1 << 20  # a batch frame is closed at about this size
CUT_OFF_WAIT = 2.0  # seconds a peer being cut off has to take the close frame

_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


def find_gun_dir(start: Path | None = None) -> Path | None:
    """Where the ``gun`` npm package is: ``$DTP_GUN_DIR``, else ``node_modules/gun``
    in ``tools/gun-peer`` of a dtp source checkout, else in the working directory or
    one above it; None when it is nowhere (``npm install gun`` installs it)."""
    env = os.environ.get("DTP_GUN_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(
        Path(__file__).resolve().parents[3] / "tools" / "gun-peer" / "node_modules" / "gun"
    )
    here = (start or Path.cwd()).resolve()
    candidates.extend(p / "node_modules" / "gun" for p in (here, *here.parents))
    for candidate in candidates:
        if (candidate / "gun.js").is_file():
            return candidate
    return None


class _Link:
    """One connected peer's outgoing side: messages queued, sent in frames by a task; a
    peer that leaves too much unread is cut off (close code 1008, then the connection
    dropped: a peer that reads nothing would never take the close frame either)."""

    def __init__(self, ws: ServerConnection, max_backlog: int) -> None:
        self.ws = ws
        self.max_backlog = max_backlog
        self.queue: list[str] = []
        self.queued = 0
        self.wake = asyncio.Event()
        self.overflowed = False
        self.writer: asyncio.Task[None] | None = None
        self._cut: asyncio.Task[None] | None = None

    def send(self, text: str) -> None:
        if self.overflowed:
            return
        self.queue.append(text)
        self.queued += len(text)
        if self.queued > self.max_backlog:
            self.overflowed = True
            self.queue.clear()
            self._cut = asyncio.ensure_future(self._cut_off())
            return
        self.wake.set()

    async def _cut_off(self) -> None:
        if self.writer is not None:
            self.writer.cancel()  # (it may be waiting on a peer that reads nothing)
        try:
            await asyncio.wait_for(
                self.ws.close(1008, "too much unread: the peer reads too slowly"), CUT_OFF_WAIT
            )
        except (TimeoutError, ConnectionClosed, RuntimeError):
            pass
        finally:
            self.ws.transport.abort()

    async def write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            messages, self.queue, self.queued = self.queue, [], 0
            start = 0
            while start < len(messages):
                end, size = start, 0
                while end < len(messages) and (end == start or size < _FRAME_BYTES):
                    size += len(messages[end])
                    end += 1
                part = messages[start:end]
                await self.ws.send(part[0] if len(part) == 1 else "[" + ",".join(part) + "]")
                start = end


class GunServer:
    """A Gun relay peer of ``graph`` on ``host``:``port`` (0: a free port), and its pages.

    ``gun_dir``: the ``gun`` npm package whose browser files are served (default:
    :func:`find_gun_dir`); ``site``: a folder of pages served at ``/`` (default: the
    demo; None: none); ``yjs_dir``: the ``node_modules`` folder whose ``yjs`` is served
    at ``/yjs/`` (default: :func:`~dtp.graph.gun._yjs.find_yjs_dir`). ``max_message``:
    the largest frame a peer may send;
    ``max_backlog``: bytes queued for a peer before it is cut off (close code 1008);
    ``max_peers``: peers at once (one more is closed at once, code 1013, "try again
    later"). ``relay`` options go to :class:`~dtp.graph.gun._relay.GunRelay`.
    :attr:`stats` counts, beside the relay's counters, the peers ``turned_away`` and
    ``cut_off``. While it runs, it merges the graph's deferred updates (a put's state
    ahead of the clock) as their time comes.

    Use it as an async context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        graph: Graph,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        gun_dir: str | os.PathLike[str] | None = None,
        site: str | os.PathLike[str] | None = DEMO_SITE,
        yjs_dir: str | os.PathLike[str] | None = None,
        max_message: int = MAX_MESSAGE,
        max_backlog: int = MAX_BACKLOG,
        max_peers: int = MAX_PEERS,
        ping_interval: float | None = 20.0,
        **relay: Any,
    ) -> None:
        if not isinstance(graph, Graph):
            raise TypeError(f"GunServer(graph) must be a Graph, not {type(graph).__name__}")
        for name, value in (("max_message", max_message), ("max_backlog", max_backlog)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ValueError(f"GunServer({name}=...) must be an int >= 1024, not {value!r}")
        if isinstance(max_peers, bool) or not isinstance(max_peers, int) or max_peers < 1:
            raise ValueError(f"GunServer(max_peers=...) must be an int >= 1, not {max_peers!r}")
        self.graph = graph
        self.host = host
        self.port = port
        self.gun_dir = Path(gun_dir) if gun_dir is not None else find_gun_dir()
        self.site = Path(site) if site is not None else None
        self.yjs_dir = Path(yjs_dir) if yjs_dir is not None else _yjs.find_yjs_dir()
        """The ``node_modules`` folder holding ``yjs``, served at ``/yjs/`` for pages'
        collaborative values (:mod:`dtp.graph.gun._yjs`); None: not served."""
        self.max_message = max_message
        self.max_backlog = max_backlog
        self.max_peers = max_peers
        self.ping_interval = ping_interval
        self.relay = GunRelay(graph, **relay)
        self.relay.stats.update(turned_away=0, cut_off=0)
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deferred: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = (host, port)

    @property
    def url(self) -> str:
        """The page's address, ``http://host:port/`` (peers: ``url + "gun"``)."""
        host = self.address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.address[1]}/"

    @property
    def stats(self) -> dict[str, Any]:
        """The relay's counters (:attr:`GunRelay.stats`)."""
        return self.relay.stats

    async def start(self) -> None:
        """Listen, and follow the graph's changes."""
        if self._server is not None:
            raise LocalProtocolError("the Gun server is already started", ErrorCode.ARG)
        if self.gun_dir is None:
            logger.warning(
                "gun endpoint: the gun npm package was not found: /gun.js is not served "
                "(npm install gun, or pass gun_dir)"
            )
        self._loop = asyncio.get_running_loop()
        self.graph.add_listener(self._listener, self)
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._http,
                max_size=self.max_message,
                ping_interval=self.ping_interval,
                compression="deflate",
                server_header=None,
            )
        except BaseException:
            self.graph.remove_listener(self)
            raise
        sock = next(iter(self._server.sockets))
        self.address = sock.getsockname()[:2]
        self._deferred = asyncio.create_task(self._apply_deferred())
        logger.info("gun endpoint on %s (peers: %sgun)", self.url, self.url)

    def _listener(self, batch: bytes, origin: object) -> None:
        # (in the thread that changed the graph, under its lock: hand over, nothing more)
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            loop.call_soon_threadsafe(self.relay.changed, batch, origin)

    async def _apply_deferred(self) -> None:
        # gun.js merges a put's future state when its time comes (a timer), not at the
        # next write: so here, for reads and for the peers following the node
        with contextlib.suppress(LocalProtocolError):  # the graph closed: nothing to apply
            await self.graph.watch_deferred()

    async def close(self) -> None:
        """Stop listening, close every peer's connection (code 1001), stop following
        the graph (which stays open)."""
        server, self._server = self._server, None
        if server is None:
            return
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deferred
        self.graph.remove_listener(self)
        server.close()
        await server.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> GunServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, ws: ServerConnection) -> None:
        relay = self.relay
        if relay.peer_count >= self.max_peers:
            relay.stats["turned_away"] += 1
            await ws.close(1013, f"gun endpoint busy: {self.max_peers} peers connected")
            return
        link = _Link(ws, self.max_backlog)
        relay.connect(link)
        writer = link.writer = asyncio.create_task(link.write_loop())
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    try:
                        message = message.decode("utf-8")
                    except UnicodeDecodeError:
                        await ws.close(1007, "frames must be UTF-8 text")
                        break
                relay.hear(link, message)
                if link.overflowed:
                    break
        except ConnectionClosed:
            pass
        finally:
            relay.disconnect(link)
            if link.overflowed:
                relay.stats["cut_off"] += 1
                logger.info("gun endpoint: a peer left %d bytes unread: cut off", self.max_backlog)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer
            if link._cut is not None:
                await link._cut

    # -- pages ---------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # a Gun peer: go on with the WebSocket handshake
        path = request.path.split("?", 1)[0]
        if path == _yjs.PREFIX + "importmap.js":
            return _response(
                200, _yjs.import_map_script(self.yjs_dir), "text/javascript; charset=utf-8"
            )
        target = self._file_for(path)
        if target is None:
            if path in ("/gun.js", "/sea.js") or path.startswith("/gun/"):
                return _response(
                    404,
                    b"gun is not installed here: npm install gun (or pass --gun-dir)\n",
                    "text/plain; charset=utf-8",
                )
            return _response(404, b"not found\n", "text/plain; charset=utf-8")
        try:
            body = target.read_bytes()
        except OSError:
            return _response(404, b"not found\n", "text/plain; charset=utf-8")
        kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        if kind is None:
            kind = "application/octet-stream"
        elif kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        return _response(200, body, kind)

    def _file_for(self, path: str) -> Path | None:
        """The file a page's path names, inside the folder it is served from; None for
        none (or a path leading out of it)."""
        if path in ("/gun.js", "/sea.js"):
            base, rel = self.gun_dir, path[1:]
        elif path.startswith("/gun/"):
            base, rel = self.gun_dir, path[len("/gun/") :]
            if not rel.endswith(".js"):
                return None
        elif path.startswith(_yjs.PREFIX):
            return _yjs.file_for(self.yjs_dir, path)
        else:
            base, rel = self.site, path.lstrip("/") or "index.html"
        return None if base is None else _yjs.file_within(base, rel)


def _response(status: int, body: bytes, kind: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", kind),
            ("Cache-Control", "no-cache"),
        ]
    )
    return Response(status, "OK" if status == 200 else "Not Found", headers, body)


class GunServerThread:
    """A :class:`GunServer` running in a thread with its own event loop (see
    :func:`serve_in_thread`): :attr:`server`, :attr:`url`, :meth:`close`."""

    def __init__(self, server: GunServer, timeout: float = 10.0) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gun-endpoint", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise DTPTimeoutError("the Gun server did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    @property
    def url(self) -> str:
        """The page's address."""
        return self.server.url

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        return self.server.address

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server and its thread (idempotent)."""
        stop = self._stop
        if stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> GunServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_in_thread(
    graph: Graph, host: str = "127.0.0.1", port: int = 0, **kw: Any
) -> GunServerThread:
    """Start a :class:`GunServer` of ``graph`` in a thread of its own and return once it
    listens (a blocking program's way to run one; ``with`` closes it)."""
    return GunServerThread(GunServer(graph, host, port, **kw))


__all__ = [
    "DEFAULT_PORT",
    "DEMO_SITE",
    "MAX_BACKLOG",
    "MAX_MESSAGE",
    "MAX_PEERS",
    "GunServer",
    "GunServerThread",
    "find_gun_dir",
    "serve_in_thread",
]
