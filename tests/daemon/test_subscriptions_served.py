"""The services daemon serves a connection opened with a subscription only while the
subscription covers it (docs/escrow.md §13): each served connection's subscription is
read at the ledger checks of its policy refresh, and one now over is closed with
``CLOSE_SUBSCRIPTION_ENDED`` (the client raises
:class:`~dtp.errors.SubscriptionEnded`), then ended -- settled by its server when it
expired, or, when its offer was sold with the host to this daemon's identity, by the
subscription's rule: the daemon withdraws the offer and ends the connection, the holder
refunded the epochs not begun, to the MIST."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest

import dtp.aio
from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._fees import ServerFees
from dtp.daemon._served import ServedConnection
from dtp.daemon._services import ServiceHost
from dtp.daemon._state import StatusBook
from dtp.errors import CLOSE_SUBSCRIPTION_ENDED
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import ConnectionTerms

PORT, PRICE, EPOCHS, DEPOSIT = 7000, 1_000, 5, 300


class _Writer:
    """What the policy refresh aborts a served connection with."""

    def __init__(self) -> None:
        self.aborts: list[tuple[str, int]] = []

    def abort(self, reason: str = "aborted", *, code: int = 0x1000) -> None:
        self.aborts.append((reason, code))


def _conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return bool(audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"])


@pytest.mark.parametrize("ends", ["expiry", "sale"])
def test_a_served_connection_ends_with_its_subscription(tmp_path: Path, ends: str) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    old, new, client = (HostIdentity.generate() for _ in range(3))
    # the daemon: the host's authority, or the one it is sold to
    daemon = old if ends == "expiry" else new
    try:
        host_id = ledger.create_host(old, daemon.noise_public)
        ledger.add_service(old, host_id, PORT, "svc", Sla(1, 0, 100))
        ledger.faucet(client.sui_address, 10**6)
        offer = ledger.create_subscription_offer(old, host_id, PORT, PRICE)
        sub = ledger.subscribe(client, offer, 1 if ends == "expiry" else EPOCHS)
        cap = ledger.create_spending_cap(client, 10**6)
        cid = ledger.open_subscribed_connection(client, sub, cap, DEPOSIT).connection_id
        before = ledger.balance(client.sui_address)
        host = ServiceHost(ledger, daemon, StatusBook(tmp_path / "state"))
        host.host_id = host_id
        host.fees = ServerFees(ledger, daemon, host_id, tmp_path / "receipts.db")
        service = ServiceConfig("svc", PORT, (Backend("127.0.0.1", 9),))
        tc = ledger.get_connection(cid)
        terms = ConnectionTerms.from_objects(tc, ledger.get_escrow(tc.escrow), ledger.package_id)
        assert terms.subscription == sub
        writer = _Writer()
        conn = ServedConnection(
            cid, service, terms, client.sui_address, cast(dtp.aio.DTPStreamWriter, writer)
        )
        host.conns[cid] = conn

        def check() -> None:
            conn.ledger_check_due = 0.0
            asyncio.run(host.refresh_policy())

        check()
        assert writer.aborts == []  # live: served on
        ledger.advance_epoch()  # epoch 1
        if ends == "sale":
            check()
            assert writer.aborts == []  # (epoch 1 of 5: still covered)
            ledger.set_authority(old, host_id, new.sui_address)
        check()
        ((reason, code),) = writer.aborts
        assert code == CLOSE_SUBSCRIPTION_ENDED and reason.startswith("the subscription is over")
        if ends == "sale":
            assert f"host {host_id} is {new.sui_address}'s now" in reason
        else:
            assert "covers epochs 0..0; it is epoch 1" in reason
        # its end, as the daemon's end of any connection
        settled = asyncio.run(host.fees.settle(cid))
        assert settled.done and (settled.claimed, settled.refunded) == (0, DEPOSIT)
        tc = ledger.get_connection(cid)
        assert tc.settled and tc.state is ConnectionState.CLOSED
        assert ledger.balance(client.sui_address) == before + DEPOSIT
        if ends == "sale":
            offer_now = ledger.get_subscription_offer(offer)
            assert offer_now.withdrawn and offer_now.withdrawn_epoch == 1
            (end,) = ledger.events(filter=EventFilter(type="SubscribedConnectionEnded"))[0]
            assert end.fields["by"] == new.sui_address
            assert ledger.claim_subscription(old, sub) == 2 * PRICE
            assert ledger.refund_subscription(client, sub) == (EPOCHS - 2) * PRICE
            assert ledger.balance(client.sui_address) == before + DEPOSIT + 3 * PRICE
        assert _conserved(ledger)
        host.fees.close()
    finally:
        ledger.close()
