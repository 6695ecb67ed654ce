"""The Python blocks of README.md and docs/*.md, as the docs mark them (``<!-- doc-test:
... -->``: a block continuing another, binding a fixed port, or not runnable here), the
chain each runs with, and what their print lines say they print."""

from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.paths import ROOT

OWNED = [
    "README.md",
    "docs/protocol.md",
    "docs/udp.md",
    "docs/ledger-carrier.md",
    "docs/daemon.md",
    "docs/testing.md",
    "docs/pypi.md",
]
READ_ONLY = ["docs/escrow.md", "docs/graph.md", "docs/messaging.md", "docs/sui.md"]
_MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One ```python block: ``key`` is ``file#n``, n counting python blocks from 1."""

    key: str
    line: int
    code: str
    skip: str | None = None
    name: str | None = None
    after: tuple[str, ...] = ()
    port: int | None = None

    @property
    def first_line(self) -> str:
        return next(line for line in self.code.splitlines() if line.strip())


def _apply_marker(block: Block, text: str) -> None:
    if text.startswith("skip:"):
        block.skip = text[len("skip:") :].strip()
        if not block.skip:
            raise ValueError(f"{block.key}: doc-test skip without a reason")
        return
    for word in text.split():
        key, _, value = word.partition("=")
        if key == "id" and value:
            block.name = value
        elif key == "after" and value:
            block.after = tuple(value.split(","))
        elif key == "port" and value.isdigit():
            block.port = int(value)
        else:
            raise ValueError(f"{block.key}: unknown doc-test marker word {word!r}")


def extract(relpath: str) -> list[Block]:
    """The ```python blocks of a doc, with the doc-test markers just above each."""
    lines = (ROOT / relpath).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if fence.group(1) == "python":
            block = Block(
                f"{relpath}#{len(found) + 1}", i + 2, "\n".join(lines[i + 1 : end]) + "\n"
            )
            j = i - 1
            while j >= 0 and (m := _MARKER.match(lines[j])):
                _apply_marker(block, m.group(1))
                j -= 1
            found.append(block)
        i = end + 1
    return found


BLOCKS: dict[str, Block] = {b.key: b for doc in OWNED + READ_ONLY for b in extract(doc)}
NAMED: dict[str, Block] = {b.name: b for b in BLOCKS.values() if b.name}


def chain_of(block: Block) -> list[Block]:
    """The blocks to run for ``block``: its ``after`` chain (depth first), then itself."""
    order: list[Block] = []
    for name in block.after:
        for b in chain_of(NAMED[name]):
            if b not in order:
                order.append(b)
    order.append(block)
    return order


_PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+#\s?(.*?)\s*$")
_BARE_PRINT = re.compile(r"^\s*print\(.*\)\s*$")
_COMMENT_LINE = re.compile(r"^\s*#\s?(.*?)\s*$")


def expected_output(code: str) -> list[str]:
    """What the output comments promise, in order (``print(x)  # out`` or a next line)."""
    lines = code.splitlines()
    expected: list[str] = []
    for i, line in enumerate(lines):
        if m := _PRINT_COMMENT.match(line):
            expected.append(m.group(1))
        elif (
            _BARE_PRINT.match(line)
            and i + 1 < len(lines)
            and (nxt := _COMMENT_LINE.match(lines[i + 1]))
        ):
            expected.append(nxt.group(1))
    return expected


def _same(expected: str, actual: str) -> bool:
    if expected == actual:
        return True
    try:
        return bool(ast.literal_eval(expected) == ast.literal_eval(actual))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def in_order(expected: list[str], output: list[str]) -> bool:
    it = iter(output)
    return all(any(_same(want, got) for got in it) for want in expected)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: A block that announces or browses on the LAN (mDNS) sees every other process's
#: announcements of its namespace on this host.
_LAN = re.compile(r"\bsync_with_lan\(|\bannounce=True|\b(?:announce|browse)(?:_async)?\(")


@contextlib.contextmanager
def held_for(chain: list[Block]) -> Iterator[None]:
    """Hold what ``chain``'s blocks share with the same blocks in the suite's other
    processes, one chain at a time: the core backends run the same blocks at once.
    Their fixed ports (both probes found a port free before either bound it, and one
    block failed with EADDRINUSE) and the LAN (a block counting the peers of its
    namespace found the other backend's run of it too)."""
    # (a set: a chain's blocks often share a port, and a second flock of the same file
    # through another open file waits for the first for good)
    names = {f"port-{b.port}" for b in chain if b.port is not None}
    if any(_LAN.search(b.code) for b in chain):
        names.add("lan")
    with contextlib.ExitStack() as stack:
        for name in sorted(names):
            path = os.path.join(tempfile.gettempdir(), f"dtp-doc-test-{name}.lock")
            lock = stack.enter_context(open(path, "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file closes)
        yield
