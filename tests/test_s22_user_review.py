"""What a fresh user's walk through the API found (session 22), fixed here.

- ``top_up`` past the connection's spending cap: a connection by host ID without
  ``cap_id=`` gets a cap of its deposit, which the open reserved whole, so every top-up
  there is refused by the ledger (SpendingCapExceeded, nothing moved), and the error
  says to connect with ``cap_id=``.
- A host whose published endpoint was meant as TCP but did not parse (``127.0.0.1``
  with no port, ``:99999``) was reached over the ledger carrier instead, which it may
  not serve: the client waited out its timeout with a bare "timed out", the deposit in
  escrow until the half-close timeout. Now NoCarrierEndpoint names the entry before any
  money moves; entries of other kinds (``udp:...``, ``quic://``) are still skipped.
- An RPC ``meter=`` on a connection its transport meters (one by host ID) signed a
  second sequence of receipts for the one escrow: the server settled with the
  transport's, and the per-request fees were never collected. Now a ValueError says
  how to pay per request (docs/messaging.md §2).
- RPC clients (and ``RpcServer.serve_stream``) given the wrong kind of stream now say
  so when made, not at the first call.
- A closed port raised ConnectionLost (a ConnectionResetError); it is CarrierRefused
  now, a ConnectionRefusedError as ``socket.create_connection`` raises, and still a
  ConnectionLost.
- A paid server whose handler (or asyncio callback) raised closed the connection
  cleanly: the client read the end of a reply cut short as a whole one. It is aborted
  now, as ``serve_forever``'s and ``dtp.aio.start_server``'s are.
- A send after ``shutdown(SHUT_WR)`` raised LocalProtocolError only; it is
  SendAfterShutdown now, also the BrokenPipeError (EPIPE) a socket raises.
- ``reset(code)`` (blocking and asyncio) asked the peer to stop sending with code 0:
  the peer's sends raised StreamReset(0) while its reads raised StreamReset(code).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.admission import NoCarrierEndpoint, resolve_service
from dtp.chain.local import LocalLedger
from dtp.errors import (
    CarrierRefused,
    ConnectionClosed,
    ConnectionLost,
    LocalProtocolError,
    SocketClosed,
    SpendingCapExceeded,
    StreamReset,
)
from dtp.escrow import Meter
from dtp.keys import HostIdentity
from dtp.messaging.rpc import AsyncRpcClient, RpcClient, RpcServer
from dtp.metering import MeteringConfig
from dtp.paid import PaidSocket
from dtp.paid_aio import PaidReader, PaidWriter
from tests.hostid.test_connect_by_host_id import CLIENT as HOSTID_CLIENT
from tests.hostid.test_connect_by_host_id import PORT as HOSTID_PORT
from tests.hostid.test_connect_by_host_id import SERVER as HOSTID_SERVER
from tests.hostid.test_connect_by_host_id import World, world
from tests.paid.test_top_up import CLIENT, METERING, PORT, conserved
from tests.paid.test_top_up_over_deposit import DEPOSIT, SLA, host_id, ledger, quiet_handlers, serve
from tests.paid_twins import loop_in_thread
from tests.polling import raised_within, wait_for

__all__ = ["host_id", "ledger", "serve", "world"]  # (fixtures, used by name)


def _paid_args(ledger: LocalLedger, cap: str | None, metering: MeteringConfig) -> dict[str, Any]:
    """The client's side of a paid connection with DEPOSIT (and spending cap ``cap``)."""
    return {
        "timeout": 20,
        "ledger": ledger,
        "identity": CLIENT,
        "deposit": DEPOSIT,
        "cap_id": cap,
        "metering": metering,
    }


def paid_connect(
    ledger: LocalLedger, host_id: str, cap: str | None = None, metering: MeteringConfig = METERING
) -> dtp.socket.DTPSocket:
    """A blocking client's paid connection to the module's service."""
    return dtp.socket.create_connection(
        f"dtp://{host_id}:{PORT}", **_paid_args(ledger, cap, metering)
    )


async def paid_open(
    ledger: LocalLedger, host_id: str, cap: str | None = None
) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
    """:func:`paid_connect` through the asyncio client."""
    return await dtp.aio.open_connection(
        f"dtp://{host_id}:{PORT}", **_paid_args(ledger, cap, METERING)
    )


def _escrow_deposit(ledger: LocalLedger, cid: str) -> int:
    return ledger.get_escrow(ledger.get_connection(cid).escrow).deposited


def test_a_top_up_on_the_default_cap_is_refused_and_moves_nothing(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    """No cap_id: the cap is the deposit, so no top-up can be served."""
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    balance = ledger.balance(CLIENT.sui_address)
    with paid_connect(ledger, host_id) as sock:
        cid = sock.connection_id
        assert cid is not None
        spent = balance - ledger.balance(CLIENT.sui_address)  # the deposit (and gas: none)
        sock.sendall(b"go")
        with pytest.raises(SpendingCapExceeded, match="cap_id="):
            sock.top_up(1_000_000)
        assert _escrow_deposit(ledger, cid) == DEPOSIT
        assert balance - ledger.balance(CLIENT.sui_address) == spent
        sock.sendall(b"still usable")
        release.set()
    assert conserved(ledger)


def test_an_asyncio_top_up_past_the_cap_is_refused_and_one_within_it_goes(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT + 1000)

    async def main() -> None:
        _reader, writer = await paid_open(ledger, host_id, cap)
        try:
            cid = writer.connection_id
            assert cid is not None
            writer.write(b"go")
            await writer.drain()
            with pytest.raises(SpendingCapExceeded, match="1001 more asked"):
                await writer.top_up(1001)
            assert _escrow_deposit(ledger, cid) == DEPOSIT
            await writer.top_up(1000)
            assert _escrow_deposit(ledger, cid) == DEPOSIT + 1000
            with pytest.raises(SpendingCapExceeded, match="1 more asked"):
                await writer.top_up(1)
        finally:
            release.set()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())
    assert conserved(ledger)


def test_concurrent_top_ups_share_the_caps_room(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    """Two threads topping up at once: the ledger reserves each on the cap in turn, so
    at most one of two that each fit alone goes through."""
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT + 1500)
    results: list[BaseException | None] = []
    with paid_connect(ledger, host_id, cap) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        start = threading.Barrier(2)

        def top_up() -> None:
            start.wait(30)
            try:
                sock.top_up(1000)
                results.append(None)
            except SpendingCapExceeded as exc:
                results.append(exc)

        threads = [threading.Thread(target=top_up) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        release.set()
        assert sorted(r is None for r in results) == [False, True]
        assert _escrow_deposit(ledger, cid) == DEPOSIT + 1000
    assert conserved(ledger)


@pytest.mark.parametrize(
    "published", ["127.0.0.1", "127.0.0.1:99999", "tcp://127.0.0.1", "localhost"]
)
def test_an_endpoint_meant_as_tcp_that_does_not_parse_is_named_before_the_deposit(
    world: World, published: str
) -> None:
    world.ledger.set_endpoints(HOSTID_SERVER, world.host_id, [published])
    before = world.balances()
    with pytest.raises(NoCarrierEndpoint, match="carrier='ledger'") as info:
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=HOSTID_CLIENT, deposit=5000, timeout=30
        )
    assert repr(published) in str(info.value)
    assert world.balances() == before


def test_endpoints_of_other_kinds_still_leave_the_ledger_carrier(world: World) -> None:
    world.ledger.set_endpoints(
        HOSTID_SERVER,
        world.host_id,
        [
            "udp:127.0.0.1:4000",
            "quic://127.0.0.1:1",
            "http://x:1",
            "/ip4/1.2.3.4/udp/9000/quic",
            "/dns4/node.example.com/tcp/443",
            "relay.example.com/ledger",
        ],
    )
    resolved = resolve_service(
        world.ledger, world.host_id, HOSTID_PORT, HOSTID_CLIENT.sui_address, 5000
    )
    assert resolved.endpoint is None  # the ledger carrier, as before


# -- an RPC meter on a connection its transport meters -------------------------------------
# Both signed cumulative receipts for the one escrow: the server settled with the
# transport's, and the per-request fees were never collected (a later claim of the RPC
# receipt failed: the escrow was settled).


def test_an_rpc_meter_on_a_transport_metered_connection_is_refused(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    with paid_connect(ledger, host_id) as sock:
        cid = sock.connection_id
        assert cid is not None
        meter = Meter(CLIENT, cid, SLA, DEPOSIT)
        with pytest.raises(ValueError, match="metered by its transport"):
            RpcClient(sock, meter=meter)

        async def aio() -> None:
            _reader, writer = await paid_open(ledger, host_id)
            try:
                with pytest.raises(ValueError, match="metered by its transport"):
                    AsyncRpcClient(_reader, writer, meter=meter)
            finally:
                writer.close()
                await writer.wait_closed()

        asyncio.run(aio())
        RpcClient(sock)  # without a meter: the transport's receipts pay
        release.set()


def test_an_rpc_meter_on_an_unmetered_connection_is_taken(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    release = threading.Event()
    serve(*quiet_handlers(release))  # type: ignore[operator]
    with paid_connect(ledger, host_id, metering=MeteringConfig(enabled=False)) as sock:
        cid = sock.connection_id
        assert cid is not None
        client = RpcClient(sock, meter=Meter(CLIENT, cid, SLA, DEPOSIT))
        assert client.meter is not None
        release.set()


# -- RPC clients given the wrong kind of stream --------------------------------------------
# RpcClient(object()) was taken and failed at the first call; RpcClient(aio_writer) with
# an AttributeError about settimeout; AsyncRpcClient(sock, sock) in its read loop's task
# ("Task exception was never retrieved") and again at each call.


def test_rpc_clients_refuse_the_wrong_kind_of_stream() -> None:
    with pytest.raises(TypeError, match="sendall, recv and settimeout"):
        RpcClient(object())  # type: ignore[arg-type]
    server = RpcServer(workers=0)
    try:
        with pytest.raises(TypeError, match="sendall, recv and settimeout"):
            server.serve_stream(object())  # type: ignore[arg-type]
    finally:
        server.close()
    a, b = socket.socketpair()
    with a, b:
        RpcClient(a).close()  # a socket is a blocking stream

    async def main() -> None:
        loop = asyncio.get_running_loop()
        problems: list[object] = []
        loop.set_exception_handler(lambda _loop, context: problems.append(context))
        reader, writer = await asyncio.open_connection(sock=b_async)
        try:
            with pytest.raises(TypeError, match="AsyncRpcClient"):
                RpcClient(writer)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="AsyncRpcClient's reader"):
                AsyncRpcClient(a_async, writer)
            with pytest.raises(TypeError, match="AsyncRpcClient's writer"):
                AsyncRpcClient(reader, a_async)
        finally:
            writer.close()
            await writer.wait_closed()
        assert problems == []

    a_async, b_async = socket.socketpair()
    with a_async:
        asyncio.run(main())


# -- a closed port --------------------------------------------------------------------------
# raised ConnectionLost, a ConnectionResetError: retry code written for
# socket.create_connection (except ConnectionRefusedError) missed it.


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def test_a_closed_port_is_a_connection_refused_error_as_on_a_socket() -> None:
    port = _closed_port()
    key = HostIdentity.generate().noise_public
    with pytest.raises(ConnectionRefusedError) as info:
        dtp.socket.create_connection(("127.0.0.1", port), server_key=key, timeout=30)
    assert isinstance(info.value, CarrierRefused) and isinstance(info.value, ConnectionLost)
    assert info.value.errno == errno.ECONNREFUSED  # (as a socket's error carries it)
    assert f"127.0.0.1:{port}" in str(info.value)

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError) as info:
            await dtp.aio.open_connection("127.0.0.1", port, server_key=key, timeout=30)
        assert isinstance(info.value, CarrierRefused)

    asyncio.run(main())


# -- a paid handler that raises ------------------------------------------------------------
# The paid servers closed the connection cleanly after a handler or callback raised: the
# client read b"" after part of its reply and took it for a whole one.


def test_a_paid_handler_that_raises_ends_the_connection_with_an_error(
    ledger: LocalLedger, host_id: str, serve: object
) -> None:
    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        sock.sendall(b"half a rep")
        raise RuntimeError("the handler's bug")

    async def aio_handler(reader: PaidReader, writer: PaidWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        writer.write(b"half a rep")
        await writer.drain()
        raise RuntimeError("the callback's bug")

    serve(handler, aio_handler)  # type: ignore[operator]
    with paid_connect(ledger, host_id) as sock:
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"go")
        got = b""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                data = sock.recv(1024)
                assert data, f"a clean end after {got!r}"
                got += data
        assert info.value.reason == "internal error"
        assert got == b"half a rep"
    assert wait_for(lambda: ledger.get_connection(cid).settled, 30)
    assert conserved(ledger)


# -- a send after shutdown(SHUT_WR) --------------------------------------------------------
# raised LocalProtocolError only, not the BrokenPipeError (an OSError) a socket raises.


def test_a_send_after_shut_wr_is_a_broken_pipe_as_on_a_socket() -> None:
    server_id = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id) as server:
        accepted: list[dtp.socket.DTPSocket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept(timeout=30)[0]))
        thread.start()
        with dtp.socket.create_connection(
            server.address, timeout=30, server_key=server.noise_public_key
        ) as sock:
            thread.join(30)
            sock.shutdown(socket.SHUT_WR)
            for send in (
                lambda: sock.sendall(b"late"),
                lambda: sock.send(b"late"),
                lambda: sock.send_recv(b"late", 10),  # (it returned None)
            ):
                with pytest.raises(BrokenPipeError) as info:
                    send()
                assert isinstance(info.value, LocalProtocolError)
                assert info.value.errno == errno.EPIPE
            held = threading.Lock()
            held.acquire()
            with pytest.raises(BrokenPipeError):
                sock.send_recv(b"late", 10, release=held)
            assert not held.locked()  # let go of, as when it raises for any reason
            assert accepted[0].recv(10) == b""  # the peer read the end, and nothing after
            accepted[0].close()
        with pytest.raises(SocketClosed):
            sock.send_recv(b"late", 10)  # (it returned None)


# -- the code of a reset -------------------------------------------------------------------
# reset(code) asked the peer to stop sending with code 0: its sends raised
# StreamReset(code 0) while its reads raised StreamReset(code).


def test_an_asyncio_reset_gives_the_peers_sends_its_code() -> None:
    server_id = HostIdentity.generate()
    reset_done = threading.Event()

    async def on_client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        stream_reader, stream_writer = await writer.accept_stream()
        assert await stream_reader.readexactly(2) == b"hi"
        stream_writer.reset(5)
        reset_done.set()
        await reader.read()  # until the client closes

    with loop_in_thread() as loop:
        server = asyncio.run_coroutine_threadsafe(
            dtp.aio.start_server(on_client, "127.0.0.1", 0, identity=server_id), loop
        ).result(30)
        try:
            port = server.sockets[0].getsockname()[1]
            with dtp.socket.create_connection(
                ("127.0.0.1", port), timeout=30, server_key=server_id.noise_public
            ) as sock:
                stream = sock.open_stream()
                stream.sendall(b"hi")
                assert reset_done.wait(30)

                def send_until_it_fails() -> None:
                    while True:
                        stream.sendall(b"x" * 65536)

                raised = raised_within(send_until_it_fails, 60, sock.abort)
                assert isinstance(raised, StreamReset) and raised.code == 5, raised
        finally:
            server.close()
            asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(30)
