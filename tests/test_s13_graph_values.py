"""A peer's value with a lone surrogate escape (``"\\ud800"``) is refused like the other
values two readers could read differently. json read it as a str that no UTF-8 holds:
get() handed it to the application, whose print() or file write then raised
UnicodeEncodeError, and put() of the node read refused it (LocalProtocolError)."""

from __future__ import annotations

import pytest

from dtp._core import encode_ham_batch
from dtp._types import HamUpdate
from dtp.errors import RemoteProtocolError
from dtp.graph import Change, Graph
from dtp.graph.values import decode_value

LONE = [
    rb'"hi \ud800"',  # a high surrogate alone
    rb'"\udc00"',  # a low one
    rb'"\ude00\ud83d"',  # a pair in the wrong order
    rb'{"\udc00": 1}',  # in an object key
    rb'[1, {"a": ["\ud800"]}]',  # nested
]
FINE = [
    (rb'"\ud83d\ude00"', "\U0001f600"),  # an escaped pair: one character
    (rb'"a\\ud800"', "a\\ud800"),  # an escaped backslash, then the letters
    (rb'"\u00e9"', "\u00e9"),
]


@pytest.mark.parametrize("raw", LONE)
def test_a_lone_surrogate_is_refused(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_value(raw)


@pytest.mark.parametrize(("raw", "value"), FINE)
def test_escapes_that_make_characters_are_read(raw: bytes, value: str) -> None:
    assert decode_value(raw) == value


def test_get_leaves_a_peers_lone_surrogate_out() -> None:
    graph = Graph()
    seen: list[Change] = []
    graph.subscribe("msg", seen.append)
    updates = [HamUpdate(b"msg", b"bad%d" % i, 1.0, raw) for i, raw in enumerate(LONE)]
    updates.append(HamUpdate(b"msg", b"ok", 1.0, rb'"\ud83d\ude00"'))
    graph.merge(encode_ham_batch(updates))
    node = graph.get("msg")
    assert node == {"ok": "\U0001f600"}
    graph.put("copy", node)  # what get() returns can be written back
    with pytest.raises(RemoteProtocolError):
        graph.get_field("msg", "bad0")
    assert [c.field for c in seen] == ["ok"]
    graph.close()
