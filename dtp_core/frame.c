/* frame.c -- PLACEHOLDER: to be implemented (see dtp_core.h). */
#include "dtp_internal.h"

int dtp_records_parse(const uint8_t *buf, size_t len, dtp_record *out, size_t max_records,
                      size_t *n_records, size_t *consumed) { (void)buf; (void)len; (void)out; (void)max_records; (void)n_records; (void)consumed; return DTP_ERR_ARG; }

int dtp_record_header_write(uint8_t kind, uint8_t flags, uint32_t body_len, uint64_t counter,
                            uint8_t *out, size_t out_cap) { (void)kind; (void)flags; (void)body_len; (void)counter; (void)out; (void)out_cap; return DTP_ERR_ARG; }

int dtp_frames_decode(const uint8_t *buf, size_t len, int complete, dtp_frame *frames,
                      size_t max_frames, dtp_ack_range *ranges, size_t max_ranges,
                      size_t *n_frames, size_t *n_ranges, size_t *consumed) { (void)buf; (void)len; (void)complete; (void)frames; (void)max_frames; (void)ranges; (void)max_ranges; (void)n_frames; (void)n_ranges; (void)consumed; return DTP_ERR_ARG; }

int dtp_frames_encode(const dtp_frame *frames, size_t n, const uint8_t *data, size_t data_len,
                      const dtp_ack_range *ranges, size_t n_ranges, uint8_t *out,
                      size_t out_cap, size_t *written) { (void)frames; (void)n; (void)data; (void)data_len; (void)ranges; (void)n_ranges; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }
