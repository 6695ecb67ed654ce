"""The blocking server's bounds: connections nobody accepts beyond ``max_pending`` wait
in their handshakes, each holding its slot, and are refused "server busy"
(tests/transport/test_accept_burst.py), never a thread and descriptors each without
bound; bad ``max_handshakes`` / ``max_pending`` values are refused (0 would serve
nobody; a queue of 0 or less would be unbounded); an engine that cannot be made (out of
descriptors) is counted and its thread ends cleanly; and a settling thread that cannot
start does not leave ServedConnections busy for good. Real connections on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import pytest

import dtp.hostid._served
import dtp.socket
from dtp.errors import ConnectionRefused, DTPError, HandshakeError
from dtp.hostid._served import ServedConnections
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking._engine import Engine

SERVER, CLIENT = HostIdentity.generate(), HostIdentity.generate()


def test_connections_nobody_accepts_beyond_the_queue_are_refused() -> None:
    config = ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=2.0)
    with dtp.socket.DTPServer(
        ("127.0.0.1", 0),
        SERVER,
        max_pending=2,
        max_handshakes=4,
        max_handshakes_per_address=4,
        config=config,
    ) as server:
        before = threading.active_count()
        outcomes: list[object] = []
        peak: list[int] = []

        def connect() -> None:
            try:
                outcomes.append(
                    dtp.socket.create_connection(
                        server.address, identity=CLIENT, server_key=SERVER.noise_public, timeout=10
                    )
                )
            except DTPError as exc:
                outcomes.append(exc)

        clients = [threading.Thread(target=connect) for _ in range(24)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak.append(threading.active_count() - before - len(clients))
            time.sleep(0.05)
        for client in clients:
            client.join(30)
        try:
            # the queue (2) took two; the others waited in their handshakes -- at most
            # max_handshakes at once, each holding its slot, and were refused "server
            # busy" there -- or for a slot, closed unanswered at their handshake timeout
            # (HandshakeError): none let in, then dropped, and every one counted
            connected = [o for o in outcomes if isinstance(o, dtp.socket.DTPSocket)]
            refused = [o for o in outcomes if isinstance(o, ConnectionRefused)]
            unanswered = [o for o in outcomes if isinstance(o, HandshakeError)]
            assert len(connected) == 2
            assert len(refused) >= 4 and all(exc.reason == "server busy" for exc in refused)
            assert len(refused) + len(unanswered) == 22
            assert server.busy_refused == 22
            # (handshakes, the accepting turn, the timer thread: not one a client)
            assert max(peak) <= 8
        finally:
            for sock in outcomes:
                if isinstance(sock, dtp.socket.DTPSocket):
                    sock.close()


@pytest.mark.parametrize(
    ("name", "value"), [("max_handshakes", 0), ("max_handshakes", -1), ("max_pending", 0)]
)
def test_the_servers_bounds_are_counts_of_at_least_one(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, **{name: value})  # type: ignore[arg-type]


def test_an_engine_that_cannot_be_made_fails_the_handshake_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Engine.__init__
    failed = threading.Event()

    def init(self: object, *args: object, **kwargs: object) -> None:
        if str(kwargs.get("name", "")).startswith("server-") and not failed.is_set():
            failed.set()
            raise OSError(24, "Too many open files")
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "__init__", init)
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    with dtp.socket.DTPServer(("127.0.0.1", 0), SERVER) as server:
        with pytest.raises(DTPError):
            dtp.socket.create_connection(
                server.address, identity=CLIENT, server_key=SERVER.noise_public, timeout=5
            )
        deadline = time.monotonic() + 5
        while server.handshakes_failed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.handshakes_failed == 1
        assert errors == []
        # the next client is served
        with dtp.socket.create_connection(
            server.address, identity=CLIENT, server_key=SERVER.noise_public, timeout=5
        ) as client:
            client.sendall(b"!")
            sock, _ = server.accept(timeout=5)
            sock.close()


def test_a_settling_thread_that_cannot_start_settles_in_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settled: list[str] = []
    monkeypatch.setattr(
        dtp.hostid._served,
        "claim_and_settle",
        lambda _ledger, _identity, cid, *_: settled.append(cid),
    )
    served = ServedConnections(object(), SERVER, settle=True)  # type: ignore[arg-type]
    a, b = "0x" + "aa" * 32, "0x" + "bb" * 32
    assert served.reserve(a) is None
    real_start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    served.release(a)  # (raised the RuntimeError, and left the settler busy for good)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert served.reserve(b) is None
    served.release(b)
    assert served.wait_settled(5)
    assert settled == [a, b]
    assert served.reserve(a) is None
