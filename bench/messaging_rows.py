"""Messaging rows of bench/compare.py: DTP RPC and pub/sub against their peers, each
server in its own process on 127.0.0.1.

    python bench/messaging_rows.py serve {rpc,zmq,pubsub} [--cpu N]

runs a benchmark server (prints one JSON line {"port", "key"} once listening).

- ``rpc_roundtrip``: sequential ``echo`` calls with 100-byte payloads, both processes on
  CPU 0; peer: Python ``ssl`` ping-pong of 100 bytes (bar 1).
- ``rpc_roundtrip_zmq``: the same calls; peer: pyzmq REQ/REP with CURVE (bar 2).
- ``rpc_roundtrip_uvloop``: the same calls through the asyncio API
  (:class:`AsyncRpcClient` to an :class:`AsyncRpcServer`) with every side on uvloop;
  peer: asyncio's TLS streams ping-ponging 100 bytes on uvloop; both servers and this
  process on CPU 0 (report).
- ``rpc_raw_frame``: the same server answering one pre-framed ``echo`` request written
  straight on the socket, so the client does no RPC work; peer: the same ``ssl``
  ping-pong (report: what the server and the transports leave for the client's RPC
  layer under ``rpc_roundtrip``'s bar).
- ``rpc_pipelined``: 64 calls in flight on one stream (report).
- ``pubsub_fanout``: messages/s published by one node to 4 subscriber nodes linked over
  DTP, counting a message once all 4 have it (report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dtp.socket
from bench.net import Peer, _tls_connect
from bench.workload import Floor, Workload
from dtp.identity.keys import HostIdentity
from dtp.messaging.pubsub import PubSubNode
from dtp.messaging.rpc import QUICK_RECV_SIZE, RpcClient, RpcServer

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = os.urandom(100)


class _Server:
    """A server process started from this file."""

    def __init__(self, kind: str, cpu: int | None = None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve", kind]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark server {kind} did not start")
        info = json.loads(line)
        self.port: int = info["port"]
        self.key = bytes.fromhex(info["key"])
        self.extra: dict[str, str] = info

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def _pin(cpu: int | None) -> Callable[[], None]:
    previous = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    def restore() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, previous)

    return restore


def _rpc_client(server: _Server) -> tuple[dtp.socket.DTPSocket, RpcClient]:
    sock = dtp.socket.create_connection(("127.0.0.1", server.port), server_key=server.key)
    return sock, RpcClient(sock, timeout=30)


def _tls_pingpong(sock: object, rounds: int) -> None:
    for _ in range(rounds):
        sock.sendall(PAYLOAD)  # type: ignore[attr-defined]
        got = 0
        while got < 100:
            got += len(sock.recv(100 - got))  # type: ignore[attr-defined]


def _rpc_vs_tls(
    name: str,
    rounds: int,
    client: Callable[[_Server], tuple[dtp.socket.DTPSocket, Callable[[], None]]],
    note: str,
    bar: float | None = None,
) -> Workload:
    """A row of ``rounds`` calls to the RPC server against ``ssl`` ping-pong, both servers
    and this process on CPU 0; ``client(server)`` gives the socket and the calls (a loop
    of its own: a function call per call would be ours alone)."""
    restore = _pin(0)
    ours = _Server("rpc", 0)
    tls = Peer("tls-blocking", "echo", 0)
    sock, op = client(ours)
    tls_sock = _tls_connect(tls)

    def close() -> None:
        sock.close()
        tls_sock.close()
        ours.close()
        tls.close()
        restore()

    return Workload(
        name,
        "calls/s",
        rounds,
        op,
        lambda: _tls_pingpong(tls_sock, rounds),
        bar=bar,
        note=note,
        close=close,
    )


def rpc_roundtrip(rounds: int = 1000) -> Workload:
    """Sequential RPC calls vs ssl ping-pong, one CPU."""

    def client(server: _Server) -> tuple[dtp.socket.DTPSocket, Callable[[], None]]:
        sock, rpc = _rpc_client(server)

        def calls() -> None:
            for _ in range(rounds):
                rpc.call("echo", PAYLOAD)

        return sock, calls

    return _rpc_vs_tls(
        "rpc_roundtrip",
        rounds,
        client,
        "sequential 100-byte echo calls vs ssl ping-pong, both processes on CPU 0",
        bar=Floor(0.77),
    )


def rpc_roundtrip_uvloop(rounds: int = 1000) -> Workload:
    """Sequential asyncio RPC calls vs asyncio TLS ping-pong, all on uvloop, one CPU."""
    import asyncio

    import dtp.aio
    from dtp.eventloop import loop_factory
    from dtp.messaging.rpc import AsyncRpcClient

    restore = _pin(0)
    ours = Peer("dtp-asyncio", "rpc", 0, loop="uvloop")
    tls = Peer("tls-asyncio", "echo", 0, loop="uvloop")
    # one uvloop loop in this process for the row's life: each round's calls run on it,
    # on connections made once (as rpc_roundtrip's)
    runner = asyncio.Runner(loop_factory=loop_factory("uvloop"))

    async def connect() -> tuple[Any, AsyncRpcClient, Any, Any]:
        r, w = await dtp.aio.open_connection("127.0.0.1", ours.port, server_key=ours.key)
        tr, tw = await asyncio.open_connection(
            "127.0.0.1", tls.port, ssl=tls.tls_context(), server_hostname="localhost"
        )
        return w, AsyncRpcClient(r, w, timeout=30), tr, tw

    writer, client, tls_reader, tls_writer = runner.run(connect())

    async def calls() -> None:
        for _ in range(rounds):
            await client.call("echo", PAYLOAD)

    async def pingpong() -> None:
        for _ in range(rounds):
            tls_writer.write(PAYLOAD)
            await tls_writer.drain()
            await tls_reader.readexactly(len(PAYLOAD))

    async def hang_up() -> None:
        await client.close()
        for w in (writer, tls_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    def close() -> None:
        try:
            runner.run(hang_up())
        finally:
            runner.close()
            ours.close()
            tls.close()
            restore()

    return Workload(
        "rpc_roundtrip_uvloop",
        "calls/s",
        rounds,
        lambda: runner.run(calls()),
        lambda: runner.run(pingpong()),
        bar=0.8,
        note="sequential 100-byte echo calls (asyncio API) vs asyncio TLS ping-pong, all on "
        "uvloop, CPU 0",
        close=close,
    )


def rpc_raw_frame(rounds: int = 1000) -> Workload:
    """The RPC server's answers to a fixed request frame vs ssl ping-pong, one CPU."""
    # [REQUEST, id, method, params, timeout_ms, meta]: id 1 over and over is fine, as
    # each is answered before the next arrives
    body = msgpack.packb([0, 1, "echo", PAYLOAD, 30_000, None], use_bin_type=True)
    frame = len(body).to_bytes(4, "big") + body
    answer = len(msgpack.packb([1, 1, PAYLOAD, None], use_bin_type=True)) + 4

    def client(server: _Server) -> tuple[dtp.socket.DTPSocket, Callable[[], None]]:
        sock = dtp.socket.create_connection(("127.0.0.1", server.port), server_key=server.key)
        sock.settimeout(30)

        def calls() -> None:
            for _ in range(rounds):
                sock.sendall(frame)
                got = len(sock.recv(QUICK_RECV_SIZE))
                while got < answer:
                    got += len(sock.recv(QUICK_RECV_SIZE))

        return sock, calls

    return _rpc_vs_tls(
        "rpc_raw_frame",
        rounds,
        client,
        "the RPC server answering a pre-framed request (no client RPC work) vs ssl, CPU 0",
    )


def rpc_roundtrip_zmq(rounds: int = 1000) -> Workload:
    """Sequential RPC calls vs pyzmq REQ/REP with CURVE."""
    import zmq

    restore = _pin(0)
    ours = _Server("rpc", 0)
    peer = _Server("zmq", 0)
    sock, client = _rpc_client(ours)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    public, secret = zmq.curve_keypair()
    req.curve_publickey, req.curve_secretkey = public, secret
    req.curve_serverkey = peer.extra["curve"].encode()
    req.connect(f"tcp://127.0.0.1:{peer.port}")

    def op() -> None:
        for _ in range(rounds):
            client.call("echo", PAYLOAD)

    def zmq_op() -> None:
        for _ in range(rounds):
            req.send(PAYLOAD)
            req.recv()

    def close() -> None:
        sock.close()
        req.close(0)
        ctx.term()
        ours.close()
        peer.close()
        restore()

    return Workload(
        "rpc_roundtrip_zmq",
        "calls/s",
        rounds,
        op,
        zmq_op,
        bar=Floor(1.25),
        note="sequential 100-byte echo calls vs pyzmq REQ/REP + CURVE, CPU 0",
        close=close,
    )


def rpc_pipelined(total: int = 2000, window: int = 64) -> Workload:
    """64 calls in flight on one stream (report only)."""
    ours = _Server("rpc")
    sock, client = _rpc_client(ours)

    def op() -> None:
        pending = []
        for _ in range(total):
            pending.append(client.start("echo", PAYLOAD))
            if len(pending) >= window:
                pending.pop(0).result()
        for call in pending:
            call.result()

    def sequential() -> None:
        for _ in range(total):
            client.call("echo", PAYLOAD)

    def close() -> None:
        sock.close()
        ours.close()

    return Workload(
        "rpc_pipelined",
        "calls/s",
        total,
        op,
        sequential,
        note=f"{window} calls in flight vs sequential calls, 100-byte payloads",
        close=close,
    )


def pubsub_fanout(messages: int = 2000, subscribers: int = 4) -> Workload:
    """One publisher, 4 subscriber nodes over DTP (report only; the peer column is the
    same publisher with a single subscriber node, so the ratio is the cost of fan-out)."""
    ours, ours_close = _fanout(messages, subscribers)
    peer, peer_close = _fanout(messages, 1)

    def close() -> None:
        ours_close()
        peer_close()

    return Workload(
        "pubsub_fanout",
        "msgs/s",
        messages,
        ours,
        peer,
        note=f"100-byte messages to {subscribers} subscriber nodes (peer: to 1), DTP links",
        close=close,
    )


def _fanout(messages: int, subscribers: int) -> tuple[Callable[[], None], Callable[[], None]]:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    hub = PubSubNode("hub", link_queue=8192)
    nodes, subs, socks = [], [], []
    for i in range(subscribers):
        node = PubSubNode(f"s{i}")
        client = dtp.socket.create_connection(server.address, server_key=identity.noise_public)
        side, _ = server.accept(timeout=10)
        client.settimeout(None)
        side.settimeout(None)
        socks += [client, side]
        node.attach(client)
        hub.attach(side)
        nodes.append(node)
        subs.append(node.subscribe("bench", maxsize=messages * 2))
    # the hub forwards only to links whose SUBSCRIBE it has read: publishing before then
    # would drop messages the row then waits for
    deadline = time.monotonic() + 10
    while not all("bench" in (link.remote or {}) for link in hub.links):
        if time.monotonic() > deadline:
            raise TimeoutError("the subscribers' interest did not reach the hub in 10 s")
        time.sleep(0.005)

    def op() -> None:
        for _ in range(messages):
            hub.publish("bench", PAYLOAD)
        for sub in subs:
            for _ in range(messages):
                sub.get(timeout=30)

    def close() -> None:
        hub.close()
        for node in nodes:
            node.close()
        for s in socks:
            s.abort("bench over")
        server.close()

    return op, close


# -- servers -------------------------------------------------------------------------------------


def _announce(port: int, key: bytes, **extra: str) -> None:
    print(json.dumps({"port": port, "key": key.hex(), **extra}), flush=True)


def serve(kind: str) -> None:
    if kind == "rpc":
        identity = HostIdentity.generate()
        server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
        rpc = RpcServer(workers=0)
        rpc.register("echo", lambda p: p)
        _announce(server.address[1], identity.noise_public)
        rpc.serve_forever(server)
    elif kind == "zmq":
        import zmq

        ctx = zmq.Context()
        rep = ctx.socket(zmq.REP)
        public, secret = zmq.curve_keypair()
        rep.curve_server = True
        rep.curve_secretkey = secret
        port = rep.bind_to_random_port("tcp://127.0.0.1")
        _announce(port, b"", curve=public.decode())
        while True:
            rep.send(rep.recv())
    else:
        raise SystemExit(f"unknown server kind {kind}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("kind")
    parser.add_argument("--cpu", type=int)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    threading.current_thread().name = f"bench-{args.kind}"
    serve(args.kind)


if __name__ == "__main__":
    main()
