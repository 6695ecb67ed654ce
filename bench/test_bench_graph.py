"""pytest-benchmark suite for the Gun rows of bench/graph_rows.py. ham_merge_vs_gun: ours
(the C batch merge) timed here; the peer, GunDB in Node.js, runs once in the row's
setup, which checks that both merge the stream into the same graph (compare.py times
it). gun_relay_puts: both sides run once, a short job each (compare.py times them)."""

from __future__ import annotations

import pytest

from bench import graph_rows, gun_ham, gun_peer


@pytest.mark.skipif(not gun_ham.available(), reason="node and npm are needed to run GunDB")
def test_ham_merge_vs_gun(benchmark) -> None:  # type: ignore[no-untyped-def]
    w = graph_rows.ham_merge_vs_gun()
    benchmark.group = w.name
    benchmark.extra_info["unit"] = w.unit
    benchmark.pedantic(w.ours, rounds=3 if benchmark.enabled else 1, iterations=1)


@pytest.mark.skipif(not gun_peer.available(), reason="node and npm are needed to run gun.js")
def test_gun_relay_puts(benchmark) -> None:  # type: ignore[no-untyped-def]
    w = graph_rows.gun_relay_puts(puts=50)
    try:
        benchmark.group = w.name
        benchmark.extra_info["unit"] = w.unit
        assert w.peer is not None
        assert float(w.peer()) > 0  # type: ignore[arg-type]
        benchmark.pedantic(w.ours, rounds=3 if benchmark.enabled else 1, iterations=1)
    finally:
        assert w.close is not None
        w.close()


@pytest.mark.skipif(not gun_peer.available(), reason="node and npm are needed to run gun.js")
def test_bench_js_counts_unacknowledged_puts_instead_of_hanging() -> None:
    # a relay that takes the WebSocket and never answers: every put goes unacknowledged
    import asyncio
    import json
    import threading

    import websockets

    ready = threading.Event()
    port: list[int] = []

    async def swallow(ws: websockets.ServerConnection) -> None:
        async for _ in ws:
            pass

    async def serve() -> None:
        async with websockets.serve(swallow, "127.0.0.1", 0) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.Future()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    job = {
        "peer": f"http://127.0.0.1:{port[0]}/gun",
        "clients": 2,
        "puts": 5,
        "window": 2,
        "tag": "silent",
        "deadline": 2,
    }
    answer = gun_peer.bench(job, timeout=60)
    assert answer["lost"] == 10, json.dumps(answer)
    assert answer["rate"] is None  # (no rate for work not done)


@pytest.mark.skipif(not gun_peer.available(), reason="node and npm are needed to run gun.js")
def test_bench_js_ends_at_its_deadline_when_the_relay_never_answers_the_upgrade() -> None:
    import json
    import socket

    with socket.create_server(("127.0.0.1", 0)) as mute:  # takes TCP, never the upgrade
        job = {
            "peer": f"http://127.0.0.1:{mute.getsockname()[1]}/gun",
            "clients": 2,
            "puts": 5,
            "window": 2,
            "tag": "mute",
            "deadline": 2,
        }
        answer = gun_peer.bench(job, timeout=60)
    assert (answer["lost"], answer["rate"]) == (10, None), json.dumps(answer)
