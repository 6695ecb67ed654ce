/* dtp_internal.h -- helpers shared by the C core's translation units (not exported). */
#ifndef DTP_INTERNAL_H
#define DTP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "dtp_core.h"

/* QUIC variable-length integers (RFC 9000 section 16): the top two bits of the first
 * byte give the length (1, 2, 4 or 8 bytes), the rest is the value, big-endian.
 * Decoding accepts non-minimal encodings; encoding is always minimal. */

/* Bytes needed to encode v minimally, or 0 if v > DTP_VARINT_MAX. */
size_t dtp_varint_size(uint64_t v);

/* Encode v at out (cap bytes available). Returns bytes written, 0 if v is out of range
 * or does not fit. */
size_t dtp_varint_put(uint8_t *out, size_t cap, uint64_t v);

/* Decode from in[0..len). Returns bytes read (1..8), or 0 if len is too short. */
size_t dtp_varint_get(const uint8_t *in, size_t len, uint64_t *v);

static inline void dtp_put_u16le(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline uint16_t dtp_get_u16le(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline void dtp_put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t dtp_get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline void dtp_put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t dtp_get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Validate the 12-byte record header at p (the caller has checked 12 bytes exist) and
 * fill *out (offset left to the caller). Checks, in order: kind, flags, body length. */
static inline int dtp_record_header_check(const uint8_t *p, dtp_record *out) {
    uint8_t kind = p[0];
    uint32_t body = dtp_get_u16le(p + 2);
    if (kind == DTP_REC_DATA) {
        if (p[1] != 0) return DTP_ERR_RECORD_FLAGS;
        if (body < DTP_AEAD_TAG_LEN || body > DTP_MAX_RECORD_PLAINTEXT + DTP_AEAD_TAG_LEN)
            return DTP_ERR_RECORD_SIZE;
    } else if (kind == DTP_REC_HS_INIT || kind == DTP_REC_HS_RESP || kind == DTP_REC_HS_FINAL) {
        if (p[1] != 0) return DTP_ERR_RECORD_FLAGS;
        if (body < 1 || body > DTP_MAX_HANDSHAKE_RECORD) return DTP_ERR_RECORD_SIZE;
    } else {
        return DTP_ERR_RECORD_KIND;
    }
    out->kind = kind;
    out->flags = p[1];
    out->reserved = 0;
    out->body_len = body;
    out->counter = dtp_get_u64le(p + 4);
    return DTP_OK;
}

#endif /* DTP_INTERNAL_H */
