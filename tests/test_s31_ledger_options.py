"""LedgerCarrierOptions refuses a seconds option that is not a number, by its name: True
was taken as 1 s, and a string failed at a comparison with a TypeError naming no option
(the old code: no error for True, a bare TypeError for the string)."""

from __future__ import annotations

import pytest

from dtp.carriers.ledger_bridge import LedgerCarrierOptions

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
    # (a TypeError since s32, as the messaging checks: it was ValueError)
    with pytest.raises(TypeError, match=rf"^{name} must be a number of seconds"):
        LedgerCarrierOptions(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SECONDS)
def test_int_seconds_are_still_taken(name: str) -> None:
    options = LedgerCarrierOptions(**{name: 2, **({"poll_max": 2} if name == "poll_min" else {})})
    assert getattr(options, name) == 2
