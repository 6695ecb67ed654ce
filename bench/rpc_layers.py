"""CPU of the blocking RPC layers alone, per sequential call, each side on its own.

    python bench/rpc_layers.py [--calls N] [--runs R] [--count]

``rpc_roundtrip``'s calls (``echo`` of 100 bytes) with the transport replaced by fake
streams that answer at once: :class:`RpcClient`'s ``call`` over a stream whose
``send_recv`` returns the answer framed in advance, and :class:`RpcServer`'s inline loop
over one that hands it the requests framed in advance. What is timed (``process_time``)
is then only the RPC layers' Python and ``msgpack``: no syscalls, no crypto, no other
process, so a change to those layers reads the same on a loaded machine as on a quiet
one (to within a few percent), where ``bench/cpu_per_call.py``'s rows move by more than
such a change. ``--count`` also counts each side's opcodes per call (``sys.settrace``).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from dtp.messaging.rpc import RpcClient, RpcServer

PAYLOAD = os.urandom(100)
_pack = msgpack.Packer(use_bin_type=True).pack


def _frame(message: list[Any]) -> bytes:
    body: bytes = _pack(message)
    return len(body).to_bytes(4, "big") + body


class _ClientStream:
    """Answers each request at once with the response framed for its id."""

    def __init__(self) -> None:
        self.answers: dict[int, bytes] = {}
        self.client: RpcClient | None = None

    def sendall(self, data: bytes) -> None:
        raise AssertionError("the quiet call sends through send_recv")

    def recv(self, size: int) -> bytes:
        raise AssertionError("the quiet call reads through send_recv")

    def settimeout(self, timeout: float | None) -> None:
        pass

    def send_recv(self, data: bytes, size: int, *, release: Any = None) -> bytes | None:
        release.release()
        assert self.client is not None
        return self.answers[self.client._proto._next_id - 1]


class _ServerStream:
    """Hands the server its requests, one a read; b"" (the end) after the last."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.taken = 0

    def settimeout(self, timeout: float | None) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return self.send_recv(b"", size) or b""

    def send_recv(self, data: bytes, size: int, *, release: Any = None) -> bytes | None:
        if self.taken == len(self.requests):
            return b""
        self.taken += 1
        return self.requests[self.taken - 1]

    def sendall(self, data: bytes) -> None:
        pass


def _client(calls: int) -> tuple[RpcClient, _ClientStream]:
    stream = _ClientStream()
    client = RpcClient(stream, timeout=30)
    stream.client = client
    first = client._proto._next_id
    stream.answers = {first + i: _frame([1, first + i, PAYLOAD, None]) for i in range(calls)}
    return client, stream


def _server(calls: int) -> tuple[RpcServer, _ServerStream]:
    server = RpcServer()
    server.register("echo", lambda payload: payload)
    requests = [_frame([0, i + 1, "echo", PAYLOAD, 30000, None]) for i in range(calls)]
    return server, _ServerStream(requests)


def client_us(calls: int) -> float:
    """The client's CPU per call (µs)."""
    client, _ = _client(calls)
    call = client.call
    start = time.process_time()
    for _ in range(calls):
        call("echo", PAYLOAD)
    return (time.process_time() - start) / calls * 1e6


def server_us(calls: int) -> float:
    """The server's CPU per request (µs)."""
    server, stream = _server(calls)
    start = time.process_time()
    server.serve_stream(stream)
    elapsed = time.process_time() - start
    if stream.taken != calls:
        raise RuntimeError(f"the server took {stream.taken} of {calls} requests")
    return elapsed / calls * 1e6


def opcodes(calls: int = 2000) -> tuple[dict[str, float], dict[str, float]]:
    """Each side's opcodes per call, by function run at least once a call (the fake
    streams' own left out)."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[frame.f_code.co_name] += 1
            return local

        return local

    ours = ("send_recv", "recv", "settimeout", "sendall", "<lambda>", "_run_sides")
    client, _ = _client(calls)
    sys.settrace(tracer)
    try:
        for _ in range(calls):
            client.call("echo", PAYLOAD)
    finally:
        sys.settrace(None)
    client_ops = {k: v / calls for k, v in counts.items() if k not in ours and v >= calls}
    counts.clear()
    server, stream = _server(calls)
    sys.settrace(tracer)
    try:
        server.serve_stream(stream)
    finally:
        sys.settrace(None)
    server_ops = {k: v / calls for k, v in counts.items() if k not in ours and v >= calls}
    return client_ops, server_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", action="store_true")
    args = parser.parse_args()
    for _ in range(args.runs):
        print(f"client {client_us(args.calls):6.3f} µs   server {server_us(args.calls):6.3f} µs")
    if args.count:
        for side, ops in zip(("client", "server"), opcodes(), strict=True):
            top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(ops.items(), key=lambda x: -x[1]))
            print(f"{side}: {sum(ops.values()):.0f} opcodes a call ({top})")


if __name__ == "__main__":
    main()
