"""The ledger reads and the release both paid servers make (dtp/hostid/paid/_server_steps.py),
against a real ledger file and receipt store: the Host read at the start and at each
refresh, the state checks of open connections, what each logs when the ledger cannot
answer, and the order of the release."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ServiceNotFound
from dtp.hostid.paid._policy import ServicePolicy
from dtp.hostid.paid._server_core import PaidServerCore
from dtp.hostid.paid._server_steps import (
    ended_connections,
    host_to_refresh,
    refresh_failed,
    release_store,
    served_host,
    writer_done,
)
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from tests.paid.world import CLIENT, PORT, SERVER, World

UNKNOWN = "0x" + "99" * 32
#: The logger a server passes the steps (its own module's, in the servers)
LOG = logging.getLogger("tests.paid.server_steps")


@dataclass(eq=False)
class Conn:
    """What a state check reads of a served connection."""

    connection_id: str
    ledger_check_due: float = 0.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_the_host_served_must_publish_the_port(world: World) -> None:
    assert served_host(world.book, world.host_id, PORT).id == world.host_id
    with pytest.raises(ServiceNotFound) as refused:
        served_host(world.book, world.host_id, PORT + 1)
    assert refused.value.name == "EServiceNotFound"


def test_a_host_that_cannot_be_read_skips_the_refresh_with_a_warning(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    assert host_to_refresh(world.book, world.host_id, LOG) == world.book.get_host(world.host_id)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert host_to_refresh(world.book, UNKNOWN, LOG) is None
    assert [
        (r.name, r.getMessage().startswith(f"cannot read host {UNKNOWN}")) for r in caplog.records
    ] == [(LOG.name, True)]


def test_the_connections_no_longer_open_are_found(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    cap = world.book.create_spending_cap(CLIENT, 1_000_000)
    open_one = Conn(
        world.book.open_connection(CLIENT, world.host_id, PORT, cap, 10_000).connection_id
    )
    ended = Conn(world.book.open_connection(CLIENT, world.host_id, PORT, cap, 10_000).connection_id)
    world.book.close_connection(SERVER, ended.connection_id)
    assert ended_connections(world.book, [open_one, ended], LOG) == [ended]
    assert ended_connections(world.book, [], LOG) == []
    # one unreadable: none closed this time (each is due again at the next check)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert ended_connections(world.book, [ended, Conn(UNKNOWN)], LOG) == []
    (record,) = caplog.records
    assert record.name == LOG.name
    assert "cannot read the state of open connections" in record.getMessage()


def test_a_failed_refresh_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        try:
            raise RuntimeError("a damaged Host")
        except RuntimeError:
            refresh_failed(UNKNOWN, 2.5, LOG)
    (record,) = caplog.records
    assert record.name == LOG.name
    assert record.getMessage() == (
        f"refreshing the policy of host {UNKNOWN} failed; trying again in 2.5 s"
    )
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


@pytest.mark.parametrize("own_store", [True, False])
def test_the_release_stops_the_writer_then_leaves_the_store_once(
    tmp_path: Path, own_store: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ReceiptStore(tmp_path / "receipts.db")
    writer = ReceiptWriter(store)
    core: PaidServerCore[Any] = PaidServerCore(ServicePolicy())
    store.attach_server()
    core.attached = True
    detached: list[bool] = []
    detach = store.detach_server

    def detach_seen() -> None:
        detached.append(writer.stopped)  # (the writer stopped first)
        detach()

    monkeypatch.setattr(store, "detach_server", detach_seen)
    try:
        release_store(core, writer, store, own_store, None)
        assert writer.stopped and writer_done(writer, 0)
        assert detached == [True]
        assert store.closed == own_store  # a store passed in stays the caller's
        release_store(core, writer, store, own_store, None)
        assert detached == [True]  # once
    finally:
        store.close()
