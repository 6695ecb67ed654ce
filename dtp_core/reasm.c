/* reasm.c -- PLACEHOLDER: to be implemented (see dtp_core.h). */
#include "dtp_internal.h"

dtp_reasm *dtp_reasm_new(uint64_t start_seq, uint32_t window, uint32_t max_ranges) { (void)start_seq; (void)window; (void)max_ranges; return NULL; }

void dtp_reasm_free(dtp_reasm *r) { (void)r;  }

int dtp_reasm_push(dtp_reasm *r, const dtp_chunk *chunks, size_t n, const uint8_t *data,
                   size_t data_len) { (void)r; (void)chunks; (void)n; (void)data; (void)data_len; return DTP_ERR_ARG; }

int dtp_reasm_pop(dtp_reasm *r, uint8_t *out, size_t out_cap, size_t *written) { (void)r; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }

uint64_t dtp_reasm_next_seq(const dtp_reasm *r) { (void)r; return 0; }

uint64_t dtp_reasm_readable(const dtp_reasm *r) { (void)r; return 0; }

uint64_t dtp_reasm_buffered(const dtp_reasm *r) { (void)r; return 0; }
