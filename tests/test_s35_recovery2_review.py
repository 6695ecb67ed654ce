"""Second review of loss recovery (dtp._recovery) after the ack delay cap and the
latest RTT in the loss delay (RFC 9002 5.3 and 6.1.2): what the probe timeout makes of
an excessive ack delay, and which RTT the loss delay is based on."""

from __future__ import annotations

from dtp._recovery import (
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
