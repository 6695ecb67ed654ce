"""Services daemons run in the test's own process (``dtp.daemon._runner.Daemon``), on a
LocalLedger file or the Sui node stand-in, and what their tests drive them with: an echo
backend, a client that opens its ledger connections itself and connects on them (as any
client of a host may), TCP clients of a forwarder, and waits bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import dtp.aio
from dtp.daemon._config import load_config
from dtp.daemon._runner import Daemon
from dtp.daemon._tunnel import read_status
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import TransportControl
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt, fee
from dtp.protocol.connection import ConnectionConfig

BOUND = 20.0
"""Seconds: a generous bound on waits that take well under one."""

SUI = 1_000_000_000
"""One SUI in MIST: what the daemon's ``faucet`` gives its provider on a LocalLedger."""


def service(port: int, backend: int, extra: str = "") -> str:
    """A ``[[service]]`` table: ``svc<port>`` on DTP port ``port``, forwarding to the
    backend on 127.0.0.1:``backend``, with ``extra`` lines of its own."""
    return f"""
[[service]]
name = "svc{port}"
port = {port}
backends = ["127.0.0.1:{backend}"]
health_interval = 30
{extra}"""


def write_config(tmp: Path, services: str) -> Path:
    """``tmp/daemon.toml``: a daemon on the LocalLedger file ``tmp/ledger.sqlite`` with its
    provider key (made once), a funded provider and a 1 s drain, serving ``services``."""
    if not (tmp / "provider.key").exists():
        HostIdentity.generate().save(tmp / "provider.key")
    config = tmp / "daemon.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "provider.key"
state_dir = "state"
faucet = {SUI}
drain_timeout = 1
{services}"""
    )
    return config


@contextlib.asynccontextmanager
async def echo_backend() -> AsyncIterator[int]:
    """A TCP backend echoing every byte until EOF; yields its port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def running(config: Path, drain_bound: float = 4 * BOUND) -> AsyncIterator[Daemon]:
    """A started daemon, drained at the end (within ``drain_bound`` seconds)."""
    daemon = Daemon(load_config(config))
    try:
        await daemon.start()
        yield daemon
    finally:
        await asyncio.wait_for(daemon.drain(), drain_bound)


def run_scenario(
    tmp: Path,
    services: Callable[[int], str],
    scenario: Callable[[Daemon, Any, Path, int], Awaitable[None]],
    client: Callable[[Path, Daemon], Any],
    drain_bound: float = 40.0,
) -> None:
    """``scenario(daemon, client, config, backend_port)`` against a started daemon
    (``write_config``) serving ``services(backend_port)`` with an echo backend; the
    client is ``client(tmp, daemon)``, whose ``ledger`` is closed once the daemon has
    drained; the whole run is bounded by ``2 * drain_bound`` seconds."""

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            port = await stack.enter_async_context(echo_backend())
            config = write_config(tmp, services(port))
            made: list[Any] = []
            stack.callback(lambda: [each.ledger.close() for each in made])
            daemon = await stack.enter_async_context(running(config, drain_bound))
            made.append(client(tmp, daemon))
            await scenario(daemon, made[0], config, port)

    asyncio.run(asyncio.wait_for(main(), 2 * drain_bound))


async def until(check: Callable[[], Any], what: str, bound: float = BOUND) -> Any:
    """``check()``'s first true value, looked for every 20 ms for up to ``bound`` s."""
    deadline = time.monotonic() + bound
    while not (value := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)
    return value


async def through(address: tuple[str, int], data: bytes) -> bytes:
    """One TCP client of a forwarder: ``data`` there and its echo back."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


async def tunnel(writer: dtp.aio.DTPStreamWriter, payload: bytes = b"ping") -> bytes:
    """One tunnel on a client's DTP connection to a daemon's echo service."""
    reader, stream = await writer.open_stream()
    await read_status(reader)
    stream.write(payload)
    stream.write_eof()
    return await reader.read()


class LedgerConnector:
    """Connects to a daemon (``endpoint``, its ``server_key``) as ``identity``, on a
    ledger connection of its own: the part every in-process client shares."""

    identity: HostIdentity
    endpoint: tuple[str, int]
    server_key: bytes

    async def connect(
        self, cid: str, port: int = 7000
    ) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
        """A DTP connection on the ledger connection ``cid``."""
        config = ConnectionConfig(
            identity=self.identity,
            is_client=True,
            connection_id=bytes.fromhex(cid[2:]),
            port=port,
        )
        return await dtp.aio.open_connection(
            *self.endpoint, identity=self.identity, server_key=self.server_key, config=config
        )


class Client(LedgerConnector):
    """A client of a daemon's host (``identity``, funded, reading and writing through
    ``ledger``, which it closes), opening ledger connections and connecting on them."""

    def __init__(self, ledger: Ledger, identity: HostIdentity, daemon: Daemon) -> None:
        self.identity = identity
        self.ledger = ledger
        assert daemon.host_id is not None and daemon.endpoint is not None
        self.host_id = daemon.host_id
        self.endpoint = daemon.endpoint
        self.server_key = daemon.identity.noise_public

    @property
    def address(self) -> str:
        return self.identity.sui_address

    def open_ledger(self, deposit: int, port: int = 7000) -> str:
        """A connection opened on the ledger to ``port`` (a spending cap for it, then
        the open); its ID."""
        cap = self.ledger.create_spending_cap(self.identity, deposit)
        return self.ledger.open_connection(
            self.identity, self.host_id, port, cap, deposit
        ).connection_id

    def close(self) -> None:
        self.ledger.close()


DEPOSIT = 1_000_000
RETRY_BOUND = 5.0  # seconds: each wait takes well under 1 s


class FileLedgerClient(LedgerConnector):
    """A client of the daemon: its own LocalLedger on the daemon's file."""

    def __init__(self, tmp: Path, daemon: Daemon, identity: HostIdentity | None = None) -> None:
        self.identity = identity or HostIdentity.generate()
        self.ledger = LocalLedger(tmp / "ledger.sqlite")
        if identity is None:
            self.ledger.faucet(self.identity.sui_address, SUI)
        self.cap = self.ledger.create_spending_cap(self.identity, SUI // 2)
        assert daemon.host_id is not None and daemon.endpoint is not None
        self.host_id = daemon.host_id
        self.endpoint = daemon.endpoint
        self.server_key = daemon.identity.noise_public

    async def open_ledger(self, port: int) -> str:
        opened = await asyncio.to_thread(
            self.ledger.open_connection, self.identity, self.host_id, port, self.cap, DEPOSIT
        )
        return opened.connection_id

    async def served_once(self, cid: str, port: int) -> None:
        """Connect on ``cid``, carry one tunnel, close."""
        _, writer = await self.connect(cid, port)
        assert await tunnel(writer) == b"ping"
        writer.close()

    async def refused_or_cut(self, cid: str, port: int) -> None:
        """Connect on ``cid``: refused, or cut by the daemon."""
        with contextlib.suppress(DTPError, asyncio.IncompleteReadError, ConnectionError):
            _, writer = await self.connect(cid, port)
            await asyncio.wait_for(tunnel(writer), RETRY_BOUND)
            writer.close()

    def receipt(self, cid: str, kib: int = 40) -> Receipt:
        sla = self.ledger.get_connection(cid).sla
        scope = self.ledger.receipt_scope(cid)
        return Receipt(scope, kib * 1024, 0, fee(sla, kib * 1024, 0), 1).sign(self.identity)

    def connection(self, cid: str) -> TransportControl:
        return self.ledger.get_connection(cid)


# one client of its own per scenario, on the daemon's LocalLedger file
run_with_file_client = functools.partial(run_scenario, client=FileLedgerClient)
