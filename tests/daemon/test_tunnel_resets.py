"""The services daemon: tunnels that end, a paid connection closed, and backend host
names the balancer survives.

* A TCP peer that half-closes (its request complete), does not read a large response
  and then resets ends its tunnel: the DTP -> TCP direction, paused for the peer's
  full buffer, is told the transport was lost, and the far side's ``drain()`` ends.
  With the far side idle the reset is seen too (the transport still reads after EOF).
* The forwarder's ledger read right after opening a DTP connection (its escrow)
  failing closes that connection, on the ledger too: no paid connection, no deposit
  left behind.
* A backend host name with an empty label or one over 63 bytes, for which
  ``getaddrinfo`` raises ``UnicodeError`` (not a socket error), is an unreachable
  backend: the health checks go on, the tunnel is answered, and the pool's ``stop()``
  returns.

Real sockets on 127.0.0.1 and real LocalLedger files; the one fake is a ledger whose
first read of a connection's escrow fails (a ledger RPC timing out).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import dtp.aio
from dtp.daemon._balancer import BackendPool
from dtp.daemon._config import Backend, ForwardConfig, parse_config
from dtp.daemon._forwarder import Forwarder
from dtp.daemon._state import StatusBook
from dtp.daemon._tunnel import TcpLeg, refusal, splice_leg
from dtp.errors import ChainError, DaemonConfigError, TunnelError
from dtp.hostid._address import HostAddress
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Escrow, Sla, TransportControl
from dtp.ledger.local import LocalLedger
from tests.support.paid_inprocess import ident

BOUND = 15.0  # seconds: generous, for a loaded machine; each end takes ~1-2 s


# -- a tunnel whose TCP peer resets after its EOF ---------------------------------------


Far = Callable[[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter], Awaitable[None]]


async def _tunnel_then_reset(far: Far) -> None:
    """A real DTP connection whose far side runs ``far`` on its stream; a TCP client of
    a spliced :class:`TcpLeg` sends a request, half-closes, reads nothing and resets
    once the far side's bytes back up in the leg's transport (or at once, when ``far``
    sends nothing). splice_leg must return with the error and the far side end."""
    identity = HostIdentity.generate()
    far_ended = asyncio.Event()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        try:
            await far(reader, writer)
        except Exception:
            pass  # the tunnel cut: the far side's writes fail
        finally:
            far_ended.set()

    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
    reader, writer = await dtp.aio.open_connection(
        "127.0.0.1", server.address[1], server_key=identity.noise_public
    )
    loop = asyncio.get_running_loop()
    legs: list[TcpLeg] = []
    spliced: asyncio.Future[BaseException | None] = loop.create_future()

    async def splice(leg: TcpLeg) -> None:
        spliced.set_result(await splice_leg(leg, reader, writer, lambda n: None))

    def new_leg() -> TcpLeg:
        leg = TcpLeg(lambda n: None)
        legs.append(leg)
        return leg

    tcp = await loop.create_server(new_leg, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await loop.run_in_executor(None, client.connect, ("127.0.0.1", port))
        while not legs or legs[0].transport is None:
            await asyncio.sleep(0.01)
        leg = legs[0]
        task = loop.create_task(splice(leg))
        writer.write(b"GET")  # the far side's handler starts on the first stream's data
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)  # the request is complete
        await asyncio.wait_for(leg.read_done, BOUND)
        if far is _stream_forever:
            # the response backs up: the leg's transport paused its writing
            assert leg.transport is not None
            high = leg.transport.get_write_buffer_limits()[1]
            deadline = loop.time() + BOUND
            while leg.transport.get_write_buffer_size() <= high:
                assert loop.time() < deadline, "the far side's bytes never backed up"
                await asyncio.sleep(0.02)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # the client gives up: RST
        error = await asyncio.wait_for(asyncio.shield(spliced), BOUND)
        assert isinstance(error, OSError), error
        await asyncio.wait_for(far_ended.wait(), BOUND)
        await asyncio.wait_for(task, BOUND)
    finally:
        client.close()
        writer.close()
        tcp.close()
        server.close()


async def _stream_forever(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    chunk = bytes(1 << 16)
    while True:
        writer.write(chunk)
        await writer.drain()


async def _stay_idle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    # reads the request to its end, then sends nothing: it ends when the tunnel does
    await reader.read()
    await writer.wait_closed()


def test_a_reset_after_eof_ends_a_tunnel_paused_for_its_full_buffer() -> None:
    """The leg's connection_lost wakes the DTP -> TCP direction, paused for the
    transport's buffer, and the far side's drain(): the tunnel ends."""
    asyncio.run(asyncio.wait_for(_tunnel_then_reset(_stream_forever), 4 * BOUND))


def test_a_reset_after_eof_ends_a_tunnel_whose_far_side_is_idle() -> None:
    """After the EOF the transport still reads, so the reset is seen and the tunnel ends
    without waiting for the far side to send again."""
    asyncio.run(asyncio.wait_for(_tunnel_then_reset(_stay_idle), 4 * BOUND))


# -- a forwarder whose ledger read fails after the connection opened ----------------------

SERVER, CLIENT = ident(0x30), ident(0x31)


class _FlakyReads(LocalLedger):
    """Its first read of a connection's escrow fails, as a ledger RPC timing out would
    (the forwarder's one read after its open: the escrow holds the SLA and deposit)."""

    read_ids: list[str]
    """The connections whose escrow was asked for, in order."""

    def get_escrow(self, escrow_id: str) -> Escrow:
        escrow = super().get_escrow(escrow_id)
        self.read_ids.append(escrow.connection)
        if len(self.read_ids) == 1:
            raise ChainError("ledger RPC timed out")
        return escrow


async def _plain_host_and_forwarder(
    tmp_path: Path, ledger: LocalLedger, handle: dtp.aio.ClientCallback
) -> tuple[dtp.aio.DTPServer, Forwarder]:
    """A DTP server published as a Host (service port 80, a request price) that admits
    anyone and never touches the ledger, and a forwarder to it."""
    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
    endpoint = f"tcp://127.0.0.1:{server.address[1]}"
    host_id = await asyncio.to_thread(ledger.create_host, SERVER, SERVER.noise_public, [endpoint])
    await asyncio.to_thread(ledger.add_service, SERVER, host_id, 80, "raw", Sla(0, 1, 1000))
    config = ForwardConfig("f", Backend("127.0.0.1", 0), HostAddress.parse(f"dtp://{host_id}:80"))
    return server, Forwarder(config, ledger, CLIENT, StatusBook(tmp_path / "state"))


def test_a_failed_ledger_read_after_opening_closes_the_connection(tmp_path: Path) -> None:
    """The forwarder closes the connection on the ledger, never leaves it Open with its
    deposit locked (no link holding it, no watcher to close it). The host is a plain DTP
    server that never touches the ledger: what the ledger shows is the
    forwarder's doing."""
    ledger = _FlakyReads(tmp_path / "ledger.sqlite")
    ledger.read_ids = []
    ledger.faucet(CLIENT.sui_address, 1 << 40)

    async def run() -> tuple[bytes, TransportControl]:
        served_ended = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.read()
            served_ended.set()

        server, forwarder = await _plain_host_and_forwarder(tmp_path, ledger, handle)
        host, port = await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"hello")
                got = b""
                with contextlib.suppress(ConnectionResetError):
                    got = await asyncio.wait_for(reader.read(), BOUND)
                # looked at while the forwarder runs: the loop's end closes what it left
                assert ledger.read_ids, "the forwarder never read its connection"
                tc = await asyncio.to_thread(ledger.get_connection, ledger.read_ids[0])
                await asyncio.wait_for(served_ended.wait(), BOUND)
                assert forwarder.stats.errors == 1
                return got, tc
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        finally:
            await forwarder.drain(1.0)
            server.close()

    try:
        got, tc = asyncio.run(asyncio.wait_for(run(), 4 * BOUND))
    finally:
        ledger.close()
    assert got == b""  # the local client is closed
    # half-closed on the ledger (a daemon then claims and settles, refunding the rest)
    assert tc.state != ConnectionState.OPEN, tc
    assert tc.half_closed_by == CLIENT.sui_address, tc


def test_a_drain_while_the_tunnel_waits_for_its_status_closes_the_local_client(
    tmp_path: Path,
) -> None:
    """The host never answers the tunnel's status; drain() cancels the tunnel there and
    closes the local client, not left open (its reading paused) until the loop ends."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.faucet(CLIENT.sui_address, 1 << 40)

    async def run() -> bytes:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.read()

        server, forwarder = await _plain_host_and_forwarder(tmp_path, ledger, handle)
        host, port = await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"hello")
                deadline = asyncio.get_running_loop().time() + BOUND
                while forwarder.stats.tunnels == 0:  # its stream is open: it waits
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)
                await forwarder.drain(0.05)
                with contextlib.suppress(ConnectionResetError):
                    return await asyncio.wait_for(reader.read(), BOUND)
                return b""
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        finally:
            await forwarder.drain(1.0)
            server.close()

    try:
        assert asyncio.run(asyncio.wait_for(run(), 4 * BOUND)) == b""
    finally:
        ledger.close()


# -- backend host names getaddrinfo cannot encode -----------------------------------------

BAD_HOSTS = ["a" * 64 + ".example", "a..b"]


class _Kept(asyncio.Protocol):
    transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_the_pool_survives_a_host_name_getaddrinfo_cannot_encode(host: str) -> None:
    """A host name getaddrinfo cannot encode makes that backend unreachable, as any
    other: the connect fails over (or says no backend is reachable), the health checks
    go on, and stop() returns."""
    good = socket.create_server(("127.0.0.1", 0))

    async def run() -> None:
        bad, up = Backend(host, 80), Backend("127.0.0.1", good.getsockname()[1])
        pool = BackendPool("svc", (bad,), health_interval=0.05, connect_timeout=5.0)
        with pytest.raises(TunnelError, match="no backend of service svc is reachable"):
            await pool.connect(asyncio.Protocol)
        assert pool.healthy[bad] is False
        # with a reachable one beside it, the failover goes on to that one
        pool = BackendPool("svc", (bad, up), health_interval=0.05, connect_timeout=5.0)
        pool.healthy[up] = False  # the bad one is tried first
        protocol, chosen = await pool.connect(_Kept)
        assert chosen == up
        assert protocol.transport is not None
        protocol.transport.close()
        pool.start()
        deadline = asyncio.get_running_loop().time() + BOUND
        while not (pool.healthy[up] and not pool.healthy[bad]):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # a few more rounds of checks
        assert pool._task is not None and not pool._task.done(), "the health checks died"
        await pool.stop()

    try:
        asyncio.run(asyncio.wait_for(run(), 4 * BOUND))
    finally:
        good.close()


def test_stop_survives_health_checks_that_died() -> None:
    """Whatever killed the checks, stop() logs it and returns, so that the daemon's
    drain goes on."""

    async def run() -> None:
        pool = BackendPool("svc", (Backend("127.0.0.1", 9),), 60.0, 1.0)

        async def broken() -> None:
            raise ValueError("a fault in the checks")

        pool.check_now = broken  # type: ignore[method-assign]
        pool.start()
        assert pool._task is not None
        await asyncio.wait({pool._task}, timeout=BOUND)
        await pool.stop()
        assert pool._task is None

    asyncio.run(run())


HEAD = '[daemon]\nledger = "l.json"\nidentity = "id.key"\nstate_dir = "s"\n'


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_the_config_refuses_a_host_name_getaddrinfo_cannot_encode(host: str) -> None:
    text = HEAD + f'\n[[service]]\nname = "a"\nport = 80\nbackends = ["{host}:8080"]\n'
    with pytest.raises(DaemonConfigError, match=r"dtp.toml:9: service\[0\]\.backends: .*host"):
        parse_config(text, Path("dtp.toml"))
    text = (
        HEAD
        + f'\n[[forward]]\nname = "f"\nlisten = "{host}:0"\ntarget = "dtp://0x{"ab" * 32}:80"\n'
    )
    with pytest.raises(DaemonConfigError, match="no valid host name"):
        parse_config(text, Path("dtp.toml"))
    # names it can encode still pass: 63 bytes a label, a root dot, IDNA, IPv6
    for good in ["a" * 63 + ".example", "example.com.", "bücher.example", "[::1]"]:
        text = HEAD + f'\n[[service]]\nname = "a"\nport = 80\nbackends = ["{good}:8080"]\n'
        config = parse_config(text, Path("dtp.toml"))
        assert config.services[0].backends[0].host == good.strip("[]")


def test_a_long_tunnel_refusal_is_cut_on_a_character_boundary() -> None:
    raw = refusal("é" * 600)  # 1200 bytes of 2-byte characters
    (length,) = struct.unpack(">H", raw[1:3])
    reason = raw[3:].decode("utf-8")  # (strict: a split character raises)
    assert length == len(raw) - 3 <= 1024
    assert reason == "é" * 512
    assert refusal("\ud800")[3:] == b"?"
