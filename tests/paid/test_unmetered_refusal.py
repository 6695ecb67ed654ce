"""A connection both paid servers admitted but cannot meter -- its state unreadable on
the ledger as the receipt gate is made -- is aborted with UNMETERED_REFUSAL, the client
reading that reason, and the server's warning names the connection. It is settled at
once as a connection nobody serves (nothing claimed, the deposit refunded whole), not
left Open with its deposit locked until the half-close timeout. Both drivers (the
``driver`` fixture), a real connection over 127.0.0.1 and a LocalLedger file; the gate
fails where the server module looks ``gate_for`` up. A connection the ledger says it
does not know is settled the same way: on Sui the host's full node may not show an open
yet that the client's node did (``OPEN_GRACE_SUI``), and the settlement's retries
refund it once it does."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ChainError, DTPError, ObjectNotFound
from dtp.hostid.paid._server_core import UNMETERED_REFUSAL
from dtp.ledger._objects import Sla
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1000)
SERVER, CLIENT = ident(0xB5), ident(0xB6)
PORT = 7105


@pytest.mark.parametrize(
    "error",
    [ChainError("the ledger is unreachable"), ObjectNotFound("the ledger is unreachable")],
    ids=["unreadable", "not_shown_yet"],
)
def test_a_connection_that_cannot_be_metered_is_aborted_with_the_reason(
    tmp_path: Path,
    driver: Driver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: ChainError,
) -> None:
    module = importlib.import_module(driver.server_module)

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(module, "gate_for", unreadable)
    with (
        caplog.at_level(logging.WARNING, logger=driver.server_module),
        funded_ledger(tmp_path, CLIENT) as ledger,
        driver.connected(
            ledger, "echo", host=SERVER, client=CLIENT, port=PORT, sla=SLA, deposit=5000
        ) as (_, sock),
    ):
        cid = sock.connection_id
        assert cid is not None
        with pytest.raises(DTPError, match=UNMETERED_REFUSAL):
            sock.sendall(b"ping")
            sock.recv(4)
        # settled by the server while the client's socket is still open (the client
        # has not asked for its refund)
        assert wait_for(lambda: is_settled(ledger, cid), 10.0)
        escrow = settled_escrow(ledger, cid)
        assert (escrow.claimed, escrow.refunded) == (0, escrow.deposited)
    assert f"cannot meter connection {cid}: the ledger is unreachable" in caplog.text
