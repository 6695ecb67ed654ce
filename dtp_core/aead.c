/* aead.c -- PLACEHOLDER: to be implemented (see dtp_core.h). */
#include "dtp_internal.h"

dtp_aead *dtp_aead_new(const uint8_t *key, size_t key_len) { (void)key; (void)key_len; return NULL; }

void dtp_aead_free(dtp_aead *ctx) { (void)ctx;  }

int dtp_aead_seal_batch(dtp_aead *ctx, uint64_t first_counter, const uint8_t *plain,
                        size_t plain_len, const uint32_t *lens, size_t n, uint8_t *out,
                        size_t out_cap, size_t *written) { (void)ctx; (void)first_counter; (void)plain; (void)plain_len; (void)lens; (void)n; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }

int dtp_aead_open_batch(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_opened *out,
                        size_t max_out, uint8_t *plain_out, size_t plain_cap, size_t *n_out,
                        size_t *consumed) { (void)ctx; (void)buf; (void)len; (void)out; (void)max_out; (void)plain_out; (void)plain_cap; (void)n_out; (void)consumed; return DTP_ERR_ARG; }

int dtp_aead_replay_top(const dtp_aead *ctx, uint64_t *top) { (void)ctx; (void)top; return DTP_ERR_ARG; }

int dtp_aead_seal_one(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                      const uint8_t *plain, size_t plain_len, uint8_t *out, size_t out_cap,
                      size_t *written) { (void)ctx; (void)counter; (void)ad; (void)ad_len; (void)plain; (void)plain_len; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }
int dtp_aead_open_one(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                      const uint8_t *ct, size_t ct_len, uint8_t *out, size_t out_cap,
                      size_t *written) { (void)ctx; (void)counter; (void)ad; (void)ad_len; (void)ct; (void)ct_len; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }
