"""The HAM vectors of protocol.md 6.6, built from their description.

Each merge vector names its updates as (soul, field, state, value) with the value as
the graph writes it (its Gun text, :func:`dtp.graph.values.encode_value`) and the
statuses the rules of 6.3 give, stated here by hand; the batches, ``changed``,
the queue and ``advanced`` are computed by the pure-Python twin. ``test_ham.py`` checks
that the document holds exactly these vectors (and both backends against them);

    python -m tests.native.ham_vectors --regenerate

rewrites them in protocol.md after a change here.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from dtp.graph.values import encode_value, link
from dtp.native.reference._ham import HamGraph, encode_ham_batch
from dtp.native.types import HAM_APPLIED, HAM_DEFERRED, HAM_HISTORICAL, HAM_SAME, HamUpdate
from tests.support.paths import PROTOCOL_MD

Update = tuple[str, str, float, object]


def _updates(ups: list[Update]) -> list[HamUpdate]:
    return [HamUpdate(s.encode(), f.encode(), st, encode_value(v)) for s, f, st, v in ups]


def _hex(ups: list[Update]) -> str:
    return encode_ham_batch(_updates(ups)).hex()


def _batch_vector(name: str, ups: list[Update]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "ham-batch",
        "updates": [
            {"soul": u.soul.hex(), "field": u.field.hex(), "state": u.state, "value": u.value.hex()}
            for u in _updates(ups)
        ],
        "hex": _hex(ups),
    }


def _merge_vector(
    name: str,
    start: list[Update],
    start_clock: float,
    batch: list[Update],
    clock: float,
    statuses: list[int],
    advance_to: float,
) -> dict[str, Any]:
    g = HamGraph(seed=bytes(16))
    g.merge(encode_ham_batch(_updates(start)), start_clock)
    result = g.merge(encode_ham_batch(_updates(batch)), clock)
    if list(result.statuses) != statuses:
        raise AssertionError(f"{name}: the rules give {list(result.statuses)}, not {statuses}")
    queued = (g.deferred_count, g.deferred_bytes)
    return {
        "name": name,
        "kind": "ham-merge",
        "start": _hex(start),
        "start_machine_state": start_clock,
        "batch": _hex(batch),
        "machine_state": clock,
        "statuses": statuses,
        "changed": result.changed.hex(),
        "deferred_count": queued[0],
        "deferred_bytes": queued[1],
        "advance_to": advance_to,
        "advanced": g.advance(advance_to).hex(),
    }


A, H, D, S = HAM_APPLIED, HAM_HISTORICAL, HAM_DEFERRED, HAM_SAME  # (6.3)


def vectors() -> list[dict[str, Any]]:
    """Every HAM vector of protocol.md 6.6, in document order."""
    user1 = [("user/1", "name", "alice", 10.0), ("user/1", "age", 30, 10.0)]
    return [
        _batch_vector(
            "ham-batch-two-fields",
            [("user/1", "name", 1.5, "alice"), ("user/1", "age", 1700000000000.0, 30)],
        ),
        _merge_vector(
            "ham-merge-all-outcomes",
            [(s, f, st, v) for s, f, v, st in user1],
            100.0,
            [
                ("user/1", "name", 5.0, "bob"),
                ("user/1", "name", 10.0, "alice"),
                ("user/1", "name", 10.0, "zed"),
                ("user/1", "name", 10.0, "al"),
                ("user/1", "age", 20.0, 31),
                ("user/2", "name", 200.0, "carol"),
                ("user/3", "name", 1.0, "dave"),
            ],
            100.0,
            [H, S, A, H, A, D, A],
            250.0,
        ),
        _merge_vector(
            "ham-merge-deferred-once",
            [("user/2", "name", 200.0, "carol")],
            100.0,
            [
                ("user/2", "name", 200.0, "carol"),
                ("user/2", "name", 200.0, "dave"),
                ("user/2", "name", 200.0, "carol"),
            ],
            100.0,
            [D, D, D],
            250.0,
        ),
        _merge_vector(
            "ham-merge-gun-ties",
            [
                ("t", "s", 5.0, "\uffff"),
                ("t", "n", 5.0, 0.5),
                ("t", "k", 5.0, 1),
                ("t", "l", 5.0, "x"),
                ("t", "e", 5.0, "\u00e9"),
            ],
            100.0,
            [
                ("t", "s", 5.0, "\U0001f600"),
                ("t", "n", 5.0, 1e-06),
                ("t", "k", 5.0, "1"),
                ("t", "k", 5.0, 1.0),
                ("t", "k", 5.0, True),
                ("t", "l", 5.0, link("x")),
                ("t", "e", 5.0, "z"),
            ],
            100.0,
            [H, H, H, S, A, A, H],
            100.0,
        ),
    ]


def _render(v: dict[str, Any]) -> str:
    """One vector as the document writes it (a few keys a line)."""
    if v["kind"] == "ham-batch":
        ups = ",\n".join(f"  {json.dumps(u)}" for u in v["updates"])
        head = json.dumps({"name": v["name"], "kind": v["kind"]})[:-1]
        return f'{head}, "updates": [\n{ups}\n], "hex": {json.dumps(v["hex"])}}}'
    lines = [json.dumps({"name": v["name"], "kind": v["kind"]})[1:-1]]
    for key in ("start", "start_machine_state", "batch", "machine_state", "statuses", "changed"):
        lines.append(f"{json.dumps(key)}: {json.dumps(v[key])}")
    lines.append(
        f'"deferred_count": {v["deferred_count"]}, "deferred_bytes": {v["deferred_bytes"]}'
    )
    lines.append(f'"advance_to": {json.dumps(v["advance_to"])}')
    lines.append(f'"advanced": {json.dumps(v["advanced"])}')
    return "{" + ",\n ".join(lines) + "}"


_BLOCK = re.compile(r"```dtp-vector\n(.*?)\n```", re.S)


def regenerate() -> None:
    """Rewrite the HAM vectors of protocol.md (each block found by its name)."""
    built = {v["name"]: v for v in vectors()}
    text = PROTOCOL_MD.read_text()

    def replace(match: re.Match[str]) -> str:
        name = json.loads(match.group(1))["name"]
        if name not in built:
            return match.group(0)
        return f"```dtp-vector\n{_render(built.pop(name))}\n```"

    text = _BLOCK.sub(replace, text)
    if built:
        raise SystemExit(f"protocol.md has no block for {sorted(built)}: add one first")
    PROTOCOL_MD.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        for vector in vectors():
            print(_render(vector), end="\n\n")
