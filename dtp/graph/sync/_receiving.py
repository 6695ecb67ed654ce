"""What a sync session does with the peer's messages (:class:`~dtp.graph.sync.SyncSession`):
each one checked and handled -- HELLO and SUM compared with our summaries, DATA merged
(:mod:`~dtp.graph.sync._refusals`: what is refused reported), WANT queued for a push, END
taken, REFUSED read -- and the updates the merge dropped noted to be asked for again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from dtp.graph._summaries import FANOUT_BITS
from dtp.graph.sync._messages import (
    _LEAVES,
    _SMALL_MESSAGE,
    DATA,
    END,
    HELLO,
    REFUSED,
    SUM,
    VERSION,
    WANT,
    Summary,
    _data_batch,
    _differs,
    _fail,
    _is_count,
    _is_digest,
    _push_whole,
)
from dtp.graph.sync._refusals import SessionRefusals


class SessionInput(SessionRefusals):
    """The peer's messages, handled in the reader's thread (receive_data)."""

    def _handle(self, body: bytes) -> None:
        batch = _data_batch(body)
        if batch is not None:
            message: Any = [DATA, batch]
        elif len(body) > _SMALL_MESSAGE:
            # only DATA is long (read above without msgpack's decoder); decoded, a long
            # message of anything else cost about 75 bytes of memory a byte (a run of
            # empty arrays: 300 MB for one 4 MiB message, before HELLO was looked at)
            raise _fail(f"a message of {len(body)} bytes that is not DATA")
        else:
            try:
                # unpackb bounds every length by len(body), itself capped as above
                message = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
            except Exception as exc:  # msgpack raises several unrelated types
                raise _fail(f"undecodable message ({type(exc).__name__})") from None
        if not isinstance(message, list) or not message or type(message[0]) is not int:
            raise _fail("a message is an array starting with its type")
        self.stats["messages_received"] += 1
        kind = message[0]
        if kind == HELLO:
            self._on_hello(message)
            return
        if self.peer_root is None:
            raise _fail("the first message must be HELLO")
        if kind == DATA:
            if len(message) != 2 or not isinstance(message[1], bytes):
                raise _fail("DATA is [3, batch]")
            self.stats["batches_received"] += 1
            report = self._merge_data(message[1])
            if report.dropped_leaves:
                self._note_dropped(report.dropped_leaves)
        elif kind == SUM:
            self._on_sum(message)
        elif kind == WANT:
            self._on_want(message)
        elif kind == END:
            if len(message) != 1 or self.end_received:
                raise _fail("END is [4], once")
            if self._sent:
                # The peer answers each of our SUMs before its END. Taken, this END
                # would end the runners' reading while our own END waits for those
                # answers: a one-shot catch-up would wait for good.
                level, prefix = next(iter(self._sent))
                raise _fail(f"END before the SUM for node ({level}, {prefix})")
            self.end_received = True
            self._after_peer_end()
        elif kind == REFUSED:
            self._on_refused(message)
        else:
            raise _fail(f"unknown message type {kind}")

    def _note_dropped(self, dropped: Mapping[int, float]) -> None:
        """Remember to ask again for the leaves of updates the merge dropped."""
        with self._lock:
            wanted = self._wanted
            for leaf, state in dropped.items():
                old = wanted.get(leaf)
                if old is None or state < old:
                    wanted[leaf] = state
                if state < self._want_at:
                    self._want_at = state

    def _on_want(self, message: list[Any]) -> None:
        leaves = message[1] if len(message) == 2 else None
        if not isinstance(leaves, list) or len(leaves) > _LEAVES:
            raise _fail("WANT is [5, [leaf, ...]]")
        if not leaves:
            # (an empty WANT asks nothing: the peer says it reads REFUSED)
            self.peer_reports = True
            return
        for leaf in leaves:
            if type(leaf) is not int or not 0 <= leaf < _LEAVES:
                raise _fail("bad WANT leaf")
        self.stats["wants_received"] += 1
        with self._lock:
            # (a set: a peer asking again and again costs no more than all leaves once)
            self._peer_wants.update(dict.fromkeys(leaves))
        self._output_ready()

    def _on_hello(self, message: list[Any]) -> None:
        if self.peer_root is not None:
            raise _fail("HELLO twice")
        if (
            len(message) != 5
            or type(message[1]) is not int  # (True and 1.0 equal 1)
            or not isinstance(message[2], bytes)
            or len(message[2]) != 16
            or not _is_count(message[3])
            or not _is_digest(message[4])
        ):
            raise _fail(f"HELLO is [1, {VERSION}, replica id (16 bytes), count, digest]")
        if message[1] != VERSION:
            # (a peer of version 1 breaks ties between values bytewise: synced with it,
            # the two would keep different winners for ever)
            raise _fail(
                f"the peer speaks graph sync version {message[1]}, this one {VERSION} "
                "(values in Gun's text, ties in UTF-16 order): upgrade the older peer"
            )
        self.peer_replica = message[2]
        self.peer_root = (message[4], message[3])
        mine = self._my_root
        with self._lock:
            if _differs(mine, self.peer_root):
                if _push_whole(0, mine, self.peer_root):
                    if mine[1]:
                        self._push_all()
                else:
                    self._descend(0, 0)
            self._maybe_end()

    def _on_sum(self, message: list[Any]) -> None:
        if len(message) != 4 or not _is_count(message[1]) or not _is_count(message[2]):
            raise _fail("SUM is [2, level, prefix, [[child, digest, count], ...]]")
        with self._lock:
            self._on_sum_locked(message)

    def _on_sum_locked(self, message: list[Any]) -> None:
        level, prefix, items = message[1], message[2], message[3]
        mine = self._sent.pop((level, prefix), None)
        if mine is None:
            raise _fail(f"SUM for node ({level}, {prefix}) that was not compared")
        if not isinstance(items, list) or len(items) > 1 << FANOUT_BITS:
            raise _fail("SUM lists at most 256 children")
        first = prefix << FANOUT_BITS
        theirs: Summary = {}
        for item in items:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not _is_count(item[0])
                or not first <= item[0] < first + (1 << FANOUT_BITS)
                or not _is_digest(item[1])
                or not _is_count(item[2])
            ):
                raise _fail("bad SUM entry")
            if item[0] in theirs:
                # (the last one would win here; another reader might take the first)
                raise _fail(f"SUM lists child {item[0]} twice")
            theirs[item[0]] = (item[1], item[2])
        child_level = level + 1
        push: list[tuple[int, int]] = []
        pushed = 0
        for child in sorted(set(mine) | set(theirs)):
            a, b = mine.get(child, (0, 0)), theirs.get(child, (0, 0))
            if not _differs(a, b):
                continue
            if _push_whole(child_level, a, b):
                if a[1]:
                    push.append((child_level, child))
                    pushed += a[1]
            else:
                self._descend(child_level, child)
        if push:
            if pushed * 2 > len(self.graph):
                self._push_all()  # cheaper from the C export than field by field
            elif not self._push_everything:
                self._pushes.extend(push)
                self._output_ready()
        self._maybe_end()

    def _descend(self, level: int, prefix: int) -> None:
        children = self.graph.child_summaries(level, prefix)
        self._sent[(level, prefix)] = children
        self.stats["summaries_sent"] += 1
        self._send([SUM, level, prefix, [[c, d, n] for c, (d, n) in sorted(children.items())]])
