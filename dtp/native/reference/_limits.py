"""Limits of the C core (mirrors the #defines in dtp_core/dtp_core.h)."""

VARINT_MAX = 2**62 - 1
RECORD_HEADER_LEN = 12
AEAD_TAG_LEN = 16
AEAD_KEY_LEN = 32
MAX_RECORD_PLAINTEXT = 16384
MAX_HANDSHAKE_RECORD = 4096
MAX_FRAME_DATA = 16384
MAX_CLOSE_REASON = 1024
MAX_RECEIPT = 1024
MAX_ACK_RANGES = 256
REPLAY_WINDOW = 4096

# 2: ties between values in UTF-16 order, as GunDB breaks them (1 compared the bytes)
HAM_BATCH_VERSION = 2
HAM_BATCH_HEADER_LEN = 5
HAM_MAX_KEY = 1024
HAM_MAX_VALUE = 1048576
HAM_MAX_UPDATES = 4000000
# the largest batch an export makes, whatever size it is allowed: the buffer it is made
# in is allocated whole, so export(max_batch_bytes=2**40) would ask for a terabyte
HAM_EXPORT_MAX_BATCH = 64 << 20
# the smallest: one maximal entry (keys, state, value, lengths) always fits
HAM_EXPORT_MIN_BATCH = HAM_BATCH_HEADER_LEN + 3 * HAM_MAX_KEY + 8 + HAM_MAX_VALUE + 16
