"""Counts per 1,000 echoed datagrams of the udp_tunnel_pps row's halves (bench/udp_rows.py),
which a loaded machine does not move as it moves the rate: system calls, Python calls
and calls into the C core.

    python bench/udp_counts.py [--path blocking|daemon] [--count N]
        [--mode calls|strace|callgrind] [--window N] [--top N]

``calls``: each half runs under a profile hook on every thread (``sys.setprofile``),
counting Python calls (and the ``--top`` most called functions, twelve by default),
calls of built-in functions (``builtin_calls``: a socket's ``send`` among them), and of
those the C core's (``lib.dtp_*``) and cffi's; the hook slows the halves, so a window
may arrive in more reads than without it. ``--window 1`` (each datagram echoed before
the next goes) makes each datagram a run at every hop: the counts per 1,000 datagrams
are then a run's, a thousand times. ``strace``:
each half runs under ``strace -c -f`` twice, driven ``count`` and ``3 x count``
datagrams (each after a warm-up of as many), and the difference is reported, so
start-up cancels out (the halves' idle wake-ups, a few a second, do not).
``callgrind``: the same two runs under ``valgrind --tool=callgrind``, the instructions
each half ran (all its threads, the C core, libraries and Python alike; the kernel's
not), per 1,000 datagrams. They include what a half runs while it waits (timers, idle
wake-ups), which grows with how long valgrind's run takes, and so with the machine's
load: compare runs made alike, on a quiet machine. Prints one JSON object per half.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
HALVES = ("near", "far")


def _hooked(script: str, args: list[str]) -> None:
    """Run ``script`` counting calls: SIGUSR1 resets the counts, SIGUSR2 prints them to
    stderr as one JSON line."""
    counts: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()  # Python calls by function

    def hook(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call":
            counts["python_calls"] += 1
            code = frame.f_code
            functions[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
        elif event == "c_call":
            counts["builtin_calls"] += 1
            owner = getattr(arg, "__self__", None)
            if type(owner).__name__ == "Lib":
                counts["c_core_calls"] += 1
                counts[arg.__name__] += 1
            elif type(owner).__name__ == "FFI":
                counts["ffi_calls"] += 1
            elif isinstance(owner, socket.socket):
                counts[f"socket.{arg.__name__}"] += 1

    def reset(*_: object) -> None:
        counts.clear()
        functions.clear()

    def dump(*_: object) -> None:
        # (a copy: other threads go on counting meanwhile)
        most = collections.Counter(dict(functions)).most_common(
            int(os.environ.get("UDP_COUNTS_TOP", "12"))
        )
        top = {f"py {name}": n for name, n in most}
        print(json.dumps({**counts, **top}), file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)
    threading.setprofile(hook)
    sys.setprofile(hook)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


class _Half:
    """One half of our side, its process wrapped in ``prefix``."""

    def __init__(self, prefix: list[str], script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*prefix, str(ROOT / "bench" / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.address = ("127.0.0.1", int(info["port"]))
        self.key: str = info.get("key", "")


def _run(
    path: str,
    count: int,
    prefix: dict[str, list[str]],
    hooked: bool = True,
    window: int | None = None,
) -> dict[str, Any]:
    """Start both halves, warm up, drive ``count`` datagrams; the halves' stderr
    (``hooked``: each half's counts of the driven datagrams alone)."""
    from bench import udp_rows

    kind = "dtp-aio" if path == "daemon" else "dtp"
    far = _Half(prefix["far"], "udp_far.py", kind)
    near = _Half(prefix["near"], "udp_near.py", kind, str(far.address[1]), far.key)
    clients: list[socket.socket] = []
    try:
        # (a long wait for each window's echoes: a window echoed late under a loaded
        # machine, a profile hook or valgrind would otherwise overlap the next, and
        # the runs counted would not be the window's)
        op = udp_rows._drive(near.address, count, clients, window or udp_rows.WINDOW, 10.0)
        for half in (near, far) if hooked else ():
            half.proc.send_signal(signal.SIGUSR1)
        op()
        for half in (near, far) if hooked else ():
            half.proc.send_signal(signal.SIGUSR2)
    finally:
        for client in clients:
            client.close()
        out: dict[str, Any] = {}
        for name, half in zip(HALVES, (near, far), strict=True):
            try:
                _, err = half.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                half.proc.kill()
                _, err = half.proc.communicate()
            out[name] = err
    return out


def _calls(path: str, count: int, window: int | None = None) -> dict[str, dict[str, float]]:
    me = [sys.executable, str(Path(__file__).resolve()), "--hook"]
    errs = _run(path, count, {"near": me, "far": me}, window=window)
    result = {}
    for name, err in errs.items():
        lines = [x for x in err.splitlines() if x.startswith("{")]
        if not lines:
            raise RuntimeError(f"the {name} half printed no counts:\n{err}")
        line = lines[-1]
        result[name] = {k: round(v * 1000 / count, 1) for k, v in json.loads(line).items()}
    return result


def _strace_table(text: str) -> dict[str, int]:
    """``strace -c``'s table: calls per system call."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].replace(".", "").isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return calls


def _callgrind_total(text: str) -> dict[str, int]:
    """A callgrind output file's total: {"instructions": its Ir}."""
    for line in text.splitlines():
        if line.startswith(("summary:", "totals:")):
            return {"instructions": int(line.split()[1])}
    raise RuntimeError("no total in a callgrind output file")


def _two_runs(
    path: str,
    count: int,
    window: int | None,
    tool: Callable[[str], list[str]],
    read: Callable[[str], dict[str, int]],
) -> list[dict[str, dict[str, int]]]:
    """Each half run under ``tool`` (the command before Python's, given its output
    file) twice, driven ``count`` and ``3 x count`` datagrams; ``read`` of each output
    file's text."""
    tables: list[dict[str, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (count, 3 * count):
            files = {name: os.path.join(tmp, f"{name}-{n}") for name in HALVES}
            prefix = {name: [*tool(files[name]), sys.executable] for name in HALVES}
            _run(path, n, prefix, hooked=False, window=window)
            tables.append({name: read(Path(files[name]).read_text()) for name in HALVES})
    return tables


def _callgrind(path: str, count: int, window: int | None = None) -> dict[str, dict[str, float]]:
    def tool(out: str) -> list[str]:
        return ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}"]

    tables = _two_runs(path, count, window, tool, _callgrind_total)
    return _per_thousand(tables, count)


def _strace(path: str, count: int, window: int | None = None) -> dict[str, dict[str, float]]:
    tables = _two_runs(
        path, count, window, lambda out: ["strace", "-c", "-f", "-o", out], _strace_table
    )
    return _per_thousand(tables, count)


def _per_thousand(
    tables: list[dict[str, dict[str, int]]], count: int
) -> dict[str, dict[str, float]]:
    """The two runs' difference per 1,000 datagrams, each half's."""
    result: dict[str, dict[str, float]] = {}
    # each run sends its count twice (udp_rows._drive warms up with a count of its
    # own), so the two runs are 2 x count and 6 x count datagrams apart by 4 x count
    driven = 4 * count
    for name in HALVES:
        low, high = tables[0][name], tables[1][name]
        diff = {k: (high.get(k, 0) - low.get(k, 0)) * 1000 / driven for k in high}
        kept = {k: round(v, 1) for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v >= 1}
        result[name] = {"total": round(sum(diff.values()), 1), **kept}
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--hook":
        _hooked(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("blocking", "daemon"), default="blocking")
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--mode", choices=("calls", "strace", "callgrind"), default="calls")
    parser.add_argument("--window", type=int, help="datagrams a window (the row's 32)")
    parser.add_argument("--top", type=int, default=12, help="most called functions listed")
    args = parser.parse_args()
    os.environ["UDP_COUNTS_TOP"] = str(args.top)  # (for the halves: _hooked)
    count = args.count - args.count % 32
    counted = {"calls": _calls, "strace": _strace, "callgrind": _callgrind}[args.mode]
    print(json.dumps(counted(args.path, count, args.window)))


if __name__ == "__main__":
    main()
