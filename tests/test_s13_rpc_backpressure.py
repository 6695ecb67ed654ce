"""A server with a worker pool and a client that sends requests but never reads its
answers: the server stops reading requests once a bounded amount of answers waits
(the client feels flow control), rather than queue answers without bound."""

from __future__ import annotations

import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.messaging.protocol import RpcProtocol
from dtp.messaging.rpc import RpcServer
from tests.test_messaging_rpc import Served


def test_a_pool_server_stops_reading_for_a_client_that_takes_no_answers() -> None:
    """Before, the pool answered every request and its stream queued the answers for the
    writer thread (stuck on the client): 1000 requests of 50 kB went in within a second
    and 50 MB of answers sat in memory, growing as fast as the client sent."""
    rpc = RpcServer(workers=4)
    rpc.register("echo", lambda p: p)
    s = Served(rpc)
    try:
        sock = dtp.socket.create_connection(
            s.server.address, server_key=s.identity.noise_public, timeout=1.0
        )
        s.socks.append(sock)
        # its close need not wait for the requests it queued: the server reads no more
        sock._engine.linger = 0.1
        proto = RpcProtocol()
        payload = b"x" * 50_000
        sent = 0
        try:
            for _ in range(1000):
                proto.send_request("echo", payload)
                sock.sendall(proto.data_to_send())
                sent += 1
        except DTPTimeoutError:
            pass
        # what the server queued (about 5 MB) and what the connection's windows hold
        assert sent < 600
    finally:
        s.close()
