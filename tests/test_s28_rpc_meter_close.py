"""A metered blocking RPC call that the client's close() overtakes is either counted
and sent, or neither: the meter used to count it (and sign the receipt that pays for
it) with the stream's lock let go, and a close() landing then refused the request,
which the next receipt of the meter paid for all the same."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dtp.messaging import errors as E
from dtp.messaging import rpc as rpc_module
from dtp.messaging.rpc import RequestPayments
from tests.test_messaging_rpc import Served, make_rpc
from tests.test_s13_rpc_paid import _setup


def test_a_close_during_the_metering_does_not_charge_for_an_unsent_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ledger, _server_id, client_id, meter = _setup()
    payments = RequestPayments(
        meter.connection_id, meter.sla, client_id.ed25519_public, meter.deposit
    )
    served = Served(make_rpc(payments=payments))
    client = served.connect(timeout=20, meter=meter)
    real = rpc_module._meter_request
    closer: list[threading.Thread] = []

    def metering(*args: Any) -> Any:
        # a close() from another thread lands as the request is being metered: it is
        # given time to take effect before the metering goes on
        thread = threading.Thread(target=client.close)
        thread.start()
        closer.append(thread)
        deadline = time.monotonic() + 0.5
        while client._closed is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(rpc_module, "_meter_request", metering)
    try:
        try:
            # (answered a second late: the close, waiting for the lock the metering
            # holds, lands before the answer even on a loaded machine)
            call = client.start("sleep", [1.0, 1])
        except E.RpcConnectionLost:
            framed = False
        else:
            framed = True
            with pytest.raises(E.RpcConnectionLost):
                call.result(10)  # (the close failed it once it was sent)
        closer[0].join(10)
        assert meter.total_requests == (1 if framed else 0), (framed, meter.total_requests)
    finally:
        client.close()
        served.close()
