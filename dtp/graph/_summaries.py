"""The sync summaries of a graph (docs/graph.md, "Sync"): souls spread over 65,536
leaves, and per leaf the XOR of its fields' entry hashes and their count, summed up a
tree of 256-way nodes, so that two peers find where their tables differ by comparing a
few digests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from dtp.graph._batch import Entry

LEAF_BITS = 16
"""Souls are spread over 2**16 leaves by ``blake2b(soul, digest_size=2)``."""
FANOUT_BITS = 8
"""Each summary level splits a node into 256 children: root -> 256 -> 65536 leaves."""
LEAF_LEVEL = LEAF_BITS // FANOUT_BITS


def soul_leaf(soul: bytes) -> int:
    """The leaf (0..65535) a soul's fields are summarised under."""
    return int.from_bytes(hashlib.blake2b(soul, digest_size=2).digest(), "big")


def check_node(what: str, node: object, top: int) -> tuple[int, int]:
    """A summary node ``(level, prefix)`` of level 0..``top`` and a prefix that level
    has (0..256**level - 1). Out of range, a level past the leaves failed deep inside
    with "negative shift count", and a prefix no node has was silently empty."""
    if not isinstance(node, tuple | list) or len(node) != 2:
        raise TypeError(f"{what}: a summary node is a (level, prefix) pair, not {node!r:.60}")
    level, prefix = node
    if type(level) is not int or type(prefix) is not int:
        raise TypeError(
            f"{what}: a summary node's level and prefix are ints, "
            f"not {type(level).__name__} and {type(prefix).__name__}"
        )
    if not 0 <= level <= top:
        raise ValueError(f"{what}: a summary node's level is 0..{top}, not {level}")
    if not 0 <= prefix < 1 << (FANOUT_BITS * level):
        raise ValueError(
            f"{what}: level {level} has prefixes 0..{(1 << (FANOUT_BITS * level)) - 1}, "
            f"not {prefix}"
        )
    return level, prefix


class SummaryView:
    """Soul index and summary digests, derived from the table.

    ``fields``: soul -> field -> entry hash; ``leaves``: leaf -> souls; ``digest`` /
    ``count``: per leaf, the XOR of entry hashes and the number of fields.
    """

    def __init__(self) -> None:
        self.fields: dict[bytes, dict[bytes, int]] = {}
        self.leaf: dict[bytes, int] = {}
        self.leaves: dict[int, set[bytes]] = {}
        self.digest: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.size = 0

    def add(self, items: list[Entry]) -> None:
        """Fold applied updates in (each replaces the field's previous entry)."""
        fields, leaf_of, leaves, digest, count = (
            self.fields,
            self.leaf,
            self.leaves,
            self.digest,
            self.count,
        )
        blake = hashlib.blake2b
        for soul, field, _state, _value, raw in items:
            node = fields.get(soul)
            if node is None:
                node = fields[soul] = {}
                leaf = leaf_of[soul] = int.from_bytes(blake(soul, digest_size=2).digest(), "big")
                leaves.setdefault(leaf, set()).add(soul)
            else:
                leaf = leaf_of[soul]
            # the entry hash: the update's canonical bytes' 64-bit BLAKE2b, little-endian
            h = int.from_bytes(blake(raw, digest_size=8).digest(), "little")
            old = node.get(field)
            if old is None:
                count[leaf] = count.get(leaf, 0) + 1
                digest[leaf] = digest.get(leaf, 0) ^ h
                self.size += 1
            else:
                digest[leaf] ^= old ^ h
            node[field] = h

    def children(self, level: int, prefix: int) -> dict[int, tuple[int, int]]:
        """Summaries of the children of node (level, prefix): child prefix ->
        (digest, count), non-empty children only."""
        child_level = level + 1
        shift = LEAF_BITS - FANOUT_BITS * child_level
        out: dict[int, tuple[int, int]] = {}
        leaves: Iterable[int] = self.count  # the root's children: every leaf held
        if level:
            span = 1 << (LEAF_BITS - FANOUT_BITS * level)
            leaves = range(prefix * span, (prefix + 1) * span)
        for leaf in leaves:
            n = self.count.get(leaf, 0)
            if n:
                child = leaf >> shift
                d, c = out.get(child, (0, 0))
                out[child] = (d ^ self.digest[leaf], c + n)
        return out

    def root(self) -> tuple[int, int]:
        """(digest, count) of the whole table."""
        d = 0
        for value in self.digest.values():
            d ^= value
        return d, self.size
