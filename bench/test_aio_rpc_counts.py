"""bench/aio_rpc_counts.py: each side's counts are per call (the marks' own work taken
off), as the handler, run once a call, shows."""

from bench import aio_rpc_counts


def test_counts_are_per_call_on_each_side() -> None:
    got = aio_rpc_counts.measure(100, "uvloop")
    server, client = got["server"], got["client"]
    handler = [n for name, n in server["by_name"].items() if "main.<locals>.<lambda>" in name]
    assert handler == [1.0]
    calls = [n for name, n in client["by_name"].items() if name.startswith("AsyncRpcClient.call ")]
    assert calls == [2.0]  # (the call and its resumption once answered)
    for side in (server, client):
        assert side["entries"] >= 1 and side["calls"] > 10 and side["c_calls"] > 10
