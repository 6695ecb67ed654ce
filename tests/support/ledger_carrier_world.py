"""A host reached over the ledger carrier on a LocalLedger file, with no published
endpoint: its identities and service, the ``host`` fixture, an echo server in a thread,
and the bridge threads to wait for (the ledger carrier tests of hostid/ and protocol/)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.socket
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.ledger_server import identity_from_seed
from tests.support.polling import thread_stacks, wait_for

SLA = Sla(10, 5, 1000)
PORT = 7
SERVER_SEED = 0x51
SERVER = identity_from_seed(SERVER_SEED)
CLIENT = identity_from_seed(0x52)
MALLORY = identity_from_seed(0x53)
DEPOSIT = 5000


@dataclass
class Host:
    """A host on the LocalLedger file ``path`` (``ledger`` the test's handle on it)."""

    path: Path
    ledger: LocalLedger
    host_id: str

    @property
    def address(self) -> str:
        return f"dtp://{self.host_id}:{PORT}"

    def conserved(self) -> bool:
        a = self.ledger.audit()
        return bool(a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"])


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A Host with no published endpoint and an echo service; funded clients."""
    path = tmp_path / "ledger.db"
    ledger = LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    for who in (CLIENT, MALLORY):
        ledger.faucet(who.sui_address, 1_000_000)
    try:
        yield Host(path, ledger, host_id)
    finally:
        ledger.close()


def echo(sock: dtp.socket.DTPSocket) -> None:
    """A handler echoing every byte until EOF, then ending its side."""
    while data := sock.recv(1 << 20):
        sock.sendall(data)
    sock.shutdown(dtp.socket.SHUT_WR)


@contextmanager
def server_in_thread(
    host: Host, handler: Callable[[dtp.socket.DTPSocket], None] = echo, **kw: object
) -> Iterator[dtp.socket.DTPServer]:
    """``host``'s server on the ledger carrier (its own handle on the file), serving
    ``handler`` in a thread; at the end every bridge thread must be gone."""
    ledger = LocalLedger(host.path)  # the host's own handle on the file
    server = dtp.socket.create_server(
        None, identity=SERVER, ledger=ledger, host_id=host.host_id, port=PORT, **kw
    )
    thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(5)
        # accepted connections outlive the server: let their bridges finish first
        assert wait_for(lambda: not bridge_threads(), 30), thread_stacks()
        ledger.close()


def bridge_threads() -> list[threading.Thread]:
    """The ledger carrier's bridge threads still running (not the listener)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("dtp-ledger-") and t.name != "dtp-ledger-listener"
    ]


def echo_exchange(sock: dtp.socket.DTPSocket, payload: bytes) -> bytes:
    """Send ``payload`` (then EOF) while reading the echo in another thread."""
    got = bytearray()

    def reader() -> None:
        while data := sock.recv(1 << 20):
            got.extend(data)

    thread = threading.Thread(target=reader)
    thread.start()
    sock.sendall(payload)
    sock.shutdown(dtp.socket.SHUT_WR)
    thread.join(120)
    assert not thread.is_alive()
    return bytes(got)
