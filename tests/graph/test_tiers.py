"""The graph's privacy tiers (docs/graph.md, "Privacy tiers"), each with an outsider who
fails: public (anyone reads and writes), protected (anyone reads, only the author
writes), private (only readers read, only the author writes, readers added and
removed, ciphertexts merged blind by peers that hold no key).

Every test runs on both HAM tables (``Graph(ham=...)``); the whole file runs again
under ``DTP_PUREPYTHON=1`` for the rest of the core (the batch scans)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.errors import (
    GraphAccessError,
    LocalProtocolError,
    NotAReader,
    NotTheAuthor,
    PrivateDataError,
)
from dtp.graph import Change, Graph, PrivateNode, namespace
from dtp.graph import _private as private
from dtp.graph.values import encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import decode_ham_batch, encode_ham_batch
from dtp.native.types import HamUpdate

HAMS = ["c", "python"]


@pytest.fixture(params=HAMS)
def ham(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def people() -> dict[str, HostIdentity]:
    return {name: HostIdentity.generate() for name in ("alice", "bob", "carol", "mallory")}


@pytest.fixture
def graphs(ham: str) -> Iterator[dict[str, Graph]]:
    made = {name: Graph(ham=ham) for name in ("alice", "bob", "carol", "mallory", "relay")}
    yield made
    for g in made.values():
        g.close()


def sync(source: Graph, *targets: Graph) -> None:
    """What a sync session carries: every field of ``source``, merged by each target."""
    for target in targets:
        for batch in source.export():
            target.merge(batch)


def updates(graph: Graph, soul: str) -> list[HamUpdate]:
    return [
        u for batch in graph.export() for u in decode_ham_batch(batch) if u.soul == soul.encode()
    ]


def forge(identity: HostIdentity, soul: bytes, field: bytes, state: float, body: bytes) -> bytes:
    """A private value signed by ``identity`` whatever the soul's author is."""
    raw = (
        identity.ed25519_public
        + identity.sign(private.signing_message(soul, field, state, body))
        + body
    )
    return b'"' + private.TEXT_PREFIX.encode() + base64.urlsafe_b64encode(raw).rstrip(b"=") + b'"'


def merge_one(graph: Graph, update: HamUpdate) -> int:
    return graph.merge(encode_ham_batch([update])).refused


# -- public ------------------------------------------------------------------------------


def test_public_anyone_reads_and_writes(graphs: dict[str, Graph]) -> None:
    a, b = graphs["alice"], graphs["bob"]
    a.public("notes/1").put({"text": "from alice"})
    b.public("notes/1").put({"by": "bob"})
    sync(a, b)
    sync(b, a)
    for g in (a, b):
        assert g.public("notes/1").get() == {"text": "from alice", "by": "bob"}
    node = a.public("notes")
    assert node.tier == "public" and node.child("1").soul == "notes/1"
    assert node.child("1").get_field("by") == "bob"


@pytest.mark.parametrize(
    "soul", ["~0x" + "ab" * 32, "%0x" + "ab" * 32 + "/diary", "~" + "A" * 43 + "." + "B" * 43]
)
def test_public_refuses_the_souls_of_other_tiers(graphs: dict[str, Graph], soul: str) -> None:
    with pytest.raises(LocalProtocolError, match="no public soul"):
        graphs["alice"].public(soul)


# -- protected ---------------------------------------------------------------------------


def test_protected_anyone_reads_only_the_author_writes(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice, mallory = people["alice"], people["mallory"]
    a, m, relay = graphs["alice"], graphs["mallory"], graphs["relay"]
    profile = a.protected("profile", alice)
    assert profile.tier == "protected" and profile.soul == f"~{alice.sui_address}/profile"
    state = profile.put({"name": "Alice", "bio": {"text": "hi"}})
    sync(a, relay, m)
    # anyone reads, with no identity at all
    seen = relay.protected("profile", author=alice.sui_address)
    assert seen.get() == {"name": "Alice", "bio": {"#": profile.soul + "/bio"}}
    assert seen.child("bio").get() == {"text": "hi"}

    # mallory's handle on alice's space refuses to write, and writes nothing
    hers = m.protected("profile", mallory, author=alice.sui_address)
    with pytest.raises(NotTheAuthor):
        hers.put({"name": "Mallory"})
    with pytest.raises(GraphAccessError):  # (the common base, a PermissionError too)
        relay.protected("profile", author=alice.sui_address).put({"name": "nobody"})
    assert m.protected("profile", author=alice.sui_address).get_field("name") == "Alice"

    # a value mallory signs herself, in alice's soul, is refused by every peer
    soul, field = profile.soul.encode(), b"name"
    forged = namespace.seal(mallory, f"~{mallory.sui_address}/x".encode(), field, state + 1, b'"M"')
    assert merge_one(relay, HamUpdate(soul, field, state + 1, forged)) == 1
    assert relay.stats["refused_by_reason"] == {namespace.WRONG_KEY: 1}
    assert relay.protected("profile", author=alice.sui_address).get_field("name") == "Alice"


# -- private: readers read, others do not ------------------------------------------------


def test_private_readers_read_outsiders_do_not(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice, bob, mallory = people["alice"], people["bob"], people["mallory"]
    a, b, m = graphs["alice"], graphs["bob"], graphs["mallory"]
    diary = a.private("diary", alice)
    assert diary.tier == "private" and diary.soul == f"%{alice.sui_address}/diary"
    assert diary.add_reader(bob.noise_public) is True
    assert diary.add_reader(bob) is False  # (already)
    diary.put({"title": "My diary", "day1": {"text": "dear diary", "mood": 7}})
    sync(a, b, m)

    mine = b.private("diary", bob, author=alice.sui_address)
    assert mine.get() == {"title": "My diary", "day1": {"#": diary.soul + "/day1"}}
    assert mine.child("day1").get() == {"text": "dear diary", "mood": 7}
    assert mine.get_field("title") == "My diary"
    assert mine.get_field("missing", "none") == "none"
    assert mine.readers() == [bob.noise_public]

    # mallory holds every byte, and reads none of it
    hers = m.private("diary", mallory, author=alice.sui_address)
    with pytest.raises(NotAReader):
        hers.get()
    with pytest.raises(NotAReader):
        hers.child("day1").get_field("text")
    with pytest.raises(NotAReader):  # nor with no identity at all
        m.private("diary", author=alice.sui_address).get()
    stored = b"".join(v for _, _, v in m.stored_node(diary.soul + "/day1"))
    assert b"dear diary" not in stored and b"diary" not in stored.lower()
    # ... and the plain API shows her ciphertexts, as Gun strings
    raw = m.get(diary.soul)
    assert raw is not None and all(
        isinstance(v, str) and v.startswith(private.TEXT_PREFIX) for v in raw.values()
    )
    assert hers.readers() == [bob.noise_public]  # who reads is public


def test_private_outsider_cannot_write(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice, bob, mallory = people["alice"], people["bob"], people["mallory"]
    a, m, relay = graphs["alice"], graphs["mallory"], graphs["relay"]
    diary = a.private("diary", alice)
    diary.add_reader(bob)
    state = diary.put({"title": "mine"})
    sync(a, relay, m)
    soul = diary.soul.encode()

    # locally: her handle, a reader's handle, the plain API
    with pytest.raises(NotTheAuthor):
        m.private("diary", mallory, author=alice.sui_address).put({"title": "hers"})
    with pytest.raises(NotTheAuthor):
        m.private("diary", bob, author=alice.sui_address).put({"title": "a reader's"})
    with pytest.raises(LocalProtocolError, match="private"):
        m.put(diary.soul, {"title": "plain"})
    assert m.stored_node(diary.soul) == relay.stored_node(diary.soul)

    # at merge: her own signature, none, a plaintext, a look-alike soul
    key_id = private.value_key_id(
        private.body_of(relay.stored_node(diary.soul)[0][2]) or b""
    ) or bytes(16)
    body = private.seal_value(bytes(32), key_id, soul, b"title", state + 1, b'"hers"')
    attempts = {
        private.WRONG_KEY: HamUpdate(
            soul, b"title", state + 1, forge(mallory, soul, b"title", state + 1, body)
        ),
        private.UNSIGNED: HamUpdate(soul, b"title", state + 1, encode_value("hers")),
        private.BAD_SOUL: HamUpdate(
            diary.soul.upper().replace("%0X", "%0x").encode(), b"t", state, encode_value("x")
        ),
    }
    for reason, update in attempts.items():
        before = dict(relay.stats["refused_by_reason"])
        report = relay.merge(encode_ham_batch([update]))
        assert report.refused == 1, reason
        assert relay.stats["refused_by_reason"].get(reason, 0) == before.get(reason, 0) + 1
        # described, as sync reports it to the peer that sent it (docs/protocol.md §6.8)
        assert [(r.reason, r.message) for r in report.refusals] == [
            (reason, private.MESSAGES[reason])
        ]
    assert relay.get_field(diary.soul, "title") == a.get_field(diary.soul, "title")
    sync(relay, graphs["bob"])
    assert graphs["bob"].private("diary", bob, author=alice.sui_address).get() == {"title": "mine"}


def test_an_outsider_cannot_add_herself_as_reader(
    graphs: dict[str, Graph], people: dict[str, HostIdentity], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, mallory = people["alice"], people["bob"], people["mallory"]
    a, m, relay = graphs["alice"], graphs["mallory"], graphs["relay"]
    diary = a.private("diary", alice)
    diary.add_reader(bob)
    diary.put({"title": "mine"})
    sync(a, relay, m)
    hers = m.private("diary", mallory, author=alice.sui_address)
    with pytest.raises(NotTheAuthor):
        hers.add_reader(mallory)
    with pytest.raises(NotTheAuthor):
        hers.remove_reader(bob)
    # a reader cannot either
    with pytest.raises(NotTheAuthor):
        m.private("diary", bob, author=alice.sui_address).add_reader(mallory)

    keys = diary.key_soul.encode()
    me = mallory.noise_public
    state = a.clock.next(None)
    (wrap_update,) = [
        u
        for u in updates(a, diary.key_soul)
        if u.field.startswith(b"w:") and u.field.endswith(bob.noise_public.hex().encode())
    ]
    key_id = bytes.fromhex(wrap_update.field.decode().split(":")[1])
    forgeries = [
        # her reader record and a wrap of a key she made up, signed by her
        HamUpdate(
            keys,
            private.reader_field(me).encode(),
            state,
            forge(
                mallory, keys, private.reader_field(me).encode(), state, bytes([private.READER, 1])
            ),
        ),
        HamUpdate(
            keys,
            private.wrap_field(key_id, me).encode(),
            state,
            forge(
                mallory,
                keys,
                private.wrap_field(key_id, me).encode(),
                state,
                private.wrap(bytes(32), me, keys, private.wrap_field(key_id, me).encode(), state),
            ),
        ),
        # bob's wrap, moved to her field name
        wrap_update._replace(field=private.wrap_field(key_id, me).encode()),
    ]
    assert relay.merge(encode_ham_batch(forgeries)).refused == 3
    assert relay.stats["refused_by_reason"] == {
        private.WRONG_KEY: 2,
        private.BAD_SIGNATURE: 1,
    }
    assert relay.private("diary", author=alice.sui_address).readers() == [bob.noise_public]
    # even in her own graph, where she skips every check, bob's wrap does not open for her
    monkeypatch.setattr(private, "filter_batch", lambda batch, held=None, details=None: (batch, {}))
    assert m.merge(encode_ham_batch(forgeries[2:])).applied == 1
    with pytest.raises(PrivateDataError):
        hers.get()


def test_a_ciphertext_cannot_be_replayed_into_another_field(
    graphs: dict[str, Graph], people: dict[str, HostIdentity], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = people["alice"], people["bob"]
    a, b, relay = graphs["alice"], graphs["bob"], graphs["relay"]
    diary = a.private("diary", alice)
    diary.add_reader(bob)
    diary.put({"pin": "1234", "note": "public-ish", "day1": {"pin": "x"}})
    sync(a, relay, b)
    (pin,) = [u for u in updates(a, diary.soul) if u.field == b"pin"]
    other = (diary.soul + "/day1").encode()
    replays = [
        pin._replace(field=b"note", state=pin.state + 1),  # another field, newer
        pin._replace(field=b"note"),  # another field, same state
        pin._replace(field=b"fresh"),  # a field that does not exist yet
        pin._replace(soul=other),  # another node
        pin._replace(state=pin.state + 1),  # the same field, another state
    ]
    for replay in replays:
        assert merge_one(relay, replay) == 1, replay.field
    assert relay.stats["refused_by_reason"] == {private.BAD_SIGNATURE: len(replays)}
    # a peer that skipped the signature still cannot make a reader read it elsewhere: the
    # soul, field and state are the AEAD's associated data
    monkeypatch.setattr(private, "filter_batch", lambda batch, held=None, details=None: (batch, {}))
    assert b.merge(encode_ham_batch([replays[2]])).applied == 1
    with pytest.raises(PrivateDataError):
        b.private("diary", bob, author=alice.sui_address).get_field("fresh")
    assert b.private("diary", bob, author=alice.sui_address).get_field("pin") == "1234"


# -- private: readers added and removed --------------------------------------------------


def test_a_removed_reader_reads_what_it_had_not_what_follows(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    a, b, c = graphs["alice"], graphs["bob"], graphs["carol"]
    diary = a.private("diary", alice)
    diary.add_reader(bob)
    diary.add_reader(carol)
    diary.put({"old": "before", "kept": "stays"})
    sync(a, b, c)
    bobs = b.private("diary", bob, author=alice.sui_address)
    assert bobs.get() == {"old": "before", "kept": "stays"}

    # written before the removal, reaching bob only after it
    late = a.private("diary/late", alice)
    late.put({"text": "written while bob read"})
    assert diary.remove_reader(bob) is True
    assert diary.remove_reader(bob) is False
    assert diary.readers() == [carol.noise_public]
    diary.put({"old": "after", "new": "bob must not read this"})
    sync(a, b, c)

    assert bobs.get() == {"kept": "stays"}  # the rewritten field went, with its old value
    for field in ("old", "new"):
        with pytest.raises(NotAReader):
            bobs.get_field(field)
    assert b.private("diary/late", bob, author=alice.sui_address).get() == {
        "text": "written while bob read"
    }
    stored = b"".join(v for _, _, v in b.stored_node(diary.soul))
    assert b"bob must not" not in stored
    # carol, who stayed, reads everything
    assert c.private("diary", carol, author=alice.sui_address).get() == {
        "old": "after",
        "kept": "stays",
        "new": "bob must not read this",
    }
    # a node written wholly after the removal: bob is no reader of it at all
    a.private("diary/day2", alice).put({"text": "later"})
    sync(a, b)
    with pytest.raises(NotAReader):
        b.private("diary/day2", bob, author=alice.sui_address).get()
    # added again, bob reads it all
    assert diary.add_reader(bob) is True
    sync(a, b)
    assert b.private("diary/day2", bob, author=alice.sui_address).get() == {"text": "later"}
    assert bobs.get_field("new") == "bob must not read this"


def test_a_reader_added_later_reads_the_past(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    a, c = graphs["alice"], graphs["carol"]
    diary = a.private("diary", alice)
    diary.put({"first": 1})
    diary.add_reader(bob)
    diary.remove_reader(bob)  # a second content key
    diary.put({"second": 2})
    diary.add_reader(carol)
    sync(a, c)
    assert c.private("diary", carol, author=alice.sui_address).get() == {"first": 1, "second": 2}
    keys = {u.field.split(b":")[1] for u in updates(a, diary.key_soul) if u.field.startswith(b"w:")}
    assert len(keys) == 2


def test_the_author_and_its_arguments(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice = people["alice"]
    a = graphs["alice"]
    diary = a.private("diary", alice)
    with pytest.raises(LocalProtocolError, match="always reads"):
        diary.add_reader(alice)
    with pytest.raises(LocalProtocolError, match="always reads"):
        diary.remove_reader(alice.noise_public)
    with pytest.raises(LocalProtocolError, match="32-byte"):
        diary.add_reader(b"short")
    with pytest.raises(LocalProtocolError, match="X25519"):
        diary.add_reader(bytes(32))  # a low-order point: the key would wrap to everyone
    for bad in ("", "a b", "x" * 65, "diary:keys", "diary/", "diary//x", "diary/a~b", "diary/#"):
        with pytest.raises(LocalProtocolError):
            a.private(bad, alice)
    with pytest.raises(LocalProtocolError, match="author"):
        a.private("diary")  # no identity, no author
    with pytest.raises(LocalProtocolError, match="Sui address"):
        a.private("diary", author="0xABC")
    with pytest.raises(TypeError):
        a.private("diary", "alice")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="no '~' or '#'"):
        diary.put({"a~b": {"x": 1}})  # a nested node whose soul Gun's relays guard
    with pytest.raises(LocalProtocolError):
        diary.put({"list": [1, 2]})  # (not a Gun value)
    assert a.stored_node(diary.soul) == [] and a.stored_node(diary.key_soul) == []
    # the graph's own identity is the default
    g = Graph(identity=alice, ham=a.ham_backend)
    g.private("diary").put({"x": 1})
    assert g.private("diary").get() == {"x": 1}
    assert g.protected("p").author == alice.sui_address
    g.close()


def test_the_authors_devices_converge_and_heal_a_stale_key(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    """The author on two devices: one removes bob while the other, not knowing it yet,
    writes with the old key (bob reads that one); once the second device learns of the
    removal, its next write takes a new key."""
    alice, bob = people["alice"], people["bob"]
    laptop, phone, b = graphs["alice"], graphs["carol"], graphs["bob"]
    laptop.private("diary", alice).add_reader(bob)
    laptop.private("diary", alice).put({"a": 1})
    sync(laptop, phone)
    assert phone.private("diary", alice).get() == {"a": 1}
    laptop.private("diary", alice).remove_reader(bob)
    phone.private("diary", alice).put({"stale": "bob still reads this"})
    sync(phone, laptop)
    sync(laptop, phone)
    assert laptop.snapshot() == phone.snapshot()
    phone.private("diary", alice).put({"fresh": "not this"})
    sync(phone, b)
    bobs = b.private("diary", bob, author=alice.sui_address)
    assert bobs.get_field("stale") == "bob still reads this"
    with pytest.raises(NotAReader):
        bobs.get_field("fresh")
    assert phone.private("diary", alice).get() == {
        "a": 1,
        "stale": "bob still reads this",
        "fresh": "not this",
    }


def test_equal_states_keep_one_ciphertext_on_every_peer(
    ham: str, people: dict[str, HostIdentity]
) -> None:
    """Two writes of one field at one state (the author's two devices at the same
    instant): HAM keeps the greater ciphertext, in UTF-16 order of its text, on every
    peer -- whichever plaintext it holds."""
    alice = people["alice"]
    now = 1.7e12
    one, two = Graph(ham=ham, now_ms=lambda: now), Graph(ham=ham, now_ms=lambda: now)
    one.private("votes", alice).put({"choice": "yes"})
    sync(one, two)  # the same content key on both
    s1 = one.private("votes", alice).put({"choice": "no"})
    s2 = two.private("votes", alice).put({"choice": "maybe"})
    assert s1 == s2
    texts = {g: g.stored_node(f"%{alice.sui_address}/votes")[0][2] for g in (one, two)}
    sync(one, two)
    sync(two, one)
    assert one.snapshot() == two.snapshot()
    winner = one.stored_node(f"%{alice.sui_address}/votes")[0][2]
    assert winner == max(texts.values())  # (ASCII: byte order is UTF-16 order)
    read = one.private("votes", alice).get_field("choice")
    assert read == two.private("votes", alice).get_field("choice") in ("no", "maybe")
    one.close()
    two.close()


# -- private: the rest of a graph's life -------------------------------------------------


def test_private_data_persists_and_reads_after_reopening(
    tmp_path: Path, ham: str, people: dict[str, HostIdentity]
) -> None:
    alice, bob = people["alice"], people["bob"]
    with Graph(tmp_path / "a.db", ham=ham) as g:
        diary = g.private("diary", alice)
        diary.add_reader(bob)
        diary.put({"text": "kept on disk"})
    with Graph(tmp_path / "a.db", ham=ham) as g:
        assert g.private("diary", bob, author=alice.sui_address).get() == {"text": "kept on disk"}
        g.private("diary", alice).put({"more": True})
        assert g.private("diary", alice).get() == {"text": "kept on disk", "more": True}


def test_a_subscriber_hears_plaintext_and_values_that_came_before_their_key(
    graphs: dict[str, Graph], people: dict[str, HostIdentity]
) -> None:
    alice, bob = people["alice"], people["bob"]
    a, b = graphs["alice"], graphs["bob"]
    diary = a.private("diary", alice)
    diary.add_reader(bob)
    heard: list[Change] = []
    with b.private("diary", bob, author=alice.sui_address).subscribe(heard.append) as sub:
        assert sub.active
        diary.put({"text": "one"})
        sync(a, b)
        assert [(c.field, c.value) for c in heard] == [("text", "one")]
        # the data first, its key (a new one: carol's removal) after, as sync may bring them
        carol = people["carol"]
        diary.add_reader(carol)
        diary.remove_reader(carol)
        state = diary.put({"text": "two"})
        data = [u for u in updates(a, diary.soul)]
        keys = updates(a, diary.key_soul)
        b.merge(encode_ham_batch(data))
        assert len(heard) == 1
        b.merge(encode_ham_batch(keys))
        assert [(c.field, c.value, c.state) for c in heard[1:]] == [("text", "two", state)]
    assert not sub.active
    diary.put({"text": "three"})
    sync(a, b)
    assert len(heard) == 2


def test_private_node_api_shape(graphs: dict[str, Graph], people: dict[str, HostIdentity]) -> None:
    alice = people["alice"]
    a = graphs["alice"]
    node = a.private("diary/2024/01", alice)
    assert isinstance(node, PrivateNode)
    assert node.space == "diary" and node.author == alice.sui_address
    assert node.soul == f"%{alice.sui_address}/diary/2024/01"
    assert node.key_soul == f"%{alice.sui_address}/diary:keys"
    assert node.child("02").soul == node.soul + "/02"
    assert node.get() is None
    assert node.readers() == []
    assert repr(node).startswith("<PrivateNode ")
    for tier in (a.public("x"), a.protected("x", alice), node):
        assert tier.tier in ("public", "protected", "private")
