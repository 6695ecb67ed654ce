/*
 * dtp_core.h -- the one public header of the DTP C core.
 *
 * The C core has no I/O, no Python API and no global state: every function works on
 * buffers the caller owns and on context objects the caller creates and frees.
 * docs/protocol.md is the normative description of every byte format used here;
 * dtp/native/reference/ holds a pure-Python twin of every entry point.
 *
 * Return convention: 0 (DTP_OK) or a small positive status on success, a negative
 * DTP_ERR_* code on failure. Output parameters are only meaningful as documented per
 * function. Every length is checked; no function reads or writes outside the buffers
 * it is given.
 *
 * This file is also read by dtp_core/build_ffi.py as the cffi cdef: keep everything
 * between the CDEF markers free of preprocessor logic other than plain #define of
 * integer constants.
 */
#ifndef DTP_CORE_H
#define DTP_CORE_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */

/* ---- status and error codes ------------------------------------------------------ */
#define DTP_OK 0
#define DTP_NEED_MORE 1 /* input ends inside an item: feed more bytes and call again */
#define DTP_FULL 2      /* the output array is full: consume it and call again */
#define DTP_STOP 3      /* stopped before a record of a kind this call does not handle */
#define DTP_DUE 4       /* all input taken, and flow-control credit is now due */

#define DTP_ERR_BUFFER -1 /* caller's output buffer is too small (local misuse) */
#define DTP_ERR_ARG -2    /* invalid argument (local misuse) */
#define DTP_ERR_NOMEM -3  /* allocation failed */

#define DTP_ERR_VARINT -10          /* varint value >= 2^62 on encode */
#define DTP_ERR_FRAME_TYPE -11      /* unknown frame type */
#define DTP_ERR_FRAME_SIZE -12      /* a length field exceeds its cap */
#define DTP_ERR_FRAME_TRUNCATED -13 /* a frame runs past the end of a complete record */
#define DTP_ERR_FRAME_VALUE -14     /* a field value is invalid (see protocol.md) */

#define DTP_ERR_RECORD_KIND -20  /* unknown record kind */
#define DTP_ERR_RECORD_FLAGS -21 /* reserved record flag bits set */
#define DTP_ERR_RECORD_SIZE -22  /* record length outside [min, max] for its kind */

#define DTP_ERR_DECRYPT -30 /* AEAD authentication failed (detail-free on purpose) */
#define DTP_ERR_REPLAY -31  /* counter already seen or older than the replay window */
#define DTP_ERR_COUNTER -32 /* counter space exhausted (2^64 - 1 is reserved) */
#define DTP_ERR_CRYPTO -33  /* OpenSSL reported an internal failure */

#define DTP_ERR_REASM_WINDOW -40     /* data beyond the reassembly window (memory cap) */
#define DTP_ERR_REASM_FRAGMENTED -41 /* too many disjoint ranges buffered */

#define DTP_ERR_HAM_MALFORMED -50 /* truncated or inconsistent HAM batch */
#define DTP_ERR_HAM_STATE -51     /* state is NaN or infinite */
#define DTP_ERR_HAM_SIZE -52      /* soul, field, value or count beyond its cap */

/* (-60, -61: the lanes' DTP_ERR_IO and DTP_ERR_QUEUE, below) */

#define DTP_ERR_NOISE_TURN -70 /* Noise call out of turn (or after the handshake ended) */
#define DTP_ERR_NOISE_SIZE -71 /* Noise message shorter or longer than this step allows */
#define DTP_ERR_NOISE_DH -72   /* X25519 gave all zeros (a low-order public key) */

/* ---- limits (mirrored in dtp/native/reference/_limits.py) -------------------------------- */
#define DTP_VARINT_MAX 4611686018427387903 /* 2^62 - 1 (RFC 9000 section 16) */
#define DTP_RECORD_HEADER_LEN 12
#define DTP_AEAD_TAG_LEN 16
#define DTP_AEAD_KEY_LEN 32
#define DTP_MAX_RECORD_PLAINTEXT 16384
#define DTP_MAX_HANDSHAKE_RECORD 4096
#define DTP_MAX_FRAME_DATA 16384
/* The data bytes a STREAM record holds at any stream id and offset: its frame header
 * (type, two 8-byte varints, a 2-byte length) always fits beside them. */
#define DTP_MAX_STREAM_CHUNK 16363 /* DTP_MAX_RECORD_PLAINTEXT - 21 */
/* The longest head dtp_stream_seal_head puts before the caller's data (a message
 * framing's length prefix, say: RPC's is 4 bytes). */
#define DTP_MAX_SEAL_HEAD 64
#define DTP_MAX_CLOSE_REASON 1024
#define DTP_MAX_RECEIPT 1024
#define DTP_MAX_ACK_RANGES 256
#define DTP_REPLAY_WINDOW 4096

#define DTP_HAM_BATCH_VERSION 2 /* 2: ties in UTF-16 order (GunDB's); 1 compared bytes */
#define DTP_HAM_BATCH_HEADER_LEN 5
#define DTP_HAM_MAX_KEY 1024
#define DTP_HAM_MAX_VALUE 1048576
#define DTP_HAM_MAX_UPDATES 4000000

/* ---- records (frame.c) ------------------------------------------------------------ */
/* A record is a 12-byte header (kind u8, flags u8, length u16 LE, counter u64 LE)
 * followed by `length` bytes of body. For DATA records the body is ciphertext||tag and
 * the header is the AEAD associated data. */
#define DTP_REC_HS_INIT 1
#define DTP_REC_HS_RESP 2
#define DTP_REC_HS_FINAL 3
#define DTP_REC_DATA 16

typedef struct dtp_record {
    uint8_t kind;
    uint8_t flags;
    uint16_t reserved;
    uint32_t body_len; /* bytes of body (ciphertext + tag for DATA) */
    uint64_t counter;
    uint64_t offset; /* offset of the record header in the input buffer */
} dtp_record;

/* Split `buf` into whole records. Stops at the first incomplete record (DTP_NEED_MORE),
 * when `max_records` entries are filled (DTP_FULL) or at the end (DTP_OK). *consumed is
 * the number of bytes covered by the *n_records entries written. A malformed header
 * returns its negative code with *consumed / *n_records describing the good prefix. */
int dtp_records_parse(const uint8_t *buf, size_t len, dtp_record *out, size_t max_records,
                      size_t *n_records, size_t *consumed);

/* Write one record header at out[0..12). */
int dtp_record_header_write(uint8_t kind, uint8_t flags, uint32_t body_len, uint64_t counter,
                            uint8_t *out, size_t out_cap);

/* ---- frames (frame.c) ------------------------------------------------------------- */
#define DTP_FRAME_PADDING 0
#define DTP_FRAME_PING 1
#define DTP_FRAME_ACK 2
#define DTP_FRAME_MAX_DATA 3
#define DTP_FRAME_MAX_STREAM_DATA 4
#define DTP_FRAME_RESET_STREAM 5
#define DTP_FRAME_STOP_SENDING 6
#define DTP_FRAME_MAX_STREAMS 7
#define DTP_FRAME_STREAM 8
#define DTP_FRAME_STREAM_FIN 9
#define DTP_FRAME_CLOSE 10
#define DTP_FRAME_RECEIPT 11
#define DTP_FRAME_CONTROL 12
#define DTP_FRAME_DATAGRAM 13

/* One decoded (or to-be-encoded) frame. Field use per type is in protocol.md:
 *   PADDING: a = run length          ACK: a = first range index, b = range count,
 *   MAX_DATA: a = max                     c = ack delay (microseconds)
 *   MAX_STREAM_DATA: a = stream, b = max   RESET_STREAM: a = stream, b = code, c = final size
 *   STOP_SENDING: a = stream, b = code     MAX_STREAMS: a = max
 *   STREAM / STREAM_FIN: a = stream, b = offset, data = payload
 *   CLOSE: a = code, data = reason     RECEIPT: data     CONTROL: a = kind, data
 *   DATAGRAM: data
 * data_off/data_len locate the data: in the decode input, or in the encode data buffer.
 * reserved0/reserved1 are 0 in decoded frames and must be 0 on encode (else
 * DTP_ERR_FRAME_VALUE, checked with the type's unused fields). */
typedef struct dtp_frame {
    uint8_t type;
    uint8_t reserved0;
    uint16_t reserved1;
    uint32_t data_len;
    uint64_t data_off;
    uint64_t a;
    uint64_t b;
    uint64_t c;
} dtp_frame;

/* An acknowledged range of record counters, inclusive, largest range first. */
typedef struct dtp_ack_range {
    uint64_t lo;
    uint64_t hi;
} dtp_ack_range;

/* Decode frames from `buf`. If `complete` is nonzero, buf is a whole record body and a
 * frame running past its end is DTP_ERR_FRAME_TRUNCATED; otherwise that is
 * DTP_NEED_MORE, and so is a PADDING run that reaches the end (it may continue).
 * Stops with DTP_FULL when `frames` is full and input remains, or before an ACK whose
 * ranges do not fit in what is left of `ranges`. On any return, *n_frames / *n_ranges
 * / *consumed describe the frames fully decoded. Check order: protocol.md, 3.2. */
int dtp_frames_decode(const uint8_t *buf, size_t len, int complete, dtp_frame *frames,
                      size_t max_frames, dtp_ack_range *ranges, size_t max_ranges,
                      size_t *n_frames, size_t *n_ranges, size_t *consumed);

/* Encode `n` frames into `out`. Frame data is read from data[data_off, data_off+data_len);
 * ACK ranges from ranges[a, a+b). Every frame is validated (protocol.md, 3.3) before
 * anything is written; a slice outside `data` or `ranges` is DTP_ERR_ARG. Then
 * DTP_ERR_BUFFER if out_cap is too small. *written is 0 on any error. Encoding is
 * canonical (minimal varints). */
int dtp_frames_encode(const dtp_frame *frames, size_t n, const uint8_t *data, size_t data_len,
                      const dtp_ack_range *ranges, size_t n_ranges, uint8_t *out,
                      size_t out_cap, size_t *written);

/* ---- AEAD (aead.c) ---------------------------------------------------------------- */
/* A direction's key plus the receive replay window. ChaCha20-Poly1305 (RFC 8439) with
 * nonce = 4 zero bytes || counter as u64 LE, exactly as Noise's ChaChaPoly. */
typedef struct dtp_aead dtp_aead;

dtp_aead *dtp_aead_new(const uint8_t *key, size_t key_len);
void dtp_aead_free(dtp_aead *ctx);

/* Seal n DATA records with counters first_counter .. first_counter+n-1. Plaintexts are
 * consecutive in `plain`, lengths in lens[]. Output is header||ciphertext||tag for each
 * record, back to back. Needs out_cap >= sum(lens) + n * 28. */
int dtp_aead_seal_batch(dtp_aead *ctx, uint64_t first_counter, const uint8_t *plain,
                        size_t plain_len, const uint32_t *lens, size_t n, uint8_t *out,
                        size_t out_cap, size_t *written);

/* One opened record: where its plaintext landed in plain_out, its counter and status
 * (DTP_OK, or DTP_ERR_REPLAY for a duplicate/too-old record, whose plaintext is empty). */
typedef struct dtp_opened {
    uint64_t counter;
    uint64_t plain_off;
    uint32_t plain_len;
    int32_t status;
} dtp_opened;

/* Parse and open DATA records from `buf` (a byte stream: it may end mid-record).
 * Stops at: the end (DTP_OK), an incomplete record (DTP_NEED_MORE), a full `out`
 * or `plain_out` (DTP_FULL), a record of another kind (DTP_STOP; *consumed points at it),
 * an authentication failure (DTP_ERR_DECRYPT; *consumed points at the bad record), or a
 * malformed header (its code). Records before the stop are opened and reported. The
 * replay window only advances for records that authenticate. */
int dtp_aead_open_batch(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_opened *out,
                        size_t max_out, uint8_t *plain_out, size_t plain_cap, size_t *n_out,
                        size_t *consumed);

/* Seal stream bytes straight from the caller's buffer: the fast path for STREAM data.
 * data[0..len) is cut into chunks in order (len 0 gives one empty chunk), and chunk i
 * becomes one DATA record (counter first_counter+i) whose plaintext is a single frame:
 * STREAM, or STREAM_FIN for the last chunk when fin is nonzero, with stream id, the
 * chunk's stream offset, its length (minimal varints, exactly as dtp_frames_encode
 * writes them) and the chunk. A chunk is max_chunk bytes, or what is left, or -- where
 * the frame header beside max_chunk bytes would take the plaintext past 16384 -- the
 * bytes that fill the plaintext to exactly 16384 (max_chunk DTP_MAX_FRAME_DATA: every
 * record but the last full; DTP_MAX_STREAM_CHUNK or less: every chunk max_chunk bytes
 * but the last).
 * Checks, in order: NULL pointers -> DTP_ERR_ARG; max_chunk 0 -> DTP_ERR_ARG;
 * max_chunk > 16384 -> DTP_ERR_FRAME_SIZE; stream_id or offset > DTP_VARINT_MAX ->
 * DTP_ERR_VARINT; offset + len > DTP_VARINT_MAX -> DTP_ERR_FRAME_VALUE; counters past
 * 2^64 - 2 -> DTP_ERR_COUNTER; out_cap below the exact output size -> DTP_ERR_BUFFER.
 * Nothing is written on error. On success *written bytes and *n_records records;
 * dtp_stream_seal_size gives the size. */
int dtp_stream_seal(dtp_aead *ctx, uint64_t first_counter, uint64_t stream_id, uint64_t offset,
                    const uint8_t *data, size_t len, int fin, size_t max_chunk, uint8_t *out,
                    size_t out_cap, size_t *written, size_t *n_records);

/* dtp_stream_seal of head[0..head_len) || data[0..len), without the caller joining them
 * first (a message's length prefix and its body: one record, no copy of the body). The
 * records, their cuts and their checks are those of dtp_stream_seal over the joined
 * bytes (len there is head_len + len); head_len above DTP_MAX_SEAL_HEAD, or a NULL head
 * with head_len > 0 -> DTP_ERR_ARG; head_len + len past SIZE_MAX -> DTP_ERR_FRAME_VALUE.
 * dtp_stream_seal_size(stream_id, offset, head_len + len, max_chunk) gives the size. */
int dtp_stream_seal_head(dtp_aead *ctx, uint64_t first_counter, uint64_t stream_id,
                         uint64_t offset, const uint8_t *head, size_t head_len,
                         const uint8_t *data, size_t len, int fin, size_t max_chunk,
                         uint8_t *out, size_t out_cap, size_t *written, size_t *n_records);

/* A served stream's last record: one DATA record (counter `counter`) whose plaintext is
 * a STREAM_FIN frame of data[0..len) at `offset` and, when max_streams is not 0, a
 * MAX_STREAMS frame of max_streams after it (minimal varints, as dtp_frames_encode
 * writes them): an answer and the stream credit its end returns, in one record. (0:
 * no credit; a MAX_STREAMS of 0 would raise no limit, and a stream's end raises the
 * limit to 1 at least.)
 * Checks, in order: NULL pointers -> DTP_ERR_ARG; stream_id, offset or max_streams >
 * DTP_VARINT_MAX -> DTP_ERR_VARINT; offset + len > DTP_VARINT_MAX -> DTP_ERR_FRAME_VALUE;
 * a plaintext past DTP_MAX_RECORD_PLAINTEXT -> DTP_ERR_RECORD_SIZE; counter 2^64 - 1 ->
 * DTP_ERR_COUNTER; out_cap below the record's size (its plaintext + 28) ->
 * DTP_ERR_BUFFER. Nothing is written on error; on success *written bytes. */
int dtp_stream_seal_last(dtp_aead *ctx, uint64_t counter, uint64_t stream_id, uint64_t offset,
                         const uint8_t *data, size_t len, uint64_t max_streams, uint8_t *out,
                         size_t out_cap, size_t *written);

/* Output size of dtp_stream_seal for these arguments (0 if they are invalid). */
size_t dtp_stream_seal_size(uint64_t stream_id, uint64_t offset, size_t len, size_t max_chunk);

/* One record opened by dtp_aead_open_frames: its counter, where its plaintext landed in
 * plain_out, its status (DTP_OK, or DTP_ERR_REPLAY with no plaintext and no frames) and
 * its frames, frames[first_frame .. first_frame + n_frames). */
typedef struct dtp_opened_rec {
    uint64_t counter;
    uint64_t plain_off;
    uint32_t plain_len;
    int32_t status;
    uint32_t first_frame;
    uint32_t n_frames;
} dtp_opened_rec;

/* dtp_aead_open_batch and dtp_frames_decode (complete = 1) of each record in one call.
 * Frames of all records go to frames[] / ranges[] in order; a frame's data_off is an
 * offset into plain_out (every frame's but an ACK's, with data or without: inside its
 * record's plaintext) and an ACK's `a` indexes ranges[] (as in dtp_frames_decode with
 * the arrays shared). Stops as dtp_aead_open_batch does (end, incomplete record, record
 * of another kind, bad header, authentication failure), and with DTP_FULL before a
 * record when recs[] is full, plain_out has no room for its plaintext, or its frames or
 * ranges do not fit in the slots left. A record whose frames do not decode stops the
 * call with the decoder's code. Neither kind of stopping record is reported, and the
 * replay window only advances for reported records (a full stop opens it again next
 * call). *consumed is the bytes of the reported records. */
int dtp_aead_open_frames(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_opened_rec *recs,
                         size_t max_recs, uint8_t *plain_out, size_t plain_cap,
                         dtp_frame *frames, size_t max_frames, dtp_ack_range *ranges,
                         size_t max_ranges, size_t *n_recs, size_t *n_frames, size_t *n_ranges,
                         size_t *consumed);

/* What dtp_aead_open_lone_frame opens: the record's counter and its one frame. */
typedef struct dtp_lone_frame {
    uint64_t counter;
    dtp_frame frame;
} dtp_lone_frame;

/* dtp_aead_open_frames of a buffer that is one record of one frame (a short call's
 * request or answer, a quiet flow's datagram), without its arrays: when buf[0..len) is
 * exactly one DATA record whose plaintext decodes to exactly one frame, not an ACK, the
 * record is opened into plain_out (the replay window advances for it), its counter and
 * frame (data_off an offset into plain_out) go to *out, and the call returns DTP_OK.
 * Anything else -- more or less than one record, another kind, a malformed header, a
 * reserved, replayed or forged counter, other frames, a plaintext that does not decode,
 * plain_cap below the plaintext -- returns DTP_STOP with nothing changed and none of the
 * plaintext left in plain_out, for dtp_aead_open_frames to open and judge.
 * NULL pointers -> DTP_ERR_ARG. */
int dtp_aead_open_lone_frame(dtp_aead *ctx, const uint8_t *buf, size_t len, uint8_t *plain_out,
                             size_t plain_cap, dtp_lone_frame *out);

/* The receive side of an established stream's fast path: where one stream's in-order
 * bytes go, and the flow-control limits they must stay within. The caller fills the
 * inputs; dtp_rx_take advances offset and conn_received and fills the outputs. */
typedef struct dtp_rx {
    uint64_t stream_id;     /* in: the stream whose bytes are taken */
    uint64_t offset;        /* in/out: the stream's next byte */
    uint64_t stream_limit;  /* in: offset + bytes taken must stay <= this */
    uint64_t conn_received; /* in/out: the connection's bytes received so far */
    uint64_t conn_limit;    /* in: conn_received must stay <= this */
    uint64_t consumed;      /* out: input bytes of the records taken */
    uint64_t records;       /* out: records taken */
    uint64_t taken;         /* out: bytes written to dst */
    uint64_t spill_off;     /* out: data of the last record that did not fit in dst ... */
    uint64_t spill_len;     /* ... is at scratch[spill_off .. spill_off + spill_len) */
} dtp_rx;

/* Take the DATA records at the start of buf[0..len) while each one's plaintext is exactly
 * one STREAM frame (not STREAM_FIN, not empty) of rx->stream_id at rx->offset that stays
 * within rx->stream_limit and rx->conn_limit: authenticate it (the replay window advances
 * for it), and copy its data to dst at rx->taken. Plaintext is opened into scratch, which
 * must hold DTP_MAX_RECORD_PLAINTEXT bytes. When a record's data does not fit in what is
 * left of dst, what fits is copied, the rest is reported as the spill (still in scratch,
 * valid until the next call) and the call ends there with DTP_FULL.
 * Stops, consuming nothing more, with DTP_OK at the end of buf, DTP_NEED_MORE before an
 * incomplete record, DTP_FULL when dst is full, and DTP_STOP before any other record --
 * of another kind, malformed, replayed, failing authentication, holding other frames or
 * breaking a limit -- for the general path (dtp_aead_open_frames) to open and judge;
 * nothing of such a record is written to dst and the replay window does not advance for
 * it (a record's tag is checked before its data is decrypted there). The bytes of dst
 * past rx->taken are unspecified after the call.
 * NULL pointers, or scratch_cap below DTP_MAX_RECORD_PLAINTEXT -> DTP_ERR_ARG. */
int dtp_rx_take(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_rx *rx, uint8_t *dst,
                size_t dst_cap, uint8_t *scratch, size_t scratch_cap);

/* dtp_rx_take with rx's inputs as arguments and its outputs in counts[0 ..
 * DTP_RX_COUNTS): consumed, records, taken, spill_off, spill_len at the DTP_RX_*
 * indices (the stream's and the connection's bytes both advance by taken + spill_len).
 * A caller from Python passes numbers and reads one array, where dtp_rx's fields cost an
 * attribute access each. Same statuses; counts all 0 on DTP_ERR_ARG, and counts NULL
 * or counts_len below DTP_RX_COUNTS -> DTP_ERR_ARG. */
#define DTP_RX_COUNTS 5
#define DTP_RX_CONSUMED 0
#define DTP_RX_RECORDS 1
#define DTP_RX_TAKEN 2
#define DTP_RX_SPILL_OFF 3
#define DTP_RX_SPILL_LEN 4
int dtp_rx_take_counts(dtp_aead *ctx, const uint8_t *buf, size_t len, uint64_t stream_id,
                       uint64_t offset, uint64_t stream_limit, uint64_t conn_received,
                       uint64_t conn_limit, uint8_t *dst, size_t dst_cap, uint8_t *scratch,
                       size_t scratch_cap, size_t *counts, size_t counts_len);

/* An established stream lent to the I/O adapter: the state that changes on every send
 * and receive of that stream, kept here (and not in the connection's own fields) for
 * as long as the connection lends it, so one call does a whole send or receive. The
 * connection fills the "in" fields when it lends the stream and reads the "in/out"
 * ones back when it takes it back. */
typedef struct dtp_flow {
    uint64_t stream_id;        /* in: the stream lent */
    uint32_t can_send;         /* in: its bytes may be sealed here (0 / 1) */
    uint32_t can_recv;         /* in: its bytes may be taken here (0 / 1) */
    uint64_t send_counter;     /* in/out: the connection's next record counter */
    uint64_t send_offset;      /* in/out: the stream's next byte to send */
    uint64_t send_limit;       /* in: send_offset must stay <= this (peer's credit) */
    uint64_t conn_sent;        /* in/out: the connection's stream bytes sent so far */
    uint64_t conn_send_limit;  /* in: conn_sent must stay <= this */
    uint64_t records_sent;     /* in/out: records sealed */
    uint64_t wire_sent;        /* in/out: bytes sealed */
    double last_sent;          /* in/out: `now` of the last seal */
    dtp_rx rx;                 /* in/out: the receive side, as for dtp_rx_take */
    uint64_t credit_offset;    /* in: the stream's credit is due once rx.offset passes this */
    uint64_t credit_conn;      /* in: the connection's once rx.conn_received passes this */
    uint64_t records_received; /* in/out: records taken */
    uint64_t wire_received;    /* in/out: bytes of the records taken */
    double last_received;      /* in/out: `now` of the last take that took a record */
    uint64_t taken;            /* out: data bytes of the last call (sealed, or into dst) */
    uint64_t written;          /* out: bytes dtp_flow_seal wrote to out */
    uint32_t take_credit;      /* in: dtp_flow_take may take the peer's credit records (0 /
                                  1): only while no data waits for that credit elsewhere */
} dtp_flow;

/* Seal the start of data[0..len) as STREAM records of the lent stream: as much as both
 * send limits allow and out holds (records cut as dtp_stream_seal cuts them, max_chunk 1
 * to DTP_MAX_FRAME_DATA, else DTP_ERR_ARG). Advances the counters and sets taken /
 * written. DTP_STOP, sealing nothing, when the stream may not send here, len is 0, or
 * there is no credit; negative on error (nothing advances). */
int dtp_flow_seal(dtp_aead *ctx, dtp_flow *f, const uint8_t *data, size_t len,
                  size_t max_chunk, uint8_t *out, size_t out_cap, double now);

/* dtp_rx_take on the lent stream, counting what it takes: same results in f->rx and the
 * same statuses, plus DTP_DUE in place of DTP_OK when credit is due after it; DTP_STOP,
 * taking nothing, when the stream's bytes may not be taken here. With f->take_credit,
 * where the take stops before a small record that holds only credit for the stream's sending (MAX_DATA,
 * MAX_STREAM_DATA of f's stream: the peer's window updates), that record is taken too
 * -- authenticated, its limits raising send_limit / conn_send_limit, counted in
 * rx.consumed and rx.records -- and the take goes on after it. */
int dtp_flow_take(dtp_aead *ctx, dtp_flow *f, const uint8_t *buf, size_t len, uint8_t *dst,
                  size_t dst_cap, uint8_t *scratch, size_t scratch_cap, double now);

/* ---- the lent stream's carrier I/O (flowio.c) -------------------------------------- */
/* Everything a send or a read of the lent stream needs besides the data, so that each
 * is one call with few arguments. The caller allocates the buffers and fills the "in"
 * fields once (a connection's lane lives as long as the connection). */
typedef struct dtp_lane {
    dtp_aead *send;     /* in: the connection's sending AEAD */
    dtp_aead *recv;     /* in: its receiving AEAD */
    dtp_flow *flow;     /* in: the lent stream */
    uint8_t *out;       /* in: where dtp_lane_send seals, out_cap bytes */
    uint64_t out_cap;
    uint64_t max_chunk; /* in: as dtp_flow_seal's (<= DTP_MAX_FRAME_DATA) */
    uint8_t *rbuf;      /* in: where dtp_lane_recv reads the carrier, rbuf_cap bytes */
    uint64_t rbuf_cap;  /*     (more than a record: DTP_MAX_RECORD_PLAINTEXT + 28) */
    uint8_t *scratch;   /* in: DTP_MAX_RECORD_PLAINTEXT bytes for dtp_flow_take */
    uint64_t scratch_cap;
    uint64_t pending;   /* in/out: the start of a record at rbuf[0 .. pending), whose
                           rest the carrier has not brought yet (taken before new bytes) */
    uint64_t end;       /* out: bytes in rbuf after the last read (pending + got) */
    uint64_t got;       /* out: bytes the last read took from the carrier */
    uint64_t sent;      /* out: bytes of out[0 .. flow->written) the last send wrote */
    int32_t status;     /* out: the last dtp_lane_recv's status (see there) */
    int32_t err;        /* out: the errno of a failed read or write (with DTP_ERR_IO) */
} dtp_lane;

#define DTP_WAIT 5        /* nothing to read yet, or the timeout passed */
#define DTP_READY 6       /* dtp_wait_readable: fd is readable */
#define DTP_WAKE 7        /* dtp_wait_readable: wake_fd is readable */
#define DTP_EOF 8         /* dtp_lane_recv: the peer closed the carrier */
#define DTP_ERR_IO -60    /* a wait, read or write failed: the errno is in err */
#define DTP_ERR_QUEUE -61 /* dtp_lane_send: sealed, but the carrier took only part */

/* Wait up to timeout_ms (negative: forever) until fd or wake_fd (if >= 0) is readable:
 * DTP_WAKE if wake_fd is, else DTP_READY if fd is, DTP_WAIT on timeout or interruption,
 * DTP_ERR_IO (errno in *err) if poll() fails. */
int dtp_wait_readable(int fd, int wake_fd, int timeout_ms, int *err);

/* The carrier's next n bytes were written at rbuf[pending .. pending + n): dtp_flow_take
 * everything from the start of rbuf into dst[0 .. dst_cap), stamping f->last_received
 * with CLOCK_MONOTONIC (the clock of Python's time.monotonic). When the take ends
 * inside a record (DTP_NEED_MORE), that record's bytes move to the start of rbuf and
 * stay pending for the next call. Returns the bytes taken into dst, with L->status
 * DTP_OK or (a record pending) DTP_NEED_MORE; or 0 with L->status DTP_NEED_MORE (no
 * record whole yet); DTP_DUE (all taken as with DTP_OK / DTP_NEED_MORE, flow->rx.taken
 * bytes into dst, but credit is due: the connection takes the stream back); or the
 * take's DTP_FULL, DTP_STOP: then nothing stays pending, flow->rx tells what was taken
 * and consumed, and rbuf[flow->rx.consumed .. L->end) is for the general path.
 * Negative on error (DTP_ERR_ARG, or the take's). */
int64_t dtp_lane_take(dtp_lane *L, size_t n, uint8_t *dst, size_t dst_cap);

/* Read the carrier fd (non-blocking) once into rbuf after the pending bytes, and
 * dtp_lane_take what came: its result, or 0 with L->status DTP_WAIT (nothing to read)
 * or DTP_EOF; DTP_ERR_IO when the read fails (errno in L->err). L->got: the bytes
 * read. */
int64_t dtp_lane_recv(dtp_lane *L, int fd, uint8_t *dst, size_t dst_cap);

/* dtp_flow_seal as much of data[0..len) as the limits and out allow, stamped with
 * CLOCK_MONOTONIC, then write the records to the carrier fd (non-blocking, no
 * SIGPIPE). Returns the bytes of data sealed (0: none, see dtp_flow_seal) when the
 * carrier took all the records; DTP_ERR_QUEUE when it took only L->sent bytes of
 * flow->written (flow->taken bytes of data were sealed: the caller queues the rest of
 * out); DTP_ERR_IO when the write failed (errno in L->err; the records stay sealed
 * and counted: the carrier is lost); another negative code from dtp_flow_seal. */
int64_t dtp_lane_send(dtp_lane *L, int fd, const uint8_t *data, size_t len);

/* Seal / open one message with an explicit counter and associated data (no record
 * header, no replay window): out = ciphertext || tag. Byte-compatible with Noise's
 * ChaChaPoly encrypt(k, n, ad, plaintext). open_one returns DTP_ERR_DECRYPT on any
 * authentication failure and writes no plaintext then. */
int dtp_aead_seal_one(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                      const uint8_t *plain, size_t plain_len, uint8_t *out, size_t out_cap,
                      size_t *written);
int dtp_aead_open_one(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                      const uint8_t *ct, size_t ct_len, uint8_t *out, size_t out_cap,
                      size_t *written);

/* Highest counter accepted so far, and whether any has been (0 / 1). */
int dtp_aead_replay_top(const dtp_aead *ctx, uint64_t *top);

/* From now on accept records in counter order only: each must be the one after the
 * last accepted (the first, counter 0); any other is refused as the replay window
 * refuses a replay. For carriers that deliver records as they were sent (TCP), where a
 * record removed or moved on the way must not go unnoticed. Before any record was
 * accepted only (DTP_ERR_ARG after). */
int dtp_aead_set_in_order(dtp_aead *ctx);

/* ---- reassembly (reasm.c) --------------------------------------------------------- */
/* A reorder buffer over a byte sequence space (TCP-style sequence numbers = byte
 * offsets). Accepts chunks out of order, with duplicates and overlaps, and releases the
 * contiguous prefix. Memory is capped by `window`: bytes at or beyond
 * next_seq + window are refused. */
typedef struct dtp_reasm dtp_reasm;

typedef struct dtp_chunk {
    uint64_t seq;      /* sequence number (byte offset) of the chunk's first byte */
    uint64_t data_off; /* where the chunk's bytes start in the data buffer */
    uint32_t len;
    uint32_t reserved;
} dtp_chunk;

dtp_reasm *dtp_reasm_new(uint64_t start_seq, uint32_t window, uint32_t max_ranges);
void dtp_reasm_free(dtp_reasm *r);

/* Insert chunks. All chunks are validated before any is inserted, so an error changes
 * nothing. Bytes before next_seq (already released) are ignored; overlaps keep the
 * bytes that arrived first. */
int dtp_reasm_push(dtp_reasm *r, const dtp_chunk *chunks, size_t n, const uint8_t *data,
                   size_t data_len);

/* Release up to out_cap contiguous bytes starting at next_seq. */
int dtp_reasm_pop(dtp_reasm *r, uint8_t *out, size_t out_cap, size_t *written);

uint64_t dtp_reasm_next_seq(const dtp_reasm *r);   /* first byte not yet released */
uint64_t dtp_reasm_readable(const dtp_reasm *r);   /* contiguous bytes ready to pop */
uint64_t dtp_reasm_buffered(const dtp_reasm *r);   /* all bytes held, in order or not */

/* ---- HAM CRDT (ham.c) ------------------------------------------------------------- */
/* Batch wire form: version u8 (=2), count u32 LE, then count updates of
 *   varint soul_len, soul, varint field_len, field, f64 LE state, varint value_len, value.
 * Souls and fields are 1..DTP_HAM_MAX_KEY bytes, values 0..DTP_HAM_MAX_VALUE bytes (a
 * value's Gun text in UTF-8; at equal states the greater value wins, comparing the bytes
 * as UTF-16 code units compare: protocol.md 6.3). */
#define DTP_HAM_APPLIED 0    /* the update won and is now the field's value */
#define DTP_HAM_HISTORICAL 1 /* older than the current state, or lost the tie: ignored */
#define DTP_HAM_DEFERRED 2   /* state ahead of the machine clock: held for later */
#define DTP_HAM_SAME 3       /* identical state and value: nothing to do */
#define DTP_HAM_REJECTED 4   /* deferred queue full: dropped */

typedef struct dtp_ham dtp_ham;

/* seed: 16 random bytes keying the table's hash (peers choose souls and fields, so the
 * hash must not be predictable to them). */
dtp_ham *dtp_ham_new(size_t max_deferred_bytes, const uint8_t *seed, size_t seed_len);
void dtp_ham_free(dtp_ham *g);

/* Validate the whole batch (nothing changes if it is malformed), then merge updates in
 * order against machine_state. status[i] receives the outcome of update i (status_cap
 * must be >= the batch's count, else DTP_ERR_BUFFER before any change). `changed`
 * receives the applied updates as a batch in the same wire form; changed_cap >= len
 * always suffices. */
int dtp_ham_merge(dtp_ham *g, double machine_state, const uint8_t *batch, size_t len,
                  uint8_t *status, size_t status_cap, size_t *n_updates, uint8_t *changed,
                  size_t changed_cap, size_t *changed_len);

/* Validate the whole batch as dtp_ham_merge does (the same errors, in the same order)
 * and find the updates whose soul starts with `prefix`: the i-th of them spans bytes
 * spans[2i] to spans[2i+1] (exclusive) of the batch. *n_found receives how many there
 * are; when spans_cap (uint64s, two per update) cannot hold them all, DTP_ERR_BUFFER,
 * with the first spans_cap / 2 written. */
int dtp_ham_find_souls(const uint8_t *batch, size_t len, const uint8_t *prefix,
                       size_t prefix_len, uint64_t *spans, size_t spans_cap,
                       size_t *n_found);

/* Validate the whole batch as dtp_ham_merge does (nothing changes if it is malformed),
 * then write every state that is -0.0 as +0.0, in place; *n_changed receives how many
 * were. (States compare as numbers, so the two are one state: written alike, every
 * table keeps the same bits for it.) */
int dtp_ham_zero_states(uint8_t *batch, size_t len, size_t *n_changed);

/* Apply deferred updates whose state <= machine_state (in arrival order) and write the
 * ones that were applied to `changed` as a batch. changed_cap >= dtp_ham_deferred_bytes()
 * + DTP_HAM_BATCH_HEADER_LEN always suffices; a smaller one that cannot hold the updates
 * due gives DTP_ERR_BUFFER before any change, with *changed_len set to the room needed. */
int dtp_ham_advance(dtp_ham *g, double machine_state, uint8_t *changed, size_t changed_cap,
                    size_t *changed_len);

/* Look up one field: returns 1 and fills state/value (pointing into the table, valid
 * until the next call that changes g), or 0 if absent. */
int dtp_ham_get(const dtp_ham *g, const uint8_t *soul, size_t soul_len, const uint8_t *field,
                size_t field_len, double *state, const uint8_t **value, size_t *value_len);

/* Write table entries as a batch, starting at *cursor (0 to begin); advances *cursor.
 * Returns DTP_OK when the table is exhausted, DTP_FULL when out filled first. */
int dtp_ham_export(const dtp_ham *g, uint64_t *cursor, uint8_t *out, size_t out_cap,
                   size_t *written);

size_t dtp_ham_count(const dtp_ham *g);          /* fields in the table */
size_t dtp_ham_deferred_count(const dtp_ham *g); /* updates held for later */
size_t dtp_ham_deferred_bytes(const dtp_ham *g); /* their encoded size */

/* ---- a run of DATAGRAM frames (frame.c) -------------------------------------------- */
/* Encode n DATAGRAM frames, datagram i being data[offs[i] .. offs[i + 1]) (offs has
 * n + 1 entries), packed in order into records' plaintexts of at most `limit` bytes
 * each (1 <= limit <= DTP_MAX_RECORD_PLAINTEXT): a frame goes into the current record
 * while it fits, else it begins the next. The plaintexts are written back to back into
 * out, record k ending at ends[k]. Every datagram is checked before anything is written:
 * a slice outside data, or a bad limit, is DTP_ERR_ARG; a datagram above
 * DTP_MAX_FRAME_DATA, or whose frame fits no record, DTP_ERR_FRAME_SIZE. Then
 * DTP_ERR_BUFFER if out or ends is too small. Returns the number of records (0 for
 * n = 0). Encoding is dtp_frames_encode's (minimal varints). */
int64_t dtp_datagram_frames_encode(const uint8_t *data, size_t data_len, const uint64_t *offs,
                                   size_t n, size_t limit, uint8_t *out, size_t out_cap,
                                   uint64_t *ends, size_t ends_cap);

/* ---- UDP runs (udpio.c) ------------------------------------------------------------ */
#define DTP_UDP_RUN_MAX 64 /* datagrams per sendmmsg call */

/* Whether the socket fd takes a segmented send (UDP_SEGMENT: a UDP socket of a kernel
 * that knows the option): 1 or 0, DTP_ERR_ARG for fd < 0. The answer is the socket's
 * protocol's (the option's presence, not its value), so it holds for the socket's life
 * and for every socket of its family, type and protocol: dtp_udp_send_run's gso. */
int dtp_udp_takes_gso(int fd);

/* Send n datagrams on the UDP socket fd, datagram i being
 * data[offs[i] .. offs[i + 1]) (offs has n + 1 ascending entries, the last at most
 * data_len, else DTP_ERR_ARG before any send): to addr (a struct sockaddr of addr_len
 * bytes) or, addr NULL and addr_len 0, to the socket's connected peer. One sendmmsg
 * call per DTP_UDP_RUN_MAX datagrams, where a socket that takes it (gso: 1 when
 * dtp_udp_takes_gso said so of fd, 0 when it did not, negative to ask it here, a system
 * call per run of more than 2) takes datagrams of one size together as one segmented
 * (UDP_SEGMENT) message but for each call's first; a datagram the kernel refuses (a
 * full buffer, an ICMP error) is dropped and the rest still tried, the last errno in
 * *err (0 if none was refused); a full buffer refuses one only on a non-blocking fd, a
 * blocking one waits for room as send() does. Returns the number sent (their bytes in
 * *sent_bytes), or DTP_ERR_ARG. */
int64_t dtp_udp_send_run(int fd, const uint8_t *data, size_t data_len, const uint64_t *offs,
                         size_t n, const uint8_t *addr, uint32_t addr_len, int gso,
                         uint64_t *sent_bytes, int *err);

/* Read up to max (<= DTP_UDP_RUN_MAX) datagrams waiting on the UDP socket fd without
 * waiting (recvmmsg): datagram i into buf[i * slot ..), its length in lens[i] (a longer
 * one is cut to slot bytes, as recv cuts it); with addrs, its source into
 * addrs[i * addr_slot ..] (a struct sockaddr, addr_lens[i] bytes). buf holds buf_cap
 * bytes and addrs addrs_cap: below max * slot or max * addr_slot, DTP_ERR_ARG (lens and
 * addr_lens hold max entries). Returns how many were read (0: none waits), DTP_ERR_IO
 * with the errno in *err when the read failed (an ICMP error the kernel reports once,
 * on this read), or DTP_ERR_ARG. */
int64_t dtp_udp_recv_run(int fd, uint8_t *buf, size_t buf_cap, size_t slot, size_t max,
                         uint32_t *lens, uint8_t *addrs, size_t addrs_cap, uint32_t addr_slot,
                         uint32_t *addr_lens, int *err);

/* Of the n sources a dtp_udp_recv_run read into addrs (addr_slot bytes apart,
 * addr_lens[i] bytes each, addrs holding addrs_cap bytes), how many from the first are
 * the first's byte for byte: 1 to n (0 for n 0), or DTP_ERR_ARG when n slots overrun
 * addrs_cap or the first's length its slot. A burst of one client's datagrams is then
 * one source to the reader, not one to look up each. */
int64_t dtp_udp_same_source(const uint8_t *addrs, size_t addrs_cap, uint32_t addr_slot,
                            const uint32_t *addr_lens, size_t n);

/* ---- Noise handshakes (noise.c) --------------------------------------------------- */
/* Noise_IK and Noise_XX with 25519_ChaChaPoly_BLAKE2s (the Noise spec, revision 34),
 * message by message; docs/protocol.md section 3 says how DTP carries them, and
 * dtp/native/reference/_noise.py is the twin. The module takes no randomness: the
 * caller hands in the ephemeral key. X25519, BLAKE2s and ChaCha20-Poly1305 are
 * OpenSSL's. */
#define DTP_NOISE_IK 1 /* Noise_IK_25519_ChaChaPoly_BLAKE2s */
#define DTP_NOISE_XX 2 /* Noise_XX_25519_ChaChaPoly_BLAKE2s */
#define DTP_NOISE_KEY_LEN 32
#define DTP_NOISE_MAX_MESSAGE 65535 /* the Noise spec's limit on any message */
/* DH tokens, for dtp_noise_give_dh */
#define DTP_NOISE_EE 0
#define DTP_NOISE_ES 1
#define DTP_NOISE_SE 2
#define DTP_NOISE_SS 3

/* What stays the same for every handshake: the fetched BLAKE2s and ChaCha20-Poly1305.
 * Read-only once made: one may serve every thread at once. */
typedef struct dtp_noise_ctx dtp_noise_ctx;
dtp_noise_ctx *dtp_noise_ctx_new(void);
void dtp_noise_ctx_free(dtp_noise_ctx *ctx);

/* An X25519 private key and its public half (derived once, at creation). With
 * keep_results != 0 (a long-lived static key) the key keeps its last 256 static-static
 * results (token ss), under a lock of its own: a server answers the same clients again
 * and again. Ephemeral keys keep nothing. NULL if the key is not 32 bytes or OpenSSL
 * fails. */
typedef struct dtp_noise_key dtp_noise_key;
dtp_noise_key *dtp_noise_key_new(const uint8_t *priv, size_t priv_len, int keep_results);
void dtp_noise_key_free(dtp_noise_key *key);
int dtp_noise_key_public(const dtp_noise_key *key, uint8_t *out, size_t out_cap);
/* X25519 of the key with a peer's public key (32 bytes to out); DTP_ERR_NOISE_DH for a
 * low-order peer key. */
int dtp_noise_key_dh(dtp_noise_key *key, const uint8_t *pub, size_t pub_len, uint8_t *out,
                     size_t out_cap);
/* 1 if the key keeps its static-static result with pub, else 0 (also while another
 * thread holds its results: a hint, for deciding whether to make one ahead). */
int dtp_noise_key_kept(dtp_noise_key *key, const uint8_t *pub, size_t pub_len);

/* A handshake's state, in memory the caller owns (plain bytes: a copy is a snapshot).
 * It points at its two keys, which must outlive it. Read the fields only through the
 * functions below; it holds secrets until dtp_noise_split, so memory given back before
 * (a handshake abandoned or failed) goes through dtp_noise_wipe first. */
typedef struct dtp_noise {
    uint8_t pattern;    /* DTP_NOISE_IK or DTP_NOISE_XX */
    uint8_t initiator;  /* 1 on the side that writes message 1 */
    uint8_t done;       /* messages written or read so far */
    uint8_t flags;      /* which of k, rs, re, split keys are set (noise.c) */
    uint8_t given_mask; /* bit t: given[t] holds the result of DH token t */
    uint8_t reserved[3];
    uint64_t n; /* nonce of k */
    uint8_t h[32];
    uint8_t ck[32];
    uint8_t k[32];
    uint8_t rs[32];
    uint8_t re[32];
    uint8_t given[4][32];
    dtp_noise_key *s;
    dtp_noise_key *e;
} dtp_noise;

/* Start a handshake: Initialize(protocol name, prologue, s, e, rs) of the spec. e may be
 * NULL (then dtp_noise_set_ephemeral before the first message); rs (rs_len 32) is the
 * responder's static key, which an IK initiator must have and nobody else may pass. */
int dtp_noise_init(dtp_noise *hs, const dtp_noise_ctx *ctx, int pattern, int initiator,
                   const uint8_t *prologue, size_t prologue_len, dtp_noise_key *s,
                   dtp_noise_key *e, const uint8_t *rs, size_t rs_len);
/* Set the ephemeral key of a handshake started without one (before any message). */
int dtp_noise_set_ephemeral(dtp_noise *hs, dtp_noise_key *e);
/* Hand over the result of DH token t (DTP_NOISE_EE..SS) made ahead of need: the next
 * message that needs it takes it instead of computing it. Before message 1 is written
 * or read, or between messages; the caller vouches that it is the right result. */
int dtp_noise_give_dh(dtp_noise *hs, int token, const uint8_t *secret, size_t secret_len);
/* Bytes the next message adds to its payload (keys and tags), or DTP_ERR_NOISE_TURN once
 * the handshake is over. */
int dtp_noise_overhead(const dtp_noise *hs);
/* WriteMessage: the next message, carrying payload, to out; *written its size.
 * DTP_ERR_NOISE_TURN when it is the peer's turn or the handshake is over,
 * DTP_ERR_NOISE_SIZE when the message would exceed DTP_NOISE_MAX_MESSAGE,
 * DTP_ERR_BUFFER when out is too small, DTP_ERR_ARG when payload and out overlap. On
 * any error the state is as it was. */
int dtp_noise_write(dtp_noise *hs, const dtp_noise_ctx *ctx, const uint8_t *payload,
                    size_t payload_len, uint8_t *out, size_t out_cap, size_t *written);
/* ReadMessage: the payload of msg to out (out_cap >= msg_len always suffices).
 * DTP_ERR_NOISE_TURN out of turn, DTP_ERR_NOISE_SIZE for a message too short or too
 * long, DTP_ERR_DECRYPT when a tag fails, DTP_ERR_NOISE_DH for a low-order key. All or
 * nothing: on any error the state is as it was and out holds no plaintext (what the
 * read wrote there is zeroed). */
int dtp_noise_read(dtp_noise *hs, const dtp_noise_ctx *ctx, const uint8_t *msg,
                   size_t msg_len, uint8_t *out, size_t out_cap, size_t *written);
/* Messages written or read so far (0 .. 2 for IK, 0 .. 3 for XX; 0 once wiped). */
int dtp_noise_done(const dtp_noise *hs);
/* Zero the whole state (keys, hashes, given results, the pointers to its keys): for
 * memory about to be given back. The state is unusable after (DTP_ERR_ARG). */
void dtp_noise_wipe(dtp_noise *hs);
/* The peer's static key: 1 and 32 bytes to out once known, else 0. */
int dtp_noise_remote_static(const dtp_noise *hs, uint8_t *out, size_t out_cap);
/* Once every message is done: the handshake hash, and Split into this side's send and
 * receive keys (32 bytes each). dtp_noise_split then wipes the chaining key, the
 * cipher key and the given DH results; the hash stays. DTP_ERR_NOISE_TURN before. */
int dtp_noise_hash(const dtp_noise *hs, uint8_t *out, size_t out_cap);
int dtp_noise_split(dtp_noise *hs, const dtp_noise_ctx *ctx, uint8_t *send_key,
                    uint8_t *recv_key);

/* CDEF-END */

#endif /* DTP_CORE_H */
