/* ham.c -- HAM (GunDB's Hypothetical Amnesia Machine) merge over batches, and the field
 * table it merges into (protocol.md, section 6).
 *
 * The table is an open-addressing hash table (linear probing, power-of-two size, load
 * <= 0.7, no deletions) of pointers to entries; each entry holds soul, field and value
 * bytes. Entries are carved from 256 KiB arena blocks (a table filled by a sync makes
 * one malloc per block, not per field, and frees as few); one whose value outgrows its
 * room moves to an allocation of its own, with room to grow, and its old bytes stay in
 * the block until the table is freed (at most once per entry: the arena wastes at most
 * what it holds). Entries are keyed by (soul, field) through SipHash-1-3 keyed with the
 * caller's 16-byte seed, so peers, who choose souls and fields, cannot aim collisions
 * at it.
 *
 * Deferred updates (state ahead of the machine clock) are kept as one byte buffer of
 * their canonical encodings in arrival order; deferred_bytes is the size of those still
 * queued. advance() marks the ones it applies dead (a bit of their first byte) instead
 * of moving the rest, and compacts the buffer only once the dead bytes exceed half the
 * live ones, so that the cost of moving stays proportional to what was applied (the
 * buffer holds at most 1.5 times max_deferred_bytes). A second open-addressing table
 * indexes the live updates by SipHash of the whole update (soul, field, state bits,
 * value), so that one identical to a queued update is found in O(1) and not queued
 * again (a peer re-sending what we hold deferred cannot fill the queue with copies).
 * It holds offsets into the buffer: an update applied is deleted from it (backward
 * shift); compaction rebuilds it.
 *
 * dtp_ham_merge makes one validation pass over the whole batch (nothing changes unless
 * it all validates and the output buffers are big enough) and one merge pass. An update
 * that loses costs a hash, a probe and a compare: no allocation.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtp_internal.h"

/* ---- SipHash-1-3 (Aumasson & Bernstein, "SipHash: a fast short-input PRF") ---------- */

typedef struct sip_state {
    uint64_t v0, v1, v2, v3;
    uint64_t tail;  /* pending message bytes, little-endian */
    unsigned ntail; /* how many (0..7) */
    uint64_t total; /* message length so far */
} sip_state;

#define SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static inline void sip_round(sip_state *s) {
    s->v0 += s->v1;
    s->v1 = SIP_ROTL(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = SIP_ROTL(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = SIP_ROTL(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = SIP_ROTL(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = SIP_ROTL(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = SIP_ROTL(s->v2, 32);
}

static inline void sip_block(sip_state *s, uint64_t m) {
    s->v3 ^= m;
    sip_round(s); /* c = 1 compression round */
    s->v0 ^= m;
}

static inline void sip_init(sip_state *s, uint64_t k0, uint64_t k1) {
    s->v0 = k0 ^ 0x736f6d6570736575ULL;
    s->v1 = k1 ^ 0x646f72616e646f6dULL;
    s->v2 = k0 ^ 0x6c7967656e657261ULL;
    s->v3 = k1 ^ 0x7465646279746573ULL;
    s->tail = 0;
    s->ntail = 0;
    s->total = 0;
}

static inline void sip_absorb(sip_state *s, const uint8_t *p, size_t n) {
    s->total += n;
    while (n > 0 && s->ntail > 0) {
        s->tail |= (uint64_t)*p++ << (8 * s->ntail);
        n--;
        if (++s->ntail == 8) {
            sip_block(s, s->tail);
            s->tail = 0;
            s->ntail = 0;
        }
    }
    for (; n >= 8; p += 8, n -= 8) sip_block(s, dtp_get_u64le(p));
    for (; n > 0; n--) s->tail |= (uint64_t)*p++ << (8 * s->ntail++);
}

static inline uint64_t sip_final(sip_state *s) {
    sip_block(s, s->tail | (s->total << 56));
    s->v2 ^= 0xff;
    sip_round(s); /* d = 3 finalization rounds */
    sip_round(s);
    sip_round(s);
    return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/* ---- types ------------------------------------------------------------------------- */

typedef struct ham_update {
    const uint8_t *soul;
    const uint8_t *field;
    const uint8_t *value;
    uint32_t soul_len;
    uint32_t field_len;
    uint32_t value_len;
    double state;
} ham_update;

typedef struct ham_entry {
    double state;
    uint32_t soul_len;
    uint32_t field_len;
    uint32_t value_len;
    uint32_t value_cap; /* room for the value (ENTRY_CAP bits); ENTRY_OWN: malloc'd alone */
    uint8_t bytes[];    /* soul, field, then the room for the value */
} ham_entry;

#define ENTRY_OWN 0x80000000u /* (values are at most DTP_HAM_MAX_VALUE: the bit is free) */
#define ENTRY_CAP 0x7fffffffu

/* A block of the entries' arena; entries are carved from the newest one. */
typedef struct ham_block {
    struct ham_block *next; /* the block before it */
    size_t used;
    uint8_t data[]; /* HAM_BLOCK_SIZE bytes (at offset 16: 8-byte aligned entries) */
} ham_block;

#define HAM_BLOCK_SIZE (256u << 10)
/* larger entries are malloc'd alone: a block's unused tail stays under 1/16 of it */
#define HAM_ARENA_MAX_ENTRY (HAM_BLOCK_SIZE / 16u)

typedef struct ham_slot {
    uint64_t hash;
    ham_entry *entry; /* NULL: empty */
} ham_slot;

typedef struct dq_slot {
    uint64_t hash; /* dq_hash of the update */
    size_t off1;   /* its offset in the queue + 1; 0: empty */
} dq_slot;

struct dtp_ham {
    uint64_t k0, k1; /* SipHash key */
    ham_slot *slots;
    size_t mask; /* slot count - 1 */
    size_t count;
    uint8_t *dq;    /* deferred updates, canonical encodings back to back, some dead */
    size_t dq_len;  /* bytes of dq in use, dead ones included */
    size_t dq_cap;
    size_t dq_live; /* bytes of the live ones: deferred_bytes, <= max_deferred */
    size_t dq_count; /* live ones */
    size_t max_deferred;
    double dq_min; /* no queued state is below it (meaningful while dq_count > 0) */
    dq_slot *dq_slots; /* index of the queue; NULL until something is deferred */
    size_t dq_mask;    /* dq slot count - 1 */
    ham_block *blocks; /* the entries' arena, newest block first */
};

#define HAM_INITIAL_SLOTS 64u
/* the smallest canonical update: 1-byte soul and field, empty value */
#define HAM_MIN_UPDATE_SIZE 13u

static inline uint8_t *entry_value(ham_entry *e) { return e->bytes + e->soul_len + e->field_len; }

/* Encoded size of one update: minimal varints, no batch header. */
static inline size_t update_size(uint32_t soul_len, uint32_t field_len, uint32_t value_len) {
    return dtp_varint_size(soul_len) + soul_len + dtp_varint_size(field_len) + field_len + 8 +
           dtp_varint_size(value_len) + value_len;
}

static inline double get_f64le(const uint8_t *p) {
    uint64_t bits = dtp_get_u64le(p);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* Write u canonically at out (the caller has checked the room). Returns bytes written. */
static size_t write_update(uint8_t *out, const ham_update *u) {
    uint8_t *p = out;
    p += dtp_varint_put(p, 8, u->soul_len);
    memcpy(p, u->soul, u->soul_len);
    p += u->soul_len;
    p += dtp_varint_put(p, 8, u->field_len);
    memcpy(p, u->field, u->field_len);
    p += u->field_len;
    uint64_t bits;
    memcpy(&bits, &u->state, sizeof bits);
    dtp_put_u64le(p, bits);
    p += 8;
    p += dtp_varint_put(p, 8, u->value_len);
    if (u->value_len > 0) memcpy(p, u->value, u->value_len);
    p += u->value_len;
    return (size_t)(p - out);
}

/* A queued update is dead (applied; its bytes not yet reclaimed) when the top bit of its
 * first byte is set: that byte starts the canonical soul-length varint, 1 or 2 bytes
 * long (prefix 00 or 01), so the bit is otherwise clear. */
#define DQ_DEAD 0x80u

/* Read one update from a batch that has already been validated, taking `first` for its
 * first byte. Returns bytes read. */
static size_t read_update_first(const uint8_t *p, const uint8_t *end, uint8_t first,
                                ham_update *u) {
    const uint8_t *start = p;
    uint64_t v = first & 0x3fu;
    size_t n = (size_t)1 << (first >> 6); /* validated: n bytes are there */
    for (size_t i = 1; i < n; i++) v = (v << 8) | p[i];
    p += n;
    u->soul_len = (uint32_t)v;
    u->soul = p;
    p += v;
    p += dtp_varint_get(p, (size_t)(end - p), &v);
    u->field_len = (uint32_t)v;
    u->field = p;
    p += v;
    u->state = get_f64le(p);
    p += 8;
    p += dtp_varint_get(p, (size_t)(end - p), &v);
    u->value_len = (uint32_t)v;
    u->value = p;
    p += v;
    return (size_t)(p - start);
}

static inline size_t read_update(const uint8_t *p, const uint8_t *end, ham_update *u) {
    return read_update_first(p, end, p[0], u);
}

/* Read the queued update at p, live or dead (*dead says which). Returns its size. */
static inline size_t read_queued(const uint8_t *p, const uint8_t *end, ham_update *u,
                                 int *dead) {
    *dead = (p[0] & DQ_DEAD) != 0;
    return read_update_first(p, end, (uint8_t)(p[0] & ~DQ_DEAD), u);
}

/* Read a length varint and check its range, then that many bytes must follow.
 * protocol.md 6.2: a truncated varint or byte string is MALFORMED, a length out of
 * range is SIZE as soon as the length is read. */
static int check_bytes(const uint8_t **pp, const uint8_t *end, uint64_t min, uint64_t max,
                       uint32_t *len) {
    uint64_t v;
    size_t n = dtp_varint_get(*pp, (size_t)(end - *pp), &v);
    if (n == 0) return DTP_ERR_HAM_MALFORMED;
    if (v < min || v > max) return DTP_ERR_HAM_SIZE;
    *pp += n;
    if (v > (uint64_t)(end - *pp)) return DTP_ERR_HAM_MALFORMED;
    *pp += v;
    *len = (uint32_t)v;
    return DTP_OK;
}

/* Check the batch header; *count receives the update count. */
static int check_header(const uint8_t *batch, size_t len, uint32_t *count) {
    if (len < DTP_HAM_BATCH_HEADER_LEN || batch[0] != DTP_HAM_BATCH_VERSION)
        return DTP_ERR_HAM_MALFORMED;
    *count = dtp_get_u32le(batch + 1);
    return *count > DTP_HAM_MAX_UPDATES ? DTP_ERR_HAM_SIZE : DTP_OK;
}

/* Check one update at *pp (protocol.md 6.2, in wire order: soul, field, state, value),
 * read it into u and step past it. */
static int check_update(const uint8_t **pp, const uint8_t *end, ham_update *u) {
    int rc = check_bytes(pp, end, 1, DTP_HAM_MAX_KEY, &u->soul_len);
    if (rc != DTP_OK) return rc;
    u->soul = *pp - u->soul_len;
    rc = check_bytes(pp, end, 1, DTP_HAM_MAX_KEY, &u->field_len);
    if (rc != DTP_OK) return rc;
    u->field = *pp - u->field_len;
    if (end - *pp < 8) return DTP_ERR_HAM_MALFORMED;
    u->state = get_f64le(*pp);
    if (!isfinite(u->state)) return DTP_ERR_HAM_STATE;
    *pp += 8;
    rc = check_bytes(pp, end, 0, DTP_HAM_MAX_VALUE, &u->value_len);
    if (rc != DTP_OK) return rc;
    u->value = *pp - u->value_len;
    return DTP_OK;
}

int dtp_ham_find_souls(const uint8_t *batch, size_t len, const uint8_t *prefix,
                       size_t prefix_len, uint64_t *spans, size_t spans_cap,
                       size_t *n_found) {
    if ((batch == NULL && len > 0) || (prefix == NULL && prefix_len > 0) ||
        (spans == NULL && spans_cap > 0) || n_found == NULL)
        return DTP_ERR_ARG;
    *n_found = 0;
    uint32_t count;
    int rc = check_header(batch, len, &count);
    if (rc != DTP_OK) return rc;
    const uint8_t *end = batch + len;
    const uint8_t *p = batch + DTP_HAM_BATCH_HEADER_LEN;
    size_t found = 0; /* <= count <= DTP_HAM_MAX_UPDATES: 2 * found cannot overflow */
    for (uint32_t k = 0; k < count; k++) {
        const uint8_t *start = p;
        ham_update u;
        rc = check_update(&p, end, &u);
        if (rc != DTP_OK) return rc;
        /* (prefix may be NULL when prefix_len is 0: memcmp must not see it then) */
        if (u.soul_len >= prefix_len
            && (prefix_len == 0 || memcmp(u.soul, prefix, prefix_len) == 0)) {
            if (2 * found + 2 <= spans_cap) {
                spans[2 * found] = (uint64_t)(start - batch);
                spans[2 * found + 1] = (uint64_t)(p - batch);
            }
            found++;
        }
    }
    if (p != end) return DTP_ERR_HAM_MALFORMED;
    *n_found = found;
    return 2 * found > spans_cap ? DTP_ERR_BUFFER : DTP_OK;
}

int dtp_ham_zero_states(uint8_t *batch, size_t len, size_t *n_changed) {
    if ((batch == NULL && len > 0) || n_changed == NULL) return DTP_ERR_ARG;
    *n_changed = 0;
    uint32_t count;
    int rc = check_header(batch, len, &count);
    if (rc != DTP_OK) return rc;
    const uint8_t *end = batch + len;
    const uint8_t *p = batch + DTP_HAM_BATCH_HEADER_LEN;
    ham_update u;
    for (uint32_t k = 0; k < count; k++) { /* pass 1: nothing changes if malformed */
        rc = check_update(&p, end, &u);
        if (rc != DTP_OK) return rc;
    }
    if (p != end) return DTP_ERR_HAM_MALFORMED;
    p = batch + DTP_HAM_BATCH_HEADER_LEN;
    size_t changed = 0;
    for (uint32_t k = 0; k < count; k++) {
        (void)check_update(&p, end, &u); /* validated above */
        if (u.state == 0.0 && signbit(u.state)) {
            /* the state's 8 bytes follow the field; +0.0 is all zero bits */
            memset(batch + (size_t)(u.field - batch) + u.field_len, 0, 8);
            changed++;
        }
    }
    *n_changed = changed;
    return DTP_OK;
}

/* ---- table ------------------------------------------------------------------------- */

dtp_ham *dtp_ham_new(size_t max_deferred_bytes, const uint8_t *seed, size_t seed_len) {
    if (seed == NULL || seed_len != 16) return NULL;
    dtp_ham *g = calloc(1, sizeof *g);
    if (g == NULL) return NULL;
    g->slots = calloc(HAM_INITIAL_SLOTS, sizeof *g->slots);
    if (g->slots == NULL) {
        free(g);
        return NULL;
    }
    g->mask = HAM_INITIAL_SLOTS - 1;
    g->k0 = dtp_get_u64le(seed);
    g->k1 = dtp_get_u64le(seed + 8);
    g->max_deferred = max_deferred_bytes;
    return g;
}

void dtp_ham_free(dtp_ham *g) {
    if (g == NULL) return;
    for (size_t i = 0; i <= g->mask; i++)
        if (g->slots[i].entry != NULL && (g->slots[i].entry->value_cap & ENTRY_OWN))
            free(g->slots[i].entry);
    while (g->blocks != NULL) {
        ham_block *next = g->blocks->next;
        free(g->blocks);
        g->blocks = next;
    }
    free(g->slots);
    free(g->dq);
    free(g->dq_slots);
    free(g);
}

static inline uint64_t key_hash(const dtp_ham *g, const uint8_t *soul, size_t soul_len,
                                const uint8_t *field, size_t field_len) {
    sip_state s;
    sip_init(&s, g->k0, g->k1);
    /* the two lengths first, so ("ab", "c") and ("a", "bc") hash apart */
    uint8_t lens[8];
    dtp_put_u32le(lens, (uint32_t)soul_len);
    dtp_put_u32le(lens + 4, (uint32_t)field_len);
    sip_absorb(&s, lens, 8);
    sip_absorb(&s, soul, soul_len);
    sip_absorb(&s, field, field_len);
    return sip_final(&s);
}

/* The slot holding (soul, field), or the empty slot where it would go. */
static inline size_t find_slot(const dtp_ham *g, uint64_t h, const uint8_t *soul,
                               size_t soul_len, const uint8_t *field, size_t field_len) {
    size_t i = (size_t)h & g->mask;
    for (;;) {
        const ham_slot *s = &g->slots[i];
        const ham_entry *e = s->entry;
        if (e == NULL) return i;
        if (s->hash == h && e->soul_len == soul_len && e->field_len == field_len &&
            memcmp(e->bytes, soul, soul_len) == 0 &&
            memcmp(e->bytes + soul_len, field, field_len) == 0)
            return i;
        i = (i + 1) & g->mask;
    }
}

static int grow(dtp_ham *g) {
    size_t n = g->mask + 1;
    if (n > SIZE_MAX / 2 / sizeof(ham_slot)) return DTP_ERR_NOMEM;
    size_t new_n = n * 2;
    ham_slot *slots = calloc(new_n, sizeof *slots);
    if (slots == NULL) return DTP_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        if (g->slots[i].entry == NULL) continue;
        size_t j = (size_t)g->slots[i].hash & (new_n - 1);
        while (slots[j].entry != NULL) j = (j + 1) & (new_n - 1);
        slots[j] = g->slots[i];
    }
    free(g->slots);
    g->slots = slots;
    g->mask = new_n - 1;
    return DTP_OK;
}

/* A byte's rank in the tie-break order (section 6.3): the bytes in their order, but
 * that 0xF0..0xFF come before 0xEE and 0xEF. In UTF-8, 0xEE and 0xEF lead the characters
 * U+E000..U+FFFF and 0xF0..0xF4 those beyond U+FFFF, which UTF-16 writes as surrogates
 * (0xD800..0xDFFF): below U+E000. Ordered so, the bytes of two UTF-8 texts compare as
 * their UTF-16 code units do -- the order JavaScript, and so GunDB, compares strings in --
 * and any two byte strings still have one order. */
static inline unsigned utf16_rank(uint8_t b) {
    return b < 0xEE ? b : b >= 0xF0 ? (unsigned)b - 2u : (unsigned)b + 0x10u;
}

/* Compare two values in the tie-break order: lexicographic over the bytes' ranks, a
 * proper prefix first. <0, 0 or >0. */
static int value_order(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
    size_t n = a_len < b_len ? a_len : b_len;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { /* the first differing word, then its byte */
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) break;
    }
    for (; i < n; i++)
        if (a[i] != b[i]) return (int)utf16_rank(a[i]) - (int)utf16_rank(b[i]);
    return a_len == b_len ? 0 : a_len < b_len ? -1 : 1;
}

/* A new entry with room for keys_len bytes of soul and field and value_len of value
 * (its value_cap set): carved from the arena's newest block, or from a new one when it
 * is full, or malloc'd alone when large. NULL when out of memory. */
static ham_entry *entry_new(dtp_ham *g, size_t keys_len, uint32_t value_len) {
    size_t size = sizeof(ham_entry) + keys_len + value_len;
    ham_entry *e;
    if (size > HAM_ARENA_MAX_ENTRY) {
        e = malloc(size);
        if (e == NULL) return NULL;
        e->value_cap = value_len | ENTRY_OWN;
        return e;
    }
    size = (size + 7u) & ~(size_t)7u; /* the next entry stays 8-byte aligned */
    ham_block *b = g->blocks;
    if (b == NULL || HAM_BLOCK_SIZE - b->used < size) {
        b = malloc(sizeof *b + HAM_BLOCK_SIZE);
        if (b == NULL) return NULL;
        b->next = g->blocks;
        b->used = 0;
        g->blocks = b;
    }
    e = (ham_entry *)(void *)(b->data + b->used);
    b->used += size;
    e->value_cap = value_len;
    return e;
}

/* Merge one update whose state is <= the machine state (section 6.3); h is its
 * key_hash. Returns the status, or DTP_ERR_NOMEM with the table unchanged. */
static int apply(dtp_ham *g, const ham_update *u, uint64_t h) {
    size_t i = find_slot(g, h, u->soul, u->soul_len, u->field, u->field_len);
    ham_entry *e = g->slots[i].entry;
    if (e != NULL) {
        if (u->state < e->state) return DTP_HAM_HISTORICAL;
        if (u->state == e->state) {
            /* tie: the greater value wins, in UTF-16 order (section 6.3) */
            int c = value_order(u->value, u->value_len, entry_value(e), e->value_len);
            if (c == 0) return DTP_HAM_SAME;
            if (c < 0) return DTP_HAM_HISTORICAL;
        }
        if (u->value_len > (e->value_cap & ENTRY_CAP)) {
            /* a value outgrowing its room: an allocation of its own, with room to grow
             * (an entry of the arena moves out, leaving its bytes in the block) */
            size_t cap = (size_t)u->value_len + u->value_len / 4;
            if (cap > DTP_HAM_MAX_VALUE) cap = DTP_HAM_MAX_VALUE;
            size_t size = sizeof *e + (size_t)e->soul_len + e->field_len + cap;
            ham_entry *bigger;
            if (e->value_cap & ENTRY_OWN) {
                bigger = realloc(e, size);
                if (bigger == NULL) return DTP_ERR_NOMEM;
            } else {
                bigger = malloc(size);
                if (bigger == NULL) return DTP_ERR_NOMEM;
                memcpy(bigger, e, sizeof *e + (size_t)e->soul_len + e->field_len);
            }
            bigger->value_cap = (uint32_t)cap | ENTRY_OWN;
            g->slots[i].entry = e = bigger;
        }
        e->state = u->state;
        e->value_len = u->value_len;
        if (u->value_len > 0) memcpy(entry_value(e), u->value, u->value_len);
        return DTP_HAM_APPLIED;
    }
    /* a new field: keep the load at or under 0.7 */
    if ((g->count + 1) * 10 > (g->mask + 1) * 7) {
        if (grow(g) != DTP_OK) return DTP_ERR_NOMEM;
        i = find_slot(g, h, u->soul, u->soul_len, u->field, u->field_len);
    }
    e = entry_new(g, (size_t)u->soul_len + u->field_len, u->value_len);
    if (e == NULL) return DTP_ERR_NOMEM;
    e->state = u->state;
    e->soul_len = u->soul_len;
    e->field_len = u->field_len;
    e->value_len = u->value_len;
    memcpy(e->bytes, u->soul, u->soul_len);
    memcpy(e->bytes + u->soul_len, u->field, u->field_len);
    if (u->value_len > 0) memcpy(entry_value(e), u->value, u->value_len);
    g->slots[i].hash = h;
    g->slots[i].entry = e;
    g->count++;
    return DTP_HAM_APPLIED;
}

/* ---- deferred queue index ----------------------------------------------------------- */

/* Hash of a whole update: identical updates (same canonical encoding) hash alike. */
static uint64_t dq_hash(const dtp_ham *g, const ham_update *u) {
    sip_state s;
    sip_init(&s, g->k0, g->k1);
    uint8_t head[20]; /* the three lengths, then the state's bits */
    dtp_put_u32le(head, u->soul_len);
    dtp_put_u32le(head + 4, u->field_len);
    dtp_put_u32le(head + 8, u->value_len);
    uint64_t bits;
    memcpy(&bits, &u->state, sizeof bits);
    dtp_put_u64le(head + 12, bits);
    sip_absorb(&s, head, sizeof head);
    sip_absorb(&s, u->soul, u->soul_len);
    sip_absorb(&s, u->field, u->field_len);
    if (u->value_len > 0) sip_absorb(&s, u->value, u->value_len);
    return sip_final(&s);
}

/* The index slot of the queued update identical to u, or the empty slot where u would
 * go. The index must have an empty slot (its load is kept <= 0.7). */
static size_t dq_find(const dtp_ham *g, uint64_t h, const ham_update *u) {
    size_t i = (size_t)h & g->dq_mask;
    for (;;) {
        const dq_slot *s = &g->dq_slots[i];
        if (s->off1 == 0) return i;
        if (s->hash == h) {
            ham_update q;
            (void)read_update(g->dq + s->off1 - 1, g->dq + g->dq_len, &q);
            if (q.soul_len == u->soul_len && q.field_len == u->field_len &&
                q.value_len == u->value_len && memcmp(&q.state, &u->state, sizeof q.state) == 0 &&
                memcmp(q.soul, u->soul, q.soul_len) == 0 &&
                memcmp(q.field, u->field, q.field_len) == 0 &&
                (q.value_len == 0 || memcmp(q.value, u->value, q.value_len) == 0))
                return i;
        }
        i = (i + 1) & g->dq_mask;
    }
}

/* Index slots for n queued updates at load <= 0.7 (a power of two, at least 64), or 0
 * when that many cannot be addressed. */
static size_t dq_slots_for(size_t n) {
    size_t slots = HAM_INITIAL_SLOTS;
    if (n > SIZE_MAX / 10) return 0;
    while (n * 10 > slots * 7) {
        if (slots > SIZE_MAX / 2 / sizeof(dq_slot)) return 0;
        slots *= 2;
    }
    return slots;
}

/* Make room in the index for n queued updates in all, keeping the ones indexed.
 * DTP_ERR_NOMEM leaves it unchanged. */
static int dq_reserve(dtp_ham *g, size_t n) {
    size_t want = dq_slots_for(n);
    if (want == 0) return DTP_ERR_NOMEM;
    if (g->dq_slots != NULL && want <= g->dq_mask + 1) return DTP_OK;
    dq_slot *slots = calloc(want, sizeof *slots);
    if (slots == NULL) return DTP_ERR_NOMEM;
    if (g->dq_slots != NULL) {
        for (size_t i = 0; i <= g->dq_mask; i++) {
            if (g->dq_slots[i].off1 == 0) continue;
            size_t j = (size_t)g->dq_slots[i].hash & (want - 1);
            while (slots[j].off1 != 0) j = (j + 1) & (want - 1);
            slots[j] = g->dq_slots[i];
        }
        free(g->dq_slots);
    }
    g->dq_slots = slots;
    g->dq_mask = want - 1;
    return DTP_OK;
}

/* Delete the queued update at offset off, whose dq_hash is h, from the index (linear
 * probing: the entries after it that would not be found past the hole move back). */
static void dq_unindex(dtp_ham *g, uint64_t h, size_t off) {
    size_t i = (size_t)h & g->dq_mask;
    while (g->dq_slots[i].off1 != off + 1) {
        if (g->dq_slots[i].off1 == 0) return; /* not indexed: cannot happen */
        i = (i + 1) & g->dq_mask;
    }
    for (size_t j = i;;) {
        j = (j + 1) & g->dq_mask;
        if (g->dq_slots[j].off1 == 0) break;
        size_t k = (size_t)g->dq_slots[j].hash & g->dq_mask; /* where j would go first */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue; /* still found */
        g->dq_slots[i] = g->dq_slots[j];
        i = j;
    }
    g->dq_slots[i].off1 = 0;
    g->dq_slots[i].hash = 0;
}

/* The end of the deferred queue's bytes. dq is NULL until something is deferred, and
 * C11 (6.5.6p8) leaves even NULL + 0 undefined: no arithmetic on it then. */
static inline const uint8_t *dq_end(const dtp_ham *g) {
    return g->dq_len > 0 ? g->dq + g->dq_len : g->dq;
}

/* Index the queue afresh (after compaction: every update in it is live). Cannot fail:
 * when a smaller index cannot be allocated, the current one (big enough) is cleared. */
static void dq_reindex(dtp_ham *g) {
    if (g->dq_slots == NULL) return; /* nothing was ever deferred */
    size_t want = dq_slots_for(g->dq_count);
    dq_slot *slots = NULL;
    if (want != 0 && want < g->dq_mask + 1) slots = calloc(want, sizeof *slots);
    if (slots != NULL) {
        free(g->dq_slots);
        g->dq_slots = slots;
        g->dq_mask = want - 1;
    } else {
        memset(g->dq_slots, 0, (g->dq_mask + 1) * sizeof *g->dq_slots);
    }
    const uint8_t *end = dq_end(g);
    for (size_t off = 0; off < g->dq_len;) {
        ham_update u;
        size_t size = read_update(g->dq + off, end, &u);
        uint64_t h = dq_hash(g, &u);
        size_t i = dq_find(g, h, &u);
        g->dq_slots[i].hash = h;
        g->dq_slots[i].off1 = off + 1;
        off += size;
    }
}

/* Drop the dead updates' bytes, keeping the live ones in order, and reindex. */
static void dq_compact(dtp_ham *g) {
    const uint8_t *end = dq_end(g);
    size_t wpos = 0;
    for (size_t rpos = 0; rpos < g->dq_len;) {
        ham_update u;
        int dead;
        size_t size = read_queued(g->dq + rpos, end, &u, &dead);
        if (!dead) {
            if (wpos != rpos) memmove(g->dq + wpos, g->dq + rpos, size);
            wpos += size;
        }
        rpos += size;
    }
    g->dq_len = wpos; /* == dq_live */
    dq_reindex(g);
}

/* Hash u's key and start loading its slot into the cache. */
static inline uint64_t lookahead(const dtp_ham *g, const ham_update *u) {
    uint64_t h = key_hash(g, u->soul, u->soul_len, u->field, u->field_len);
#if defined(__GNUC__)
    __builtin_prefetch(&g->slots[(size_t)h & g->mask]);
#endif
    return h;
}

/* The same for an update to defer: hash it whole, start loading its index slot. */
static inline uint64_t dq_lookahead(const dtp_ham *g, const ham_update *u) {
    uint64_t h = dq_hash(g, u);
#if defined(__GNUC__)
    __builtin_prefetch(&g->dq_slots[(size_t)h & g->dq_mask]);
#endif
    return h;
}

static void write_header(uint8_t *out, uint32_t count) {
    out[0] = DTP_HAM_BATCH_VERSION;
    dtp_put_u32le(out + 1, count);
}

/* ---- merge ------------------------------------------------------------------------- */

int dtp_ham_merge(dtp_ham *g, double machine_state, const uint8_t *batch, size_t len,
                  uint8_t *status, size_t status_cap, size_t *n_updates, uint8_t *changed,
                  size_t changed_cap, size_t *changed_len) {
    if (g == NULL || (batch == NULL && len > 0) || n_updates == NULL || changed_len == NULL ||
        (status == NULL && status_cap > 0) || (changed == NULL && changed_cap > 0) ||
        !isfinite(machine_state))
        return DTP_ERR_ARG;
    *n_updates = 0;
    *changed_len = 0;

    /* pass 1: validate everything (section 6.2), sizing the outputs on the way */
    uint32_t count;
    int rc = check_header(batch, len, &count);
    if (rc != DTP_OK) return rc;
    const uint8_t *end = batch + len;
    const uint8_t *p = batch + DTP_HAM_BATCH_HEADER_LEN;
    size_t applicable = 0; /* canonical bytes of updates not ahead of the clock */
    size_t deferrable = 0; /* canonical bytes of updates ahead of it */
    size_t n_deferrable = 0;
    for (uint32_t k = 0; k < count; k++) {
        ham_update u;
        rc = check_update(&p, end, &u);
        if (rc != DTP_OK) return rc;
        /* canonical size <= encoded size, so both sums stay <= len */
        size_t size = update_size(u.soul_len, u.field_len, u.value_len);
        if (u.state > machine_state) {
            deferrable += size;
            n_deferrable++;
        } else
            applicable += size;
    }
    if (p != end) return DTP_ERR_HAM_MALFORMED;
    if (status_cap < count) return DTP_ERR_BUFFER;
    if (changed_cap < DTP_HAM_BATCH_HEADER_LEN ||
        changed_cap - DTP_HAM_BATCH_HEADER_LEN < applicable)
        return DTP_ERR_BUFFER;

    /* room for what may be deferred, so deferring never fails half-way */
    size_t room = g->max_deferred - g->dq_live; /* dq_live <= max_deferred always */
    size_t add = deferrable < room ? deferrable : room;
    if (add > SIZE_MAX - g->dq_len) return DTP_ERR_NOMEM;
    size_t want = g->dq_len + add;
    if (want > g->dq_cap) {
        /* the live bytes are <= max_deferred and the dead ones <= half the live ones
         * (advance() compacts), so want <= limit */
        size_t limit = g->max_deferred > SIZE_MAX / 3 * 2
                           ? SIZE_MAX
                           : g->max_deferred + g->max_deferred / 2;
        size_t cap = g->dq_cap > limit / 2 ? limit : g->dq_cap * 2;
        if (cap < want) cap = want;
        uint8_t *dq = realloc(g->dq, cap);
        if (dq == NULL) return DTP_ERR_NOMEM;
        g->dq = dq;
        g->dq_cap = cap;
    }
    if (n_deferrable > 0) {
        /* and index slots for as many updates as that room can take */
        size_t fit = room / HAM_MIN_UPDATE_SIZE;
        int r = dq_reserve(g, g->dq_count + (n_deferrable < fit ? n_deferrable : fit));
        if (r != DTP_OK) return r;
    }

    /* pass 2: merge in batch order. The table is bigger than the cache for large
     * graphs, so the next update is parsed and hashed one step ahead and its slot
     * prefetched while the current one is merged. */
    p = batch + DTP_HAM_BATCH_HEADER_LEN;
    uint8_t *out = changed + DTP_HAM_BATCH_HEADER_LEN;
    uint32_t n_applied = 0;
    rc = DTP_OK;
    uint32_t k = 0;
    ham_update next;
    uint64_t next_h = 0;
    if (count > 0) {
        p += read_update(p, end, &next);
        next_h = next.state <= machine_state ? lookahead(g, &next) : dq_lookahead(g, &next);
    }
    for (; k < count; k++) {
        ham_update u = next;
        uint64_t h = next_h;
        if (k + 1 < count) {
            p += read_update(p, end, &next);
            next_h = next.state <= machine_state ? lookahead(g, &next) : dq_lookahead(g, &next);
        }
        int st;
        if (u.state > machine_state) {
            size_t size = update_size(u.soul_len, u.field_len, u.value_len);
            uint64_t dh = h; /* dq_hash(g, &u) */
            size_t slot = dq_find(g, dh, &u);
            if (g->dq_slots[slot].off1 != 0) {
                st = DTP_HAM_DEFERRED; /* already queued, identical: once is enough */
            } else if (size > g->max_deferred - g->dq_live) {
                st = DTP_HAM_REJECTED;
            } else {
                /* room was checked, and the index has a slot for each update that fits */
                g->dq_slots[slot].hash = dh;
                g->dq_slots[slot].off1 = g->dq_len + 1;
                if (g->dq_count == 0 || u.state < g->dq_min) g->dq_min = u.state;
                g->dq_len += write_update(g->dq + g->dq_len, &u);
                g->dq_live += size;
                g->dq_count++;
                st = DTP_HAM_DEFERRED;
            }
        } else {
            st = apply(g, &u, h);
            if (st < 0) {
                rc = st;
                break;
            }
            if (st == DTP_HAM_APPLIED) {
                out += write_update(out, &u);
                n_applied++;
            }
        }
        status[k] = (uint8_t)st;
    }
    write_header(changed, n_applied);
    *n_updates = k;
    *changed_len = (size_t)(out - changed);
    return rc;
}

int dtp_ham_advance(dtp_ham *g, double machine_state, uint8_t *changed, size_t changed_cap,
                    size_t *changed_len) {
    if (g == NULL || changed_len == NULL || (changed == NULL && changed_cap > 0) ||
        !isfinite(machine_state))
        return DTP_ERR_ARG;
    *changed_len = 0;
    const uint8_t *end = dq_end(g);
    /* what could be applied bounds the output: check the room before any change (and
     * with nothing queued at or under the clock, skip the walk) */
    size_t due = 0;
    if (g->dq_count > 0 && g->dq_min <= machine_state) {
        for (const uint8_t *p = g->dq; p < end;) {
            ham_update u;
            int dead;
            size_t size = read_queued(p, end, &u, &dead);
            if (!dead && u.state <= machine_state) due += size;
            p += size;
        }
    }
    if (changed_cap < DTP_HAM_BATCH_HEADER_LEN || changed_cap - DTP_HAM_BATCH_HEADER_LEN < due) {
        /* tell the caller the room needed */
        *changed_len = due > SIZE_MAX - DTP_HAM_BATCH_HEADER_LEN
                           ? SIZE_MAX
                           : due + DTP_HAM_BATCH_HEADER_LEN;
        return DTP_ERR_BUFFER;
    }
    if (due == 0) {
        write_header(changed, 0);
        *changed_len = DTP_HAM_BATCH_HEADER_LEN;
        return DTP_OK;
    }

    uint8_t *out = changed + DTP_HAM_BATCH_HEADER_LEN;
    uint32_t n_applied = 0;
    double min_left = 0.0; /* the smallest state still queued */
    int any_left = 0;
    int rc = DTP_OK;
    for (size_t pos = 0; pos < g->dq_len;) {
        ham_update u;
        int dead;
        size_t size = read_queued(g->dq + pos, end, &u, &dead);
        if (!dead) {
            int left = 1;
            if (rc == DTP_OK && u.state <= machine_state) {
                int st = apply(g, &u, key_hash(g, u.soul, u.soul_len, u.field, u.field_len));
                if (st < 0) {
                    rc = st; /* keep this update and the rest queued */
                } else {
                    if (st == DTP_HAM_APPLIED) {
                        out += write_update(out, &u);
                        n_applied++;
                    }
                    dq_unindex(g, dq_hash(g, &u), pos);
                    g->dq[pos] |= DQ_DEAD;
                    g->dq_live -= size;
                    g->dq_count--;
                    left = 0;
                }
            }
            if (left && (!any_left || u.state < min_left)) {
                min_left = u.state;
                any_left = 1;
            }
        }
        pos += size;
    }
    g->dq_min = min_left;
    /* reclaim the dead bytes once they are many: the live ones moved are then fewer
     * than twice the bytes reclaimed */
    if (g->dq_len - g->dq_live > g->dq_live / 2) dq_compact(g);
    write_header(changed, n_applied);
    *changed_len = (size_t)(out - changed);
    return rc;
}

/* ---- queries ----------------------------------------------------------------------- */

int dtp_ham_get(const dtp_ham *g, const uint8_t *soul, size_t soul_len, const uint8_t *field,
                size_t field_len, double *state, const uint8_t **value, size_t *value_len) {
    if (g == NULL || soul == NULL || field == NULL || state == NULL || value == NULL ||
        value_len == NULL)
        return DTP_ERR_ARG;
    if (soul_len == 0 || soul_len > DTP_HAM_MAX_KEY || field_len == 0 ||
        field_len > DTP_HAM_MAX_KEY)
        return 0;
    uint64_t h = key_hash(g, soul, soul_len, field, field_len);
    ham_entry *e = g->slots[find_slot(g, h, soul, soul_len, field, field_len)].entry;
    if (e == NULL) return 0;
    *state = e->state;
    *value = entry_value(e);
    *value_len = e->value_len;
    return 1;
}

int dtp_ham_export(const dtp_ham *g, uint64_t *cursor, uint8_t *out, size_t out_cap,
                   size_t *written) {
    if (g == NULL || cursor == NULL || written == NULL || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (out_cap < DTP_HAM_BATCH_HEADER_LEN) return DTP_ERR_BUFFER;
    size_t pos = DTP_HAM_BATCH_HEADER_LEN;
    uint32_t n = 0;
    uint64_t i = *cursor;
    int rc = DTP_OK;
    for (; i <= g->mask; i++) {
        ham_entry *e = g->slots[i].entry;
        if (e == NULL) continue;
        ham_update u = {e->bytes,      e->bytes + e->soul_len, entry_value(e), e->soul_len,
                        e->field_len, e->value_len,           e->state};
        size_t size = update_size(u.soul_len, u.field_len, u.value_len);
        if (size > out_cap - pos) {
            if (n == 0) return DTP_ERR_BUFFER; /* this entry alone does not fit */
            rc = DTP_FULL;
            break;
        }
        pos += write_update(out + pos, &u);
        n++;
    }
    write_header(out, n);
    *cursor = i;
    *written = pos;
    return rc;
}

size_t dtp_ham_count(const dtp_ham *g) { return g ? g->count : 0; }

size_t dtp_ham_deferred_count(const dtp_ham *g) { return g ? g->dq_count : 0; }

size_t dtp_ham_deferred_bytes(const dtp_ham *g) { return g ? g->dq_live : 0; }
