"""Gun's user spaces (dtp.graph.sea): the rules GunDB's relay applies to SEA's souls, on
every path into a graph -- a peer's batch (Graph.merge), a local put -- checked without
Node (signatures made here with ``SeaPair``, as SEA makes them; tests/graph/
test_gun_node.py checks the same against gun.js's own SEA)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from dtp.errors import LocalProtocolError
from dtp.graph import Graph, link, sea
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

ALICE = sea.SeaPair.generate()
MALLORY = sea.SeaPair.generate()


def batch(*updates: tuple[str, str, float, object]) -> bytes:
    return encode_ham_batch(
        [HamUpdate(s.encode(), f.encode(), st, encode_value(v)) for s, f, st, v in updates]
    )


@pytest.mark.parametrize(
    ("soul", "pub"),
    [
        ("~abc.def", "abc.def"),
        ("~abc.def/profile", "abc.def"),
        ("~abc.def/a/b", "abc.def"),
        ("x~abc.def", "abc.def"),  # gun looks past the first '~'
        ("~ab_c-1.d", "ab_c-1.d"),
        ("~bob", None),  # one part: nobody's
        ("bob", None),
        ("~", None),
        ("~@alice", ".alice"),  # (the alias rule comes first in check())
        ("~é.x", "."),  # JavaScript's \w is ASCII: 'é' cuts (a key no one holds)
        ("~a~b.c", None),  # only the text up to a second '~' counts
    ],
)
def test_which_souls_are_user_spaces(soul: str, pub: str | None) -> None:
    assert sea.sea_pub(soul) == pub


def test_a_value_signed_by_the_owner_passes_and_nothing_else_does() -> None:
    soul = ALICE.soul + "/profile"
    value = ALICE.sign(soul, "name", "Alice", 1700000000000.5)
    envelope = json.loads(value)
    assert set(envelope) == {":", "~"} and envelope[":"] == "Alice"
    assert len(base64.b64decode(envelope["~"])) == 64  # r || s, as WebCrypto writes it
    assert sea.check(soul, "name", value, 1700000000000.5) is None
    # the signature binds the state, the field and the soul
    assert sea.check(soul, "name", value, 1700000000001.0).reason == sea.UNVERIFIED
    assert sea.check(soul, "bio", value, 1700000000000.5).reason == sea.UNVERIFIED
    assert sea.check(ALICE.soul, "name", value, 1700000000000.5).reason == sea.UNVERIFIED
    # another key's signature, as if it were the owner's
    forged = MALLORY.sign(soul, "name", "Mallory", 5.0)
    assert sea.check(soul, "name", forged, 5.0).reason == sea.UNVERIFIED
    # naming the other signer needs a certificate gun would check, and we do not take
    named = json.dumps({":": "Mallory", "~": json.loads(forged)["~"], "*": MALLORY.pub})
    refusal = sea.check(soul, "name", named, 5.0)
    assert refusal is not None and refusal.reason == sea.CERTIFICATE
    # no signature, or not an envelope at all
    for bad in ["Alice", json.dumps({":": "Alice"}), 5, None, link("x"), json.dumps([1])]:
        assert sea.check(soul, "name", bad, 5.0).reason == sea.UNVERIFIED  # type: ignore[union-attr]
    # a signature that does not decode to 64 bytes
    short = json.dumps({":": "Alice", "~": "AAAA"})
    assert sea.check(soul, "name", short, 5.0).reason == sea.UNVERIFIED  # type: ignore[union-attr]


def test_values_of_every_gun_type_are_signed_and_checked() -> None:
    soul = ALICE.soul
    for value in ["", "é😀\n", 0.000001, 1e21, -0.5, 2**53, True, False, None, link(soul + "/x")]:
        signed = ALICE.sign(soul, "f", value, 42.25)
        assert sea.check(soul, "f", signed, 42.25) is None, value
    with pytest.raises(ValueError):
        ALICE.sign(soul, "f", [1], 1.0)  # Gun holds no arrays
    # a state of 0: gun packs nothing to verify, so it refuses; so do we
    assert sea.check(soul, "f", ALICE.sign(soul, "f", "x", 0.0), 0.0) is not None


def test_the_account_key_and_the_alias_lists() -> None:
    assert sea.check(ALICE.soul, "pub", ALICE.pub, 1.0) is None
    assert sea.check(ALICE.soul, "pub", MALLORY.pub, 1.0).message == "Account not same!"  # type: ignore[union-attr]
    # the list of aliases: field <alias> links to ~@<alias> (gun's '~@' + key)
    assert sea.check("~@", "alice", link("~@alice"), 1.0) is None
    assert sea.check("~@", "alice", link("~@bob"), 1.0).message == "Alias not same!"  # type: ignore[union-attr]
    assert sea.check("~@", "alice", None, 1.0).message == "Data must exist!"  # type: ignore[union-attr]
    key = ALICE.soul
    assert sea.check("~@alice", key, link(key), 1.0) is None
    assert sea.check("~@alice", key, link(MALLORY.soul), 1.0).reason == sea.ALIAS  # type: ignore[union-attr]
    assert sea.check("~@alice", key, False, 1.0).message == "Alias must exist!"  # type: ignore[union-attr]


def test_content_addressed_souls() -> None:
    digest = hashlib.sha256(b"hello").digest()
    b64, hexa = base64.b64encode(digest).decode(), digest.hex()
    assert sea.check("#", b64, "hello", 1.0) is None
    assert sea.check("#", "posts#" + hexa, "hello", 1.0) is None
    assert sea.check("#", b64, "hullo", 1.0).message == "Data hash not same as hash!"  # type: ignore[union-attr]
    number = base64.b64encode(hashlib.sha256(b"0.000001").digest()).decode()
    assert sea.check("#", number, 1e-6, 1.0) is None  # a number hashed as JavaScript writes it


def test_public_souls_pass() -> None:
    for soul in ["user/1", "~bob", "~0x" + "ab" * 32 + "/x", "chat"]:
        assert sea.check_stored(soul.encode(), b"f", 1.0, b'"x"') is None


@pytest.mark.parametrize("ham", ["c", "python"])
def test_merge_drops_what_breaks_a_rule_and_counts_it(ham: str) -> None:
    g = Graph(ham=ham, now_ms=lambda: 1e13)
    soul = ALICE.soul + "/profile"
    good = ALICE.sign(soul, "name", "Alice", 100.0)
    report = g.merge(
        batch(
            (soul, "name", 100.0, good),
            (soul, "bio", 100.0, "unsigned"),
            (soul, "age", 100.0, MALLORY.sign(soul, "age", 30, 100.0)),
            (ALICE.soul, "pub", 100.0, MALLORY.pub),
            ("~@alice", ALICE.soul, 100.0, link(MALLORY.soul)),
            ("#", "nothash", 100.0, "x"),
            ("public", "a", 100.0, 1),
            ("~bob", "a", 100.0, 2),
        )
    )
    assert report.applied == 3 and report.refused == 5
    assert g.get(soul) == {"name": good}
    assert g.get("public") == {"a": 1} and g.get("~bob") == {"a": 2}
    assert ALICE.soul not in g and "~@alice" not in g and "#" not in g
    assert g.stats["refused_by_reason"] == {
        sea.UNVERIFIED: 2,
        sea.ACCOUNT: 1,
        sea.ALIAS: 1,
        sea.HASH: 1,
    }
    # the same batch again: what the table holds passes on a lookup, the rest is refused
    assert g.merge(batch((soul, "name", 100.0, good))).same == 1


def test_a_local_put_cannot_write_into_a_gun_user_space() -> None:
    g = Graph()
    with pytest.raises(LocalProtocolError, match="Gun's user spaces"):
        g.put(ALICE.soul, {"name": "Alice"})
    with pytest.raises(LocalProtocolError, match="Alias not same"):
        g.put("~@alice", {ALICE.soul: link(MALLORY.soul)})
    assert len(g) == 0
    g.put("~@alice", {ALICE.soul: link(ALICE.soul)})  # what the rule asks for is written
    g.put("~bob", {"a": 1})  # public
    # dtp's own user space keeps its own rule
    me = HostIdentity.generate()
    mine = Graph(identity=me)
    mine.put(f"~{me.sui_address}/notes", {"a": 1})
    assert mine.get(f"~{me.sui_address}/notes") == {"a": 1}
