"""Per-call counts of ``ws_rpc_roundtrip`` (bench/web_rows.py), each way of calling on its
own: what the page and the servers do per call, which a loaded machine does not change.

    python bench/web_counts.py [--calls N] [--top K]

For the page's calls through DTP and over plain ``wss://``, in the row's headless
Chromium: the JavaScript function calls (DevTools' precise coverage, call counts), the
bytes the page allocates (the sampling heap profiler, every 32 bytes on average, the
objects the collector took back counted too) and the WebSocket messages each way (the
Network domain's frame events); on the servers' event loop thread, the Python function
calls and coroutine resumptions, the calls of C functions from Python and the loop's
passes (``sys.setprofile``, as bench/aio_rpc_counts.py), and the bytecodes it ran
(``sys.settrace`` with opcode events): a call count weighs a function of three
bytecodes as one of three hundred, the bytecodes follow the thread's CPU. Each figure
is divided by the calls made.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import web_rows
from bench.aio_rpc_counts import Counter

if TYPE_CHECKING:
    import asyncio

    from dtp.cli._chromium import Page

SIDES = (("dtp", "dtpCalls"), ("wss", "plainCalls"))


def _name(call_frame: dict[str, Any]) -> str:
    return f"{call_frame['functionName'] or '(anonymous)'} ({call_frame['url'].rsplit('/', 1)[-1]})"


def js_calls(page: Page, method: str, calls: int) -> collections.Counter[str]:
    """JavaScript function calls (and async functions' resumptions) of ``calls`` calls,
    by function."""
    page.send("Profiler.enable")
    page.send("Profiler.startPreciseCoverage", {"callCount": True, "detailed": False})
    try:
        page.send("Profiler.takePreciseCoverage")  # (the counts so far, dropped)
        page.evaluate(f"rpcBench.{method}({calls})")
        scripts = page.send("Profiler.takePreciseCoverage")["result"]
    finally:
        page.send("Profiler.stopPreciseCoverage")
    counts: collections.Counter[str] = collections.Counter()
    for script in scripts:
        for function in script["functions"]:
            count = function["ranges"][0]["count"]
            if count:
                counts[_name({**function, "url": script["url"]})] += count
    return counts


def js_allocations(page: Page, method: str, calls: int) -> collections.Counter[str]:
    """Bytes the page allocated in ``calls`` calls (sampled), by allocating function."""
    page.send("HeapProfiler.enable")
    page.send("HeapProfiler.collectGarbage")
    page.send(
        "HeapProfiler.startSampling",
        {
            "samplingInterval": 32,
            "includeObjectsCollectedByMajorGC": True,
            "includeObjectsCollectedByMinorGC": True,
        },
    )
    page.evaluate(f"rpcBench.{method}({calls})")
    profile = page.send("HeapProfiler.stopSampling")["profile"]
    page.send("HeapProfiler.disable")
    nodes: dict[int, dict[str, Any]] = {}
    stack = [profile["head"]]
    while stack:
        node = stack.pop()
        nodes[node["id"]] = node
        stack.extend(node.get("children", ()))
    sizes: collections.Counter[str] = collections.Counter()
    for sample in profile["samples"]:
        sizes[_name(nodes[sample["nodeId"]]["callFrame"])] += sample["size"]
    return sizes


def ws_messages(page: Page, method: str, calls: int) -> collections.Counter[str]:
    """The WebSocket messages of ``calls`` calls: sent, received."""
    browser = page.browser
    events: list[dict[str, Any]] = []
    # (Chromium.send keeps the Network events of a session it is told to watch)
    browser._events[page.session] = events
    page.send("Network.enable")
    try:
        page.evaluate(f"rpcBench.{method}({calls})")
    finally:
        page.send("Network.disable")
        browser._events.pop(page.session, None)
    kinds = {"Network.webSocketFrameSent": "sent", "Network.webSocketFrameReceived": "received"}
    return collections.Counter(kinds[e["method"]] for e in events if e["method"] in kinds)


def _functions(by_name: dict[str, int]) -> collections.Counter[str]:
    """The Python functions' counts of a Counter's (not the C functions')."""
    return collections.Counter({k: v for k, v in by_name.items() if not k.endswith(" (C)")})


class _Passes(Counter):
    """Counter, and the loop's passes (``_run_once``: asyncio's own loop)."""

    def reset(self) -> None:
        super().reset()
        self.passes = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        super().__call__(frame, event, arg)
        if event == "call" and frame.f_code.co_name == "_run_once":
            self.passes += 1


def python_calls(loop: asyncio.AbstractEventLoop, page: Page, method: str, calls: int) -> _Passes:
    """What the servers' loop thread ran in ``calls`` calls."""
    counter = _Passes()
    switched = threading.Event()

    def profile(on: bool) -> None:
        sys.setprofile(counter if on else None)
        switched.set()

    loop.call_soon_threadsafe(profile, True)
    if not switched.wait(30):
        raise RuntimeError("the servers' loop did not take the profile hook in 30 s")
    switched.clear()
    counter.reset()
    try:
        page.evaluate(f"rpcBench.{method}({calls})")
    finally:
        loop.call_soon_threadsafe(profile, False)
        switched.wait(30)
    return counter


def python_opcodes(
    loop: asyncio.AbstractEventLoop, page: Page, method: str, calls: int
) -> collections.Counter[str]:
    """The bytecodes the servers' loop thread ran in ``calls`` calls, by function."""
    counts: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_qualname} ({Path(code.co_filename).name})"] += 1
        return trace

    switched = threading.Event()

    def tracing(on: bool) -> None:
        sys.settrace(trace if on else None)
        switched.set()

    loop.call_soon_threadsafe(tracing, True)
    if not switched.wait(30):
        raise RuntimeError("the servers' loop did not take the trace hook in 30 s")
    switched.clear()
    try:
        page.evaluate(f"rpcBench.{method}({calls})")
    finally:
        loop.call_soon_threadsafe(tracing, False)
        switched.wait(30)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ws_rpc_roundtrip's counts per call")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    n = args.calls
    workload = web_rows.ws_rpc_roundtrip(n)
    page: Page = workload.page  # type: ignore[attr-defined]
    loop: asyncio.AbstractEventLoop = workload.loop  # type: ignore[attr-defined]
    try:
        assert workload.peer is not None
        for _ in range(2):  # (warm: the functions compiled, the connection's state grown)
            workload.ours()
            workload.peer()
        for side, method in SIDES:
            calls = js_calls(page, method, n)
            sizes = js_allocations(page, method, n)
            messages = ws_messages(page, method, n)
            python = python_calls(loop, page, method, n)
            opcodes = python_opcodes(loop, page, method, n)
            print(
                f"{side}: JS calls {sum(calls.values()) / n:.1f}, JS bytes allocated "
                f"{sum(sizes.values()) / n:.0f}, WebSocket messages {messages['sent'] / n:.2f} "
                f"sent {messages['received'] / n:.2f} received; Python calls "
                f"{python.calls / n:.1f}, C calls {python.c_calls / n:.1f}, loop passes "
                f"{python.passes / n:.2f}, Python bytecodes {sum(opcodes.values()) / n:.0f}"
            )
            for title, counts in (
                ("JS calls", calls),
                ("JS bytes", sizes),
                ("Python calls", _functions(python.by_name)),
                ("Python bytecodes", opcodes),
            ):
                top = ", ".join(f"{name} {v / n:.1f}" for name, v in counts.most_common(args.top))
                print(f"  {title}: {top}")
    finally:
        if workload.close is not None:
            workload.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
