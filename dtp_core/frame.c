/* frame.c -- record headers and frames (protocol.md, sections 2 and 3). */
#include <string.h>

#include "dtp_internal.h"

int dtp_records_parse(const uint8_t *buf, size_t len, dtp_record *out, size_t max_records,
                      size_t *n_records, size_t *consumed) {
    if (n_records == NULL || consumed == NULL || (buf == NULL && len > 0) ||
        (out == NULL && max_records > 0))
        return DTP_ERR_ARG;
    size_t pos = 0, n = 0;
    int rc = DTP_OK;
    while (pos < len) {
        if (len - pos < DTP_RECORD_HEADER_LEN) {
            rc = DTP_NEED_MORE;
            break;
        }
        if (n == max_records) {
            rc = DTP_FULL;
            break;
        }
        dtp_record rec;
        int hc = dtp_record_header_check(buf + pos, &rec);
        if (hc < 0) {
            rc = hc;
            break;
        }
        if (len - pos - DTP_RECORD_HEADER_LEN < rec.body_len) {
            rc = DTP_NEED_MORE;
            break;
        }
        rec.offset = pos;
        out[n++] = rec;
        pos += DTP_RECORD_HEADER_LEN + rec.body_len;
    }
    *n_records = n;
    *consumed = pos;
    return rc;
}

int dtp_record_header_write(uint8_t kind, uint8_t flags, uint32_t body_len, uint64_t counter,
                            uint8_t *out, size_t out_cap) {
    if (out == NULL || out_cap < DTP_RECORD_HEADER_LEN) return DTP_ERR_BUFFER;
    if (body_len > 0xffffu) return DTP_ERR_RECORD_SIZE;
    uint8_t hdr[DTP_RECORD_HEADER_LEN];
    hdr[0] = kind;
    hdr[1] = flags;
    dtp_put_u16le(hdr + 2, (uint16_t)body_len);
    dtp_put_u64le(hdr + 4, counter);
    dtp_record check;
    int rc = dtp_record_header_check(hdr, &check);
    if (rc < 0) return rc;
    for (size_t i = 0; i < DTP_RECORD_HEADER_LEN; i++) out[i] = hdr[i];
    return DTP_OK;
}

/* ---- frames ----------------------------------------------------------------------- */

/* Wire layout of every frame type except PADDING and ACK (protocol.md, section 3): the
 * type byte, `nfields` varints stored in a, b, c (in that order), then, when data_cap
 * is nonzero, a varint length (at most data_cap) and that many bytes of data. */
typedef struct frame_layout {
    uint8_t nfields;
    uint16_t data_cap; /* 0: the type carries no data */
} frame_layout;

#define FRAME_TYPE_COUNT 14

static const frame_layout LAYOUT[FRAME_TYPE_COUNT] = {
    [DTP_FRAME_PADDING] = {0, 0}, /* special: a run of zero bytes */
    [DTP_FRAME_PING] = {0, 0},
    [DTP_FRAME_ACK] = {0, 0}, /* special: ranges */
    [DTP_FRAME_MAX_DATA] = {1, 0},
    [DTP_FRAME_MAX_STREAM_DATA] = {2, 0},
    [DTP_FRAME_RESET_STREAM] = {3, 0},
    [DTP_FRAME_STOP_SENDING] = {2, 0},
    [DTP_FRAME_MAX_STREAMS] = {1, 0},
    [DTP_FRAME_STREAM] = {2, DTP_MAX_FRAME_DATA},
    [DTP_FRAME_STREAM_FIN] = {2, DTP_MAX_FRAME_DATA},
    [DTP_FRAME_CLOSE] = {1, DTP_MAX_CLOSE_REASON},
    [DTP_FRAME_RECEIPT] = {0, DTP_MAX_RECEIPT},
    [DTP_FRAME_CONTROL] = {1, DTP_MAX_FRAME_DATA},
    [DTP_FRAME_DATAGRAM] = {0, DTP_MAX_FRAME_DATA},
};

#define VARINT_MAX ((uint64_t)DTP_VARINT_MAX)

/* Internal decode status: the input ends inside the current frame. The caller turns it
 * into DTP_ERR_FRAME_TRUNCATED or DTP_NEED_MORE. Never returned to users. */
#define SHORT 100

/* dtp_varint_get, inlined into the decode loop (same rules: non-minimal forms accepted). */
static inline int read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *v) {
    size_t p = *pos;
    if (p >= len) return SHORT;
    uint8_t first = buf[p];
    size_t n = (size_t)1 << (first >> 6);
    if (len - p < n) return SHORT;
    uint64_t x = first & 0x3fu;
    for (size_t i = 1; i < n; i++) x = (x << 8) | buf[p + i];
    *v = x;
    *pos = p + n;
    return DTP_OK;
}

/* ACK body after the type byte. Ranges go to ranges[0 .. room) while they fit; if the
 * frame has more ranges than `room` it is still checked to its end, then DTP_FULL. */
static int decode_ack(const uint8_t *buf, size_t len, size_t *pos, dtp_frame *f,
                      dtp_ack_range *ranges, size_t room) {
    uint64_t largest, delay, count, first;
    int rc;
    if ((rc = read_varint(buf, len, pos, &largest)) != DTP_OK) return rc;
    if ((rc = read_varint(buf, len, pos, &delay)) != DTP_OK) return rc;
    if ((rc = read_varint(buf, len, pos, &count)) != DTP_OK) return rc;
    if (count == 0) return DTP_ERR_FRAME_VALUE;
    if (count > DTP_MAX_ACK_RANGES) return DTP_ERR_FRAME_SIZE;
    if ((rc = read_varint(buf, len, pos, &first)) != DTP_OK) return rc;
    if (first > largest) return DTP_ERR_FRAME_VALUE;
    uint64_t hi = largest, lo = largest - first;
    if (room > 0) {
        ranges[0].lo = lo;
        ranges[0].hi = hi;
    }
    for (uint64_t i = 1; i < count; i++) {
        uint64_t gap, range_len;
        if ((rc = read_varint(buf, len, pos, &gap)) != DTP_OK) return rc;
        /* next_hi = lo - gap - 2 must not underflow */
        if (lo < 2 || lo - 2 < gap) return DTP_ERR_FRAME_VALUE;
        hi = lo - 2 - gap;
        if ((rc = read_varint(buf, len, pos, &range_len)) != DTP_OK) return rc;
        if (range_len > hi) return DTP_ERR_FRAME_VALUE;
        lo = hi - range_len;
        if (i < room) {
            ranges[i].lo = lo;
            ranges[i].hi = hi;
        }
    }
    if (count > room) return DTP_FULL;
    f->b = count;
    f->c = delay;
    return DTP_OK;
}

/* One frame of any type but PADDING (type byte already checked and consumed). */
static int decode_frame(const uint8_t *buf, size_t len, size_t *pos, uint8_t type,
                        dtp_frame *f, dtp_ack_range *ranges, size_t room) {
    if (type == DTP_FRAME_ACK) return decode_ack(buf, len, pos, f, ranges, room);
    const frame_layout lay = LAYOUT[type];
    uint64_t v[3] = {0, 0, 0};
    int rc;
    for (unsigned i = 0; i < lay.nfields; i++)
        if ((rc = read_varint(buf, len, pos, &v[i])) != DTP_OK) return rc;
    f->a = v[0];
    f->b = v[1];
    f->c = v[2];
    if (lay.data_cap == 0) return DTP_OK;
    uint64_t dlen;
    if ((rc = read_varint(buf, len, pos, &dlen)) != DTP_OK) return rc;
    if (dlen > lay.data_cap) return DTP_ERR_FRAME_SIZE;
    if ((type == DTP_FRAME_STREAM || type == DTP_FRAME_STREAM_FIN) && v[1] > VARINT_MAX - dlen)
        return DTP_ERR_FRAME_VALUE;
    if (len - *pos < dlen) return SHORT;
    f->data_off = *pos;
    f->data_len = (uint32_t)dlen;
    *pos += (size_t)dlen;
    return DTP_OK;
}

int dtp_frames_decode(const uint8_t *buf, size_t len, int complete, dtp_frame *frames,
                      size_t max_frames, dtp_ack_range *ranges, size_t max_ranges,
                      size_t *n_frames, size_t *n_ranges, size_t *consumed) {
    if (n_frames == NULL || n_ranges == NULL || consumed == NULL || (buf == NULL && len > 0) ||
        (frames == NULL && max_frames > 0) || (ranges == NULL && max_ranges > 0))
        return DTP_ERR_ARG;
    size_t pos = 0, n = 0, nr = 0;
    int rc = DTP_OK;
    while (pos < len) {
        if (n == max_frames) {
            rc = DTP_FULL;
            break;
        }
        dtp_frame *f = &frames[n];
        uint8_t type = buf[pos];
        size_t end = pos + 1;
        f->type = type;
        f->reserved0 = 0;
        f->reserved1 = 0;
        f->data_len = 0;
        f->data_off = 0;
        f->a = f->b = f->c = 0;
        if (type == DTP_FRAME_PADDING) {
            /* a maximal run of zero bytes is one frame; at the end of an incomplete
             * input the run may continue, so it is not reported yet */
            while (end < len && buf[end] == 0) end++;
            if (end == len && !complete) {
                rc = DTP_NEED_MORE;
                break;
            }
            f->a = end - pos;
        } else {
            if (type >= FRAME_TYPE_COUNT) {
                rc = DTP_ERR_FRAME_TYPE;
                break;
            }
            int fr = decode_frame(buf, len, &end, type, f,
                                  ranges == NULL ? NULL : ranges + nr, max_ranges - nr);
            if (fr != DTP_OK) {
                rc = fr == SHORT ? (complete ? DTP_ERR_FRAME_TRUNCATED : DTP_NEED_MORE) : fr;
                break;
            }
            if (type == DTP_FRAME_ACK) {
                f->a = nr;
                nr += (size_t)f->b;
            }
        }
        n++;
        pos = end;
    }
    *n_frames = n;
    *n_ranges = nr;
    *consumed = pos;
    return rc;
}

/* Encode-side validation of one frame (protocol.md, section 3, "Encoding"). On success
 * *size is the frame's encoded length. Check order:
 *   1. type known                                  else DTP_ERR_FRAME_TYPE
 *   2. reserved fields zero, unused fields zero/empty  else DTP_ERR_FRAME_VALUE
 *   3. PADDING: 1 <= a <= DTP_MAX_FRAME_DATA        else DTP_ERR_FRAME_VALUE
 *      others: each used varint field (a, b, c order) <= DTP_VARINT_MAX else DTP_ERR_VARINT
 *   4. data length <= cap                           else DTP_ERR_FRAME_SIZE
 *      ACK: range count 0 -> DTP_ERR_FRAME_VALUE, > DTP_MAX_ACK_RANGES -> DTP_ERR_FRAME_SIZE
 *   (C only: data / ranges slices inside the given buffers, else DTP_ERR_ARG)
 *   5. STREAM: offset + length <= DTP_VARINT_MAX  else DTP_ERR_FRAME_VALUE
 *      ACK ranges, in order: lo <= hi <= DTP_VARINT_MAX and hi + 2 <= previous lo
 *                                                  else DTP_ERR_FRAME_VALUE */
static int check_frame(const dtp_frame *f, size_t data_len, const dtp_ack_range *ranges,
                       size_t n_ranges, size_t *size) {
    if (f->type >= FRAME_TYPE_COUNT) return DTP_ERR_FRAME_TYPE;
    if (f->reserved0 != 0 || f->reserved1 != 0) return DTP_ERR_FRAME_VALUE;
    const uint8_t type = f->type;

    if (type == DTP_FRAME_PADDING) {
        if (f->b != 0 || f->c != 0 || f->data_len != 0) return DTP_ERR_FRAME_VALUE;
        if (f->a < 1 || f->a > DTP_MAX_FRAME_DATA) return DTP_ERR_FRAME_VALUE;
        *size = (size_t)f->a;
        return DTP_OK;
    }

    if (type == DTP_FRAME_ACK) {
        if (f->data_len != 0) return DTP_ERR_FRAME_VALUE;
        if (f->c > VARINT_MAX) return DTP_ERR_VARINT;
        if (f->b == 0) return DTP_ERR_FRAME_VALUE;
        if (f->b > DTP_MAX_ACK_RANGES) return DTP_ERR_FRAME_SIZE;
        if (f->a > n_ranges || f->b > n_ranges - f->a) return DTP_ERR_ARG;
        const dtp_ack_range *r = ranges + f->a;
        size_t count = (size_t)f->b;
        size_t total = 1 + dtp_varint_size(f->c) + dtp_varint_size(count);
        for (size_t i = 0; i < count; i++) {
            if (r[i].lo > r[i].hi || r[i].hi > VARINT_MAX) return DTP_ERR_FRAME_VALUE;
            if (i == 0) {
                total += dtp_varint_size(r[0].hi) + dtp_varint_size(r[0].hi - r[0].lo);
            } else {
                if (r[i - 1].lo < 2 || r[i].hi > r[i - 1].lo - 2) return DTP_ERR_FRAME_VALUE;
                total += dtp_varint_size(r[i - 1].lo - 2 - r[i].hi) +
                         dtp_varint_size(r[i].hi - r[i].lo);
            }
        }
        *size = total;
        return DTP_OK;
    }

    const frame_layout lay = LAYOUT[type];
    const uint64_t v[3] = {f->a, f->b, f->c};
    for (unsigned i = lay.nfields; i < 3; i++)
        if (v[i] != 0) return DTP_ERR_FRAME_VALUE;
    if (lay.data_cap == 0 && f->data_len != 0) return DTP_ERR_FRAME_VALUE;
    size_t total = 1;
    for (unsigned i = 0; i < lay.nfields; i++) {
        if (v[i] > VARINT_MAX) return DTP_ERR_VARINT;
        total += dtp_varint_size(v[i]);
    }
    if (lay.data_cap == 0) {
        *size = total;
        return DTP_OK;
    }
    if (f->data_len > lay.data_cap) return DTP_ERR_FRAME_SIZE;
    if (f->data_off > data_len || f->data_len > data_len - f->data_off) return DTP_ERR_ARG;
    if ((type == DTP_FRAME_STREAM || type == DTP_FRAME_STREAM_FIN) &&
        f->b > VARINT_MAX - f->data_len)
        return DTP_ERR_FRAME_VALUE;
    *size = total + dtp_varint_size(f->data_len) + f->data_len;
    return DTP_OK;
}

/* Write one frame that check_frame accepted; out has room for it. Returns bytes written. */
static size_t write_frame(const dtp_frame *f, const uint8_t *data, const dtp_ack_range *ranges,
                          uint8_t *out, size_t cap) {
    size_t p = 0;
    if (f->type == DTP_FRAME_PADDING) {
        memset(out, 0, (size_t)f->a);
        return (size_t)f->a;
    }
    out[p++] = f->type;
    if (f->type == DTP_FRAME_ACK) {
        const dtp_ack_range *r = ranges + f->a;
        size_t count = (size_t)f->b;
        p += dtp_varint_put(out + p, cap - p, r[0].hi);
        p += dtp_varint_put(out + p, cap - p, f->c);
        p += dtp_varint_put(out + p, cap - p, count);
        p += dtp_varint_put(out + p, cap - p, r[0].hi - r[0].lo);
        for (size_t i = 1; i < count; i++) {
            p += dtp_varint_put(out + p, cap - p, r[i - 1].lo - 2 - r[i].hi);
            p += dtp_varint_put(out + p, cap - p, r[i].hi - r[i].lo);
        }
        return p;
    }
    const frame_layout lay = LAYOUT[f->type];
    const uint64_t v[3] = {f->a, f->b, f->c};
    for (unsigned i = 0; i < lay.nfields; i++) p += dtp_varint_put(out + p, cap - p, v[i]);
    if (lay.data_cap != 0) {
        p += dtp_varint_put(out + p, cap - p, f->data_len);
        if (f->data_len > 0) memcpy(out + p, data + f->data_off, f->data_len);
        p += f->data_len;
    }
    return p;
}

int dtp_frames_encode(const dtp_frame *frames, size_t n, const uint8_t *data, size_t data_len,
                      const dtp_ack_range *ranges, size_t n_ranges, uint8_t *out,
                      size_t out_cap, size_t *written) {
    if (written == NULL) return DTP_ERR_ARG;
    *written = 0;
    if ((frames == NULL && n > 0) || (data == NULL && data_len > 0) ||
        (ranges == NULL && n_ranges > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    /* Validate everything first, so the error does not depend on out_cap. */
    size_t total = 0;
    int too_big = 0;
    for (size_t i = 0; i < n; i++) {
        size_t size = 0;
        int rc = check_frame(&frames[i], data_len, ranges, n_ranges, &size);
        if (rc != DTP_OK) return rc;
        if (size > out_cap - total) too_big = 1; /* total <= out_cap holds until then */
        if (!too_big) total += size;
    }
    if (too_big) return DTP_ERR_BUFFER;
    size_t p = 0;
    for (size_t i = 0; i < n; i++) p += write_frame(&frames[i], data, ranges, out + p, out_cap - p);
    *written = p;
    return DTP_OK;
}

/* A run of DATAGRAM frames, packed greedily into records: the send path of a burst of
 * datagrams (a relay's) crosses the boundary once, not once per frame. */
int64_t dtp_datagram_frames_encode(const uint8_t *data, size_t data_len, const uint64_t *offs,
                                   size_t n, size_t limit, uint8_t *out, size_t out_cap,
                                   uint64_t *ends, size_t ends_cap) {
    if ((n > 0 && (data == NULL || offs == NULL)) || (out == NULL && out_cap > 0) ||
        (ends == NULL && ends_cap > 0) || limit == 0 || limit > DTP_MAX_RECORD_PLAINTEXT)
        return DTP_ERR_ARG;
    /* Validate everything first, so the error does not depend on the buffers, and
     * count the records (the same greedy packing as below), so nothing is written
     * unless out and ends both have room. */
    size_t total = 0, count = 0, fill = 0;
    for (size_t i = 0; i < n; i++) {
        if (offs[i + 1] < offs[i] || offs[i + 1] > data_len) return DTP_ERR_ARG;
        uint64_t len = offs[i + 1] - offs[i];
        if (len > DTP_MAX_FRAME_DATA) return DTP_ERR_FRAME_SIZE;
        size_t size = 1 + dtp_varint_size(len) + (size_t)len;
        if (size > limit) return DTP_ERR_FRAME_SIZE; /* it fits no record */
        total += size;
        if (count == 0 || fill + size > limit) {
            count++;
            fill = 0;
        }
        fill += size;
    }
    if (total > out_cap || count > ends_cap) return DTP_ERR_BUFFER;
    size_t p = 0, start = 0, records = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = (size_t)(offs[i + 1] - offs[i]);
        size_t size = 1 + dtp_varint_size(len) + len;
        if (p - start + size > limit) { /* this record is full: the next begins */
            ends[records++] = p;
            start = p;
        }
        out[p++] = DTP_FRAME_DATAGRAM;
        p += dtp_varint_put(out + p, out_cap - p, len);
        if (len) memcpy(out + p, data + offs[i], len);
        p += len;
    }
    if (n > 0) ends[records++] = p;
    return (int64_t)records;
}
