"""Finding the user-space updates of a peer's batch without decoding the rest.

``namespace.filter_batch`` decoded a whole batch in Python as soon as ``~0x`` and 64 hex
digits appeared anywhere in it -- one signed update, or the marker inside a public
value -- about a second of CPU per 8 MiB of small public updates, which any peer could
make a replica spend. ``find_ham_souls`` (C, with its Python twin) validates the batch
and returns the spans of the updates whose soul starts with a prefix; only those are
decoded.
"""

from __future__ import annotations

import itertools
import math
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import ErrorCode, RemoteProtocolError
from dtp.graph import Graph, namespace
from dtp.graph import _batch as graph_batch
from dtp.identity.keys import HostIdentity
from dtp.native import core as _core
from dtp.native.reference._ham import decode_ham_batch, encode_ham_batch
from dtp.native.types import HamUpdate
from tests.native.ham_batches import BAD_BATCHES, F1, header, outcome, raw_update
from tests.support.backends import BACKENDS, NATIVE, REFERENCE, require_native

MARK = b"~0x" + b"ab" * 32

souls = st.sampled_from([b"s", b"~", b"~0", b"~0x", MARK, MARK + b"/p", b"x~0x", b"~0xZZ"])
updates = st.builds(
    HamUpdate,
    souls,
    st.binary(min_size=1, max_size=3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=70),
)
prefixes = st.sampled_from([b"", b"~", b"~0x", MARK, b"s", b"zz"])


def one(span: bytes) -> HamUpdate:
    (update,) = decode_ham_batch(header(1) + span)
    return update


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
@given(ups=st.lists(updates, max_size=30), prefix=prefixes)
def test_spans_are_the_matching_updates(
    b: SimpleNamespace, ups: list[HamUpdate], prefix: bytes
) -> None:
    batch = encode_ham_batch(ups)
    spans = b.find_ham_souls(batch, prefix)
    assert [one(batch[s:e]) for s, e in spans] == [u for u in ups if u.soul.startswith(prefix)]
    assert all(5 <= s < e <= len(batch) for s, e in spans)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))


@given(data=st.binary(max_size=200), lead=st.sampled_from([b"", header(1), header(2)]))
def test_differential_garbage(data: bytes, lead: bytes) -> None:
    require_native()
    batch = lead + data
    got = outcome(NATIVE.find_ham_souls, batch, b"~")
    assert got == outcome(REFERENCE.find_ham_souls, batch, b"~")
    # the same verdict as the decoder (and the merge) on the same bytes
    decoded = outcome(decode_ham_batch, batch)
    assert got[0] == decoded[0] and (got[0] == "ok" or got[1] == decoded[1])


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize(("name", "batch", "code"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_bad_batches(b: SimpleNamespace, name: str, batch: bytes, code: ErrorCode) -> None:
    assert outcome(b.find_ham_souls, batch, b"s") == ("RemoteProtocolError", code)


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_non_minimal_varints_and_many_matches(b: SimpleNamespace) -> None:
    long_form = b"\x40\x01s\x80\x00\x00\x01f" + F1 + b"\xc0" + bytes(6) + b"\x01v"
    batch = header(2) + long_form + raw_update(b"t", b"f", F1, b"")
    assert b.find_ham_souls(batch, b"s") == [(5, 5 + len(long_form))]
    # more matches than the C wrapper first makes room for
    ups = [HamUpdate(MARK if i % 3 else b"pub", b"f%d" % i, 1.0, b"v") for i in range(500)]
    batch = encode_ham_batch(ups)
    spans = b.find_ham_souls(batch, MARK)
    assert len(spans) == sum(1 for u in ups if u.soul == MARK)
    assert [one(batch[s:e]) for s, e in spans] == [u for u in ups if u.soul == MARK]


def test_c_contract() -> None:
    require_native()
    ffi, lib = _core.ffi, _core.lib
    batch = encode_ham_batch([HamUpdate(b"~a%d" % i, b"f", 1.0, b"v") for i in range(3)])
    spans = ffi.new("uint64_t[]", 6)
    found = ffi.new("size_t *")

    def call(data: bytes, cap: int, prefix: bytes = b"~") -> int:
        found[0] = 99
        return int(lib.dtp_ham_find_souls(data, len(data), prefix, len(prefix), spans, cap, found))

    assert call(batch, 6) == 0 and found[0] == 3
    assert list(spans) == [5, 21, 21, 37, 37, 53]  # 16 bytes an update
    # too little room: the count is told and the spans that fit written
    ffi.memmove(spans, bytes(48), 48)
    assert call(batch, 3) == ErrorCode.BUFFER and found[0] == 3
    assert list(spans) == [5, 21, 0, 0, 0, 0]  # one whole span fits in three
    assert call(batch, 0, b"nothing") == 0 and found[0] == 0
    # a malformed batch is reported as such whatever the room
    assert call(batch[:-1], 0) == ErrorCode.HAM_MALFORMED and found[0] == 0
    assert call(b"", 6) == ErrorCode.HAM_MALFORMED
    assert lib.dtp_ham_find_souls(ffi.NULL, 1, b"~", 1, spans, 6, found) == ErrorCode.ARG
    assert lib.dtp_ham_find_souls(batch, len(batch), ffi.NULL, 1, spans, 6, found) == ErrorCode.ARG
    assert lib.dtp_ham_find_souls(batch, len(batch), b"~", 1, ffi.NULL, 6, found) == ErrorCode.ARG
    assert lib.dtp_ham_find_souls(batch, len(batch), b"~", 1, spans, 6, ffi.NULL) == ErrorCode.ARG


# -- filter_batch ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def owner() -> HostIdentity:
    return HostIdentity.generate()


def signed(owner: HostIdentity, path: str, value: bytes) -> HamUpdate:
    soul = namespace.user_soul(owner, path).encode()
    return HamUpdate(soul, b"f", 1.0, namespace.seal(owner, soul, b"f", 1.0, value))


def test_filter_drops_only_the_refused_and_keeps_the_rest_as_sent(owner: HostIdentity) -> None:
    good = signed(owner, "a", b'"ok"')
    forged = good._replace(soul=namespace.user_soul(owner, "b").encode())  # bad signature
    other = HostIdentity.generate()
    wrong = signed(other, "c", b'"x"')._replace(soul=namespace.user_soul(owner, "c").encode())
    unsigned = HamUpdate(namespace.user_soul(owner, "d").encode(), b"f", 1.0, b'"x"')
    marker_in_value = HamUpdate(b"pub", b"f", 1.0, b'"' + MARK + b'"')
    malformed_hex = HamUpdate(b"~0x" + b"zz" * 32, b"f", 1.0, b"1")  # public: not hex
    # a public update with non-minimal varints: kept byte for byte
    long_form = b"\x40\x03pub\x80\x00\x00\x01g" + F1 + b"\xc0" + bytes(6) + b"\x01v"
    parts = [good, forged, marker_in_value, wrong, malformed_hex, unsigned]
    body = b"".join(encode_ham_batch([u])[5:] for u in parts)
    batch = header(len(parts) + 1) + body + long_form
    out, refused = namespace.filter_batch(batch)
    assert refused == {
        namespace.BAD_SIGNATURE: 1,
        namespace.WRONG_KEY: 1,
        namespace.UNSIGNED: 1,
    }
    kept = [good, marker_in_value, malformed_hex]
    assert out == header(4) + b"".join(encode_ham_batch([u])[5:] for u in kept) + long_form
    assert decode_ham_batch(out)[:3] == kept


def test_filter_decodes_only_the_claimed_updates(
    owner: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real = graph_batch.decode_ham_batch

    def counting(batch: Any) -> list[HamUpdate]:
        got = real(batch)
        decoded.append(len(got))
        return got

    monkeypatch.setattr(graph_batch, "decode_ham_batch", counting)
    public = [HamUpdate(b"pub/%d" % i, b"f", 1.0, b"1") for i in range(2000)]
    public[7] = public[7]._replace(value=b'"' + MARK + b'"')
    batch = encode_ham_batch([*public, signed(owner, "a", b"1"), signed(owner, "b", b"2")])
    assert namespace.filter_batch(batch) == (batch, {})
    assert sum(decoded) == 2  # the two signed updates, not the 2002


def test_a_graph_refuses_forgeries_among_many_public_updates(owner: HostIdentity) -> None:
    g = Graph()
    try:
        good = signed(owner, "a", b'"ok"')
        forged = good._replace(value=good.value[:-1] + b"!")
        public = [HamUpdate(b"pub/%d" % i, b"f", 1.0, b"1") for i in range(300)]
        report = g.merge(encode_ham_batch([*public[:150], forged, good, *public[150:]]))
        assert report.refused == 1 and report.applied == 301
        assert g.snapshot()[(good.soul, b"f")] == (1.0, good.value)
    finally:
        g.close()


# -- zero_negative_states: the same cure for the graph's -0.0 rewrite -------------------------
#
# Graph.merge writes a state of -0.0 as 0.0 before anything else (tables must keep the
# same bits for one state). A batch holding the 8 bytes of -0.0 anywhere -- a peer need
# only put them in a value -- was decoded and encoded again whole in Python; the C core
# now rewrites those states in place.

NEG = struct.pack("<d", -0.0)
states = st.sampled_from([0.0, -0.0, 1.0, -1.5])


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
@given(
    ups=st.lists(
        st.builds(HamUpdate, souls, st.just(b"f"), states, st.binary(max_size=12)), max_size=20
    )
)
def test_negative_zero_states_become_zero(b: SimpleNamespace, ups: list[HamUpdate]) -> None:
    batch = encode_ham_batch(ups)
    fixed, changed = b.zero_negative_states(batch)
    assert changed == sum(1 for u in ups if u.state == 0.0 and math.copysign(1, u.state) < 0)
    assert decode_ham_batch(fixed) == [u._replace(state=u.state + 0.0) for u in ups]
    assert len(fixed) == len(batch)
    assert all(math.copysign(1, u.state) > 0 for u in decode_ham_batch(fixed) if u.state == 0)


@given(data=st.binary(max_size=200), lead=st.sampled_from([b"", header(1), header(2)]))
def test_zero_states_differential_garbage(data: bytes, lead: bytes) -> None:
    require_native()
    batch = lead + data
    got = outcome(NATIVE.zero_negative_states, batch)
    assert got == outcome(REFERENCE.zero_negative_states, batch)
    decoded = outcome(decode_ham_batch, batch)
    assert got[0] == decoded[0] and (got[0] == "ok" or got[1] == decoded[1])


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
def test_only_the_state_bytes_change(b: SimpleNamespace) -> None:
    # non-minimal varints stay as sent; a -0.0 inside a value is a value, not a state
    long_form = b"\x40\x01s\x80\x00\x00\x01f" + NEG + b"\xc0" + bytes(6) + b"\x08" + NEG
    batch = header(2) + long_form + raw_update(b"t", b"f", F1, NEG)
    fixed, changed = b.zero_negative_states(batch)
    assert changed == 1
    assert (
        fixed
        == header(2)
        + long_form.replace(NEG + b"\xc0", bytes(8) + b"\xc0")
        + batch[5 + len(long_form) :]
    )
    with pytest.raises(RemoteProtocolError):
        b.zero_negative_states(batch[:-1])


def test_c_zero_states_contract() -> None:
    require_native()
    ffi, lib = _core.ffi, _core.lib
    changed = ffi.new("size_t *")
    batch = bytearray(encode_ham_batch([HamUpdate(b"s", b"f", -0.0, b"v")]))
    broken = bytearray(batch[:-1])
    before = bytes(broken)
    assert lib.dtp_ham_zero_states(ffi.from_buffer(broken), len(broken), changed) == (
        ErrorCode.HAM_MALFORMED
    )
    assert bytes(broken) == before  # nothing changes in a malformed batch
    assert lib.dtp_ham_zero_states(ffi.NULL, 1, changed) == ErrorCode.ARG
    assert lib.dtp_ham_zero_states(ffi.from_buffer(batch), len(batch), ffi.NULL) == ErrorCode.ARG
    assert lib.dtp_ham_zero_states(ffi.from_buffer(batch), len(batch), changed) == 0
    assert changed[0] == 1 and NEG not in batch


def test_a_graph_merges_a_batch_with_negative_zero_in_values_without_python_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dtp.native.reference._ham as reference

    calls: list[int] = []
    real = reference._walk

    def counting(buf: bytes) -> Any:
        calls.append(len(buf))
        return real(buf)

    monkeypatch.setattr(reference, "_walk", counting)
    # (what the graph used before: the whole batch through the Python decoder)
    monkeypatch.setattr(
        "dtp.graph._merges.decode_ham_batch", lambda b: calls.append(len(b)), raising=False
    )
    ups = [
        HamUpdate(b"pub/%d" % i, b"f", 1.0, b'"' + NEG.hex().encode() + b'"') for i in range(500)
    ]
    ups[3] = ups[3]._replace(value=NEG)  # the 8 bytes themselves, in a value
    ups[9] = ups[9]._replace(state=-0.0)
    g = Graph()
    try:
        report = g.merge(encode_ham_batch(ups))
        assert report.applied == 500
        state, _ = g.snapshot()[(b"pub/9", b"f")]
        assert state == 0.0 and math.copysign(1, state) > 0
    finally:
        g.close()
    if _core.BACKEND == "c":
        assert calls == []  # no update went through the Python walker
