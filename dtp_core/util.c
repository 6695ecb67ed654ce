/* util.c -- QUIC varints shared by frame.c and ham.c. */
#include "dtp_internal.h"

size_t dtp_varint_size(uint64_t v) {
    if (v < 64u) return 1;
    if (v < 16384u) return 2;
    if (v < 1073741824u) return 4;
    if (v <= (uint64_t)DTP_VARINT_MAX) return 8;
    return 0;
}

size_t dtp_varint_put(uint8_t *out, size_t cap, uint64_t v) {
    size_t n = dtp_varint_size(v);
    if (n == 0 || n > cap) return 0;
    static const uint8_t prefix[9] = {0, 0x00, 0x40, 0, 0x80, 0, 0, 0, 0xc0};
    for (size_t i = 0; i < n; i++) out[n - 1 - i] = (uint8_t)(v >> (8 * i));
    out[0] |= prefix[n];
    return n;
}

size_t dtp_varint_get(const uint8_t *in, size_t len, uint64_t *v) {
    if (len == 0) return 0;
    size_t n = (size_t)1 << (in[0] >> 6);
    if (n > len) return 0;
    uint64_t x = in[0] & 0x3fu;
    for (size_t i = 1; i < n; i++) x = (x << 8) | in[i];
    *v = x;
    return n;
}
