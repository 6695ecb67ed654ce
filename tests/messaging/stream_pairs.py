"""Connected pairs of DTP streams on 127.0.0.1 (Streams; the ``streams`` fixture), for the
pub/sub tests that attach a link to a stream of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity


class Streams:
    """Connected pairs of DTP streams on 127.0.0.1, all ended by :meth:`close`."""

    def __init__(self) -> None:
        self.identity = HostIdentity.generate()
        self.server = dtp.socket.create_server(("127.0.0.1", 0), identity=self.identity)
        self.socks: list[dtp.socket.DTPSocket] = []

    def pair(self) -> tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]:
        """A new connection: (client side, server side), both without a timeout."""
        client = dtp.socket.create_connection(
            self.server.address, server_key=self.identity.noise_public, timeout=10
        )
        server_side, _ = self.server.accept(timeout=10)
        client.settimeout(None)
        server_side.settimeout(None)
        self.socks += [client, server_side]
        return client, server_side

    def close(self) -> None:
        for sock in self.socks:
            sock.abort("test over")
        self.server.close()


@pytest.fixture
def streams() -> Iterator[Streams]:
    s = Streams()
    yield s
    s.close()
