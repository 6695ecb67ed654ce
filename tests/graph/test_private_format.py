"""The private tier's envelope (dtp.graph._private; docs/graph.md, "The private
envelope"): the documented construction recomputed here from the primitives, values
and wrapped keys bound to their soul, field and state, any altered byte refused,
sizes padded, and round trips of every Gun value and of random reader changes
(hypothesis)."""

from __future__ import annotations

import base64
import string
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.errors import LocalProtocolError, NotAReader, PrivateDataError
from dtp.graph import Graph
from dtp.graph import _private as private
from dtp.graph.values import MAX_SAFE_INTEGER, decode_value, encode_value
from dtp.identity.keys import HostIdentity
from dtp.native.core import encode_ham_batch
from dtp.native.reference._limits import HAM_MAX_VALUE
from dtp.native.types import HamUpdate

ALICE = HostIdentity.generate()
READERS = [HostIdentity.generate() for _ in range(3)]
SOUL = private.space_soul(ALICE.sui_address, "s").encode()
KEYS = private.key_soul(ALICE.sui_address, "s").encode()
STATE = 1_700_000_000_000.5


def update_bytes(soul: bytes, field: bytes, state: float, value: bytes) -> bytes:
    return encode_ham_batch([HamUpdate(soul, field, state, value)])[5:]


def raw_of(stored: bytes) -> bytes:
    assert stored.startswith(b'"dtp/p1:') and stored.endswith(b'"')
    text = stored[8:-1]
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def test_a_value_as_the_docs_spell_it() -> None:
    """Open a value the code sealed with the construction docs/graph.md gives, from the
    primitives alone; and the signature over the documented message."""
    key_id, key = private.new_content_key()
    text = encode_value({"#": "elsewhere"})
    body = private.seal_value(key, key_id, SOUL, b"f", STATE, text)
    stored = private.sign(ALICE, SOUL, b"f", STATE, body)
    raw = raw_of(stored)
    assert raw[:32] == ALICE.ed25519_public and raw[96:] == body
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(raw[:32]).verify(
        raw[32:96], b"dtp-graph-v1/private-field\x00" + update_bytes(SOUL, b"f", STATE, body)
    )
    assert body[0] == 1 and body[1:17] == key_id
    nonce = body[17:41]
    value_key = HKDFExpand(
        hashes.SHA256(), 32, b"dtp-graph-v1/private-value\x00" + key_id + nonce
    ).derive(key)
    aad = b"dtp-graph-v1/private-value\x00" + update_bytes(SOUL, b"f", STATE, body[:41])
    padded = ChaCha20Poly1305(value_key).decrypt(bytes(12), body[41:], aad)
    assert len(padded) == 32 and padded == text + bytes(32 - len(text))


def test_a_wrapped_key_as_the_docs_spell_it() -> None:
    reader = READERS[0]
    key_id, key = private.new_content_key()
    field = private.wrap_field(key_id, reader.noise_public).encode()
    assert field == b"w:" + key_id.hex().encode() + b":" + reader.noise_public.hex().encode()
    body = private.wrap(key, reader.noise_public, KEYS, field, STATE)
    assert body[0] == 3 and len(body) == 1 + 32 + 48
    ephemeral = body[1:33]
    secret = X25519PrivateKey.from_private_bytes(reader.noise_private_bytes())
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    shared = secret.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    wrap_key = HKDF(
        hashes.SHA256(),
        32,
        salt=ephemeral + reader.noise_public,
        info=b"dtp-graph-v1/private-wrap\x00",
    ).derive(shared)
    aad = b"dtp-graph-v1/private-wrap\x00" + update_bytes(KEYS, field, STATE, body[:33])
    assert ChaCha20Poly1305(wrap_key).decrypt(bytes(12), body[33:], aad) == key
    assert private.unwrap(secret, KEYS, field, STATE, body) == key
    # another reader's key, another field, another state: nothing opens
    other = X25519PrivateKey.from_private_bytes(READERS[1].noise_private_bytes())
    for args in (
        (other, KEYS, field, STATE),
        (secret, KEYS, field + b"0", STATE),
        (secret, SOUL, field, STATE),
        (secret, KEYS, field, STATE + 1),
    ):
        with pytest.raises(PrivateDataError):
            private.unwrap(*args, body)


def test_sizes_leak_only_to_32_bytes() -> None:
    key_id, key = private.new_content_key()
    sizes = {
        len(private.seal_value(key, key_id, SOUL, b"f", STATE, encode_value(v)))
        for v in ("yes", "no", 1, None, True, "x" * 29)  # Gun texts of 1..31 bytes
    }
    assert len(sizes) == 1
    big = private.seal_value(key, key_id, SOUL, b"f", STATE, encode_value("x" * 31))  # 33 bytes
    assert len(big) == sizes.pop() + 32


def test_the_largest_value_fits_a_ham_value_and_one_byte_more_is_refused() -> None:
    key_id, key = private.new_content_key()
    text = encode_value("x" * (private.MAX_PLAINTEXT - 2))
    assert len(text) == private.MAX_PLAINTEXT
    stored = private.sign(
        ALICE, SOUL, b"f", STATE, private.seal_value(key, key_id, SOUL, b"f", STATE, text)
    )
    assert len(stored) <= HAM_MAX_VALUE
    assert private.check(HamUpdate(SOUL, b"f", STATE, stored)) is None
    with pytest.raises(LocalProtocolError, match="at most"):
        private.seal_value(
            key, key_id, SOUL, b"f", STATE, encode_value("x" * (private.MAX_PLAINTEXT - 1))
        )
    g = Graph()
    with pytest.raises(LocalProtocolError):
        g.private("s", ALICE).put({"f": "x" * private.MAX_PLAINTEXT})
    assert g.stored_node(SOUL.decode()) == []
    g.close()


def test_souls_of_the_private_tier() -> None:
    author = ALICE.sui_address
    assert private.parse_soul(f"%{author}/s".encode()) == private.PrivateSoul(
        author, "s", False, ""
    )
    assert private.parse_soul(f"%{author}/s:keys".encode()) == private.PrivateSoul(
        author, "s", True, ""
    )
    assert private.parse_soul(f"%{author}/s/a/b:keys".encode()) == private.PrivateSoul(
        author, "s", False, "a/b:keys"
    )
    for bad in (
        f"%{author}",
        f"%{author}/",
        f"%0x{author[2:].upper()}/s",
        f"%{author}/s:key",
        f"%{author}/{'x' * 65}",
        f"%{author}/s/",
        f"%{author}x/s",
    ):
        assert private.is_private(bad.encode()), bad
        assert private.parse_soul(bad.encode()) is None, bad
        assert private.check(HamUpdate(bad.encode(), b"f", 1.0, b'"x"')) == private.BAD_SOUL
    assert not private.is_private(b"%0xab/s") and not private.is_private(b"notes/%0x")


def test_a_batch_without_private_souls_passes_untouched() -> None:
    batch = encode_ham_batch([HamUpdate(b"notes/1", b"f", 1.0, b'"%0x"')] * 3)
    out, refused = private.filter_batch(batch)
    assert out is batch and refused == {}


# -- hypothesis ---------------------------------------------------------------------------

gun_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
    st.builds(lambda s: {"#": s}, st.text(string.ascii_letters + "/", min_size=1, max_size=20)),
)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda n: n != "_"
)


@given(st.dictionaries(names, gun_values, min_size=1, max_size=6), st.sampled_from(["c", "python"]))
def test_every_gun_value_round_trips_through_a_private_node(
    fields: dict[str, Any], ham: str
) -> None:
    writer, reader = Graph(ham=ham), Graph(ham=ham)
    node = writer.private("s/n", ALICE)
    node.add_reader(READERS[0])
    node.put(fields)
    for batch in writer.export():
        assert reader.merge(batch).refused == 0
    got = reader.private("s/n", READERS[0], author=ALICE.sui_address).get()
    # what a public node reads back for the same values (ints and floats as Gun holds them)
    assert got == {k: decode_value(encode_value(v)) for k, v in fields.items()}
    with pytest.raises(NotAReader):
        reader.private("s/n", READERS[1], author=ALICE.sui_address).get()
    writer.close()
    reader.close()


_KEY_ID, _KEY = private.new_content_key()
_BODY = private.seal_value(_KEY, _KEY_ID, SOUL, b"f", STATE, b'"secret"')
_STORED = private.sign(ALICE, SOUL, b"f", STATE, _BODY)


@given(st.integers(0, len(_STORED) - 1), st.integers(1, 255))
def test_any_altered_byte_of_a_stored_value_is_refused(at: int, flip: int) -> None:
    altered = bytearray(_STORED)
    altered[at] ^= flip
    reason = private.check(HamUpdate(SOUL, b"f", STATE, bytes(altered)))
    assert reason is not None
    assert private.check(HamUpdate(SOUL, b"f", STATE, _STORED)) is None


@given(
    st.sampled_from(["soul", "field", "state", "body"]),
    st.binary(min_size=1, max_size=8),
    st.integers(0, len(_BODY) - 1),
)
def test_a_value_opens_only_where_it_was_sealed(what: str, extra: bytes, at: int) -> None:
    soul, field, state, body = SOUL, b"f", STATE, bytearray(_BODY)
    if what == "soul":
        soul += extra
    elif what == "field":
        field += extra
    elif what == "state":
        state += 1 + extra[0]
    else:
        body[at] ^= extra[0] or 1
    with pytest.raises(PrivateDataError):
        private.open_value(_KEY, soul, field, state, bytes(body))
    assert private.open_value(_KEY, SOUL, b"f", STATE, _BODY) == b'"secret"'


@settings(max_examples=30)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "remove", "write"]), st.integers(0, len(READERS) - 1)),
        min_size=1,
        max_size=12,
    )
)
def test_random_reader_changes_keep_who_reads_what(ops: list[tuple[str, int]]) -> None:
    """After any sequence of adds, removals and writes, each write is readable by the
    readers it was made for -- those in the set when it was written, and any reader
    added since -- and by nobody removed before it, unless added again since."""
    g = Graph()
    node = g.private("s", ALICE)
    readers: set[int] = set()
    written: list[tuple[str, set[int], list[str]]] = []  # field, readers then, ops after
    for n, (op, who) in enumerate(ops):
        if op == "add":
            assert node.add_reader(READERS[who]) is (who not in readers)
            readers.add(who)
        elif op == "remove":
            assert node.remove_reader(READERS[who]) is (who in readers)
            readers.discard(who)
        else:
            field = f"w{n}"
            node.put({field: n})
            written.append((field, set(readers), []))
            continue
        for _, _, after in written:
            after.append(f"{op}{who}")
    assert sorted(node.readers()) == sorted(READERS[i].noise_public for i in readers)
    for field, then, after in written:
        for i, reader in enumerate(READERS):
            # a reader added after the write got its key then (and keeps it if removed)
            expected = i in then or f"add{i}" in after
            handle = g.private("s", reader, author=ALICE.sui_address)
            try:
                value = handle.get_field(field)
            except NotAReader:
                value = None
            assert (value is not None) is expected, (field, i, then, after)
    assert (g.private("s", ALICE).get() or {}) == {f: int(f[1:]) for f, _, _ in written}
    g.close()
