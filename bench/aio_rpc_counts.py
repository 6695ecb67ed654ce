"""Per-call counts of ``rpc_roundtrip_uvloop``'s asyncio RPC calls, each side on its own:
what the interpreter does per call, which a loaded machine does not change.

    python bench/aio_rpc_counts.py [--calls N] [--loop uvloop|asyncio] [--top K]

The row's calls (``echo`` of 100 bytes, :class:`AsyncRpcClient` to an
:class:`AsyncRpcServer` served by ``dtp.aio.start_server``), the server in its own
process. Each side counts, with ``sys.setprofile``, the Python function calls and
coroutine resumptions (``call``), the calls of C functions from Python (``c_call``) and
the loop's entries into Python (a task's step or a protocol callback: a ``call`` whose
caller is the frame that runs the loop). The server counts between two ``mark`` calls
of the client's; a run with no calls between the marks is taken off, so what is left
is ``N`` calls' worth, which is divided by ``N``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAYLOAD = os.urandom(100)
_COROUTINE = 0x80  # inspect.CO_COROUTINE


class Counter:
    """A ``sys.setprofile`` function counting events, by kind and by callee."""

    def __init__(self) -> None:
        self.base: FrameType | None = None
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.c_calls = 0
        self.entries = 0
        self.by_name: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            self.calls += 1
            code = frame.f_code
            self.by_name[f"{code.co_qualname} ({Path(code.co_filename).name})"] += 1
            if frame.f_back is self.base:
                self.entries += 1
        elif event == "c_call":
            self.c_calls += 1
            self.by_name[f"{getattr(arg, '__qualname__', arg)} (C)"] += 1

    def find_base(self) -> None:
        """The frame the loop runs from: the caller of the outermost coroutine frame
        of the running task (the loop is C on uvloop: its callbacks' frames have it
        as their caller)."""
        frame: FrameType | None = sys._getframe(1)
        outer = None
        while frame is not None:
            if frame.f_code.co_flags & _COROUTINE:
                outer = frame
            frame = frame.f_back
        assert outer is not None
        self.base = outer.f_back

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "c_calls": self.c_calls,
            "entries": self.entries,
            "by_name": dict(self.by_name),
        }


def _loop_factory(loop: str) -> Any:
    from dtp.eventloop import loop_factory

    return loop_factory(loop)


def serve(loop: str) -> None:
    import dtp.aio
    from dtp.identity.keys import HostIdentity
    from dtp.messaging.rpc import AsyncRpcServer

    identity = HostIdentity.generate()
    counter = Counter()

    def mark(_: Any) -> dict[str, Any]:
        sys.setprofile(None)
        got = counter.snapshot()
        counter.reset()
        counter.find_base()
        sys.setprofile(counter)
        return got

    async def main() -> None:
        rpc = AsyncRpcServer()
        rpc.register("echo", lambda payload: payload)
        rpc.register("mark", mark)
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        info = {"port": server.address[1], "key": identity.noise_public.hex()}
        print(json.dumps(info), flush=True)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        runner.run(main())


def _sub(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, Any]:
    """(a - b) / n, field by field (``by_name`` too)."""
    names = set(a["by_name"]) | set(b["by_name"])
    return {
        "calls": (a["calls"] - b["calls"]) / n,
        "c_calls": (a["c_calls"] - b["c_calls"]) / n,
        "entries": (a["entries"] - b["entries"]) / n,
        "by_name": {
            k: (a["by_name"].get(k, 0) - b["by_name"].get(k, 0)) / n for k in sorted(names)
        },
    }


def measure(calls: int, loop: str) -> dict[str, dict[str, Any]]:
    import dtp.aio
    from dtp.messaging.rpc import AsyncRpcClient

    cmd = [sys.executable, str(Path(__file__).resolve()), "serve", "--loop", loop]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    counter = Counter()

    async def run(n: int, client: AsyncRpcClient) -> tuple[dict[str, Any], dict[str, Any]]:
        await client.call("mark", None)
        counter.reset()
        counter.find_base()
        sys.setprofile(counter)
        for _ in range(n):
            await client.call("echo", PAYLOAD)
        sys.setprofile(None)
        ours = counter.snapshot()
        theirs: dict[str, Any] = await client.call("mark", None)
        return ours, theirs

    async def main() -> dict[str, dict[str, Any]]:
        r, w = await dtp.aio.open_connection(
            "127.0.0.1", info["port"], server_key=bytes.fromhex(info["key"])
        )
        client = AsyncRpcClient(r, w, timeout=30)
        for _ in range(300):  # warm-up
            await client.call("echo", PAYLOAD)
        c0, s0 = await run(0, client)
        c1, s1 = await run(calls, client)
        await client.close()
        w.close()
        return {"client": _sub(c1, c0, calls), "server": _sub(s1, s0, calls)}

    try:
        with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
            return runner.run(main())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="measure", choices=["measure", "serve"])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.loop)
        return
    got = measure(args.calls, args.loop)
    for side, counts in got.items():
        print(
            f"{side}: {counts['calls']:.1f} Python calls, {counts['c_calls']:.1f} C calls, "
            f"{counts['entries']:.2f} loop entries a call"
        )
        if args.top:
            top = sorted(counts["by_name"].items(), key=lambda kv: -kv[1])[: args.top]
            for name, n in top:
                if n:
                    print(f"    {n:7.2f}  {name}")


if __name__ == "__main__":
    main()
