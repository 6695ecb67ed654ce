"""Hypothesis strategies for frames a peer that holds the session keys can send (the
transport fuzz tests seal them into records)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PADDING,
    FRAME_PING,
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)


def any_frame(
    *,
    big: Sequence[int],
    stream_ids: Sequence[int],
    offsets: Sequence[int],
    data: Sequence[bytes],
    control_kinds: Sequence[int],
    highest_ack: int,
    padding: bool = False,
) -> st.SearchStrategy[RawFrame]:
    """One frame of any type, its fields drawn from the values given (``big``: credits,
    error codes and ACK delays; ``highest_ack``: the largest record number an ACK
    names; ``padding``: PADDING frames too)."""
    big_ = st.sampled_from(list(big))
    sid = st.sampled_from(list(stream_ids))
    offset = st.sampled_from(list(offsets))
    payload = st.sampled_from(list(data))
    kinds = [
        st.builds(lambda s, o, d: RawFrame(FRAME_STREAM, s, o, 0, d), sid, offset, payload),
        st.builds(lambda s, o, d: RawFrame(FRAME_STREAM_FIN, s, o, 0, d), sid, offset, payload),
        st.builds(lambda s, e, f: RawFrame(FRAME_RESET_STREAM, s, e, f), sid, big_, offset),
        st.builds(lambda s, e: RawFrame(FRAME_STOP_SENDING, s, e), sid, big_),
        st.builds(lambda s, m: RawFrame(FRAME_MAX_STREAM_DATA, s, m), sid, big_),
        st.builds(lambda m: RawFrame(FRAME_MAX_DATA, m), big_),
        st.builds(lambda m: RawFrame(FRAME_MAX_STREAMS, m), big_),
        st.builds(
            lambda hi, width, delay: RawFrame(
                FRAME_ACK, c=delay, ranges=((max(0, hi - width), hi),)
            ),
            st.integers(0, highest_ack),
            st.integers(0, 5),
            big_,
        ),
        st.builds(
            lambda k, d: RawFrame(FRAME_CONTROL, k, 0, 0, d),
            st.sampled_from(list(control_kinds)),
            payload,
        ),
        st.builds(lambda d: RawFrame(FRAME_DATAGRAM, 0, 0, 0, d), payload),
        st.builds(lambda d: RawFrame(FRAME_RECEIPT, 0, 0, 0, d), payload),
        st.builds(lambda c, d: RawFrame(FRAME_CLOSE, c, 0, 0, d), big_, payload),
        st.just(RawFrame(FRAME_PING)),
    ]
    if padding:
        kinds.append(st.builds(lambda n: RawFrame(FRAME_PADDING, n), st.integers(1, 300)))
    return st.one_of(*kinds)
