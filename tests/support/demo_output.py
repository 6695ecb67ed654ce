"""What `dtp demo --quick` prints when every step of its tour ran
(tests/cli/test_dtp_command.py, and the lean and wheel installs' runs of it)."""

from __future__ import annotations


def check_demo_output(out: str) -> None:
    """Assert that ``out``, the demo's stdout, shows each of its steps done (the
    browser step, which needs node and chromium, aside: tests/cli/test_dtp_command.py checks
    it)."""
    assert "decoded back to the same 4 frames" in out
    assert "replayed record" in out and "DecryptionError" in out
    assert "in order" in out
    assert "same graph on both" in out
    assert "Noise IK handshake" in out and "got back b'HELLO, DTP'" in out
    assert "ConnectionRefused" in out
    assert "connected to dtp://0x" in out and "admitted us only after checking" in out
    assert "claimed" in out and "refunded" in out and "conservation" in out
    assert "converged: True" in out
    # the daemon story: an ordinary TCP client through a forwarder, fees, a denied client
    assert "every byte came back intact" in out and "paid nothing" in out
    assert "provider" in out and "client" in out and "[1/12]" in out
    # UDP billed per datagram, messaging
    assert "queries answered through one DTP connection" in out
    assert "eth_blockNumber over DTP" in out and "meet at noon" in out
    assert "Summary" in out
