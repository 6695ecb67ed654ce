"""Pure-Python twins of every C entry point (the readable spec of the C core).

Each name here has the same signature and results as its C-backed counterpart in
:mod:`dtp.native.core`; ``DTP_PUREPYTHON=1`` makes the whole package use these. Hypothesis
tests check that both backends agree on outputs and error codes.
"""

from dtp.native.reference._aead import Aead
from dtp.native.reference._frames import (
    decode_frames,
    encode_frames,
    parse_records,
    write_record_header,
)
from dtp.native.reference._ham import (
    HamGraph,
    decode_ham_batch,
    encode_ham_batch,
    find_ham_souls,
    zero_negative_states,
)
from dtp.native.reference._lane import Lane
from dtp.native.reference._reasm import Reassembler

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
