"""Loss recovery (dtp.protocol._recovery) with the ack delay cap and the
latest RTT in the loss delay (RFC 9002 5.3 and 6.1.2): what the probe timeout makes of
an excessive ack delay, and which RTT the loss delay is based on.

Loss recovery on edge samples: RTT estimation and the
loss delay under a sudden RTT increase."""

from __future__ import annotations

from dtp.protocol._recovery import (
    GRANULARITY,
    INITIAL_RTT,
    MAX_ACK_DELAY,
    TIME_THRESHOLD,
    LossRecovery,
    SentRecord,
)


def _sent(recovery: LossRecovery, counter: int, at: float) -> None:
    assert recovery.on_sent(SentRecord(counter, at, [], True)) is None


def _steady(recovery: LossRecovery, records: int, rtt: float) -> float:
    """Records 0 .. records-1 each acknowledged ``rtt`` after it went out, no ack delay;
    returns the time the last ACK came."""
    now = 0.0
    for counter in range(records):
        _sent(recovery, counter, now)
        now += rtt
        acked, lost = recovery.on_ack(((counter, counter),), 0, now)
        assert len(acked) == 1 and not lost
    return now


def test_an_excessive_ack_delay_does_not_shrink_the_probe_timeout() -> None:
    """RFC 9002 5.3 caps the ack delay taken off a sample at the peer's max_ack_delay
    (here the protocol's MAX_ACK_DELAY, which the peer's AckTracker keeps to). Uncapped,
    a peer claiming it sat on every record for nearly the whole RTT brought the PTO
    down to about the minimum RTT's: probes, and resends of all in flight, long before
    an ACK could come over the 1 s path."""
    recovery = LossRecovery()
    now = _steady(recovery, 1, 0.1)
    for counter in range(1, 41):
        _sent(recovery, counter, now)
        now += 1.0
        recovery.on_ack(((counter, counter),), 850_000, now)
    # each sample counts as 1 s less at most MAX_ACK_DELAY
    assert recovery.pto_interval() > 1.0 - MAX_ACK_DELAY


def test_the_loss_delay_is_based_on_the_latest_sample_before_the_ack_delay() -> None:
    """RFC 9002 6.1.2 takes latest_rtt as measured (5.1: the ack delay is taken off the
    adjusted sample fed to the smoothed RTT only): after the RTT grew to a second, the
    record sent just before the one acknowledged is lost 9/8 of the whole second after
    it went out, not 9/8 of the smoothed RTT (which lags at about 200 ms)."""
    recovery = LossRecovery()
    now = _steady(recovery, 10, 0.1)
    _sent(recovery, 10, now)
    _sent(recovery, 11, now + 0.001)
    ack_delay_us = int(MAX_ACK_DELAY * 1_000_000)
    acked, lost = recovery.on_ack(((11, 11),), ack_delay_us, now + 1.001)
    assert [r.counter for r in acked] == [11] and lost == []
    assert recovery.smoothed_rtt < 0.25  # the lagging estimate the old delay used
    deadline = recovery.loss_deadline()
    assert deadline is not None
    assert abs(deadline - (now + TIME_THRESHOLD * 1.0)) < 1e-9
    assert recovery.detect_lost(deadline - GRANULARITY) == []
    assert [r.counter for r in recovery.detect_lost(deadline)] == [10]
    # and before any sample the loss delay still starts from the initial RTT
    assert LossRecovery()._loss_delay() == TIME_THRESHOLD * INITIAL_RTT


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
