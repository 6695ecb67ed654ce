/* frame.c -- record headers (done) and frames (PLACEHOLDER: to be implemented). */
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

int dtp_frames_decode(const uint8_t *buf, size_t len, int complete, dtp_frame *frames,
                      size_t max_frames, dtp_ack_range *ranges, size_t max_ranges,
                      size_t *n_frames, size_t *n_ranges, size_t *consumed) { (void)buf; (void)len; (void)complete; (void)frames; (void)max_frames; (void)ranges; (void)max_ranges; (void)n_frames; (void)n_ranges; (void)consumed; return DTP_ERR_ARG; }

int dtp_frames_encode(const dtp_frame *frames, size_t n, const uint8_t *data, size_t data_len,
                      const dtp_ack_range *ranges, size_t n_ranges, uint8_t *out,
                      size_t out_cap, size_t *written) { (void)frames; (void)n; (void)data; (void)data_len; (void)ranges; (void)n_ranges; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }
