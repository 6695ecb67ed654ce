"""Review of loss recovery (dtp._recovery) on edge samples: RTT estimation and the
loss delay under a sudden RTT increase."""

from __future__ import annotations

from dtp._recovery import MAX_ACK_DELAY, LossRecovery, SentRecord


def _sent(recovery: LossRecovery, counter: int, at: float) -> None:
    assert recovery.on_sent(SentRecord(counter, at, [], True)) is None


def test_an_ack_delay_above_the_maximum_does_not_shrink_the_rtt() -> None:
    """RFC 9002 5.3: the ack delay subtracted is at most the peer's max_ack_delay. A
    peer reporting more (however it came about) made our RTT estimate as small as the
    minimum RTT, and the loss delay and PTO with it: spurious resends of all in flight
    on a path whose RTT had grown."""
    recovery = LossRecovery()
    _sent(recovery, 0, 0.0)
    recovery.on_ack(((0, 0),), 0, 0.1)  # first sample: 100 ms
    assert recovery.min_rtt is not None and abs(recovery.min_rtt - 0.1) < 1e-9
    now = 0.1
    for counter in range(1, 31):
        _sent(recovery, counter, now)
        now += 1.0  # the path's RTT is now a second ...
        # ... and the peer claims it sat on each record for 850 ms (what brings the
        # sample down to 150 ms, above the minimum RTT)
        recovery.on_ack(((counter, counter),), 850_000, now)
    # every sample counts as at least 1 s - 25 ms
    assert recovery.smoothed_rtt > 0.9
    assert recovery.smoothed_rtt < 1.0


def test_an_ack_delay_within_the_maximum_is_still_subtracted() -> None:
    recovery = LossRecovery()
    _sent(recovery, 0, 0.0)
    recovery.on_ack(((0, 0),), 0, 0.1)
    _sent(recovery, 1, 1.0)
    recovery.on_ack(((1, 1),), int(MAX_ACK_DELAY * 1e6), 1.2)
    # sample 200 ms less 25 ms of ack delay
    assert abs(recovery.smoothed_rtt - (0.875 * 0.1 + 0.125 * (0.2 - MAX_ACK_DELAY))) < 1e-9


def test_a_sudden_rtt_increase_does_not_declare_the_records_before_lost() -> None:
    """RFC 9002 6.1.2: the time threshold is 9/8 of max(latest RTT, smoothed RTT). With
    the smoothed RTT alone, the first ACK after the path's RTT grew declared every
    record sent before the acknowledged one lost at once (they had been in flight longer
    than 9/8 of the old RTT), though they were only as late as the acknowledged one."""
    recovery = LossRecovery()
    now = 0.0
    for counter in range(10):  # a steady 100 ms path
        _sent(recovery, counter, now)
        now += 0.1
        acked, lost = recovery.on_ack(((counter, counter),), 0, now)
        assert len(acked) == 1 and not lost
    assert abs(recovery.smoothed_rtt - 0.1) < 1e-9
    # the RTT becomes a second: records 10 and 11 go out 1 ms apart, 11's ACK comes first
    _sent(recovery, 10, now)
    _sent(recovery, 11, now + 0.001)
    acked, lost = recovery.on_ack(((11, 11),), 0, now + 1.001)
    assert [r.counter for r in acked] == [11]
    assert lost == []  # 10 is as late as 11 was: not lost (yet)
    deadline = recovery.loss_deadline()
    assert deadline is not None and deadline > now + 1.001
    # and it is lost by time once 9/8 of the latest RTT passed without its ACK
    assert [r.counter for r in recovery.detect_lost(deadline)] == [10]
