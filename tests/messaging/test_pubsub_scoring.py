"""The peer-score rules of pub/sub (docs/messaging.md §4.2) on virtual time: the formula,
the thresholds of the defaults, decay by half-lives, retention of a closed peer's score,
and the graylist log lines. No sockets: ``PeerScores`` takes ``now``."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.messaging._pubsub_scoring import PeerScores, ScoreParams, Standing

P = ScoreParams()


def burst(scores: PeerScores, n: int, now: float = 0.0, key: str = "p") -> Standing:
    standing = Standing.OK
    for _ in range(n):
        standing = scores.invalid(key, key, now)
    return standing


def test_the_defaults_graylist_at_11_and_cut_off_at_21_invalid_messages() -> None:
    s = PeerScores()
    assert burst(s, 10) is Standing.OK
    assert s.score("p", 0) == -100  # at the threshold, not below it
    assert burst(s, 1) is Standing.GRAYLISTED
    assert burst(s, 9) is Standing.GRAYLISTED  # 20: -400
    assert burst(s, 1) is Standing.DISCONNECT  # 21: -441


def test_credit_is_capped_and_delays_the_graylist() -> None:
    s = PeerScores()
    for _ in range(500):
        s.first_delivery("p", "p", 0)
    assert s.score("p", 0) == P.first_delivery_cap * P.first_delivery_weight == 50
    assert burst(s, 12) is Standing.OK  # 50 - 144
    assert burst(s, 1) is Standing.GRAYLISTED  # 50 - 169 < -100
    assert burst(s, 8) is Standing.GRAYLISTED  # 21: 50 - 441 = -391
    assert burst(s, 1) is Standing.DISCONNECT  # 22: 50 - 484


def test_counters_halve_every_half_life() -> None:
    s = PeerScores()
    burst(s, 20)
    for _ in range(40):
        s.first_delivery("p", "p", 0)
    view = s.view(P.invalid_half_life)["p"]
    assert view.invalid == pytest.approx(10)
    assert view.first_deliveries == pytest.approx(40 * 2 ** -(P.invalid_half_life / 600))
    later = s.view(P.invalid_half_life + P.first_delivery_half_life)["p"]
    assert later.first_deliveries == pytest.approx(view.first_deliveries / 2)


def test_a_flooder_that_stops_recovers_on_the_clock_alone() -> None:
    s = PeerScores()
    assert burst(s, 21) is Standing.DISCONNECT
    assert s.standing("p", 30) is Standing.GRAYLISTED
    assert s.standing("p", 64) is Standing.GRAYLISTED  # 21 / 2**(64/60) > 10
    assert s.standing("p", 65) is Standing.OK
    assert s.score("p", 1e6) == 0  # decayed to zero, not to 1e-300


def test_a_clock_that_goes_back_decays_nothing() -> None:
    s = PeerScores()
    burst(s, 12, now=100.0)
    assert s.score("p", 50.0) == -144
    assert s.score("p", 100.0) == -144


def test_a_closed_peers_score_is_kept_until_it_decays() -> None:
    s = PeerScores()
    s.connect("p", "p", 0)
    burst(s, 15)
    s.disconnect("p", 0)
    assert s.connect("p", "p", 1) is Standing.GRAYLISTED  # reconnecting starts there
    s.disconnect("p", 1)
    assert "p" in s.view(100)
    assert s.view(3600) == {}  # decayed to nothing: forgotten
    assert len(s) == 0


def test_records_of_closed_peers_are_bounded() -> None:
    s = PeerScores(ScoreParams(retain=3))
    for i in range(10):
        s.connect(i, f"p{i}", i)
        s.invalid(i, f"p{i}", i)
        s.disconnect(i, i)
    assert sorted(s.view(10)) == ["p7", "p8", "p9"]  # the newest three
    s.connect("live", "live", 10)
    s.invalid("live", "live", 10)
    assert "live" in s.view(11)  # a peer with a link is never forgotten


def test_graylisting_is_logged_once_and_so_is_the_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = PeerScores()
    with caplog.at_level(logging.INFO, logger="dtp.messaging.pubsub"):
        burst(s, 30, key="flooder")
        s.standing("flooder", 200)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("flooder graylisted" in line for line in lines) == 1
    assert sum("flooder off the graylist" in line for line in lines) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("invalid_weight", 1.0),
        ("first_delivery_weight", -1.0),
        ("invalid_half_life", 0.0),
        ("graylist_threshold", 0.0),
        ("disconnect_threshold", -50.0),  # above the graylist threshold
        ("decay_to_zero", 1.0),
        ("retain", -1),
        ("invalid_half_life", math.inf),
    ],
)
def test_params_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError):
        ScoreParams(**{field: value})  # type: ignore[arg-type]


def test_params_that_are_not_numbers_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        ScoreParams(invalid_weight="-1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ScoreParams(graylist_threshold=True)


events = st.lists(st.tuples(st.sampled_from(["first", "invalid"]), st.floats(0, 600)), max_size=60)


@given(events)
def test_the_score_is_the_formula_of_the_decayed_counters(steps: list[tuple[str, float]]) -> None:
    """Replayed by hand from the events: each counter decays by its half-life between
    events (exactly, however the time is split), credit is capped, and the score is
    w2 * min(first, cap) + w4 * invalid**2."""
    s = PeerScores()
    first = invalid = 0.0
    now = 0.0
    for kind, gap in steps:
        now += gap
        first *= 2 ** -(gap / P.first_delivery_half_life)
        invalid *= 2 ** -(gap / P.invalid_half_life)
        first = 0.0 if first < P.decay_to_zero else first
        invalid = 0.0 if invalid < P.decay_to_zero else invalid
        if kind == "first":
            first = min(first + 1, P.first_delivery_cap)
            s.first_delivery("p", "p", now)
        else:
            invalid += 1
            s.invalid("p", "p", now)
    expected = P.first_delivery_weight * first + P.invalid_weight * invalid**2
    assert s.score("p", now) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    if min(abs(expected - P.graylist_threshold), abs(expected - P.disconnect_threshold)) > 1e-6:
        if expected < P.disconnect_threshold:
            want = Standing.DISCONNECT
        elif expected < P.graylist_threshold:
            want = Standing.GRAYLISTED
        else:
            want = Standing.OK
        assert s.standing("p", now) is want


@given(st.integers(0, 200), st.integers(0, 200), st.floats(0, 3600), st.floats(0, 3600))
def test_more_invalid_messages_never_score_higher_and_time_only_forgives(
    a: int, b: int, t1: float, t2: float
) -> None:
    s = PeerScores()
    burst(s, a, key="a")
    burst(s, a + b, key="b")
    assert s.score("b", 0) <= s.score("a", 0)
    early, late = sorted((t1, t2))
    assert s.score("a", early) <= s.score("a", late) <= 0
