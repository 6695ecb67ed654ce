"""The services daemon admits a connection opened with a subscription (docs/escrow.md
§13) only while the subscription lasts: its admission is the library's
(:class:`~dtp.hostid._admission.LedgerAdmission`), which reads the subscription a
connection records and refuses one that is over with the reason the client raises as
:class:`~dtp.errors.SubscriptionRefused` (and then ends on the ledger at once). One
whose offer was sold with the host to the daemon's identity is refused too, the offer
withdrawn by the daemon first (anyone may, after a sale), so that its client can end it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dtp.daemon._config import Backend, ServiceConfig
from dtp.daemon._services import ServiceHost
from dtp.daemon._state import StatusBook
from dtp.errors import SubscriptionRefused, refusal_error
from dtp.hostid._admission import PeerInfo
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol._state import CloseCode


class _Place:
    """``authority``'s host, whose Noise key is ``daemon``'s, offering port 7000 by
    subscription (500 MIST an epoch), and the services daemon of ``daemon`` serving it."""

    def __init__(self, tmp_path: Path, authority: HostIdentity, daemon: HostIdentity) -> None:
        self.ledger = LocalLedger(tmp_path / "ledger.sqlite")
        self.client = HostIdentity.generate()
        self.host_id = self.ledger.create_host(authority, daemon.noise_public)
        self.ledger.add_service(authority, self.host_id, 7000, "svc", Sla(1, 0, 100))
        self.ledger.faucet(self.client.sui_address, 10**6)
        self.offer = self.ledger.create_subscription_offer(authority, self.host_id, 7000, 500)
        self.cap = self.ledger.create_spending_cap(self.client, 10**6)
        self.host = ServiceHost(self.ledger, daemon, StatusBook(tmp_path / "state"))
        self.host.host_id = self.host_id
        self.host.services[7000] = ServiceConfig("svc", 7000, (Backend("127.0.0.1", 9),))

    def open(self, sub: str) -> str:
        """A connection of ``sub``'s holder, opened with it."""
        return self.ledger.open_subscribed_connection(self.client, sub, self.cap).connection_id

    def admit(self, cid: str) -> str | None:
        """The daemon's admission of ``cid``: None, or the refusal."""
        peer = PeerInfo(self.client.sui_address, cid, 7000)
        return asyncio.run(self.host._admit(peer))


def test_the_daemon_refuses_a_connection_whose_subscription_is_over(tmp_path: Path) -> None:
    server = HostIdentity.generate()
    place = _Place(tmp_path, server, server)
    ledger, admit = place.ledger, place.admit
    try:
        sub = ledger.subscribe(place.client, place.offer, 1)
        first, second = place.open(sub), place.open(sub)
        assert admit(first) is None  # live: admitted like any connection
        ledger.advance_epoch()
        reason = admit(second)
        assert reason is not None
        refused = refusal_error(reason, CloseCode.REFUSED)
        assert isinstance(refused, SubscriptionRefused)
        assert f"subscription {sub} covers epochs 0..0; it is epoch 1" in reason
    finally:
        ledger.close()


def test_the_daemon_withdraws_a_sold_hosts_offer_as_it_refuses_its_connection(
    tmp_path: Path,
) -> None:
    old, new = HostIdentity.generate(), HostIdentity.generate()
    place = _Place(tmp_path, old, new)
    ledger, client, offer = place.ledger, place.client, place.offer
    try:
        sub = ledger.subscribe(client, offer, 3)
        cid = place.open(sub)
        ledger.set_authority(old, place.host_id, new.sui_address)
        reason = place.admit(cid)
        assert reason is not None
        assert isinstance(refusal_error(reason, CloseCode.REFUSED), SubscriptionRefused)
        assert f"is {new.sui_address}'s now" in reason
        # withdrawn by the daemon (the host is its identity's now): the client ends its
        # connection at once, and takes back the two epochs not begun
        withdrawn = ledger.get_subscription_offer(offer)
        assert withdrawn.withdrawn and withdrawn.withdrawn_epoch == 0
        assert ledger.end_subscribed_connection(client, cid) == 0
        assert ledger.refund_subscription(client, sub) == 2 * 500
    finally:
        ledger.close()
