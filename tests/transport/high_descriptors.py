"""A DTP connection whose sockets have descriptors above 1024 (beyond select()'s
FD_SETSIZE), run as ``python -m tests.transport.high_descriptors`` by
tests/transport/test_high_descriptors.py: it fills the descriptor table to 1100, opens
a carrier and an echoing connection, and prints the carrier's descriptor number and the bytes
echoed as one JSON line."""

from __future__ import annotations

import json
import os
import resource
import threading

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport.carriers._tcp import PendingTcp


def main() -> None:
    identity = HostIdentity.generate()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    while os.open(os.devnull, os.O_RDONLY) < 1100:
        pass  # (held until the process ends)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:

        def serve() -> None:
            sock, _ = server.accept(timeout=10)
            with sock:
                while data := sock.recv(65536):
                    sock.sendall(data)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with PendingTcp(server.address).finish(10) as carrier:
            carrier_fd = carrier.fileno()
        with dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=10
        ) as client:
            payload = os.urandom(3 << 20)  # more than fits the kernel buffers at once
            sending = threading.Thread(target=client.sendall, args=(payload,), daemon=True)
            sending.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = client.recv(1 << 20)
                assert chunk, "the connection ended early"
                got += chunk
            sending.join(10)
            assert bytes(got) == payload, "the echo differs"
        thread.join(10)
        assert not thread.is_alive(), "the server thread did not end"
        print(json.dumps({"carrier": carrier_fd, "bytes": len(got)}))


if __name__ == "__main__":
    main()
