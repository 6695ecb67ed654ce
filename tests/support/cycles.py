"""What a piece of code leaves in reference cycles: the objects that only the cyclic
collector could free, found with the collector off while the code runs and
``gc.DEBUG_SAVEALL`` at the collection after it."""

from __future__ import annotations

import asyncio.selector_events
import gc
from collections.abc import Iterator
from contextlib import contextmanager

# asyncio's own socket transport refers to itself (``_read_ready_cb``, a bound method of
# it, kept after the connection is lost), with its ``_extra`` dict and what that holds:
# every asyncio connection leaves that cycle, a TLS one as much as ours
_ASYNCIO_TRANSPORT = asyncio.selector_events._SelectorSocketTransport


def _without_asyncio_transports(garbage: list[object]) -> list[object]:
    """``garbage`` less asyncio's transports and what only they reach within it."""
    ids = {id(obj) for obj in garbage}
    theirs: set[int] = set()
    todo = [obj for obj in garbage if isinstance(obj, _ASYNCIO_TRANSPORT)]
    while todo:
        obj = todo.pop()
        if id(obj) in theirs or type(obj).__module__.startswith("dtp"):
            continue  # (one of ours a transport still held is ours to report)
        theirs.add(id(obj))
        # (its protocol and loop it lets go once the connection is lost: what it still
        # holds is its own: the bound method, the extra dict, the socket's wrapper)
        todo += [ref for ref in gc.get_referents(obj) if id(ref) in ids]
    return [obj for obj in garbage if id(obj) not in theirs]


#: The packages whose objects make a connection: a cycle holding one of them is a
#: connection's (what other threads of the process leave meanwhile -- an exception kept
#: with its traceback in a test's leftover collector thread -- is not)
CONNECTION_PACKAGES = ("dtp.transport", "dtp.protocol", "dtp.native", "dtp.hostid", "dtp.socket")


def _components(garbage: list[object]) -> list[list[object]]:
    """``garbage`` split into the groups its references join (either way)."""
    index = {id(obj): n for n, obj in enumerate(garbage)}
    parent = list(range(len(garbage)))

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n, obj in enumerate(garbage):
        for ref in gc.get_referents(obj):
            m = index.get(id(ref))
            if m is not None:
                parent[root(m)] = root(n)
    groups: dict[int, list[object]] = {}
    for n, obj in enumerate(garbage):
        groups.setdefault(root(n), []).append(obj)
    return list(groups.values())


def _a_connection_s(group: list[object]) -> bool:
    return any(type(obj).__module__.startswith(CONNECTION_PACKAGES) for obj in group)


@contextmanager
def cyclic_garbage(*, asyncio_transports: bool = False) -> Iterator[list[object]]:
    """Run the ``with`` block with the collector off; at its end, the list it gave is
    filled with the objects a collection finds unreachable (each of them was in, or
    held only by, a reference cycle) in the groups of them that hold an object of a
    connection (:data:`CONNECTION_PACKAGES`). ``asyncio_transports``: leave out
    asyncio's own transport cycle (see above), so that what is left is ours. A ``with``
    block in a coroutine works too: the collector stays off across its awaits."""
    found: list[object] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    # what exists already is held until the collection: an earlier test's objects, let
    # go meanwhile by its threads as they end (a server's cycles), are not the block's
    before = gc.get_objects()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            garbage = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    finally:
        del before
        if was_enabled:
            gc.enable()
    if asyncio_transports:
        garbage = _without_asyncio_transports(garbage)
    for group in _components(garbage):
        if _a_connection_s(group):
            found.extend(group)


def describe(garbage: list[object]) -> str:
    """The types of ``garbage``, counted, most common first (a failure's message)."""
    counts: dict[str, int] = {}
    for obj in garbage:
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
