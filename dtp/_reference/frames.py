"""PLACEHOLDER twin: to be implemented."""
def decode_frames(*a, **k): raise NotImplementedError
encode_frames = parse_records = write_record_header = decode_frames
