"""The JavaScript client of ``web/dtp-client`` for the tests: where it is, whether node
can run it, its npm packages installed (``web/dtp-client/scripts/install.sh``, which
scripts/bootstrap.sh runs), and a dtp.aio echo server on the WebSocket carrier for it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import dtp.aio
from dtp.identity.keys import HostIdentity
from tests.support.aio_echo import echo_every_stream
from tests.support.paths import ROOT

PACKAGE = ROOT / "web" / "dtp-client"
INSTALLED = PACKAGE / "node_modules" / ".dtp-installed"


def node_major() -> int | None:
    """The installed node's major version, or None without node."""
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    return int(out.stdout.strip().lstrip("v").split(".")[0])


def need_client() -> None:
    """Skip (fail under CI, where scripts/bootstrap.sh installs them) without node 20 or
    later, or without the package's npm dependencies and npm to fetch them."""
    major = node_major()
    reason = None
    if major is None:
        reason = "node is not installed (apt-get install -y nodejs npm)"
    elif major < 20:
        reason = f"node {major} is too old: the client needs node 20.19 or later"
    elif shutil.which("npm") is not None:
        # (at once when the packages installed match package-lock.json: install.sh's stamp)
        subprocess.run(["sh", str(PACKAGE / "scripts" / "install.sh")], check=True, timeout=600)
    elif not INSTALLED.exists():
        reason = "the client's npm packages are not installed and npm is not here"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def node_command(script: str) -> list[str]:
    """node running a script of the package; node before 22 has its global WebSocket
    behind a flag."""
    node = shutil.which("node") or "node"
    major = node_major() or 0
    flags = ["--experimental-websocket"] if major < 22 else []
    return [node, *flags, str(PACKAGE / script)]


@dataclass
class EchoService:
    """What an echo server saw: each accepted client's Sui address and pattern."""

    seen: list[str] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    def accept(self, address: str) -> bool | str:
        if address in self.denied:
            self.refused.append(address)
            return "this wallet is not on the allow list"
        return True

    async def echo(self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        """Echo every stream of the connection until its end."""
        self.seen.append(writer.get_extra_info("peer_address"))
        await echo_every_stream(reader, writer)


async def start_echo(
    service: EchoService, identity: HostIdentity, **options: Any
) -> tuple[dtp.aio.DTPServer, str]:
    """A dtp.aio server on the WebSocket carrier alone (127.0.0.1): (server, its URL)."""
    server = await dtp.aio.start_server(
        service.echo,
        None,
        None,
        identity=identity,
        accept=service.accept,
        websocket=("127.0.0.1", 0),
        **options,
    )
    host, port = server.websocket_addresses[0]
    return server, f"ws://{host}:{port}/dtp"


class ServedEcho:
    """An echo server on its own event loop in a thread, for tests that block (a browser
    driven over DevTools): ``with ServedEcho(service, identity, origins=[...]) as url``."""

    def __init__(self, service: EchoService, identity: HostIdentity, **options: Any) -> None:
        self.service = service
        self.identity = identity
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: dtp.aio.DTPServer | None = None

    def __enter__(self) -> str:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_echo(self.service, self.identity, **self.options), self.loop
        )
        self.server, url = future.result(30)
        return url

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def translate_path(self, path: str) -> str:
        # a path without its ".js": @protobuf-ts's ES modules (which @mysten/sui loads,
        # demo/sui.html) import their siblings so, as bundlers and dev servers accept
        found = super().translate_path(path)
        if not os.path.exists(found) and os.path.isfile(found + ".js"):
            return found + ".js"
        return found


@contextlib.contextmanager
def served_package() -> Iterator[str]:
    """The package folder (its demo page, sources and node_modules) over HTTP on
    127.0.0.1: yields the base URL, ``http://127.0.0.1:<port>``."""
    handler = functools.partial(_QuietHandler, directory=str(PACKAGE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
