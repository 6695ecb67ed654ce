"""bench/rpc_layers.py: each side's fake stream carries every call, and the counts name
the RPC layers' functions."""

from __future__ import annotations

from bench import rpc_layers


def test_both_sides_run_every_call() -> None:
    assert rpc_layers.client_us(50) > 0
    assert rpc_layers.server_us(50) > 0  # (raises unless the server took all 50)
    client_ops, server_ops = rpc_layers.opcodes(50)
    assert "call" in client_ops and "take_response" in client_ops
    assert "take_request" in server_ops
