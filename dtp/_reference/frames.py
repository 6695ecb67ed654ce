"""PLACEHOLDER twin of frame encode/decode: to be implemented."""

from dtp._reference.records import parse_records, write_record_header


def decode_frames(*a, **k):  # type: ignore[no-untyped-def]
    raise NotImplementedError


encode_frames = decode_frames
__all__ = ["decode_frames", "encode_frames", "parse_records", "write_record_header"]
