/* ham.c -- PLACEHOLDER: to be implemented (see dtp_core.h). */
#include "dtp_internal.h"

dtp_ham *dtp_ham_new(size_t max_deferred_bytes, const uint8_t *seed, size_t seed_len) { (void)max_deferred_bytes; (void)seed; (void)seed_len; return NULL; }

void dtp_ham_free(dtp_ham *g) { (void)g;  }

int dtp_ham_merge(dtp_ham *g, double machine_state, const uint8_t *batch, size_t len,
                  uint8_t *status, size_t status_cap, size_t *n_updates, uint8_t *changed,
                  size_t changed_cap, size_t *changed_len) { (void)g; (void)machine_state; (void)batch; (void)len; (void)status; (void)status_cap; (void)n_updates; (void)changed; (void)changed_cap; (void)changed_len; return DTP_ERR_ARG; }

int dtp_ham_advance(dtp_ham *g, double machine_state, uint8_t *changed, size_t changed_cap,
                    size_t *changed_len) { (void)g; (void)machine_state; (void)changed; (void)changed_cap; (void)changed_len; return DTP_ERR_ARG; }

int dtp_ham_get(const dtp_ham *g, const uint8_t *soul, size_t soul_len, const uint8_t *field,
                size_t field_len, double *state, const uint8_t **value, size_t *value_len) { (void)g; (void)soul; (void)soul_len; (void)field; (void)field_len; (void)state; (void)value; (void)value_len; return DTP_ERR_ARG; }

int dtp_ham_export(const dtp_ham *g, uint64_t *cursor, uint8_t *out, size_t out_cap,
                   size_t *written) { (void)g; (void)cursor; (void)out; (void)out_cap; (void)written; return DTP_ERR_ARG; }

size_t dtp_ham_count(const dtp_ham *g) { (void)g; return 0; }

size_t dtp_ham_deferred_count(const dtp_ham *g) { (void)g; return 0; }

size_t dtp_ham_deferred_bytes(const dtp_ham *g) { (void)g; return 0; }
