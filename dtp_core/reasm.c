/* reasm.c -- reorder / reassembly buffer over a byte sequence space (protocol.md, section 5).
 *
 * State: next_seq (first byte not yet released), a sorted array of held ranges and a ring
 * buffer. A "range" is a maximal run of held, not-yet-released bytes [lo, hi): ranges are
 * disjoint, sorted, and never touch (adjacent runs are merged), so the readable prefix is
 * ranges[0] when ranges[0].lo == next_seq.
 *
 * Every held byte lies in [next_seq, next_seq + window), so the byte with sequence number
 * s lives at ring[s % ring_cap] without aliasing as long as the span of held bytes above
 * next_seq never exceeds ring_cap. The ring grows (doubling, capped at `window`) when a
 * push needs more span; it is allocated on the first push that holds bytes.
 *
 * A push first validates every chunk and computes the resulting range set (which also
 * gives the fragmentation check), allocates whatever it needs, and only then changes
 * anything: an error -- including DTP_ERR_NOMEM -- leaves the buffer as it was.
 */
#include <stdlib.h>
#include <string.h>

#include "dtp_internal.h"

#define RING_MIN 4096u

typedef struct reasm_range {
    uint64_t lo; /* first held byte */
    uint64_t hi; /* one past the last held byte */
} reasm_range;

struct dtp_reasm {
    uint64_t next_seq;
    uint64_t buffered; /* sum of the ranges' lengths */
    uint32_t window;
    uint32_t max_ranges;
    uint8_t *ring;
    size_t ring_cap; /* 0 until the first byte is held; <= window */
    reasm_range *ranges;
    size_t n_ranges;
    size_t ranges_cap;
};

dtp_reasm *dtp_reasm_new(uint64_t start_seq, uint32_t window, uint32_t max_ranges) {
    if (window == 0 || max_ranges == 0) return NULL;
    dtp_reasm *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->next_seq = start_seq;
    r->window = window;
    r->max_ranges = max_ranges;
    return r;
}

void dtp_reasm_free(dtp_reasm *r) {
    if (r == NULL) return;
    free(r->ring);
    free(r->ranges);
    free(r);
}

/* Copy len bytes into / out of the ring at sequence number seq (wrapping). */
static void ring_put(uint8_t *ring, size_t cap, uint64_t seq, const uint8_t *src, size_t len) {
    while (len > 0) {
        size_t pos = (size_t)(seq % cap);
        size_t n = cap - pos;
        if (n > len) n = len;
        memcpy(ring + pos, src, n);
        seq += n;
        src += n;
        len -= n;
    }
}

static void ring_get(const uint8_t *ring, size_t cap, uint64_t seq, uint8_t *dst, size_t len) {
    while (len > 0) {
        size_t pos = (size_t)(seq % cap);
        size_t n = cap - pos;
        if (n > len) n = len;
        memcpy(dst, ring + pos, n);
        seq += n;
        dst += n;
        len -= n;
    }
}

static int cmp_range(const void *a, const void *b) {
    const reasm_range *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Append [lo, hi) to the sorted list out[0..*n), merging with the last entry when they
 * overlap or touch. Intervals arrive sorted by lo. */
static void range_append(reasm_range *out, size_t *n, uint64_t lo, uint64_t hi) {
    if (*n > 0 && lo <= out[*n - 1].hi) {
        if (hi > out[*n - 1].hi) out[*n - 1].hi = hi;
        return;
    }
    out[*n].lo = lo;
    out[*n].hi = hi;
    (*n)++;
}

/* A ring able to hold every byte up to `top` (exclusive), keeping the held bytes. Returns
 * the new ring (or the old one if it is big enough), NULL on allocation failure; *cap gets
 * its size. Does not free the old ring. */
static uint8_t *ring_for(const dtp_reasm *r, uint64_t top, size_t *cap) {
    uint64_t span = top - r->next_seq; /* <= window, checked by the caller */
    if (r->ring != NULL && span <= r->ring_cap) {
        *cap = r->ring_cap;
        return r->ring;
    }
    size_t new_cap = r->ring_cap ? r->ring_cap : RING_MIN;
    while (new_cap < span) new_cap = new_cap > r->window / 2 ? r->window : new_cap * 2;
    if (new_cap > r->window) new_cap = r->window;
    uint8_t *ring = malloc(new_cap);
    if (ring == NULL) return NULL;
    for (size_t i = 0; i < r->n_ranges && r->ring != NULL; i++) {
        for (uint64_t s = r->ranges[i].lo; s < r->ranges[i].hi;) {
            size_t pos = (size_t)(s % r->ring_cap);
            uint64_t n = r->ring_cap - pos;
            if (n > r->ranges[i].hi - s) n = r->ranges[i].hi - s;
            ring_put(ring, new_cap, s, r->ring + pos, (size_t)n);
            s += n;
        }
    }
    *cap = new_cap;
    return ring;
}

/* Write the bytes of [lo, hi) (source src, whose first byte has sequence number lo) that
 * fall into gaps of the current (old) range set: held bytes are never overwritten. */
static void write_gaps(dtp_reasm *r, uint8_t *ring, size_t cap, uint64_t lo, uint64_t hi,
                       const uint8_t *src) {
    /* first old range whose end is after lo */
    size_t a = 0, b = r->n_ranges;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (r->ranges[mid].hi <= lo)
            a = mid + 1;
        else
            b = mid;
    }
    uint64_t cur = lo;
    size_t k = a;
    while (cur < hi) {
        if (k < r->n_ranges && r->ranges[k].lo <= cur) {
            cur = r->ranges[k].hi;
            k++;
            continue;
        }
        uint64_t gap_end = hi;
        if (k < r->n_ranges && r->ranges[k].lo < gap_end) gap_end = r->ranges[k].lo;
        ring_put(ring, cap, cur, src + (cur - lo), (size_t)(gap_end - cur));
        cur = gap_end;
    }
}

int dtp_reasm_push(dtp_reasm *r, const dtp_chunk *chunks, size_t n, const uint8_t *data,
                   size_t data_len) {
    if (r == NULL || (chunks == NULL && n > 0) || (data == NULL && data_len > 0))
        return DTP_ERR_ARG;

    /* 1. per-chunk checks, in chunk order: data bounds, sequence overflow, window */
    size_t m = 0; /* chunks that bring bytes at or after next_seq */
    for (size_t i = 0; i < n; i++) {
        const dtp_chunk *c = &chunks[i];
        if (c->data_off > data_len || c->len > data_len - c->data_off) return DTP_ERR_ARG;
        if (c->len > UINT64_MAX - c->seq) return DTP_ERR_ARG;
        uint64_t end = c->seq + c->len;
        if (end > r->next_seq && end - r->next_seq > r->window) return DTP_ERR_REASM_WINDOW;
        if (end > r->next_seq && c->len > 0) m++;
    }
    if (m == 0) return DTP_OK;

    /* 2. the resulting range set: old ranges united with the new (clipped) intervals */
    if (m > SIZE_MAX / sizeof(reasm_range) - r->n_ranges) return DTP_ERR_NOMEM;
    reasm_range *fresh = malloc(m * sizeof *fresh);
    reasm_range *merged = malloc((r->n_ranges + m) * sizeof *merged);
    if (fresh == NULL || merged == NULL) {
        free(fresh);
        free(merged);
        return DTP_ERR_NOMEM;
    }
    size_t nf = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t end = chunks[i].seq + chunks[i].len;
        if (end <= r->next_seq || chunks[i].len == 0) continue;
        fresh[nf].lo = chunks[i].seq > r->next_seq ? chunks[i].seq : r->next_seq;
        fresh[nf].hi = end;
        nf++;
    }
    if (nf > 1) qsort(fresh, nf, sizeof *fresh, cmp_range);
    size_t nm = 0, i = 0, j = 0;
    while (i < r->n_ranges || j < nf) {
        const reasm_range *next;
        if (j >= nf || (i < r->n_ranges && r->ranges[i].lo <= fresh[j].lo))
            next = &r->ranges[i++];
        else
            next = &fresh[j++];
        range_append(merged, &nm, next->lo, next->hi);
    }
    free(fresh);
    uint64_t total = 0; /* <= window: every range lies in [next_seq, next_seq + window) */
    for (size_t k = 0; k < nm; k++) total += merged[k].hi - merged[k].lo;
    if (nm > r->max_ranges) {
        free(merged);
        return DTP_ERR_REASM_FRAGMENTED;
    }

    /* 3. room for the bytes (the last range ends highest) */
    size_t cap = 0;
    uint8_t *ring = ring_for(r, merged[nm - 1].hi, &cap);
    if (ring == NULL) {
        free(merged);
        return DTP_ERR_NOMEM;
    }

    /* 4. copy. Chunks are written last to first into the gaps of the old ranges, so
     * among this push's chunks the earliest one's bytes end up in place, and bytes
     * held before this push are never overwritten: first arrival wins. */
    for (size_t k = n; k-- > 0;) {
        const dtp_chunk *c = &chunks[k];
        uint64_t end = c->seq + c->len;
        if (end <= r->next_seq || c->len == 0) continue;
        uint64_t lo = c->seq > r->next_seq ? c->seq : r->next_seq;
        write_gaps(r, ring, cap, lo, end, data + c->data_off + (lo - c->seq));
    }
    if (ring != r->ring) {
        free(r->ring);
        r->ring = ring;
    }
    r->ring_cap = cap;
    free(r->ranges);
    r->ranges = merged;
    r->ranges_cap = r->n_ranges + m;
    r->n_ranges = nm;
    if (r->ranges_cap > 2 * nm + 16) {
        /* keep the array near its used size; a failed shrink keeps the larger one */
        reasm_range *shrunk = realloc(merged, nm * sizeof *merged);
        if (shrunk != NULL) {
            r->ranges = shrunk;
            r->ranges_cap = nm;
        }
    }
    r->buffered = total;
    return DTP_OK;
}

int dtp_reasm_pop(dtp_reasm *r, uint8_t *out, size_t out_cap, size_t *written) {
    if (r == NULL || written == NULL || (out == NULL && out_cap > 0)) return DTP_ERR_ARG;
    uint64_t ready = dtp_reasm_readable(r);
    uint64_t n = ready < out_cap ? ready : (uint64_t)out_cap;
    if (n > 0) {
        ring_get(r->ring, r->ring_cap, r->next_seq, out, (size_t)n);
        r->next_seq += n;
        r->buffered -= n;
        r->ranges[0].lo += n;
        if (r->ranges[0].lo == r->ranges[0].hi) {
            r->n_ranges--;
            memmove(r->ranges, r->ranges + 1, r->n_ranges * sizeof *r->ranges);
        }
    }
    *written = (size_t)n;
    return DTP_OK;
}

uint64_t dtp_reasm_next_seq(const dtp_reasm *r) { return r ? r->next_seq : 0; }

uint64_t dtp_reasm_readable(const dtp_reasm *r) {
    if (r == NULL || r->n_ranges == 0 || r->ranges[0].lo != r->next_seq) return 0;
    return r->ranges[0].hi - r->ranges[0].lo;
}

uint64_t dtp_reasm_buffered(const dtp_reasm *r) { return r ? r->buffered : 0; }
