"""The ledger carrier's options under the socket APIs: nonsense is refused when the
options are made, before any connection (and any money) is attempted."""

from __future__ import annotations

import pytest

from dtp.carriers.ledger import MAX_PIPE_DATA, frame_record
from dtp.carriers.ledger_bridge import LEDGER_RECORD_PLAINTEXT, LedgerCarrierOptions


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
