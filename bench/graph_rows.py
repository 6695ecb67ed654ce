"""Graph rows of bench/compare.py.

``graph_sync_100k``: a fresh peer connects over DTP on 127.0.0.1 to a graph peer holding
100,000 fields (10,000 nodes x 10 fields, another process), receives and merges them all
and persists them to a new SQLite file; rate in fields/s. *Ours*: both processes on the
default backend (C HAM table, C record layer). *Peer*: the same code with
``DTP_PUREPYTHON=1`` in both the serving and the receiving process -- the pure-Python
HAM twin, and the twin record layer -- measured in its own process
(``python bench/graph_rows.py receive ...``), which reports its own rate.

``graph_put``: local single-field puts per second into a graph persisted in SQLite
(batched writes, flushed at the end of each run); ours on the C HAM table, peer on the
twin (``Graph(ham="python")``), both in this process. Reported, no bar.

``ham_merge_vs_gun``: one stream of 100,000 updates (10,000 nodes x 10 fields, states
1..40 so that ties are many, every kind of Gun value) merged into an empty graph. *Ours*:
the C HAM table's batch merge (``dtp_ham_merge``, one call per batch of 4,096 updates,
the size a sync push sends). *Peer*: GunDB's own merge, gun's ``put`` path in Node.js
(``tools/gun-ham``), fed the stream as gun ``put`` messages of one node and 8 fields
each, which gun takes in one turn; it reports its own rate. The two final graphs are
checked equal before anything is timed.

``gun_relay_puts``: gun.js clients (``tools/gun-peer/bench.js``: 4 gun instances in one
Node.js process, each with its own WebSocket, 256 puts awaiting their acknowledgement
each) put nodes of three fields through a Gun relay on 127.0.0.1; puts acknowledged per
second, from the first put to the last acknowledgement. *Ours*: dtp's Gun endpoint,
``python -m dtp.graph gun`` over a SQLite graph file (each put checked, merged, logged
and acknowledged). *Peer*: gun's own Node relay (``tools/gun-peer/relay.js``: gun's
server with SEA, AXE and radisk files, as ``require('gun')`` loads them). Both in their
own processes, the same client job against each, alternately; a round with an error
acknowledgement fails the row.

    python bench/graph_rows.py receive PORT KEY SECONDS   # the peer's receiving side
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gun_ham, gun_peer
from bench.workload import Workload
from dtp.graph import Graph, connect, link
from dtp.graph.values import encode_value
from dtp.native.core import NativeHamGraph, encode_ham_batch
from dtp.native.reference._ham import decode_ham_batch
from dtp.native.types import HamUpdate

ROOT = Path(__file__).resolve().parent.parent
SYNC_FIELDS = 100_000


class GraphPeer:
    """``python -m dtp.graph serve --fill N`` in its own process."""

    def __init__(self, fields: int, *, pure_python: bool) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DTP_PUREPYTHON", None)
        if pure_python:
            env["DTP_PUREPYTHON"] = "1"
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtp.graph", "serve", "--fill", str(fields)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the graph peer did not start")
        info = json.loads(line)
        self.port: int = info["port"]
        self.key: str = info["key"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


def receive_once(port: int, key: bytes, expected: int) -> None:
    """One fresh peer: sync everything into a new SQLite file, check, clean up."""
    tmp = tempfile.mkdtemp(prefix="dtp-graph-bench-")
    try:
        graph = Graph(Path(tmp) / "graph.db")
        connect(graph, ("127.0.0.1", port), server_key=key, timeout=120)
        got = len(graph)
        graph.close()
        if got != expected:
            raise RuntimeError(f"synced {got} fields, expected {expected}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _receive_rate(port: int, key: bytes, seconds: float, expected: int) -> float:
    receive_once(port, key, expected)  # warm up
    runs = 0
    start = time.perf_counter()
    while True:
        receive_once(port, key, expected)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return expected * runs / elapsed


def graph_sync_100k() -> Workload:
    ours_srv = GraphPeer(SYNC_FIELDS, pure_python=False)
    peer_srv = GraphPeer(SYNC_FIELDS, pure_python=True)
    key = bytes.fromhex(ours_srv.key)

    def ours() -> None:
        receive_once(ours_srv.port, key, SYNC_FIELDS)

    def peer_rate(seconds: float) -> float:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "graph_rows.py"),
                "receive",
                str(peer_srv.port),
                peer_srv.key,
                str(seconds),
            ],
            env=peer_srv.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return float(json.loads(out.stdout)["rate"])

    def close() -> None:
        ours_srv.close()
        peer_srv.close()

    return Workload(
        "graph_sync_100k",
        "fields/s",
        SYNC_FIELDS,
        ours,
        peer_rate=peer_rate,
        bar=5.0,
        note="fresh peer receives+merges+persists 100k fields over DTP loopback; "
        "peer = same sync with DTP_PUREPYTHON=1 in both processes",
        close=close,
    )


def _puts(ham: str, count: int) -> tuple[Callable[[], object], Callable[[], None]]:
    tmp = tempfile.mkdtemp(prefix="dtp-graph-bench-")
    graph = Graph(Path(tmp) / "graph.db", ham=ham)
    counter = [0]

    def op() -> None:
        base = counter[0]
        counter[0] += count
        for i in range(base, base + count):
            graph.set(f"node/{i % 5000}", f"f{i % 7}", i)
        graph.flush()

    def close() -> None:
        graph.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return op, close


def graph_put(count: int = 2000) -> Workload:
    ours, close_ours = _puts("c", count)
    peer, close_peer = _puts("python", count)

    def close() -> None:
        close_ours()
        close_peer()

    return Workload(
        "graph_put",
        "puts/s",
        count,
        ours,
        peer,
        note="single-field puts persisted to SQLite (batched); peer = twin HAM table",
        close=close,
    )


GUN_UPDATES = 100_000
GUN_BATCH = 4096  # updates in one batch of ours: what a sync push sends at most
GUN_CLOCK = 1_700_000_000_000.0  # the machine state: no update of the stream is ahead
_GUN_VALUES: list[object] = [
    "alice",
    "bob",
    "\uffff",
    "\U0001f600",
    "",
    0.5,
    1e-6,
    42,
    1e21,
    -3.25,
    True,
    False,
    None,
    link("node/1"),
]


def gun_stream(seed: int = 1) -> list[gun_ham.Message]:
    """The row's updates, as gun ``put`` messages of one node and 8 of its 10 fields."""
    rnd = random.Random(seed)
    messages: list[gun_ham.Message] = []
    for _ in range(GUN_UPDATES // 8):
        keys = rnd.sample(range(10), 8)
        ups = [[f"f{k}", rnd.choice(_GUN_VALUES), float(rnd.randint(1, 40))] for k in keys]
        messages.append([f"node/{rnd.randrange(10_000)}", ups])
    return messages


def _graph_of(table: NativeHamGraph) -> dict[str, dict[str, list[object]]]:
    graph: dict[str, dict[str, list[object]]] = {}
    for batch in table.export():
        for soul, field, state, value in decode_ham_batch(batch):
            graph.setdefault(soul.decode(), {})[field.decode()] = [state, value.decode()]
    return graph


def ham_merge_vs_gun() -> Workload:
    if not gun_ham.available():
        raise RuntimeError("ham_merge_vs_gun needs node and npm (tools/gun-ham runs GunDB)")
    messages = gun_stream()
    updates = [
        HamUpdate(soul.encode(), key.encode(), state, encode_value(value))
        for soul, ups in messages
        for key, value, state in ups
    ]
    batches = [
        encode_ham_batch(updates[i : i + GUN_BATCH]) for i in range(0, len(updates), GUN_BATCH)
    ]
    count = len(updates)
    # (kept as JSON text, not as the stream's millions of Python objects, which the
    # collector would walk during our side's timing)
    stream = json.dumps(messages)
    del messages, updates

    def gun_job(seconds: float) -> str:
        head = f'{{"bench": {{"clock": {GUN_CLOCK!r}, "seconds": {float(seconds)!r}'
        return f'{head}, "messages": {stream}}}}}'

    def merge() -> NativeHamGraph:
        table = NativeHamGraph()
        for batch in batches:
            table.merge(batch, GUN_CLOCK)
        return table

    # the same stream, the same graph: checked once before timing
    if _graph_of(merge()) != gun_ham.run(gun_job(0))["graph"]:
        raise RuntimeError("ham_merge_vs_gun: gun and dtp merged the stream into other graphs")

    def peer_rate(seconds: float) -> float:
        return float(gun_ham.run(gun_job(seconds))["rate"])

    return Workload(
        "ham_merge_vs_gun",
        "updates/s",
        count,
        merge,
        peer_rate=peer_rate,
        bar=30.0,
        note="100k updates (ties, every Gun value type) into an empty graph: the C batch "
        "merge, 4,096 updates a call, vs GunDB's put path (gun 0.2020.1241) in Node.js, "
        "8 fields a message; same final graph",
    )


GUN_CLIENTS = 4
GUN_WINDOW = 256  # puts awaiting their acknowledgement, per client
GUN_DEADLINE = 60  # seconds a job may take before its unacknowledged puts count as lost


def gun_relay_puts(puts: int = 1500) -> Workload:
    """``puts`` per client per round (see the module docstring)."""
    if not gun_peer.available():
        raise RuntimeError("gun_relay_puts needs node and npm (tools/gun-peer runs gun.js)")
    gun_peer.install()
    tmp = tempfile.mkdtemp(prefix="dtp-gun-bench-")
    ours_srv = gun_peer.EndpointProcess("--db", str(Path(tmp) / "graph.db"), "--no-site")
    try:
        relay = gun_peer.GunRelayProcess()
    except BaseException:
        ours_srv.close()
        raise
    runs = iter(range(1 << 30))

    def rate(url: str, tries: int = 1) -> float:
        for attempt in range(tries):
            job = {
                "peer": url + "gun",
                "clients": GUN_CLIENTS,
                "puts": puts,
                "window": GUN_WINDOW,
                "tag": f"r{next(runs)}",
                "deadline": GUN_DEADLINE,
            }
            answer = gun_peer.bench(job)
            if answer["errors"]:
                raise RuntimeError(f"gun_relay_puts: {answer['errors']} puts refused by {url}")
            if not answer["lost"]:
                return float(answer["rate"])
            print(
                f"gun_relay_puts: {answer['lost']} of {answer['puts']} puts through {url} "
                f"never acknowledged (try {attempt + 1} of {tries})",
                file=sys.stderr,
            )
        raise RuntimeError(f"gun_relay_puts: puts through {url} went unacknowledged")

    def close() -> None:
        ours_srv.close()
        relay.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return Workload(
        "gun_relay_puts",
        "puts/s",
        1,
        lambda: rate(ours_srv.url),
        # gun's own relay now and then never acknowledges a few puts (one job in 25
        # here, 4 clients of 1,500 puts); its round is run again, once. Ours gets no
        # second try.
        peer=lambda: rate(relay.url, tries=2),
        measured=True,
        bar=1.0,
        note=f"gun.js clients ({GUN_CLIENTS}, {GUN_WINDOW} puts in flight each) putting "
        "3-field nodes through dtp's Gun endpoint (SQLite graph) vs gun's own Node relay "
        "(radisk), acknowledged puts/s",
        close=close,
    )


GRAPH_ROWS: dict[str, Callable[[], Workload]] = {
    "graph_sync_100k": graph_sync_100k,
    "graph_put": graph_put,
    "ham_merge_vs_gun": ham_merge_vs_gun,
    "gun_relay_puts": gun_relay_puts,
}


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "receive":
        rate = _receive_rate(int(argv[1]), bytes.fromhex(argv[2]), float(argv[3]), SYNC_FIELDS)
        print(json.dumps({"rate": rate}))
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
