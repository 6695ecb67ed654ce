"""A service's half-close timeout in the daemon's config (``half_close_timeout``, seconds:
docs/daemon.md, docs/escrow.md §2): refused out of the ledger's bounds at load, naming
the line; published as the service's term at the start and at reloads; and, when the
config does not set it, the one on the ledger is kept -- a timeout the provider set by
hand (``dtp service update``) is never put back to 10 minutes by a reconcile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.daemon._config import ServiceConfig, parse_config
from dtp.daemon._host_setup import HostSetup, HostSync
from dtp.errors import DaemonConfigError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import (
    HALF_CLOSE_TIMEOUT_MS,
    MAX_HALF_CLOSE_TIMEOUT_MS,
    MIN_HALF_CLOSE_TIMEOUT_MS,
    EventFilter,
    Sla,
)
from dtp.ledger.local import LocalLedger

HEAD = '[daemon]\nledger = "l.sqlite"\nidentity = "k.key"\n'
SVC = (
    '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:8080"]\n'
    "price_per_kib = 10\nmin_deposit = 1000\n"
)
ENDPOINT = "127.0.0.1:7000"


def _parse(extra: str = "") -> ServiceConfig:
    return parse_config(HEAD + SVC + extra, Path("dtp.toml")).services[0]


@pytest.mark.parametrize(
    ("value", "ms"),
    [("600", 600_000), ("3600", 3_600_000), ("5400.5", 5_400_500), ("604800", 604_800_000)],
)
def test_a_half_close_timeout_in_seconds_is_the_services_term(value: str, ms: int) -> None:
    service = _parse(f"half_close_timeout = {value}\n")
    assert service.half_close_timeout_ms == ms
    assert service.sla() == Sla(10, 0, 1000, ms)
    # set, it is published whatever the ledger holds now
    assert service.sla(Sla(10, 0, 1000, 7_200_000)).half_close_timeout_ms == ms


def test_without_the_key_the_published_timeout_is_kept() -> None:
    service = _parse()
    assert service.half_close_timeout_ms is None
    assert service.sla().half_close_timeout_ms == HALF_CLOSE_TIMEOUT_MS  # a new service
    assert service.sla(Sla(1, 2, 3, 7_200_000)) == Sla(10, 0, 1000, 7_200_000)


@pytest.mark.parametrize(
    "value",
    ["599.999", "0", "-600", "604800.001", "1e300", "nan", "inf", "true", '"1h"', "[600]"],
)
def test_a_half_close_timeout_out_of_the_ledgers_bounds_is_refused_at_load(value: str) -> None:
    with pytest.raises(DaemonConfigError) as info:
        _parse(f"half_close_timeout = {value}\n")
    line = (HEAD + SVC).count("\n") + 1
    assert str(info.value).startswith(
        f"dtp.toml:{line}: service[0].half_close_timeout: expected seconds from "
        f"{MIN_HALF_CLOSE_TIMEOUT_MS // 1000} (10 minutes) to "
        f"{MAX_HALF_CLOSE_TIMEOUT_MS // 1000} (7 days), the ledger's bounds, got "
    )


class _Place:
    """A LocalLedger, the daemon's identity and its config files, synced as a start or
    a reload syncs them (:meth:`HostSetup.sync`)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.ledger = LocalLedger(tmp_path / "l.sqlite")
        self.me = HostIdentity.generate()
        self.setup = HostSetup(self.ledger, self.me)
        self.host_id = self.ledger.create_host(self.me, self.me.noise_public)

    def sync(self, extra: str = "", *, price: int = 10) -> Sla:
        """Sync the config with ``extra`` in its service (at price ``price`` per KiB);
        the service's terms on the ledger afterwards."""
        text = HEAD + SVC.replace("price_per_kib = 10", f"price_per_kib = {price}") + extra
        config = parse_config(text, self.tmp / "dtp.toml")
        assert self.setup.sync(HostSync(config, config, ENDPOINT, self.host_id)) == self.host_id
        return self.terms()

    def updates(self) -> list[object]:
        """The ``ServiceUpdated`` events so far."""
        events, _ = self.ledger.events(filter=EventFilter(type="ServiceUpdated"))
        return list(events)

    def terms(self) -> Sla:
        service = self.ledger.get_service(self.host_id, 80)
        assert service is not None
        return service.sla


@pytest.fixture
def place(tmp_path: Path) -> Iterator[_Place]:
    place = _Place(tmp_path)
    try:
        yield place
    finally:
        place.ledger.close()


def test_the_reconcile_publishes_a_configured_timeout(place: _Place) -> None:
    assert place.sync("half_close_timeout = 3600\n") == Sla(10, 0, 1000, 3_600_000)
    # changed in the file: changed on the ledger at the next reload
    assert place.sync("half_close_timeout = 86400\n").half_close_timeout_ms == 86_400_000
    # written as the default: set back to 10 minutes
    assert place.sync("half_close_timeout = 600\n").half_close_timeout_ms == 600_000


def test_the_reconcile_keeps_a_timeout_set_by_hand(place: _Place) -> None:
    assert place.sync() == Sla(10, 0, 1000, HALF_CLOSE_TIMEOUT_MS)  # a new service: default
    # the provider sets a day by hand (as `dtp service update` does)
    day = Sla(10, 0, 1000, 86_400_000)
    place.ledger.update_service(place.me, place.host_id, 80, day, 0)
    assert place.sync() == day  # a reload without the key: nothing to change
    assert len(place.updates()) == 1  # (the update by hand alone)
    # a price changed in the file: the new price published, the day kept
    assert place.sync(price=20) == Sla(20, 0, 1000, 86_400_000)
    assert len(place.updates()) == 2
