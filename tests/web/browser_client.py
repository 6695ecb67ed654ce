"""The JavaScript client of ``web/dtp-client`` for the tests: where it is, whether node
can run it, its npm packages installed (``web/dtp-client/scripts/install.sh``, which
scripts/bootstrap.sh runs), and a dtp.aio echo server on the WebSocket carrier for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest

import dtp.aio
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
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
    elif not INSTALLED.exists():
        if shutil.which("npm") is None:
            reason = "the client's npm packages are not installed and npm is not here"
        else:
            subprocess.run(["sh", str(PACKAGE / "scripts" / "install.sh")], check=True, timeout=600)
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

        async def one(r: dtp.aio.DTPStreamReader, w: dtp.aio.DTPStreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        streams = [asyncio.ensure_future(one(reader, writer))]
        try:
            while True:
                r, w = await writer.accept_stream()
                streams.append(asyncio.ensure_future(one(r, w)))
        except DTPError:
            pass
        await asyncio.gather(*streams, return_exceptions=True)


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
