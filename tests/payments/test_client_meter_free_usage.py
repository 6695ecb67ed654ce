"""Usage the SLA prices at 0: a metered client signs no receipt for it.

On the server side, its gate judges receipts by their amount, so free
bytes never pause a connection nor keep a closing server waiting for a final receipt
(a service priced by the request, closed by the server first, waited as long before
and after), and a subscribed connection settles with no receipt at all. What the
commit left behind is on the client: an exhausted meter on free bytes was ticked every
64 KiB where it was every 8 MiB (its step derived from the byte cadence the commit
turned off), and ``sign_free`` took any truthy value."""

from __future__ import annotations

import pytest

from dtp.errors import InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipts import Meter
from tests.support.scopes import scope_of

CID = "0x" + "7a" * 32
CLIENT = HostIdentity.from_private_bytes(bytes([0x51]) * 32, bytes([0x52]) * 32)
# priced by the request (a quarter of min_deposit is 100 requests), bytes free
BY_REQUEST = Sla(price_per_kib=0, price_per_request=10, min_deposit=4000)


def test_an_exhausted_meter_on_free_bytes_stays_quiet_as_long_as_before() -> None:
    # a deposit of 2 requests and a half
    meter = ClientMeter(CLIENT, scope_of(CID), BY_REQUEST, 25, MeteringConfig(), now_ms=0)
    assert meter.update(0, 0, 1) is None
    first = meter.flush(0)  # (an ask of the server)
    assert first is not None and first.total_amount == 10
    # free bytes for seconds: no receipt of their own (the commit's point)
    assert meter.update(1500, 4 << 20, 1) is None
    # a third request the deposit cannot pay: the last receipt, for the two it can
    last = meter.update(1600, 4 << 20, 3)
    assert last is not None and last.total_amount == 20 and meter.exhausted
    # the bytes go on (free; the server serves them): the per-send path skips the
    # meter below quiet_until's bound, in steps of a sixteenth of the byte cadence
    # the client asked for (128 MiB: 8 MiB), as before -- not of 1 MiB (64 KiB)
    ticks, used = 0, 4 << 20
    while used < (64 << 20) + (4 << 20):
        bound, _due = meter.quiet_until()
        assert bound - used >= MeteringConfig().every_bytes // 16
        used = bound
        assert meter.update(1700, used, 3) is None
        ticks += 1
    assert ticks <= 8
    assert meter.flush(1800) is None  # nothing more the deposit pays


def test_sign_free_must_be_a_bool() -> None:
    with pytest.raises(InvalidArgument, match="sign_free"):
        Meter(CLIENT, scope_of(CID), BY_REQUEST, 100, sign_free="no")  # type: ignore[arg-type]
    # a bool, either way: False leaves free bytes unsigned, True signs them
    quiet = Meter(CLIENT, scope_of(CID), BY_REQUEST, 100, sign_free=False)
    assert quiet.record(0, nbytes=1 << 20) is None and quiet.flush(0) is None
    eager = Meter(CLIENT, scope_of(CID), BY_REQUEST, 100, sign_free=True)
    assert eager.record(0, nbytes=1 << 20) is not None
