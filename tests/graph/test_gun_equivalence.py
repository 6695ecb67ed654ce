"""dtp.graph merges exactly as GunDB does (protocol.md 6.3 and 6.7, docs/graph.md
"Values"): the same random stream of updates goes through gun's own merge in Node.js
(``tools/gun-ham``: gun's ``put`` path, the pinned ``gun`` package) and through a
``dtp.graph`` graph on each HAM backend, and after every step of the clock both hold
the same graph -- the same state and the same value text for every field.

The stream is built so that what could part the two happens often: updates at equal
states (ties), every value type Gun accepts (null, booleans, numbers, strings, links),
strings beyond the BMP and around U+E000..U+FFFF (where UTF-16 order and byte order
part), numbers around 1e-7, 1e-6, 1e16, 2**53 and 1e21 (where JavaScript writes them
otherwise than Python), ``1`` beside ``1.0`` and ``0`` beside ``-0.0``, and states
beyond the machine state (deferred, applied when a later step of the clock passes
them, or never). Values are sent to Node as JSON, which both sides read exactly.

Node and npm are needed (the runner installs ``gun`` from its package-lock on first
use, as ``tools/move-syntax`` does)."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import pytest

from bench import gun_ham
from dtp.graph import Graph
from dtp.graph.values import encode_value, gun_value, link, value_text
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

needs_node = pytest.mark.skipif(
    not gun_ham.available(), reason="node and npm are needed to run GunDB (tools/gun-ham)"
)
HAMS = ["c", "python"]

#: The machine state at each step (a JavaScript Date ends at 8.64e15 ms). No state of
#: the stream lies just above one of them: Gun's machine state creeps up by 1/999 ms a
#: reading within one ms, ours does not.
CLOCKS = [1000.0, 5000.0, 1e13, 8e15]
STATES = [-1.0, -0.0, 0.0, 1.0, 5.0, 5.5, 999.0, 1000.0, 3000.0, 5000.0]
FUTURE = [1e12, 1e13, 2e13, 1e21, 1e300]  # deferred at the first step; the last two for ever
SOULS = ["a", "b", "user/1", "é", "\U0001f600"]
KEYS = ["x", "y", "name", "\u00e9", "\uffff", "\U0001f600", "1", "10"]
TEXTS = [
    "",
    "a",
    "b",
    "z",
    "\u00e9",
    "\u07ff",
    "\u0800",
    "\ud7ff",
    "\ue000",
    "\ufeff",
    "\uffff",
    "\U00010000",
    "\U0001f600",
    "\U0010ffff",
    "a\U0001f600",
    "a\uffff",
    "\u2028",
    '"',
    "\\",
    "\x00",
    "\x1f",
    "\x7f",
    "1",
    "null",
    "true",
    "{",
]
NUMBERS = [
    0,
    -0.0,
    1,
    1.0,
    -1,
    0.5,
    1e-7,
    1e-6,
    9.99e-7,
    1.5e-6,
    0.1,
    100,
    1e15,
    1e16,
    1e16 + 2,
    2**53,
    2.0**53,
    2**60,
    1e20,
    999999999999999900000.0,
    1e21,
    1.5e21,
    1e-300,
    5e-324,
    1.7976931348623157e308,
    -1e21,
    -1e-7,
    123456789.125,
]


#: Pairs of values that the old rules (Python's JSON text, compared bytewise) and Gun's
#: order the other way round; the stream sends them at equal states now and then.
PARTING = [
    ("\uffff", "\U0001f600"),
    ("a\ue000", "a\U00010000"),
    ("\ufeff!", "\U0010ffff"),
    (0.5, 1e-6),
    (0.9, 1.5e-6),
    (0.5, 1e-5),
    (-0.5, -1e-6),
]


def _value(rnd: random.Random) -> Any:
    # (at a tie, the text of null, booleans and links beats that of any number, and a
    # number's any string's: they are rarer, or they would decide most ties)
    kind = rnd.random()
    if kind < 0.45:
        if rnd.random() < 0.3:
            return "".join(rnd.choice(TEXTS) for _ in range(rnd.randint(1, 3)))
        return rnd.choice(TEXTS)
    if kind < 0.9:
        x = rnd.choice(NUMBERS)
        if isinstance(x, float) and rnd.random() < 0.3:  # a neighbour: other digits
            x = math.nextafter(x, rnd.choice([-math.inf, math.inf]))
        if rnd.random() < 0.1:
            x = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
        return x if math.isfinite(x) else 0.25
    if kind < 0.95:
        return rnd.choice([None, True, False])
    return link(rnd.choice([*SOULS, "x", "~y"]))


def _stream(seed: int, per_step: int = 400) -> list[list[gun_ham.Message]]:
    """The messages of each step: mostly one update each, some one node's keys."""
    rnd = random.Random(seed)
    steps = []
    for step in range(len(CLOCKS)):
        messages: list[gun_ham.Message] = []
        while sum(len(m[1]) for m in messages) < per_step:
            soul = rnd.choice(SOULS)
            if rnd.random() < 0.1:  # a parting pair at one state, in either order
                key, state = rnd.choice(KEYS), rnd.choice(STATES)
                for value in rnd.sample(rnd.choice(PARTING), 2):
                    messages.insert(rnd.randint(0, len(messages)), [soul, [[key, value, state]]])
                continue
            keys = rnd.sample(KEYS, 1 if rnd.random() < 0.7 else rnd.randint(2, 5))
            states = STATES + (FUTURE if rnd.random() < 0.15 else [])
            ups = [[k, _value(rnd), rnd.choice(states)] for k in keys]
            messages.append([soul, ups])
        if step == len(CLOCKS) - 1:
            messages = messages[: len(messages) // 4]  # (the last step mostly applies)
        steps.append(messages)
    return steps


def _gun(steps: list[list[gun_ham.Message]]) -> list[dict[str, Any]]:
    job = {
        "phases": [
            {"clock": clock, "messages": messages}
            for clock, messages in zip(CLOCKS, steps, strict=True)
        ]
    }
    graphs: list[dict[str, Any]] = gun_ham.run(job, timeout=300)
    return [{s: fields for s, fields in g.items() if fields} for g in graphs]


def _dtp(steps: list[list[gun_ham.Message]], ham: str, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed + 1)
    clock = [0.0]
    g = Graph(ham=ham, now_ms=lambda: clock[0], max_drift_ms=0)
    graphs = []
    for now, messages in zip(CLOCKS, steps, strict=True):
        clock[0] = now
        g.advance()
        updates = [
            HamUpdate(soul.encode(), key.encode(), float(state), encode_value(value))
            for soul, ups in messages
            for key, value, state in ups
        ]
        while updates:  # in batches of any size, as peers send them
            cut = rnd.randint(1, 60)
            report = g.merge(encode_ham_batch(updates[:cut]))
            assert report.refused == report.dropped == 0
            updates = updates[cut:]
        graph: dict[str, Any] = {}
        for (soul, field), (state, stored) in g.snapshot().items():
            assert gun_value(stored) is not None or stored == b"null"  # all Gun's text
            graph.setdefault(soul.decode(), {})[field.decode()] = [state, stored.decode()]
        graphs.append(graph)
    g.close()
    return graphs


def _old_rules_disagree(steps: list[list[gun_ham.Message]], graphs: list[dict[str, Any]]) -> int:
    """Fields, summed over the steps, whose value the old rules (Python's JSON, ties
    broken bytewise) would have picked otherwise: the stream must make the two orders
    part, or it proves nothing."""
    best: dict[tuple[str, str], tuple[float, bytes, Any]] = {}
    pending: list[tuple[str, str, Any, float]] = []
    parted = 0
    for clock, messages, graph in zip(CLOCKS, steps, graphs, strict=True):
        pending += [
            (soul, key, value, state) for soul, ups in messages for key, value, state in ups
        ]
        due = [u for u in pending if u[3] <= clock]
        pending = [u for u in pending if u[3] > clock]
        for soul, key, value, state in due:
            plain = value + 0.0 if isinstance(value, float) else value
            old = json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode()
            have = best.get((soul, key))
            if have is None or (state, old) > (have[0], have[1]):
                best[soul, key] = (state, old, value)
        parted += sum(1 for (s, k), (_, _, v) in best.items() if graph[s][k][1] != value_text(v))
    return parted


@needs_node
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_gun_and_dtp_hold_the_same_graph(seed: int) -> None:
    steps = _stream(seed)
    gun = _gun(steps)
    for ham in HAMS:
        ours = _dtp(steps, ham, seed)
        for step, (want, got) in enumerate(zip(gun, ours, strict=True)):
            assert got.keys() == want.keys(), (ham, step)
            for soul in want:
                assert got[soul] == want[soul], (ham, step, soul)
    assert sum(len(fields) for fields in gun[-1].values()) > 30
    assert _old_rules_disagree(steps, gun) >= 5


@needs_node
def test_values_are_written_as_javascript_writes_them() -> None:
    """value_text against JSON.stringify for many numbers (random bits, every decade,
    the edges of positional notation) and strings (every escape, non-BMP)."""
    rnd = random.Random(7)
    numbers: list[float | int] = []
    for _ in range(20_000):
        x = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            numbers.append(x)
    for e in range(-330, 309):
        for m in (1.0, 1.5, 9.999999999999998, 123456789.0):
            x = m * 10.0**e if -324 < e < 308 else 0.0
            numbers += [x, math.nextafter(x, math.inf), -x]
    numbers += [0, -0.0, 2**53, -(2**53), 2**60, 10**21, 1e21, 1e-7, 1e-6]
    numbers = [x for x in numbers if math.isfinite(x)]
    texts = ["".join(rnd.choice(TEXTS) for _ in range(rnd.randint(0, 6))) for _ in range(3000)]
    texts += [chr(c) for c in range(0x80)] + ["\u2028\u2029", "\U0001f600\uffff"]
    values: list[Any] = [*numbers, *texts, None, True, False, link("a\U0001f600\n")]
    assert gun_ham.stringify(values) == [value_text(v) for v in values]
