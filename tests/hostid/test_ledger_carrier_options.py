"""The ledger carrier under the socket APIs: nonsense options are refused when made,
before any connection (and any money) is attempted; a listener rides out a ledger that
fails it once.

LedgerCarrierOptions refuses a seconds option that is not a number, by its name: True
is not taken as 1 s, and a string is not a bare TypeError naming no option."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ChainError
from dtp.hostid.ledger_carrier._bridge import LEDGER_RECORD_PLAINTEXT, LedgerCarrierOptions
from dtp.hostid.ledger_carrier._carrier import MAX_PIPE_DATA, frame_record
from dtp.ledger.local import LocalLedger
from tests.support.ledger_carrier_world import CLIENT, PORT, SERVER, SLA, bridge_threads, echo
from tests.support.polling import wait_for


@pytest.mark.parametrize(
    "bad",
    [
        # 0 doubled stays 0: an idle bridge polled the ledger without pause (a full core
        # per connection, and a ledger read per turn)
        {"poll_min": 0.0},
        {"poll_min": -1.0},
        {"poll_min": float("nan")},
        {"poll_min": 0.05, "poll_max": 0.01},
        {"poll_max": float("inf")},
        {"inner_count": 0},
        {"inner_count": 9},
        {"sync_every": 0},
        {"sync_interval": 0.0},
        {"gap_timeout": -0.5},
        {"peer_close_grace": -1.0},
        # a full-size record would need more than 255 fragments: its send raised
        # ValueError in the bridge's thread, which ended the connection
        {"max_payload": 71},
        {"max_payload": MAX_PIPE_DATA + 1},
    ],
)
def test_nonsense_options_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad)) if len(bad) == 1 else "poll_max"):
        LedgerCarrierOptions(**bad)  # type: ignore[arg-type]


def test_sensible_options_are_taken() -> None:
    LedgerCarrierOptions()
    LedgerCarrierOptions(
        inner_count=1, sync_every=1, poll_min=0.01, poll_max=0.01, peer_close_grace=0.0
    )
    smallest = LedgerCarrierOptions(inner_count=8, max_payload=72)
    largest_record = 12 + LEDGER_RECORD_PLAINTEXT + 16
    assert len(frame_record(b"r" * largest_record, 0, smallest.max_payload)) <= 255


class _FailsOnce:
    """The server's ledger, except that one call of ``method`` fails as a node that
    does not answer does (ChainError LedgerUnavailable)."""

    def __init__(self, ledger: LocalLedger, method: str) -> None:
        self._ledger = ledger
        self.failures = 0

        def fail_once(*args: Any, **kw: Any) -> Any:
            if not self.failures:
                self.failures += 1
                raise ChainError("the node is unavailable", name="LedgerUnavailable")
            return getattr(ledger, method)(*args, **kw)

        setattr(self, method, fail_once)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@pytest.fixture
def hidden_host(tmp_path: Path) -> Iterator[tuple[Path, LocalLedger, str]]:
    """A host that publishes no endpoint, with an echo service; a funded client."""
    path = tmp_path / "ledger.db"
    ledger = LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    try:
        yield path, ledger, host_id
    finally:
        ledger.close()


@pytest.mark.parametrize("method", ["get_connection", "create_pipe"])
def test_a_listener_retries_a_connection_the_ledger_failed_it_on(
    hidden_host: tuple[Path, LocalLedger, str], method: str
) -> None:
    """The listener read the client's connection (get_connection) or created its own
    pipe (create_pipe) and, when the ledger failed that once, skipped the connection
    for good: the client waited out its connect timeout."""
    path, ledger, host_id = hidden_host
    own = LocalLedger(path)
    flaky = _FailsOnce(own, method)
    server = dtp.socket.create_server(
        None,
        identity=SERVER,
        ledger=flaky,
        host_id=host_id,
        port=PORT,  # type: ignore[arg-type]
    )
    serving = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    serving.start()
    try:
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}", ledger=ledger, identity=CLIENT, deposit=5000, timeout=4
        ) as sock:
            sock.sendall(b"hello")
            assert sock.recv(16) == b"hello"
        assert flaky.failures == 1
    finally:
        server.close()
        serving.join(5)
        assert wait_for(lambda: not bridge_threads(), 30)
        own.close()


SECONDS = (
    "sync_interval",
    "gap_timeout",
    "poll_min",
    "poll_max",
    "peer_close_grace",
    "outage_timeout",
)


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", [True, "0.5", None])
def test_a_seconds_option_that_is_not_a_number_is_refused_by_name(name: str, value: object) -> None:
    # (a TypeError, as the messaging checks)
    with pytest.raises(TypeError, match=rf"^{name} must be a number of seconds"):
        LedgerCarrierOptions(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SECONDS)
def test_int_seconds_are_still_taken(name: str) -> None:
    options = LedgerCarrierOptions(**{name: 2, **({"poll_max": 2} if name == "poll_min" else {})})
    assert getattr(options, name) == 2


WRONG_TYPES: list[dict[str, Any]] = [
    {"inner_count": 2.5},
    {"inner_count": True},
    {"sync_every": "4"},
    {"max_payload": 1000.5},
    {"poll_min": "0.1"},
    {"gap_timeout": None},
    {"outage_timeout": True},
]


OUT_OF_RANGE: list[dict[str, Any]] = [
    {"inner_count": 9},
    {"sync_every": 0},
    {"max_payload": 10},
    {"poll_min": math.nan},
]


def test_carrier_options_of_a_wrong_type_are_a_type_error_out_of_range_a_value_error() -> None:
    for bad in WRONG_TYPES:
        with pytest.raises(TypeError, match=next(iter(bad))):  # (ValueError before)
            LedgerCarrierOptions(**bad)
    for bad in OUT_OF_RANGE:
        with pytest.raises(ValueError, match=next(iter(bad))):
            LedgerCarrierOptions(**bad)
