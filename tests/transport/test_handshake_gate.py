"""The admission engine both servers share (dtp.transport._admission), sans I/O: the first
record's reader, fed whole, byte by byte and split at random; the unproven pool's
bounds and who gives way; the half-handshakes; and the whole Admission's decisions,
driven by hand with a list for a driver; and how both servers count what the admission
closes unserved and how each handshake's outcome is counted and closed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.protocol.connection import CloseCode
from dtp.transport._admission import (
    ENDINGS,
    MAX_STRIKE_SCORE,
    STRIKE_HALF_LIFE,
    Admission,
    FirstMessage,
    HalfHandshakes,
    Outcome,
    Progress,
    Strikes,
    Unproven,
    Why,
    checked_first_message_timeout,
    unserved_counts,
)
from tests.transport.half_handshakes import first_record

RECORD = first_record()


# -- FirstMessage ------------------------------------------------------------------------


def feed_split(data: bytes, cuts: list[int]) -> tuple[FirstMessage, list[Progress]]:
    reader = FirstMessage()
    states = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        states.append(reader.feed(data[start:cut]))
        start = cut
    return reader, states


def test_a_genuine_first_record_whole_or_byte_by_byte_is_complete() -> None:
    for record in (RECORD, first_record(bytes(range(32)))):  # XX, and IK to some key
        reader = FirstMessage()
        assert reader.feed(record) is Progress.COMPLETE
        assert reader.take() == record
        reader = FirstMessage()
        states = [reader.feed(record[i : i + 1]) for i in range(len(record))]
        assert states[:-1] == [Progress.NEED_MORE] * (len(record) - 1)
        assert states[-1] is Progress.COMPLETE
        assert reader.wanted == 0


@given(st.lists(st.integers(0, len(RECORD)), max_size=8))
def test_any_split_of_a_genuine_record_completes_exactly_at_its_end(cuts: list[int]) -> None:
    reader, states = feed_split(RECORD, cuts)
    assert states[-1] is Progress.COMPLETE
    assert Progress.INVALID not in states
    assert reader.take() == RECORD


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # HTTP: the kind byte alone says so
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"SSH-2.0-OpenSSH_9.6\r\n",
        bytes([16]) + RECORD[1:],  # a DATA record first
        RECORD[:1] + b"\x01" + RECORD[2:],  # flags set
        RECORD[:2] + b"\x00\x00" + RECORD[4:],  # an empty body
        RECORD[:2] + (4097).to_bytes(2, "little") + RECORD[4:],  # beyond the limit
        RECORD[:12] + b"\x07" + RECORD[13:],  # no such pattern
    ],
)
def test_what_is_not_a_first_record_is_invalid_as_soon_as_it_shows(data: bytes) -> None:
    reader = FirstMessage()
    assert reader.feed(data) is Progress.INVALID
    assert reader.feed(b"more") is Progress.INVALID  # (and stays so)


def test_what_follows_the_record_is_kept_up_to_a_bound() -> None:
    reader = FirstMessage()
    assert reader.feed(RECORD + b"early") is Progress.COMPLETE
    assert reader.take() == RECORD + b"early"
    reader = FirstMessage()
    reader.feed(RECORD)
    assert reader.feed(b"x" * 20000) is Progress.INVALID  # (a client waits for our reply)


def test_the_first_message_timeout_is_checked() -> None:
    assert checked_first_message_timeout(2) == 2.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="first_message_timeout"):
            checked_first_message_timeout(bad)
    with pytest.raises(TypeError, match="first_message_timeout"):
        checked_first_message_timeout("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="first_message_timeout"):
        checked_first_message_timeout(True)


# -- Unproven ----------------------------------------------------------------------------


def test_a_newcomer_beyond_its_address_bound_makes_that_address_s_oldest_give_way() -> None:
    pool: Unproven[str] = Unproven(cap=100, per_address=2, timeout=3.0)
    assert pool.arrived("a1", "A", 0.0) == []
    assert pool.arrived("a2", "A", 0.1) == []
    assert pool.arrived("b1", "B", 0.2) == []
    assert pool.arrived("a3", "A", 0.3) == ["a1"]  # A's oldest, not B's older one
    assert pool.from_address("A") == 2 and pool.from_address("B") == 1


def test_beyond_the_server_bound_the_address_holding_most_gives_way() -> None:
    pool: Unproven[str] = Unproven(cap=4, per_address=10, timeout=3.0)
    pool.arrived("me", "genuine", 0.0)  # the oldest of all, alone from its address
    for i in range(3):
        pool.arrived(f"x{i}", "attacker", 0.1 + i)
    # each newcomer makes the attacker's oldest give way, never the genuine one
    assert pool.arrived("x3", "attacker", 5.0) == ["x0"]
    assert pool.arrived("y0", "other", 6.0) == ["x1"]
    assert pool.left("me")
    assert not pool.left("me")  # (gone already)
    assert not pool.left("x0")


def test_the_unproven_expire_oldest_first_and_say_when_next() -> None:
    pool: Unproven[str] = Unproven(cap=10, per_address=10, timeout=3.0)
    assert pool.next_deadline() is None
    pool.arrived("a", "A", 0.0)
    pool.arrived("b", "B", 1.0)
    assert pool.next_deadline() == 3.0
    assert pool.expired(2.9) == []
    assert pool.expired(3.0) == ["a"]
    assert pool.next_deadline() == 4.0
    assert pool.drain() == ["b"]
    assert len(pool) == 0


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=200))
def test_the_pool_never_holds_more_than_its_bounds(steps: list[tuple[int, bool]]) -> None:
    pool: Unproven[int] = Unproven(cap=7, per_address=3, timeout=1.0)
    held: set[int] = set()
    for n, (address, leaves) in enumerate(steps):
        held.add(n)
        for gone in pool.arrived(n, str(address), float(n)):
            held.discard(gone)  # (n itself, refused: a suspect address's)
        if leaves and held:
            victim = min(held)
            assert pool.left(victim)
            held.discard(victim)
        assert len(pool) == len(held) <= 7
        assert all(pool.from_address(str(a)) <= 3 for a in range(6))


# -- Strikes: suspect addresses --------------------------------------------------------


def test_an_address_is_suspect_after_two_unproven_ends_and_forgiven_with_time() -> None:
    strikes = Strikes()
    strikes.strike("A", 0.0)
    assert not strikes.suspect("A", 0.0)  # (one is bad luck)
    strikes.strike("A", 1.0)
    assert strikes.suspect("A", 1.0)
    assert not strikes.suspect("A", 1.0 + STRIKE_HALF_LIFE)  # (halved: below two)
    assert not strikes.suspect("B", 1.0)
    for i in range(1000):  # a long flood
        strikes.strike("A", 2.0 + i / 1000)
    assert strikes.score("A", 2.999) == MAX_STRIKE_SCORE
    # capped: suspect no more within three half-lives of its end
    assert strikes.suspect("A", 2.999 + 3 * STRIKE_HALF_LIFE - 1)
    assert not strikes.suspect("A", 2.999 + 3 * STRIKE_HALF_LIFE + 1)


def test_strikes_remember_a_bounded_number_of_addresses_the_latest_struck() -> None:
    strikes = Strikes(limit=3)
    for key in "ABCD":
        strikes.strike(key, 0.0)
    strikes.strike("B", 0.5)  # (B again: the most recent)
    strikes.strike("E", 1.0)
    assert len(strikes) == 3
    assert strikes.score("A", 1.0) == strikes.score("C", 1.0) == 0.0  # forgotten
    assert strikes.score("B", 1.0) > 1.0 and strikes.score("E", 1.0) == 1.0


def suspect_pool(cap: int) -> Unproven[str]:
    """A pool whose address "X" is suspect (two of its connections timed out)."""
    pool: Unproven[str] = Unproven(cap=cap, per_address=100, timeout=3.0)
    pool.arrived("x-old1", "X", 0.0)
    pool.arrived("x-old2", "X", 0.0)
    assert pool.expired(3.0) == ["x-old1", "x-old2"]
    assert pool.strikes.suspect("X", 3.0)
    return pool


def test_a_suspect_address_s_connections_give_way_first_however_young() -> None:
    pool = suspect_pool(cap=3)
    pool.arrived("me", "genuine", 4.0)  # the oldest now, alone from its address
    pool.arrived("x1", "X", 4.1)
    pool.arrived("x2", "X", 4.2)
    assert pool.suspects() == 2
    assert pool.arrived("you", "other", 4.3) == ["x1"]  # not "me", the oldest
    assert pool.arrived("x3", "X", 4.4) == ["x2"]  # X's newcomers churn X's own
    assert pool.left("me") and pool.left("you")


def test_a_suspect_newcomer_is_refused_rather_than_make_others_give_way() -> None:
    pool = suspect_pool(cap=2)
    pool.arrived("me", "genuine", 4.0)
    pool.arrived("you", "other", 4.1)
    before = pool.strikes.score("X", 4.2)
    assert pool.arrived("x1", "X", 4.2) == ["x1"]  # refused at once: nobody gave way
    assert len(pool) == 2 and pool.from_address("X") == 0
    assert pool.strikes.score("X", 4.2) == before + 1  # and struck
    assert not pool.left("x1")


def test_an_address_is_struck_for_what_ends_unproven_never_for_a_proof() -> None:
    pool: Unproven[str] = Unproven(cap=10, per_address=10, timeout=3.0)
    for name in ("a1", "a2", "a3"):
        pool.arrived(name, "A", 0.0)
    assert pool.left("a1")  # proved itself: no strike
    assert pool.strikes.score("A", 0.0) == 0.0
    assert pool.left("a2", 0.5)  # sent what is not DTP, or hung up
    assert pool.strikes.score("A", 0.5) == 1.0
    pool.drain()  # the server closing: no strike
    assert pool.strikes.score("A", 0.5) == 1.0


def test_an_admission_refusing_a_suspect_newcomer_says_so_and_closes_it() -> None:
    driver = Driver()
    gate = admission(driver, max_unproven=1)
    for name in ("s1", "s2"):  # X's silent connections time out: X is suspect
        assert gate.arrived(name, "X", 0.0)
        gate.expire(3.0)
    assert gate.arrived("me", "A", 4.0)
    assert not gate.arrived("x", "X", 4.1)
    assert driver.closed[-1] == ("x", "gave way")
    assert gate.proven("me", "A", 10.0, 4.2) and driver.started == ["me"]


def test_a_record_that_came_with_the_connect_goes_on_without_waiting() -> None:
    driver = Driver()
    gate = admission(driver, max_unproven=1)
    gate.arrived("s1", "X", 0.0)  # the pool is full
    assert gate.proven("me", "A", 10.0, 0.1, waited=False)
    assert driver.started == ["me"] and driver.closed == []  # s1 kept: nobody gave way
    gate.struck("B", 0.2)
    gate.struck("B", 0.3)
    assert gate.unproven.strikes.suspect("B", 0.3)


# -- HalfHandshakes ----------------------------------------------------------------------


def test_half_handshakes_give_way_oldest_first() -> None:
    half: HalfHandshakes[str] = HalfHandshakes()
    assert half.give_way() is None
    for name in "abc":
        half.started(name)
    half.left("a")  # its client authenticated
    assert half.give_way() == "b"
    assert half.give_way() == "c"
    assert half.give_way() is None


# -- Admission ---------------------------------------------------------------------------


class Driver:
    """What the engine asks a server to do, recorded."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.closed: list[tuple[str, Why]] = []
        self.gave_way: list[str] = []
        self.gone: set[str] = set()
        self.refuse_start: set[str] = set()

    def start(self, item: str) -> bool:
        if item in self.refuse_start:
            return False
        self.started.append(item)
        return True

    def close(self, items: list[str], why: Why) -> None:
        self.closed += [(item, why) for item in items]

    def give_way(self, item: str) -> None:
        self.gave_way.append(item)


def admission(driver: Driver, **bounds: int) -> Admission[str]:
    settings = {
        "max_handshakes": 2,
        "max_handshakes_per_address": 2,
        "max_waiting_per_address": 2,
        "max_waiting": 3,
        "max_unproven": 4,
    }
    settings.update(bounds)
    return Admission(
        **settings,  # type: ignore[arg-type]
        first_message_timeout=3.0,
        start=driver.start,
        close=driver.close,
        give_way=driver.give_way,
        gone=lambda item: item in driver.gone,
    )


def test_a_proven_connection_starts_when_a_slot_is_free() -> None:
    driver = Driver()
    gate = admission(driver)
    gate.arrived("a", "A", 0.0)
    assert gate.proven("a", "A", 10.0, 0.1)
    assert driver.started == ["a"] and gate.in_progress == 1
    gate.ended("a", 2.0)
    assert gate.in_progress == 0


def test_a_waiting_proven_connection_makes_the_oldest_half_handshake_give_way() -> None:
    driver = Driver()
    gate = admission(driver, max_handshakes_per_address=8)
    for name in ("h1", "h2"):
        gate.arrived(name, "X", 0.0)
        gate.proven(name, "X", 10.0, 0.0)
        gate.waiting_for_client(name)  # (XX: its next message is its client's to send)
    gate.arrived("me", "A", 1.0)
    gate.proven("me", "A", 11.0, 1.0)
    assert driver.started == ["h1", "h2"]
    assert driver.gave_way == ["h1"] and gate.waiting == 1
    gate.ended("h1", 2.0)  # its driver ended it: the slot goes to the first in line
    assert driver.started == ["h1", "h2", "me"]


def test_a_client_the_server_decides_on_never_gives_way() -> None:
    driver = Driver()
    gate = admission(driver, max_handshakes=1)
    gate.arrived("ik", "X", 0.0)
    gate.proven("ik", "X", 10.0, 0.0)
    gate.waiting_for_client("ik")
    gate.authenticated("ik")  # its hooks run now: the server's own time
    gate.arrived("me", "A", 1.0)
    gate.proven("me", "A", 11.0, 1.0)
    assert driver.gave_way == [] and gate.waiting == 1


def test_those_waiting_past_their_deadline_are_closed_busy() -> None:
    driver = Driver()
    gate = admission(driver, max_handshakes=1)
    gate.arrived("held", "X", 0.0)
    gate.proven("held", "X", 100.0, 0.0)
    gate.authenticated("held")
    gate.arrived("late", "A", 1.0)
    gate.proven("late", "A", 5.0, 1.0)
    assert gate.next_deadline() == 5.0
    gate.expire(5.0)
    assert driver.closed == [("late", "busy")]
    assert gate.waiting == 0


def test_silent_ones_time_out_and_the_oldest_give_way() -> None:
    driver = Driver()
    gate = admission(driver, max_unproven=2)
    gate.arrived("s1", "X", 0.0)
    gate.arrived("s2", "Y", 0.5)
    gate.arrived("me", "A", 1.0)  # the pool is full: X's (the heaviest's) oldest goes
    assert driver.closed == [("s1", "gave way")]
    gate.expire(3.5)
    assert driver.closed[-1] == ("s2", "timed out")
    assert not gate.proven("s2", "Y", 10.0, 3.6)  # (closed already: not started)
    assert gate.proven("me", "A", 10.0, 3.6)
    assert driver.started == ["me"]


def test_an_address_at_its_cap_waits_in_its_own_line_then_the_server_s() -> None:
    driver = Driver()
    gate = admission(driver, max_handshakes=4, max_handshakes_per_address=1)
    for name in ("a1", "a2"):
        gate.arrived(name, "A", 0.0)
        gate.proven(name, "A", 10.0, 0.0)
    assert driver.started == ["a1"]
    assert gate.address_slots is not None and gate.address_slots.waiting("A") == 1
    gate.ended("a1", 2.0)
    assert driver.started == ["a1", "a2"]
    gate.ended("a2", 2.0)
    assert gate.in_progress == 0 and gate.address_slots.in_progress("A") == 0


def test_the_addresses_lines_together_are_bounded() -> None:
    driver = Driver()
    gate = admission(driver, max_handshakes=8, max_handshakes_per_address=1, max_waiting=2)
    for address in "ABCD":
        for n in range(2):
            name = f"{address}{n}"
            gate.arrived(name, address, 0.0)
            gate.proven(name, address, 10.0, 0.0)
    # one each in progress; of the four second ones, two wait, two are refused
    assert len(driver.started) == 4
    assert [why for _, why in driver.closed] == ["busy", "busy"]


def test_one_that_cannot_start_frees_its_slots_for_the_next() -> None:
    driver = Driver()
    driver.refuse_start.add("gone")
    gate = admission(driver, max_handshakes=1)
    gate.arrived("gone", "A", 0.0)
    gate.proven("gone", "A", 10.0, 0.0)
    assert gate.in_progress == 0
    assert gate.address_slots is not None and gate.address_slots.in_progress("A") == 0
    gate.arrived("next", "A", 0.1)
    gate.proven("next", "A", 10.0, 0.1)
    assert driver.started == ["next"]


def test_drain_takes_out_every_connection_not_in_a_handshake() -> None:
    driver = Driver()
    gate = admission(driver, max_handshakes=1)
    gate.arrived("silent", "S", 0.0)
    for name in ("in", "line"):
        gate.arrived(name, "A", 0.0)
        gate.proven(name, "A", 10.0, 0.0)
    gate.authenticated("in")
    assert sorted(gate.drain(1.0)) == ["line", "silent"]
    gate.ended("in", 2.0)
    assert gate.in_progress == 0
    assert gate.address_slots is not None and len(gate.address_slots) == 0


@pytest.mark.parametrize("seed", range(5))
def test_a_random_run_keeps_every_count_within_its_bound_and_ends_at_zero(seed: int) -> None:
    draw = random.Random(seed)
    driver = Driver()
    gate = admission(driver, max_handshakes=3, max_waiting=4, max_unproven=5)
    live: list[str] = []
    taken = 0  # (driver.started[:taken] are in live, or ended)
    now = 0.0
    for n in range(400):
        now += draw.random() * 0.2
        name, address = f"c{n}", f"10.0.0.{draw.randrange(4)}"
        gate.arrived(name, address, now)
        if draw.random() < 0.7:
            gate.proven(name, address, now + 2.0, now)
        live += driver.started[taken:]
        taken = len(driver.started)
        for item in list(live):
            if draw.random() < 0.3:
                live.remove(item)
                gate.ended(item, now)
            elif draw.random() < 0.3:
                gate.waiting_for_client(item)
        for victim in driver.gave_way:
            if victim in live:
                live.remove(victim)
                gate.ended(victim, now)
        driver.gave_way.clear()
        gate.expire(now)
        assert gate.in_progress <= 3 and gate.waiting <= 4 and len(gate.unproven) <= 5
    gate.drain(now)  # (the lines emptied first: nothing more starts)
    for item in live + driver.started[taken:]:
        gate.ended(item, now)
    assert gate.in_progress == 0
    assert gate.address_slots is not None and len(gate.address_slots) == 0


# -- what the servers count and how they close ------------------------------------------


@given(st.integers(min_value=0, max_value=1000))
def test_unserved_busy_counts_as_busy_gone_nowhere_the_rest_as_unproven(count: int) -> None:
    assert unserved_counts("busy", count) == (count, 0)
    assert unserved_counts("gone", count) == (0, 0)
    assert unserved_counts("gave way", count) == (0, count)
    assert unserved_counts("timed out", count) == (0, count)


def test_every_outcome_has_its_ending() -> None:
    assert set(ENDINGS) == set(Outcome)
    # counted once at most: in handshakes_failed or in refused, never both
    for ending in ENDINGS.values():
        assert ending.failed + ending.refused <= 1


@pytest.mark.parametrize(
    ("outcome", "failed", "refused", "code", "reason"),
    [
        (Outcome.ACCEPTED, 0, 0, None, None),
        (Outcome.REFUSED, 0, 1, CloseCode.REFUSED, None),
        # (counted in busy_refused as the server decides it, before the client reads it)
        (Outcome.BUSY, 0, 0, CloseCode.REFUSED, None),
        (Outcome.FAILED, 1, 0, CloseCode.HANDSHAKE_FAILED, "handshake failed"),
        # a replay reads as any failed handshake: the client learns nothing more
        (Outcome.REPLAYED, 1, 0, CloseCode.HANDSHAKE_FAILED, "handshake failed"),
        (Outcome.GAVE_WAY, 1, 0, CloseCode.HANDSHAKE_FAILED, "gave way to a waiting client"),
        (Outcome.CLOSED, 0, 0, CloseCode.HANDSHAKE_FAILED, "the server is closed"),
    ],
)
def test_outcome_ending(
    outcome: Outcome, failed: int, refused: int, code: CloseCode | None, reason: str | None
) -> None:
    ending = ENDINGS[outcome]
    assert (ending.failed, ending.refused, ending.code, ending.reason) == (
        failed,
        refused,
        code,
        reason,
    )
