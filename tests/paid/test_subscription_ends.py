"""A connection opened with a subscription (docs/escrow.md §13) is free only while the
subscription lasts: its SLA is all zeros, so once the subscription is over -- expired,
or its offer withdrawn -- nothing pays for it. Both paid servers (the ``driver``
fixture: ``dtp.socket.serve`` and ``dtp.aio.serve``) refuse one at its handshake
(:class:`~dtp.errors.SubscriptionRefused`, and the client ends it on the ledger at once,
its deposit back) and close one they serve once a ledger check finds the subscription
over (``CLOSE_SUBSCRIPTION_ENDED``, raised as :class:`~dtp.errors.SubscriptionEnded`),
settling it: nothing owed, and nothing served free after the subscription ended.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import (
    LedgerUnavailable,
    SubscriptionEnded,
    SubscriptionRefused,
)
from dtp.hostid._admission import LedgerAdmission, PeerInfo
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._server_steps import ended_subscriptions
from dtp.ledger._objects import ConnectionState, EventFilter, Host, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._gate import subscriptions_over
from tests.paid.conftest import Driver
from tests.support.paid_inprocess import ident
from tests.support.paid_twins import funded_ledger
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow
from tests.support.subscribed import served_free, until_ended

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=50_000)
POLICY = ServicePolicy(refresh_interval=0.05, ledger_check_interval=0.1)
SERVER, CLIENT = ident(0xA1), ident(0xA2)
PORT = 7093
LOG = logging.getLogger("tests.paid.subscription_ends")


def _service(ledger: LocalLedger) -> tuple[str, str]:
    """SERVER's host with the echo service on PORT and an offer for it (1000 MIST an
    epoch): (host ID, offer ID)."""
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    return host_id, ledger.create_subscription_offer(SERVER, host_id, PORT, 1_000)


def _conserved(ledger: LocalLedger) -> bool:
    audit = ledger.audit()
    return bool(audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"])


@pytest.mark.parametrize("ends", ["expiry", "withdrawal"])
def test_a_served_connection_ends_with_its_subscription(
    tmp_path: Path, driver: Driver, ends: str
) -> None:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        host_id, offer = _service(ledger)
        sub = ledger.subscribe(CLIENT, offer, 1)
        with driver.serve(
            host_id,
            PORT,
            "echo",
            ledger=ledger,
            identity=SERVER,
            policy=POLICY,
            receipts=tmp_path / "receipts.db",
        ):
            sock = dtp.socket.create_connection(
                f"dtp://{host_id}:{PORT}",
                ledger=ledger,
                identity=CLIENT,
                subscription=sub,
                timeout=10,
            )
            try:
                cid = sock.connection_id
                assert cid is not None and ledger.get_connection(cid).subscription == sub
                served_free(sock)  # while the subscription lasts
                if ends == "expiry":
                    ledger.advance_epoch()
                else:
                    ledger.withdraw_subscription_offer(SERVER, offer)
                ended = until_ended(sock, 10)
                assert not isinstance(ended, ConnectionRefusedError)
                assert "the subscription is over" in ended.reason
            finally:
                sock.close()
            # the server settled it: closed, nothing claimed (its fees are all zero)
            assert wait_for(lambda: is_settled(ledger, cid), 10)
            escrow = settled_escrow(ledger, cid)  # (closed by its settlement)
            assert escrow.claimed == 0 and escrow.balance == 0
        assert _conserved(ledger)


class _EpochTurnsAtOpen(LocalLedger):
    """The client's handle: the epoch turns as its subscribed open lands, so that the
    subscription is over by the time the server admits the connection (one bought for
    the last epoch of its life, opened as the epoch ended)."""

    def open_subscribed_connection(self, *args: Any, **kw: Any) -> Any:
        opened = super().open_subscribed_connection(*args, **kw)
        self.advance_epoch()
        return opened


async def _aio_connect(address: str, ledger: LocalLedger, sub: str) -> None:
    _, writer = await dtp.aio.open_connection(
        address, ledger=ledger, identity=CLIENT, subscription=sub, deposit=500, timeout=10
    )
    writer.close()  # (never reached: refused)


@pytest.mark.parametrize("client_api", ["socket", "aio"])
def test_a_connection_of_a_subscription_over_is_refused_and_ended_at_once(
    tmp_path: Path, driver: Driver, client_api: str
) -> None:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        host_id, offer = _service(ledger)
        sub = ledger.subscribe(CLIENT, offer, 1)
        address = f"dtp://{host_id}:{PORT}"
        client_ledger = _EpochTurnsAtOpen(ledger.path)
        try:
            with driver.serve(
                host_id,
                PORT,
                "echo",
                ledger=ledger,
                identity=SERVER,
                policy=POLICY,
                receipts=tmp_path / "receipts.db",
            ):
                before = ledger.balance(CLIENT.sui_address)
                with pytest.raises(SubscriptionRefused) as refused:
                    if client_api == "socket":
                        dtp.socket.create_connection(
                            address,
                            ledger=client_ledger,
                            identity=CLIENT,
                            subscription=sub,
                            deposit=500,
                            timeout=10,
                        )
                    else:
                        asyncio.run(_aio_connect(address, client_ledger, sub))
                # a refusal (ConnectionRefusedError) and a SubscriptionEnded, naming why
                assert isinstance(refused.value, ConnectionRefusedError)
                assert isinstance(refused.value, SubscriptionEnded)
                assert "covers epochs 0..0; it is epoch 1" in refused.value.reason
        finally:
            client_ledger.close()
        (opened,) = ledger.events(filter=EventFilter(type="SubscribedConnectionOpened"))[0]
        cid = opened.fields["connection"]
        # the client ended it at once: closed, settled, its deposit back -- no half-close
        # left to wait out the ten minutes
        tc = ledger.get_connection(cid)
        assert tc.settled and tc.state is ConnectionState.CLOSED
        assert ledger.get_escrow(tc.escrow).refunded == 500
        (ended,) = ledger.events(filter=EventFilter(type="SubscribedConnectionEnded"))[0]
        assert ended.fields["by"] == CLIENT.sui_address
        assert ledger.balance(CLIENT.sui_address) == before
        assert _conserved(ledger)


def test_the_admission_reads_the_subscription_of_a_subscribed_connection(
    tmp_path: Path,
) -> None:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        host_id, offer = _service(ledger)
        sub = ledger.subscribe(CLIENT, offer, 1)
        cap = ledger.create_spending_cap(CLIENT, 1_000_000)
        subscribed = ledger.open_subscribed_connection(CLIENT, sub, cap).connection_id
        metered = ledger.open_connection(CLIENT, host_id, PORT, cap, 50_000).connection_id
        admission = LedgerAdmission(ledger, host_id, PORT)

        def verdict(cid: str) -> str | None:
            return admission(PeerInfo(CLIENT.sui_address, cid, PORT))

        assert verdict(subscribed) is None
        ledger.withdraw_subscription_offer(SERVER, offer)
        refusal = verdict(subscribed)
        assert refusal is not None and refusal.startswith("The subscription is over: ")
        assert f"offer {offer} was withdrawn in epoch 0" in refusal
        # a metered connection has no subscription to read: admitted as before
        assert verdict(metered) is None


@dataclass
class _Conn:
    connection_id: str
    subscription: str | None
    ledger_check_due: float = 0.0


class _Unreadable(LocalLedger):
    def subscription_over(self, subscription_id: str, host: Host | None = None) -> str | None:
        raise LedgerUnavailable("the node is away")


def test_the_subscriptions_of_served_connections_are_read_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        _, offer = _service(ledger)
        live = ledger.subscribe(CLIENT, offer, 2)
        short = ledger.subscribe(CLIENT, offer, 1)
        conns = [
            _Conn("0x" + "01" * 32, live),
            _Conn("0x" + "02" * 32, short),
            _Conn("0x" + "03" * 32, short),
            _Conn("0x" + "04" * 32, None),
        ]
        assert subscriptions_over(ledger, conns) == []
        ledger.advance_epoch()
        reads: list[str] = []
        real = ledger.subscription_over

        def counted(subscription_id: str, host: Host | None = None) -> str | None:
            reads.append(subscription_id)
            return real(subscription_id, host)

        ledger.subscription_over = counted  # type: ignore[method-assign]
        over = ended_subscriptions(ledger, conns, LOG)
        assert [conn for conn, _ in over] == conns[1:3]
        assert all("covers epochs 0..0; it is epoch 1" in why for _, why in over)
        assert sorted(reads) == sorted([live, short])  # once each; the metered one never
        # none at all when no connection was opened with a subscription
        assert ended_subscriptions(ledger, conns[3:], LOG) == []
        assert len(reads) == 2
        # the ledger away: nothing closed this time, a warning, due again next check
        unreadable = _Unreadable(ledger.path)
        try:
            with caplog.at_level(logging.WARNING, logger=LOG.name):
                assert ended_subscriptions(unreadable, conns, LOG) == []
        finally:
            unreadable.close()
        (record,) = caplog.records
        assert "cannot read the subscriptions of open connections" in record.getMessage()
