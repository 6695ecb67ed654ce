from hypothesis import given
from hypothesis import strategies as st

from dtp.native.reference._varint import VARINT_MAX, varint_decode, varint_encode, varint_size
from tests.support.vectors import load_vectors


def test_protocol_vectors() -> None:
    vectors = load_vectors("varint")
    assert len(vectors) == 4
    for v in vectors:
        assert varint_encode(v["value"]) == bytes.fromhex(v["hex"]), v["name"]
        assert varint_decode(bytes.fromhex(v["hex"]), 0) == (v["value"], len(v["hex"]) // 2)


@given(st.integers(min_value=0, max_value=VARINT_MAX))
def test_roundtrip_minimal(value: int) -> None:
    enc = varint_encode(value)
    assert enc is not None and len(enc) == varint_size(value)
    assert varint_decode(enc, 0) == (value, len(enc))


def test_out_of_range_and_short_input() -> None:
    assert varint_encode(VARINT_MAX + 1) is None
    assert varint_encode(-1) is None
    assert varint_decode(b"\x40", 0) is None
    assert varint_decode(b"", 0) is None
    # non-minimal encodings decode (RFC 9000 allows them)
    assert varint_decode(b"\x40\x25", 0) == (37, 2)
