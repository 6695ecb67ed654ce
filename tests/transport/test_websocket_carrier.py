"""The WebSocket carrier (docs/protocol.md §13) over real sockets on 127.0.0.1: a
dtp.aio server listening for it beside TCP, the ``ws://`` client, and clients of the
``websockets`` library itself that break its rules.

- handshakes (IK and XX), echo of many records, more streams, the server's view of its
  client; a paid per-request RPC call by host ID over WebSocket;
- the upgrade refused: an Origin off the allow list (403), no ``dtp.v1`` subprotocol
  (400), a plain HTTP request (426), each counted in ``handshakes_failed``;
- the carrier's rules: a message above 16412 bytes (1009), a message that is not one
  record (1002), a text message (1003); the DTP connection ends with ConnectionLost;
- the admission: a silent TCP connection and a silent upgraded WebSocket are closed at
  the first-message timeout, counted in ``unproven_closed``;
- ``wss://``, the server's close, the arguments refused."""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import dtp.aio
from dtp.errors import (
    CarrierRefused,
    ConnectionLost,
    ConnectionRefused,
    DTPError,
    DTPTimeoutError,
    HandshakeError,
)
from dtp.errors import ConnectionClosed as ConnectionClosed_
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local._ledger import LocalLedger
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, ledger_payments
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Meter
from dtp.protocol.connection import ConnectionConfig
from dtp.testing._loops import LoopThread
from dtp.transport.carriers._websocket import MAX_MESSAGE, MAX_REQUEST_HEAD, SUBPROTOCOL
from tests.support.aio_echo import echo_every_stream as echo

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


async def ws_server(callback: Any = echo, **options: Any) -> tuple[dtp.aio.DTPServer, str]:
    """A dtp.aio server on TCP and WebSocket (127.0.0.1, any ports): (server, its URL)."""
    server = await dtp.aio.start_server(
        callback,
        "127.0.0.1",
        0,
        identity=SERVER,
        websocket=("127.0.0.1", 0),
        **options,
    )
    host, port = server.websocket_addresses[0]
    return server, f"ws://{host}:{port}/dtp"


async def closed(server: dtp.aio.DTPServer) -> None:
    server.close()
    await server.wait_closed()


def test_ik_and_xx_handshakes_and_echo_over_websocket() -> None:
    seen: list[tuple[Any, Any]] = []

    async def served(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        seen.append(
            (writer.get_extra_info("peer_address"), writer.get_extra_info("websocket_path"))
        )
        await echo(reader, writer)

    async def main() -> None:
        server, url = await ws_server(served)
        try:
            # IK: the server's key known
            reader, writer = await dtp.aio.open_connection(
                url, server_key=SERVER.noise_public, identity=CLIENT, timeout=10
            )
            assert writer.get_extra_info("peer_static_key") == SERVER.noise_public
            assert writer.get_extra_info("websocket_subprotocol") == SUBPROTOCOL
            blob = bytes(range(256)) * 1200  # 300 KiB: many full records, flow control
            writer.write(blob)
            await writer.drain()
            assert await reader.readexactly(len(blob)) == blob
            r2, w2 = await writer.open_stream()  # another stream on the same carrier
            w2.write(b"second stream")
            w2.write_eof()
            assert await r2.read() == b"second stream"
            writer.close()
            await writer.wait_closed()
            # XX: the client learns the key in the handshake
            reader, writer = await dtp.aio.open_connection(url, timeout=10)
            assert writer.get_extra_info("peer_static_key") == SERVER.noise_public
            writer.write(b"xx")
            assert await reader.readexactly(2) == b"xx"
            writer.close()
            await writer.wait_closed()
            assert server.handshakes_failed == 0
        finally:
            await closed(server)

    asyncio.run(main())
    assert seen[0] == (CLIENT.sui_address, "/dtp")
    assert len(seen) == 2 and seen[1][1] == "/dtp"


def test_the_same_server_serves_tcp_beside_websocket() -> None:
    async def main() -> None:
        server, url = await ws_server()
        try:
            over_tcp = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=10
            )
            over_ws = await dtp.aio.open_connection(url, server_key=SERVER.noise_public, timeout=10)
            for reader, writer in (over_tcp, over_ws):
                writer.write(b"both")
                assert await reader.readexactly(4) == b"both"
                writer.close()
                await writer.wait_closed()
            assert over_tcp[1].get_extra_info("websocket_subprotocol") is None
        finally:
            await closed(server)

    asyncio.run(main())


def test_origins_on_the_allow_list_only() -> None:
    async def main() -> None:
        server, url = await ws_server(origins=["https://app.example"])
        try:
            for origin in (None, "https://app.example"):  # a program; the allowed page
                reader, writer = await dtp.aio.open_connection(
                    url, server_key=SERVER.noise_public, origin=origin, timeout=10
                )
                writer.write(b"in")
                assert await reader.readexactly(2) == b"in"
                writer.close()
                await writer.wait_closed()
            for origin in ("https://evil.example", "http://app.example", "null"):
                with pytest.raises(ConnectionRefused, match="403") as refused:
                    await dtp.aio.open_connection(url, origin=origin, timeout=10)
                assert "Origin" in str(refused.value)
            assert server.handshakes_failed == 3
        finally:
            await closed(server)
        # by default no web page at all; "*" any
        server, url = await ws_server()
        try:
            with pytest.raises(ConnectionRefused, match="403"):
                await dtp.aio.open_connection(url, origin="https://app.example", timeout=10)
        finally:
            await closed(server)
        server, url = await ws_server(origins=["*"])
        try:
            _, writer = await dtp.aio.open_connection(
                url, origin="https://anyone.example", timeout=10
            )
            writer.close()
            await writer.wait_closed()
        finally:
            await closed(server)

    asyncio.run(main())


def test_an_upgrade_without_the_subprotocol_and_plain_http_are_refused() -> None:
    async def main() -> None:
        server, url = await ws_server()
        try:
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(url, open_timeout=5):
                    pass
            assert refused.value.response.status_code == 400
            assert b"subprotocol" in refused.value.response.body
            # with it: the upgrade is made (the DTP handshake is the next thing due)
            async with ws_connect(url, subprotocols=[SUBPROTOCOL], open_timeout=5) as ws:
                assert ws.subprotocol == SUBPROTOCOL
                assert ws.response is not None
                assert "Sec-WebSocket-Extensions" not in ws.response.headers  # no deflate
            host, port = server.websocket_addresses[0]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 426 ")
            writer.close()
            assert await _until(lambda: server.handshakes_failed == 2)
        finally:
            await closed(server)

    asyncio.run(main())


async def _until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"\x01" * (MAX_MESSAGE + 1), 1009),  # above the largest record
        (bytes.fromhex("010005000000000000000000") + b"\x01" * 4, 1002),  # a body short
        (bytes.fromhex("010001000000000000000000") + b"\x01\x02", 1002),  # a byte over
        (b"\x01" * 11, 1002),  # not even a header
        ("a text message", 1003),
    ],
    ids=["too-big", "short", "long", "no-header", "text"],
)
def test_a_message_that_breaks_the_carrier_rules_closes_it(message: bytes | str, code: int) -> None:
    async def main() -> None:
        server, url = await ws_server()
        try:
            async with ws_connect(
                url, subprotocols=[SUBPROTOCOL], open_timeout=5, max_size=None
            ) as ws:
                await ws.send(message)
                with pytest.raises(ConnectionClosed) as ended:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ended.value.rcvd is not None and ended.value.rcvd.code == code
        finally:
            await closed(server)

    asyncio.run(main())


def test_an_oversized_message_mid_connection_ends_it_with_connection_lost() -> None:
    """A peer that sends a message above MAX_MESSAGE on an established connection: the
    server closes the carrier (1009) and its reads raise ConnectionLost naming it."""
    ended: list[BaseException] = []

    async def served(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        try:
            await reader.read(100)
        except DTPError as exc:
            ended.append(exc)

    async def main() -> None:
        server, url = await ws_server(served)
        try:
            reader, writer = await dtp.aio.open_connection(
                url, server_key=SERVER.noise_public, timeout=10
            )
            carrier = writer.transport
            carrier._ws.send_binary(b"\x10" * (MAX_MESSAGE + 1))  # (no client sends that)
            carrier._flush()
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(reader.read(100), 5)
            assert await _until(lambda: bool(ended))
            writer.close()
        finally:
            await closed(server)

    asyncio.run(main())
    assert isinstance(ended[0], ConnectionLost)
    assert "exceeds limit" in str(ended[0]) and "close code 1009" in str(ended[0])


def test_silent_connections_time_out_as_over_tcp() -> None:
    """The first-message timeout runs from the TCP accept: a connection that never
    upgrades, and one that upgrades and sends no record, are both closed after it."""

    async def main() -> None:
        server, url = await ws_server(first_message_timeout=0.5)
        try:
            host, port = server.websocket_addresses[0]
            started = time.monotonic()
            _, raw = await asyncio.open_connection(host, port)  # never upgrades
            async with ws_connect(url, subprotocols=[SUBPROTOCOL], open_timeout=5) as ws:
                assert await _until(lambda: server.unproven == 2)
                with pytest.raises(ConnectionClosed) as ended:
                    await asyncio.wait_for(ws.recv(), 5)
            # the upgraded one: no message, then the server's close frame, 1000 and no
            # reason -- where a TCP client reads the end of the stream (no CLOSE record:
            # it has no keys to seal one with)
            assert ended.value.rcvd is not None
            assert (ended.value.rcvd.code, ended.value.rcvd.reason) == (1000, "")
            elapsed = time.monotonic() - started
            assert 0.4 < elapsed < 4.0
            assert await _until(lambda: server.unproven_closed == 2)
            assert server.unproven == 0 and server.handshakes_failed == 0
            raw.close()
            # the server still serves
            reader, writer = await dtp.aio.open_connection(url, timeout=10)
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await writer.wait_closed()
        finally:
            await closed(server)

    asyncio.run(main())


def test_a_slow_upgrade_counts_against_the_first_message_timeout() -> None:
    """An upgrade request trickled in, its first record never sent: closed at the
    first-message timeout, as a TCP client's partial first record is."""

    async def main() -> None:
        server, _ = await ws_server(first_message_timeout=0.5)
        try:
            host, port = server.websocket_addresses[0]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.3 < time.monotonic() - started < 4.0
            assert await _until(lambda: server.unproven_closed == 1)
            writer.close()
        finally:
            await closed(server)

    asyncio.run(main())


def test_a_closed_server_stops_listening_on_websocket() -> None:
    async def main() -> None:
        server, url = await ws_server()
        assert server.is_serving()
        await closed(server)
        with pytest.raises(CarrierRefused):
            await dtp.aio.open_connection(url, timeout=5)

    asyncio.run(main())


def test_a_websocket_only_server() -> None:
    async def main() -> None:
        server = await dtp.aio.start_server(
            echo, None, None, identity=SERVER, websocket=("127.0.0.1", 0)
        )
        try:
            assert server.sockets == () and server.is_serving()
            host, port = server.websocket_addresses[0]
            reader, writer = await dtp.aio.open_connection(f"ws://{host}:{port}", timeout=10)
            writer.write(b"alone")
            assert await reader.readexactly(5) == b"alone"
            writer.close()
            await writer.wait_closed()
        finally:
            await closed(server)

    asyncio.run(main())


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS context for a server on 127.0.0.1 with a fresh self-signed certificate, and
    a client context that trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))
    return server_ctx, client_ctx


def test_wss(tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)

    async def main() -> None:
        server = await dtp.aio.start_server(echo, "127.0.0.1", 0, identity=SERVER)
        try:
            host, port = await server.listen_websocket("127.0.0.1", 0, ssl=server_ctx)
            url = f"wss://{host}:{port}/"
            reader, writer = await dtp.aio.open_connection(
                url, server_key=SERVER.noise_public, ssl=client_ctx, timeout=10
            )
            blob = b"tls" * 20000
            writer.write(blob)
            assert await reader.readexactly(len(blob)) == blob
            writer.close()
            await writer.wait_closed()
            with pytest.raises(ConnectionLost, match="CERTIFICATE_VERIFY_FAILED") as failed:
                await dtp.aio.open_connection(url, timeout=10)  # (the system's roots)
            assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
        finally:
            await closed(server)

    asyncio.run(main())


def test_arguments_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="no port"):
            await dtp.aio.open_connection("ws://127.0.0.1:1/", 1)
        with pytest.raises(ValueError, match="not a WebSocket URL"):
            await dtp.aio.open_connection("ws://", timeout=1)
        with pytest.raises(ValueError, match="wss"):
            await dtp.aio.open_connection(
                "ws://127.0.0.1:1/", ssl=ssl.create_default_context(), timeout=1
            )
        with pytest.raises(ValueError, match="WebSocket URL"):
            await dtp.aio.open_connection("127.0.0.1", 1, origin="https://a.example")
        with pytest.raises(ValueError, match="ledger"):
            await dtp.aio.open_connection("ws://127.0.0.1:1/", deposit=5)
        with pytest.raises(TypeError, match="one string"):
            await dtp.aio.start_server(
                echo, "127.0.0.1", 0, identity=SERVER, websocket=("127.0.0.1", 0), origins="*"
            )
        with pytest.raises(ValueError, match="origins"):
            await dtp.aio.start_server(echo, "127.0.0.1", 0, identity=SERVER, origins=["*"])

    asyncio.run(main())


def test_a_paid_per_request_call_over_websocket(tmp_path: Path) -> None:
    """A JSON-RPC-style service billed per request, reached by host ID over WebSocket:
    the ledger connection, the deposit and the receipts as over TCP; each call paid by
    a receipt the server accepts."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    provider, user = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
    host = ledger.create_host(provider, provider.noise_public)
    ledger.add_service(provider, host, 8545, "jsonrpc", sla)
    ledger.faucet(user.sui_address, 10_000)
    kept: list[Any] = []
    answers: list[Any] = []

    async def main() -> None:
        rpc = AsyncRpcServer(payments=ledger_payments(ledger, on_receipt=kept.append))
        rpc.register("echo", lambda p: p)
        server = await dtp.aio.start_server(
            rpc.serve_stream, "127.0.0.1", 0, identity=provider, websocket=("127.0.0.1", 0)
        )
        try:
            await asyncio.to_thread(
                ledger.set_endpoints, provider, host, [f"tcp://127.0.0.1:{server.address[1]}"]
            )
            ws_host, ws_port = server.websocket_addresses[0]
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{host}:8545",
                ledger=ledger,
                identity=user,
                deposit=100,
                metering=MeteringConfig(enabled=False),  # billed per request instead
                websocket=f"ws://{ws_host}:{ws_port}/",
                timeout=10,
            )
            assert writer.get_extra_info("websocket_subprotocol") == SUBPROTOCOL
            cid = writer.connection_id
            assert cid is not None
            meter = Meter(user, ledger.receipt_scope(cid), sla, 100, every_requests=1)
            async with AsyncRpcClient(reader, writer, timeout=10, meter=meter) as client:
                for i in range(3):
                    answers.append(await client.call("echo", {"n": i}))
            writer.close()
            await writer.wait_closed()
            assert meter.latest is not None and meter.latest.total_requests == 3
        finally:
            await closed(server)

    asyncio.run(main())
    assert answers == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert kept and max(receipt.total_requests for receipt in kept) == 3
    ledger.close()


def test_silent_websockets_give_way_to_a_genuine_client() -> None:
    """The bound on connections that have not sent their first record counts WebSocket
    clients from their TCP accept: silent ones beyond ``backlog`` make the oldest give
    way, and a genuine client still gets in at once."""

    async def main() -> None:
        server, url = await ws_server(backlog=4, first_message_timeout=30)
        silent: list[asyncio.StreamWriter] = []
        try:
            host, port = server.websocket_addresses[0]
            for _ in range(4):
                silent.append((await asyncio.open_connection(host, port))[1])
            async with ws_connect(url, subprotocols=[SUBPROTOCOL], open_timeout=5):
                assert await _until(lambda: server.unproven == 4)
                assert server.unproven_closed >= 1  # (the oldest gave way)
                started = time.monotonic()
                reader, writer = await dtp.aio.open_connection(url, timeout=10)
                writer.write(b"in")
                assert await reader.readexactly(2) == b"in"
                assert time.monotonic() - started < 5.0
                writer.close()
                await writer.wait_closed()
            assert await _until(lambda: server.unproven_closed >= 2)
            assert server.unproven <= 4
        finally:
            for each in silent:
                each.close()
            await closed(server)

    asyncio.run(main())


def test_an_upgrade_request_head_is_bounded() -> None:
    """An unproven WebSocket client holds at most MAX_REQUEST_HEAD bytes of its upgrade
    request, as a TCP one holds at most its first record: beyond, HTTP 431. A request
    line past 8192 bytes (414) and bytes that are no HTTP request (no answer) are
    refused upgrades too, counted as such."""

    async def main() -> None:
        server, _ = await ws_server()
        try:
            host, port = server.websocket_addresses[0]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for i in range(MAX_REQUEST_HEAD // 1000 + 2):
                writer.write(b"X-Pad-%d: %s\r\n" % (i, b"p" * 990))
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 431 ")
            writer.close()
            assert await _until(lambda: server.handshakes_failed == 1)
            for request, answered in (
                (b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\n", b"HTTP/1.1 414 "),
                (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b""),
            ):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(), 5)
                assert answer.startswith(answered) and (answered or not answer)
                writer.close()
            assert await _until(lambda: server.handshakes_failed == 3)
            assert server.unproven == 0
        finally:
            await closed(server)

    asyncio.run(main())


def test_start_serving_false_holds_the_websocket_listener_back() -> None:
    async def main() -> None:
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            websocket=("127.0.0.1", 0),
            start_serving=False,
        )
        try:
            host, port = server.websocket_addresses[0]
            assert not server.is_serving()
            await server.start_serving()
            reader, writer = await dtp.aio.open_connection(f"ws://{host}:{port}/", timeout=10)
            writer.write(b"now")
            assert await reader.readexactly(3) == b"now"
            writer.close()
            await writer.wait_closed()
        finally:
            await closed(server)

    asyncio.run(main())


def test_the_dtp_close_reaches_a_client_still_sending() -> None:
    """The server's CLOSE (a refusal by its accept hook; an abort while the client
    writes on) travels as a record before the WebSocket's close: the client reads the
    code and reason, not a lost carrier."""

    ended_here = asyncio.Event()

    async def cut_off(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        await reader.readexactly(100_000)
        writer.abort("enough from you")
        # (its carrier reads and drops what was in flight until the client's close
        # frame: the client's writes cannot reset the TCP connection before the CLOSE)
        await writer.wait_closed()
        ended_here.set()

    async def main() -> None:
        server, url = await ws_server(cut_off, accept=lambda addr: addr != CLIENT.sui_address)
        try:
            with pytest.raises(ConnectionRefused) as refused:
                await dtp.aio.open_connection(url, identity=CLIENT, timeout=10)
            assert not isinstance(refused.value, CarrierRefused)
            reader, writer = await dtp.aio.open_connection(url, timeout=10)
            with pytest.raises(ConnectionClosed_) as ended:
                for _ in range(1000):  # on and on: the server stops reading at 100 kB
                    writer.write(b"x" * 10_000)
                    await writer.drain()
                await asyncio.wait_for(reader.read(), 10)
            assert ended.value.reason == "enough from you"
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(ended_here.wait(), 5)
        finally:
            await closed(server)

    asyncio.run(main())


def test_a_refused_connect_raises_with_its_carrier_closed() -> None:
    """The refusal is raised once the WebSocket's close handshake is done: a program
    that ends its loop on the error (asyncio.run) leaves no TCP connection open. (The
    server runs on a loop of its own, so its close frame takes a real round trip.)"""
    thread = LoopThread()
    try:
        server, url = thread.run(ws_server(accept=lambda addr: addr != CLIENT.sui_address))
        try:
            for _ in range(5):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ResourceWarning)
                    with pytest.raises(ConnectionRefused, match="refused by the server"):
                        asyncio.run(dtp.aio.open_connection(url, identity=CLIENT, timeout=10))
                    gc.collect()
                leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
                assert not leaked, [str(w.message) for w in leaked]
        finally:
            thread.run(closed(server))
    finally:
        thread.close()


def test_an_upgrade_never_answered_ends_at_the_handshake_timeout() -> None:
    # a server that takes the TCP connection and says nothing: with no caller timeout,
    # the connect ends at the config's handshake_timeout, as over TCP, not never
    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []
        ended: list[asyncio.Future[bytes]] = []

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.append(w)
            read = asyncio.ensure_future(r.read())  # (until the client gives up)
            ended.append(read)
            await read

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = ConnectionConfig(
            identity=CLIENT,
            is_client=True,
            server_static=SERVER.noise_public,
            handshake_timeout=0.5,
        )
        try:
            started = time.monotonic()
            with pytest.raises(HandshakeError, match="upgrade timed out"):
                await asyncio.wait_for(
                    dtp.aio.open_connection(f"ws://127.0.0.1:{port}/", config=config), 30
                )
            assert time.monotonic() - started < 15
            # a caller's timeout still says DTPTimeoutError, as over TCP
            with pytest.raises(DTPTimeoutError):
                await dtp.aio.open_connection(
                    f"ws://127.0.0.1:{port}/", server_key=SERVER.noise_public, timeout=0.5
                )
            # each client closed its TCP connection as it gave up (after its request)
            done, _ = await asyncio.wait(ended, timeout=5)
            assert len(ended) == 2 and len(done) == 2
            assert all(read.result().startswith(b"GET / HTTP/1.1") for read in done)
        finally:
            for w in accepted:
                w.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
