"""The edges of the Yjs dependency, measured: seeded streams replayed through Yjs and pycrdt.

``tools/yjs`` (``yjs.js generate``) runs three Yjs replicas editing one text, array and map
-- up to 10,000 operations, partitions, duplicated and reordered delivery -- and logs, for
each replica, the updates in the order it applied them, with what it showed every 50
entries and at the end. Each log is then replayed through ``pycrdt`` two ways:

- ``plain``: every update applied as it came (what a peer does that hands a provider's
  updates straight to ``Doc.apply_update``);
- ``dtp``: through :class:`dtp.graph._ydoc.YDocument`, the graph's own: causal order
  (each author's updates in their order, each once the document has the other authors'
  clocks its author had -- the deps the stream carries, as the graph's records do:
  docs/graph.md, "Collaborative values").

and compared with what Yjs showed at the same points. ``python -m bench.yjs_edges``
prints, per way, on how many seeds the end differs and on how many some point along the
way does. Run it with another pycrdt first on ``PYTHONPATH`` to measure that version.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.node_jobs import run_job

RUNNER = Path(__file__).resolve().parent.parent / "tools" / "yjs" / "run.sh"
OPS = (500, 1000, 2000, 5000, 10000)


def available() -> bool:
    """True when node and npm are here (the runner installs ``yjs`` with npm once)."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def install() -> Path:
    """Install the pinned packages if they are not yet; their ``node_modules`` folder."""
    subprocess.run(["sh", str(RUNNER), "--install"], check=True, timeout=600)
    return RUNNER.parent / "node_modules"


def run_yjs(job: dict[str, Any], timeout: float = 600.0) -> Any:
    """One job of ``tools/yjs/yjs.js`` (see its header)."""
    return json.loads(run_job(RUNNER, job, timeout=timeout))


def stream(seed: int, ops: int, cache: Path | None = None) -> Any:
    """The seed's stream (kept in ``cache`` when given: generating takes seconds)."""
    path = None if cache is None else cache / f"yjs-stream-{seed}-{ops}.json"
    if path is not None and path.exists():
        return json.loads(path.read_text())
    answer = run_yjs({"generate": {"seed": seed, "ops": ops}})
    if path is not None:
        path.write_text(json.dumps(answer))
    return answer


def content_of(doc: Any) -> dict[str, Any]:
    """What ``yjs.js`` calls CONTENT, read from a pycrdt document."""
    import pycrdt

    text = str(doc.get("text", type=pycrdt.Text))
    items = doc.get("array", type=pycrdt.Array).to_py() or []
    entries = doc.get("map", type=pycrdt.Map).to_py() or {}
    numbers = [int(v) if isinstance(v, float) and v.is_integer() else v for v in items]
    return {"text": text, "array": numbers, "map": dict(sorted(entries.items()))}


class PlainReplica:
    """Every update handed to ``Doc.apply_update`` as it comes."""

    def __init__(self) -> None:
        import pycrdt

        self.doc = pycrdt.Doc()

    def apply(self, client: int, seq: int, clock: int, deps: dict[int, int], update: bytes) -> None:
        self.doc.apply_update(update)

    def content(self) -> dict[str, Any]:
        return content_of(self.doc)


class DtpReplica:
    """The graph's way (:class:`dtp.graph._ydoc.YDocument`)."""

    def __init__(self) -> None:
        from dtp.graph._ydoc import YDocument

        self.ydoc = YDocument()

    def apply(self, client: int, seq: int, clock: int, deps: dict[int, int], update: bytes) -> None:
        self.ydoc.add(client, seq, clock, deps, update)

    def content(self) -> dict[str, Any]:
        return content_of(self.ydoc.doc)


def replay(answer: Any, make: Callable[[], Any]) -> tuple[bool, bool]:
    """(the end differs on some replica, some checkpoint differs on some replica)."""
    updates = answer["updates"]
    end_differs = along_differs = False
    for r in range(3):
        replica = make()
        marks = dict((at, shown) for at, shown in answer["checkpoints"][r])
        if 0 in marks and replica.content() != marks[0]:
            along_differs = True
        for position, index in enumerate(answer["logs"][r], start=1):
            u = updates[index]
            deps = {int(c): t for c, t in u["deps"].items()}
            replica.apply(u["client"], u["seq"], u["clock"], deps, base64.b64decode(u["update"]))
            if position in marks and replica.content() != marks[position]:
                if position == len(answer["logs"][r]):
                    end_differs = True
                else:
                    along_differs = True
        if replica.content() != answer["final"][r]:
            end_differs = True
    return end_differs, along_differs


def measure(seeds: int, cache: Path | None) -> dict[str, dict[str, Any]]:
    """Per way: the seeds whose end differs from Yjs, and those differing along the way."""
    import pycrdt

    ways: dict[str, Callable[[], Any]] = {"plain": PlainReplica, "dtp": DtpReplica}
    out: dict[str, dict[str, Any]] = {
        name: {"end": [], "along": [], "pycrdt": pycrdt.__version__} for name in ways
    }
    for seed in range(1, seeds + 1):
        answer = stream(seed, OPS[(seed - 1) % len(OPS)], cache)
        for name, make in ways.items():
            end, along = replay(answer, make)
            if end:
                out[name]["end"].append(seed)
            if along:
                out[name]["along"].append(seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=None, help="keep generated streams here")
    args = parser.parse_args(argv)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    for name, found in measure(args.seeds, args.cache).items():
        print(
            f"pycrdt {found['pycrdt']} {name}: end differs from Yjs on "
            f"{len(found['end'])} of {args.seeds} seeds {found['end']}; "
            f"some point along the way on {len(found['along'])} {found['along']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
