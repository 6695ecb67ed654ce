"""``on_open``, the journal of a connect by host ID: told of the ledger connection
before its deposit can move, on both APIs (``dtp.socket.create_connection`` and
``dtp.aio.open_connection``), for a caller that keeps a durable book of its deposits
(docs/escrow.md §7.1). With the process's refund collector as that book
(``refunds_for(...).record_open``), a connection is held until it ends and then let go:
forgotten once its server settled it, taken back after the timeout when a failed
connect left it half-closed. A connect without a journal that fails hands its
half-closed connection to the process's collector all the same."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.hostid.paid import PaidSocket
from dtp.ledger._connections import find_connections
from dtp.ledger._objects import ConnectionState, Sla
from dtp.payments import _refunds as refunds
from dtp.payments._refunds import refunds_for
from tests.support.paid_inprocess import PaidService, ident, paid_service
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settlement

SERVER, CLIENT = ident(0x71), ident(0x72)
SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1_000)
DEPOSIT = 100_000
PORT = 8443

Journal = Callable[[str, "str | None"], None]


def echo(sock: PaidSocket) -> None:
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def connect(api: str, service: PaidService, journal: Journal, address: str | None = None) -> str:
    """Connect (``api``: blocking or asyncio) with ``journal`` as ``on_open``, carry a
    ping and close; the connection's ID."""
    target = address or service.address
    if api == "blocking":
        with dtp.socket.create_connection(
            target, 10, ledger=service.ledger, identity=CLIENT, deposit=DEPOSIT, on_open=journal
        ) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            assert sock.connection_id is not None
            return sock.connection_id

    async def run() -> str:
        reader, writer = await dtp.aio.open_connection(
            target, ledger=service.ledger, identity=CLIENT, deposit=DEPOSIT, on_open=journal
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
        assert writer.connection_id is not None
        return writer.connection_id

    return asyncio.run(run())


@pytest.fixture(params=["blocking", "asyncio"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[PaidService]:
    with paid_service(tmp_path, SERVER, CLIENT, PORT, SLA, echo) as made:
        yield made


@pytest.fixture(autouse=True)
def _own_collectors() -> Iterator[None]:
    """The process's collectors this test made are its own: closed after it."""
    before = set(refunds._collectors.values())
    yield
    for collector in set(refunds._collectors.values()) - before:
        collector.close(log_waiting=False)


def test_the_journal_is_told_before_the_deposit_moves(api: str, service: PaidService) -> None:
    told: list[tuple[str, str | None, int, int]] = []

    def journal(cap_id: str, connection_id: str | None) -> None:
        # what the client's connections hold at this moment
        opened = len(find_connections(service.ledger, client=CLIENT.sui_address).reports)
        told.append((cap_id, connection_id, opened, service.ledger.balance(CLIENT.sui_address)))

    balance = service.ledger.balance(CLIENT.sui_address)
    cid = connect(api, service, journal)
    tc = service.ledger.get_connection(cid)
    cap, first_id, opened_then, balance_then = told[0]
    assert cap == tc.spending_cap
    assert first_id in (None, cid)  # (the ID where the ledger tells it ahead)
    assert opened_then == 0 and balance_then == balance  # nothing had moved
    assert told[-1][:2] == (tc.spending_cap, cid)


def test_a_journal_that_fails_stops_the_open(api: str, service: PaidService) -> None:
    def journal(cap_id: str, connection_id: str | None) -> None:
        raise OSError("the disk is full")

    balance = service.ledger.balance(CLIENT.sui_address)
    with pytest.raises(OSError, match="disk is full"):
        connect(api, service, journal)
    assert find_connections(service.ledger, client=CLIENT.sui_address).reports == []
    assert service.ledger.balance(CLIENT.sui_address) == balance  # no deposit moved


def test_on_open_needs_a_dtp_address() -> None:
    with pytest.raises(ValueError, match="DTP address"):
        dtp.socket.create_connection(("127.0.0.1", 9), 1, on_open=lambda cap, cid: None)


def test_the_collectors_journal_forgets_a_connection_its_server_settled(
    api: str, service: PaidService, tmp_path: Path
) -> None:
    collector = refunds_for(service.ledger, CLIENT, path=tmp_path / "refunds.sqlite")
    assert refunds_for(service.ledger, CLIENT) is collector  # (the process's, until closed)
    with pytest.raises(ValueError, match="keeps its book"):
        refunds_for(service.ledger, CLIENT, path=tmp_path / "other.sqlite")
    cid = connect(api, service, collector.record_open)
    # the server settles as the connection ends; its end released it to the collector,
    # which finds it settled, deletes it (its storage is the client's) and lets it go
    assert wait_for(lambda: is_settled(service.ledger, cid), 10)
    assert wait_for(lambda: cid not in collector, 10)
    assert len(collector) == 0
    done = settlement(service.ledger, cid)
    assert done is not None and done.deleted


@pytest.fixture
def silent(service: PaidService) -> Iterator[str]:
    """The address of a host like the service's whose endpoint takes a TCP connection
    and never answers the handshake: a connect opens its connection on the ledger (the
    open lands while the server is to answer), then times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        ledger = service.ledger
        host = ledger.create_host(SERVER, SERVER.noise_public, [f"tcp://127.0.0.1:{port}"])
        ledger.add_service(SERVER, host, PORT, "paid", SLA)
        yield f"dtp://{host}:{PORT}"


def fail_to_connect(api: str, service: PaidService, address: str, journal: Journal | None) -> str:
    """A connect to ``address`` that times out after its open landed; the connection's
    ID, half-closed by the connect."""
    if api == "blocking":
        with pytest.raises(DTPTimeoutError):
            dtp.socket.create_connection(
                address, 1, ledger=service.ledger, identity=CLIENT, deposit=DEPOSIT, on_open=journal
            )
    else:

        async def run() -> None:
            await dtp.aio.open_connection(
                address,
                ledger=service.ledger,
                identity=CLIENT,
                deposit=DEPOSIT,
                timeout=1,
                on_open=journal,
            )

        with pytest.raises(DTPTimeoutError):
            asyncio.run(run())
    (report,) = find_connections(service.ledger, client=CLIENT.sui_address).reports
    assert report.connection.state == ConnectionState.HALF_CLOSED
    return report.connection.id


def test_a_failed_connect_releases_its_connection_to_the_collectors_journal(
    api: str, service: PaidService, silent: str
) -> None:
    collector = refunds_for(service.ledger, CLIENT)
    cid = fail_to_connect(api, service, silent, collector.record_open)
    # released: looked at, half-closed already, its time read
    assert wait_for(lambda: collector.pending().get(cid) is not None, 10)


def test_a_failed_connect_without_a_journal_is_handed_to_the_process_collector(
    api: str, service: PaidService, silent: str
) -> None:
    cid = fail_to_connect(api, service, silent, None)
    collector = refunds_for(service.ledger, CLIENT)
    assert wait_for(lambda: collector.pending().get(cid) is not None, 10)


def test_a_failed_connect_with_a_journal_of_the_callers_is_left_to_it(
    api: str, service: PaidService, silent: str
) -> None:
    """The daemon's forwarders keep their own book: the process's collector must not
    settle their connections beside it."""
    told: list[tuple[str, str | None]] = []
    cid = fail_to_connect(api, service, silent, lambda cap, cid: told.append((cap, cid)))
    assert told[-1][1] == cid
    collector = refunds._collector_of(service.ledger, CLIENT)
    assert collector is None or cid not in collector
