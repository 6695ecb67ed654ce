"""The daemon's HTTP endpoint: Prometheus metrics, the status page and the live status,
on ``[daemon] metrics_listen`` (opt-in) and on the control socket
``<state_dir>/control.sock`` (always; what ``dtp status`` reads).

A small HTTP/1.1 server on the daemon's event loop, so every answer reads the counters
where they live, with no lock. Its paths and limits (:data:`MAX_HEAD`,
:data:`READ_TIMEOUT`, :data:`MAX_CLIENTS`, :data:`STOP_WAIT`, :data:`MAX_STOP_WATCHERS`):
docs/daemon.md, "Metrics and the status page". ``/metrics`` on the control socket is a
404 naming the extra when ``prometheus_client`` is missing (``metrics_listen`` requires
it); ``/stopped.json`` lets the status page show a stopped daemon's last figures, not
those of its last poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtp._extras import missing
from dtp.daemon._control import bind_unix
from dtp.daemon._logs import kv
from dtp.errors import MissingExtra
from dtp.transport.asyncio._listeners import close_listener

if TYPE_CHECKING:
    from dtp.daemon._metrics import Metrics

__all__ = [
    "MAX_CLIENTS",
    "MAX_HEAD",
    "MAX_STOP_WATCHERS",
    "READ_TIMEOUT",
    "STOP_WAIT",
    "WRITE_TIMEOUT",
    "StatusEndpoint",
    "load_metrics",
]

logger = logging.getLogger("dtp.daemon._web")


def load_metrics() -> type[Metrics]:
    """:class:`dtp.daemon._metrics.Metrics`, or :class:`~dtp.errors.MissingExtra` naming
    the ``metrics`` extra when ``prometheus_client`` cannot be imported."""
    try:
        from dtp.daemon._metrics import Metrics
    except ImportError as exc:
        raise missing("metrics", "The daemon's metrics (metrics_listen)", exc) from exc
    return Metrics


MAX_HEAD = 16 * 1024
"""Bytes a request's line and headers may take."""
READ_TIMEOUT = 10.0
"""Seconds a client has to send its request head."""
WRITE_TIMEOUT = 30.0
"""Seconds a client has to take its answer."""
MAX_CLIENTS = 64
"""Connections served at once; one more is closed at once."""
STOP_WAIT = 25.0
"""Seconds a request for ``/stopped.json`` is held before its 204 (the page asks again)."""
MAX_STOP_WATCHERS = 16
"""Requests for ``/stopped.json`` held at once (pages watching for the stop)."""

_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)


class StatusEndpoint:
    """The HTTP answers and the listeners that serve them.

    ``status`` gives the live status, ``history`` the samples, ``metrics`` renders the
    metrics for an ``Accept`` header (None: not available), ``page`` is the status
    page's HTML, ``healthy`` the daemon's phase (``/healthz`` answers 200 while it is
    ``serving``, 503 with the phase otherwise)."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        history: Callable[[], dict[str, Any]],
        metrics: Callable[[str | None], tuple[bytes, str]] | None,
        page: str,
        healthy: Callable[[], str] = lambda: "serving",
    ) -> None:
        self._status = status
        self._phase = healthy
        self._history = history
        self._metrics = metrics
        self._page = page.encode()
        self._servers: list[asyncio.Server] = []
        #: the listeners abort() stopped, until they are closed (close_listener)
        self._stopping: list[asyncio.Future[None]] = []
        self._stopped = False
        """Set by abort(): a client accepted as the listeners closed is closed unserved."""
        self._clients: set[asyncio.Task[None]] = set()
        # the requests for /stopped.json held, each answered when the daemon stops
        self._stop_watchers: dict[asyncio.Task[None], asyncio.Future[bytes]] = {}
        self._unix_path: Path | None = None
        self.requests = 0
        """Requests answered (any status)."""

    @property
    def stop_watchers(self) -> int:
        """Requests for ``/stopped.json`` waiting for the stop."""
        return len(self._stop_watchers)

    # -- listeners -------------------------------------------------------------------------

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Serve on TCP ``host:port`` (port 0: any); returns the bound address."""
        server = await asyncio.start_server(
            self._accepted, host, port, reuse_address=True, limit=MAX_HEAD
        )
        self._servers.append(server)
        name = server.sockets[0].getsockname()
        return name[0], name[1]

    async def listen_unix(self, path: Path) -> None:
        """Serve on the Unix socket ``path`` (a file left there by a killed daemon is
        replaced: the caller holds the state directory's lock), mode 0600."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = bind_unix(path)
        try:
            server = await asyncio.start_unix_server(self._accepted, sock=sock, limit=MAX_HEAD)
        except BaseException:
            sock.close()
            raise
        self._servers.append(server)
        self._unix_path = path

    def abort(self) -> None:
        """Stop listening and cancel the requests under way, without waiting; remove the
        socket file (``dtp status`` then reads the status file). The listeners close a
        pass later, once the clients they accepted as this ran have their transports
        (:func:`close_listener`); each of those is closed unserved as it arrives."""
        self._stopped = True
        for server in self._servers:
            if (stopping := close_listener(server)) is not None:
                self._stopping.append(stopping)
        for task in list(self._clients):
            task.cancel()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                self._unix_path.unlink()
            self._unix_path = None

    async def close(self) -> None:
        """Answer the requests waiting for the stop (``/stopped.json``) with the status
        now -- the daemon's last, taken after its drain: the counters it saves -- and
        give them 2 s to go out; then :meth:`abort`, and wait (2 s at most) for the
        requests and listeners to end."""
        if self._stop_watchers:
            try:
                final = self._status()
            except Exception as exc:  # (no last word then: the page shows its last figures)
                logger.warning(
                    "status at the stop failed", extra=kv(error=f"{type(exc).__name__}: {exc}")
                )
            else:
                body = _json({**final, "live": False, "stopped": time.time()})
                for future in self._stop_watchers.values():
                    if not future.done():
                        future.set_result(body)
                await asyncio.wait(set(self._stop_watchers), timeout=2.0)
        servers = list(self._servers)
        self.abort()
        self._servers.clear()
        if self._stopping:
            # (then those accepted as they closed are among the requests)
            await asyncio.wait(self._stopping, timeout=2.0)
            self._stopping.clear()
        if self._clients:
            await asyncio.wait(set(self._clients), timeout=2.0)
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    # -- requests --------------------------------------------------------------------------

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A client connected: among the requests from here (so that :meth:`close`
        finds those accepted as the listeners closed), served in a task of its own."""
        refused = self._stopped or len(self._clients) >= MAX_CLIENTS
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, refused))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refused: bool
    ) -> None:
        try:
            if not refused:
                await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # (the client went away, or was too slow)
        except Exception as exc:  # a fault here must not end the daemon's loop
            logger.warning("status endpoint failed", extra=kv(error=f"{type(exc).__name__}: {exc}"))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(READ_TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                return self._send(writer, 431, b"request head too large\n", "text/plain")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._send(writer, 400, b"bad request\n", "text/plain")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return self._send(writer, 405, b"GET only\n", "text/plain", allow="GET, HEAD")
        path = target.split("?", 1)[0]
        if path == "/stopped.json":
            code, body, kind = await self._until_stopped()
        else:
            code, body, kind = self._route(path, headers.get("accept"))
        extra = {"content_security_policy": _PAGE_CSP} if kind.startswith("text/html") else {}
        self._send(writer, code, body, kind, head_only=method == "HEAD", **extra)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    async def _until_stopped(self) -> tuple[int, bytes, str]:
        """``/stopped.json``: the daemon's status as it stops (:meth:`close`), or 204
        after :data:`STOP_WAIT` seconds; 503 when :data:`MAX_STOP_WATCHERS` wait."""
        task = asyncio.current_task()
        if task is None or len(self._stop_watchers) >= MAX_STOP_WATCHERS:
            return 503, b"too many waiting for the stop\n", "text/plain; charset=utf-8"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._stop_watchers[task] = future
        try:
            async with asyncio.timeout(STOP_WAIT):
                return 200, await future, "application/json"
        except TimeoutError:
            return 204, b"", "application/json"
        finally:
            del self._stop_watchers[task]

    def _route(self, path: str, accept: str | None) -> tuple[int, bytes, str]:
        if path in ("/", "/index.html"):
            return 200, self._page, "text/html; charset=utf-8"
        if path == "/metrics":
            if self._metrics is None:
                return 404, b"no metrics here\n", "text/plain; charset=utf-8"
            try:
                body, kind = self._metrics(accept)
            except MissingExtra as exc:
                return 404, f"{exc}\n".encode(), "text/plain; charset=utf-8"
            return 200, body, kind
        if path == "/status.json":
            return 200, _json(self._status()), "application/json"
        if path == "/history.json":
            return 200, _json(self._history()), "application/json"
        if path == "/healthz":
            phase = self._phase()
            return (200 if phase == "serving" else 503), f"{phase}\n".encode(), "text/plain"
        return 404, b"not found\n", "text/plain; charset=utf-8"

    def _send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        kind: str,
        *,
        head_only: bool = False,
        allow: str | None = None,
        content_security_policy: str | None = None,
    ) -> None:
        self.requests += 1
        reason = HTTPStatus(code).phrase
        headers = [
            f"HTTP/1.1 {code} {reason}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {kind}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Connection: close",
        ]
        if allow:
            headers.append(f"Allow: {allow}")
        if content_security_policy:
            headers.append(f"Content-Security-Policy: {content_security_policy}")
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)


def _json(value: Any) -> bytes:
    return json.dumps(value, default=str, separators=(",", ":")).encode()
