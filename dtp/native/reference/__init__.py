"""Pure-Python twins of every C entry point (the readable spec of the C core).

Each name here has the same signature and results as its C-backed counterpart in
:mod:`dtp.native.core`; ``DTP_PUREPYTHON=1`` makes the whole package use these. Hypothesis
tests check that both backends agree on outputs and error codes.
"""

from dtp.native.reference.aead import Aead
from dtp.native.reference.frames import (
    decode_frames,
    encode_frames,
    parse_records,
    write_record_header,
)
from dtp.native.reference.ham import (
    HamGraph,
    decode_ham_batch,
    encode_ham_batch,
    find_ham_souls,
    zero_negative_states,
)
from dtp.native.reference.lane import Lane
from dtp.native.reference.reasm import Reassembler

__all__ = [
    "Aead",
    "HamGraph",
    "Lane",
    "Reassembler",
    "decode_frames",
    "decode_ham_batch",
    "encode_frames",
    "encode_ham_batch",
    "find_ham_souls",
    "parse_records",
    "write_record_header",
    "zero_negative_states",
]
