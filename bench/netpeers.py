"""Network benchmark servers, run as separate processes by bench/workloads.py:

    python bench/netpeers.py {dtp,tls}-{blocking,asyncio} {sink,echo,rpc} [--cpu N]
                             [--loop {asyncio,uvloop}]

Prints one JSON line {"port", "key"} once listening. ``sink`` reads a connection to
its end and answers with the byte count; ``echo`` answers each read with the same
bytes (for ping-pong and connect+round-trip measurements); ``rpc`` (dtp-asyncio only)
answers ``echo`` calls of :class:`dtp.messaging.rpc.AsyncRpcClient`. ``--loop``: the
event loop the asyncio servers run on (the ``*_uvloop`` rows: uvloop on both sides).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dtp.aio
    import dtp.socket

# dtp is imported by the DTP servers only (in their functions), so that a TLS server's
# process is what an asyncio/ssl user runs. It matters: glibc malloc's dynamic mmap
# threshold (and its trim threshold, twice that) rises to the largest mmapped block the
# process has freed, and with PYTHONDONTWRITEBYTECODE set every import compiles its
# source, whose compiler frees a block that grows with the module (344 KiB for a
# 3,000-line one). Below ~400 KiB, the asyncio servers' per-read objects (asyncio's
# 256 KiB recv() results, reader.read()'s) are fresh mmaps, or a heap top grown and
# trimmed, each read (perf stat: 5 page faults against 119,000 for 256 MiB), and which
# side of the threshold a server sits on changes tcp_bulk_asyncio about 2x. The DTP
# server reads its carrier into one reused buffer (dtp/transport/asyncio/_protocol.py):
# those reads do not depend on it, its readers' read() results still do.


def make_tls_context() -> tuple[ssl.SSLContext, str]:
    """A throwaway self-signed certificate: the server context (TLS 1.3 only) and the
    certificate as PEM text, for the client to trust."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    # load_cert_chain only reads files; the directory goes as soon as it has, so runs
    # leave no keys behind in /tmp (they once piled up by the hundred)
    with tempfile.TemporaryDirectory(prefix="dtp-bench-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        server.load_cert_chain(cert_path, key_path)
    return server, cert_pem.decode()


def client_tls_context(cert_pem: str) -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_verify_locations(cadata=cert_pem)
    return client


def _announce(port: int, key: bytes = b"", extra: dict[str, str] | None = None) -> None:
    print(json.dumps({"port": port, "key": key.hex(), **(extra or {})}), flush=True)


def serve_dtp_blocking(mode: str) -> None:
    import dtp.socket
    from dtp.identity.keys import HostIdentity

    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    _announce(server.address[1], identity.noise_public)

    def handle(sock: dtp.socket.DTPSocket) -> None:
        buf = bytearray(1 << 20)
        if mode == "sink":
            sock.sendall(str(_sink(sock.recv_into, buf)).encode())
            sock.recv(1)  # until the client closes
        else:
            while n := sock.recv_into(buf):
                sock.sendall(memoryview(buf)[:n])

    server.serve_forever(handle)


def _sink(recv_into: object, buf: bytearray) -> int:
    """Read the 8-byte big-endian length, then that many bytes; return the count."""
    header = bytearray(8)
    got = 0
    while got < 8:
        n = recv_into(memoryview(header)[got:])  # type: ignore[operator]
        if not n:
            raise ConnectionError("peer closed before the length header")
        got += n
    expected = int.from_bytes(header, "big")
    view = memoryview(buf)
    total = 0
    while total < expected:
        n = recv_into(view[: min(len(view), expected - total)])  # type: ignore[operator]
        if not n:
            raise ConnectionError(f"peer closed after {total} of {expected} bytes")
        total += n
    return total


async def _sink_async(reader: object) -> int:
    header = await reader.readexactly(8)  # type: ignore[attr-defined]
    expected = int.from_bytes(header, "big")
    total = 0
    while total < expected:
        data = await reader.read(min(1 << 20, expected - total))  # type: ignore[attr-defined]
        if not data:
            raise ConnectionError(f"peer closed after {total} of {expected} bytes")
        total += len(data)
    return total


def _run(main: Any, loop: str) -> None:
    """``asyncio.run(main)`` on asyncio's loop, or on uvloop's (imported only then, as
    in a program that runs on it)."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
        return
    asyncio.run(main)


def serve_dtp_asyncio(mode: str, loop: str = "asyncio") -> None:
    import dtp.aio
    from dtp.identity.keys import HostIdentity

    identity = HostIdentity.generate()

    async def main() -> None:
        if mode == "rpc":
            from dtp.messaging.rpc import AsyncRpcServer

            rpc = AsyncRpcServer()
            rpc.register("echo", lambda payload: payload)
            server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
            _announce(server.address[1], identity.noise_public)
            await server.serve_forever()
            return

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            if mode == "sink":
                writer.write(str(await _sink_async(reader)).encode())
                await writer.drain()
                await reader.read(1)
            else:
                while data := await reader.read(1 << 20):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        _announce(server.address[1], identity.noise_public)
        await server.serve_forever()

    _run(main(), loop)


def serve_tls_blocking(mode: str) -> None:
    server_ctx, cert = make_tls_context()
    listener = socket.create_server(("127.0.0.1", 0))
    _announce(listener.getsockname()[1], extra={"cert": cert})

    def handle(raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with server_ctx.wrap_socket(raw, server_side=True) as sock:
            buf = bytearray(1 << 20)
            if mode == "sink":
                sock.sendall(str(_sink(sock.recv_into, buf)).encode())
                sock.recv(1)
            else:
                while n := sock.recv_into(buf):
                    sock.sendall(memoryview(buf)[:n])

    while True:
        raw, _ = listener.accept()
        threading.Thread(target=_safe, args=(handle, raw), daemon=True).start()


def _safe(fn: object, arg: object) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):  # a client that went away
        fn(arg)  # type: ignore[operator]


def serve_tls_asyncio(mode: str, loop: str = "asyncio") -> None:
    server_ctx, cert = make_tls_context()

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if mode == "sink":
                    writer.write(str(await _sink_async(reader)).encode())
                    await writer.drain()
                    await reader.read(1)
                else:
                    while data := await reader.read(1 << 20):
                        writer.write(data)
                        await writer.drain()
                writer.close()
            except (OSError, ssl.SSLError):
                pass

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        _announce(server.sockets[0].getsockname()[1], extra={"cert": cert})
        await server.serve_forever()

    _run(main(), loop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "kind", choices=["dtp-blocking", "dtp-asyncio", "tls-blocking", "tls-asyncio"]
    )
    parser.add_argument("mode", choices=["sink", "echo", "rpc"])
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="the asyncio servers' loop"
    )
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.mode == "rpc" and args.kind != "dtp-asyncio":
        parser.error("mode rpc is dtp-asyncio's")
    if args.kind.endswith("-asyncio"):
        serve = serve_dtp_asyncio if args.kind == "dtp-asyncio" else serve_tls_asyncio
        serve(args.mode, args.loop)
        return
    if args.loop != "asyncio":
        parser.error("--loop is the asyncio servers'")
    {"dtp-blocking": serve_dtp_blocking, "tls-blocking": serve_tls_blocking}[args.kind](args.mode)


if __name__ == "__main__":
    main()
