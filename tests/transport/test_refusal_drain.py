"""The blocking server's drain of a refusal (the wait for its ``CLOSE(REFUSED)`` to leave)
may fail -- it times out, or finds the carrier gone -- and the refusal stays what it
is: counted once in ``refused``, never also in ``handshakes_failed``, and the server
goes on serving the next client. Real connections on 127.0.0.1."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import dtp.socket
from dtp.errors import DTPError, DTPTimeoutError
from dtp.identity.keys import HostIdentity
from dtp.transport.blocking._engine import Engine
from tests.support.polling import wait_for

SERVER, REFUSED, WELCOME = (HostIdentity.generate() for _ in range(3))


def test_a_refusal_whose_drain_fails_is_counted_once_as_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the hook marks its thread as refusing; the next pump there is the drain
    refusing = threading.local()
    drains_failed: list[str] = []
    real_pump = Engine.pump

    def pump(self: Engine, ready: Any, timeout: float | None) -> None:
        if getattr(refusing, "now", False):
            refusing.now = False
            drains_failed.append(self.name)
            raise DTPTimeoutError("timed out")
        real_pump(self, ready, timeout)

    def accept(address: str) -> bool:
        if address == REFUSED.sui_address:
            refusing.now = True
            return False
        return True

    monkeypatch.setattr(Engine, "pump", pump)
    with dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, accept=accept) as server:
        with pytest.raises(DTPError):
            dtp.socket.create_connection(
                server.address, identity=REFUSED, server_key=SERVER.noise_public, timeout=5
            )
        # (counted before the refusal goes out, and drained after: both awaited)
        assert wait_for(lambda: server.refused == 1 and len(drains_failed) == 1)
        assert drains_failed[0].startswith("server-")
        # the next client is served
        with dtp.socket.create_connection(
            server.address, identity=WELCOME, server_key=SERVER.noise_public, timeout=5
        ) as client:
            client.sendall(b"!")
            sock, _ = server.accept(timeout=5)
            with sock:
                assert sock.recv(1) == b"!"
        assert (server.refused, server.handshakes_failed) == (1, 0)
