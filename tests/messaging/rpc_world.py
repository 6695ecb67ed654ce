"""The RPC world the messaging tests share: a blocking DTP server answering RPC in
background threads (``Served``, with ``make_rpc``'s methods), a peer answering scripted
bytes, and the bounds and metering settings they use."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import dtp.errors
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._protocol import RequestReceived, RpcProtocol
from dtp.messaging.rpc import CallContext, RpcClient, RpcServer
from dtp.payments.metering import MeteringConfig

OFF = MeteringConfig(enabled=False)  # billed per request instead (RequestPayments)


#: Generous bound on anything that should happen at once (a slow CI machine).
PROMPT = 30.0


class Served:
    """A DTP server answering RPC in background threads."""

    def __init__(self, rpc: RpcServer) -> None:
        self.identity = HostIdentity.generate()
        self.server = dtp.socket.create_server(("127.0.0.1", 0), identity=self.identity)
        self.rpc = rpc
        self.thread = threading.Thread(target=rpc.serve_forever, args=(self.server,), daemon=True)
        self.thread.start()
        self.socks: list[dtp.socket.DTPSocket] = []

    def connect(self, **kw: Any) -> RpcClient:
        # a prepaid client connects as its escrows' requester: a server serves an escrow
        # only to the client that made it (ResponseFeePolicy.admit)
        prepay = kw.get("prepay")
        sock = dtp.socket.create_connection(
            self.server.address,
            server_key=self.identity.noise_public,
            timeout=10,
            identity=None if prepay is None else prepay.identity,
        )
        self.socks.append(sock)
        return RpcClient(sock, **kw)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.server.close()
        self.rpc.close()
        sleep = self.rpc.methods.get("sleep")
        if sleep is not None and isinstance(sleep[0], _Sleep):
            sleep[0].released.set()  # (the server is closed: nobody reads their results)
        self.thread.join(5)


class _Sleep:
    """The ``sleep`` method ([seconds, result]). Its wait ends early once released
    (:meth:`Served.close`, after the server's close), so that no worker thread outlives
    the test that put a handler to sleep."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def __call__(self, p: list[Any]) -> Any:
        self.released.wait(p[0])
        return p[1]


def make_rpc(workers: int = 16, **kw: Any) -> RpcServer:
    """An RpcServer with the methods the tests call: echo, sleep ([seconds, result]),
    fail (InvalidParams), crash (an internal error) and wait_cancel."""
    rpc = RpcServer(workers=workers, **kw)
    rpc.register("echo", lambda p: p)
    rpc.register("sleep", _Sleep())

    def fail(p: Any) -> Any:
        raise E.InvalidParams("bad value", data={"got": p})

    rpc.register("fail", fail)

    def crash(p: Any) -> Any:
        raise RuntimeError("secret detail")

    rpc.register("crash", crash)

    def wait_cancel(p: Any, ctx: CallContext) -> Any:
        return ctx.cancelled.wait(5)

    rpc.register("wait_cancel", wait_cancel, context=True)
    return rpc


class ScriptedPeer:
    """A DTP server whose answers are scripted bytes: ``script(request, send)`` gets
    each request the client sends and ``send(bytes)`` (one sendall each)."""

    def __init__(self, script: Any) -> None:
        self.identity = HostIdentity.generate()
        self.server = dtp.socket.create_server(("127.0.0.1", 0), identity=self.identity)
        self.script = script
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        self.sock = dtp.socket.create_connection(
            self.server.address, server_key=self.identity.noise_public, timeout=10
        )

    def run(self) -> None:
        peer, _ = self.server.accept(timeout=10)
        peer.settimeout(None)
        proto = RpcProtocol()
        with contextlib.suppress(dtp.errors.DTPError, OSError):
            while data := peer.recv(65536):
                proto.receive_data(data)
                for event in proto.events():
                    if isinstance(event, RequestReceived):
                        self.script(event, peer.sendall)
                    if isinstance(event, RequestReceived) and event.method == "close":
                        peer.close()
                        return

    def close(self) -> None:
        self.sock.close()
        self.server.close()
        self.thread.join(5)
