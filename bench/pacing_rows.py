"""The ``paid_rate_smoothness`` row of bench/compare.py: how closely a client's
``sendall`` of an upload keeps to its bytes/s limit (200,000 B/s, the Host's
``max_bytes_per_sec``) when the paid server's handler reads it as fast as the limit
lets it, over 10 one-second windows past the stream window the server granted up front
(and the client's send buffer). The figure is the worst window's distance from the
limit, in % (the bound the tests state: 20). Ours returns flow-control credit in steps of
an eighth of a second of the rate (``Connection.pace_credit``); the peer returns it in
quarter windows, as the connection does with no limit: 1 MiB at once every 5 s at this
rate. Ratio: the peer's figure over ours (higher is better, bar 10).

A wall-clock figure, read on a quiet machine: the suite checks the rule on a simulated
clock (tests/protocol/test_credit_pacing.py) and, end to end, only what load cannot
break (tests/paid/test_rate_smoothness.py)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import dtp.socket
from bench.deposits import take_back_deposits
from bench.workload import Workload
from dtp.errors import DTPError
from dtp.hostid.paid import PaidSocket
from dtp.hostid.paid._engine import PaidConnectionEngine
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.transport.blocking._socket import SEND_HIGH_WATER

__all__ = ["PACING_ROWS", "paid_rate_smoothness", "upload_shares"]

RATE = 200_000  # B/s
WINDOWS = 10
PIECE = b"u" * (8 << 10)  # what each sendall hands over
_PORT = 21
_SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1000)
_STREAM_WINDOW = 4 << 20  # ConnectionConfig.stream_window's default
#: How long the row waits for its server's settlement (seconds)
_RELEASE_WAIT = 60.0


@contextlib.contextmanager
def _unpaced() -> Iterator[None]:
    """Credit in quarter windows whatever the client's limit (the peer's way)."""
    with mock.patch.object(PaidConnectionEngine, "credit_pace", lambda self: None):
        yield


def upload_shares(paced: bool = True, windows: int = WINDOWS) -> list[float]:
    """One upload to a blocking paid server at RATE: the uploader's bytes per
    one-second window past its up-front allowance, as shares of RATE."""
    server, client = HostIdentity.generate(), HostIdentity.generate()
    events: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="dtp-bench-pacing-") as tmp:
        path = Path(tmp) / "ledger.db"
        ledger, server_ledger = LocalLedger(path), LocalLedger(path)
        try:
            ledger.faucet(client.sui_address, 10_000_000)
            host_id = ledger.create_host(server, server.noise_public)
            ledger.add_service(server, host_id, _PORT, "echo", _SLA)
            ledger.set_client_limits(server, host_id, 0, RATE, 0)
            # the peer waits 5 s between its bursts: long enough to see two of them
            seconds = windows + 2.0 if paced else windows + 6.0

            def handle(sock: PaidSocket) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end and sock.recv(4 << 20):
                    pass

            pacing = contextlib.nullcontext() if paced else _unpaced()
            with pacing:
                paid = dtp.socket.serve(
                    host_id, _PORT, handle, ledger=server_ledger, identity=server
                )
                with (
                    paid,
                    dtp.socket.create_connection(
                        f"dtp://{host_id}:{_PORT}",
                        timeout=30,
                        ledger=ledger,
                        identity=client,
                        deposit=1_000_000,
                    ) as sock,
                    contextlib.suppress(DTPError),  # (the server's end ends the upload)
                ):
                    while True:
                        sock.sendall(PIECE)
                        events.append((time.monotonic(), len(PIECE)))
                # The server closes its end of the carrier first and settles after
                # (its handler ended the connection), and close() returns before that:
                # its settlement is waited for before the clock moves, or the client
                # settled alone first and the server was paid nothing for the upload.
                if not paid.wait_released(_RELEASE_WAIT):
                    raise RuntimeError("the paid server did not settle its connection")
        finally:
            take_back_deposits(ledger, client)
            ledger.close()
            server_ledger.close()
    return _shares_past(events, _STREAM_WINDOW + SEND_HIGH_WATER, windows)


def _shares_past(events: list[tuple[float, int]], allowance: int, windows: int) -> list[float]:
    """Bytes per one-second window (as shares of RATE) from the first move after the
    instant the uploader had moved ``allowance`` bytes."""
    moved, full, start = 0, None, None
    for at, n in events:
        if full is not None and at > full:
            start = at
            break
        moved += n
        if moved > allowance and full is None:
            full = at
    if start is None:
        raise RuntimeError("the upload never got past its first window")
    totals = [0] * windows
    for at, n in events:
        index = int(at - start) if at >= start else -1
        if 0 <= index < windows:
            totals[index] += n
    return [total / RATE for total in totals]


def worst_off(paced: bool, windows: int = WINDOWS) -> float:
    """The worst window's distance from the limit, in %."""
    return 100 * max(abs(share - 1) for share in upload_shares(paced, windows))


def paid_rate_smoothness(windows: int = WINDOWS) -> Workload:
    return Workload(
        "paid_rate_smoothness",
        "% off",
        1,
        lambda: worst_off(True, windows),
        lambda: worst_off(False, windows),
        bar=10.0,
        note=(
            "uploader's sendall at a 200,000 B/s limit, worst 1-s window off the limit "
            "(bound 20 %): credit paced vs in quarter windows"
        ),
        measured=True,
        lower_is_better=True,
        rounds=3,
    )


PACING_ROWS = {"paid_rate_smoothness": paid_rate_smoothness}


if __name__ == "__main__":  # a probe: the figure alone, outside compare.py
    print(f"paid_rate_smoothness: {worst_off(True):.1f} % off the limit at worst")
