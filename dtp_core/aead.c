/* aead.c -- ChaCha20-Poly1305 record protection and the receive replay window.
 *
 * The construction is Noise's ChaChaPoly (Noise spec, section 12.3) with the nonce made
 * explicit on the wire: nonce = 4 zero bytes || counter as u64 LE (RFC 8439 section 2.8
 * with constant = 0). A DATA record is
 *
 *     header (12 bytes: kind 16, flags 0, body length u16le, counter u64le)
 *     || ChaCha20-Poly1305(key, nonce(counter), ad = header, plaintext)   (ct || tag)
 *
 * docs/protocol.md section 4 is the normative description; dtp/native/reference/_aead.py is
 * the pure-Python twin that the tests compare this file against.
 *
 * The AEAD is put together here, as RFC 8439 section 2.8 puts it together, from OpenSSL's
 * ChaCha20 and Poly1305, each called through its provider's functions directly (the
 * public provider interface, openssl/core_dispatch.h: the EVP wrappers around them cost
 * about a tenth of a small record's time in OpenSSL 3). Each dtp_aead holds a ChaCha20
 * context keyed once and a Poly1305 context keyed per record: a record sets only its
 * nonce, with no allocation. Not OpenSSL's own ChaCha20-Poly1305, because that makes a
 * ChaCha20 call for the one-time Poly1305 key, one per update and one more for a partial
 * last block, and with AVX-512 each call is a whole pass of the vector code (about 130 ns
 * on a Zen 5 however few blocks it needs), most of a small record's cost; here the key
 * block and a record's first bytes -- all of a small record -- come from one call
 * (docs/benchmarks.md, "aead_roundtrip_1k"). The bytes are the same
 * (tests/native/test_aead.py: RFC 8439 A.5, noiseprotocol, `cryptography` at every length
 * to past SMALL_MAX and at each block-size edge, the pure-Python twin).
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_dispatch.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

#include "dtp_internal.h"

#define COUNTER_RESERVED UINT64_MAX /* 2^64 - 1: never used as a nonce (as in Noise) */
#define WINDOW_WORDS (DTP_REPLAY_WINDOW / 64)

/* The window must be a whole number of 64-bit words for the ring below. */
_Static_assert(DTP_REPLAY_WINDOW % 64 == 0, "replay window must be a multiple of 64");

/* The providers' functions for ChaCha20 and Poly1305 (found by fns_find), and the fetched
 * algorithms that keep their providers loaded while the functions are in use. */
typedef struct {
    EVP_CIPHER *cipher;
    EVP_MAC *mac;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_mac_newctx_fn *mac_newctx;
    OSSL_FUNC_mac_freectx_fn *mac_freectx;
    OSSL_FUNC_mac_init_fn *mac_init;
    OSSL_FUNC_mac_update_fn *mac_update;
    OSSL_FUNC_mac_final_fn *mac_final;
} chacha_poly;

struct dtp_aead {
    chacha_poly fns;
    void *stream; /* ChaCha20's provider context, keyed once */
    void *mac;    /* Poly1305's provider context, keyed per record */
    /* Replay window (protocol.md 4.3): `top` is the highest counter accepted so far and
     * `seen` is a ring of DTP_REPLAY_WINDOW bits, bit (c mod DTP_REPLAY_WINDOW) telling
     * whether counter c in [top - DTP_REPLAY_WINDOW + 1, top] was accepted. Those
     * counters map to distinct bits, so the ring needs no shifting: sliding the top
     * forward only clears the bits the new counters take over. */
    int have_top;
    uint64_t top;
    uint64_t seen[WINDOW_WORDS];
    /* Set by dtp_aead_set_in_order: only the counter after `top` (0 first) is new. */
    int in_order;
};

/* ---- OpenSSL plumbing ------------------------------------------------------------ */

/* ASCII lower case (the names are ASCII; no locale, and OPENSSL_strncasecmp is 3.0.3+). */
static char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c; }

/* 1 if the alias at p (up to ':' or the end) is `name` (names are case-insensitive in
 * OpenSSL). */
static int alias_is(const char *p, const char *name) {
    size_t i = 0;
    for (; name[i] != '\0'; i++)  /* (a shorter p stops at its '\0': no match) */
        if (ascii_lower(p[i]) != ascii_lower(name[i])) return 0;
    return p[i] == ':' || p[i] == '\0';
}

/* 1 if the provider's colon-separated name list `names` holds `name`: first names only
 * when `first_only` (a provider names an algorithm by it first, as OpenSSL's do: that
 * pass over its hundred-odd ciphers is the cheap one), else every alias. */
static int names_hold(const char *names, const char *name, int first_only) {
    if (first_only) return alias_is(names, name);
    for (const char *p = names; p != NULL; p = strchr(p, ':'), p = p != NULL ? p + 1 : NULL)
        if (alias_is(p, name)) return 1;
    return 0;
}

/* The provider's function table for algorithm `name` of operation `op`, or NULL. The
 * table is the provider's own (static) data, so it outlives the query. */
static const OSSL_DISPATCH *provider_fns(const OSSL_PROVIDER *prov, int op, const char *name) {
    int no_store = 0;
    const OSSL_ALGORITHM *algs =
        prov == NULL ? NULL : OSSL_PROVIDER_query_operation(prov, op, &no_store);
    const OSSL_DISPATCH *fns = NULL;
    for (int first_only = 1; fns == NULL && first_only >= 0; first_only--)
        for (const OSSL_ALGORITHM *a = algs; a != NULL && a->algorithm_names != NULL; a++)
            if (names_hold(a->algorithm_names, name, first_only)) {
                fns = a->implementation;
                break;
            }
    if (algs != NULL) OSSL_PROVIDER_unquery_operation(prov, op, algs);
    return fns;
}

/* Fetch ChaCha20 and Poly1305 and take their providers' functions. Returns 1, or 0
 * (nothing held) when either is missing or lacks a function used here. */
static int fns_find(chacha_poly *im) {
    memset(im, 0, sizeof *im);
    im->cipher = EVP_CIPHER_fetch(NULL, "ChaCha20", NULL);
    im->mac = EVP_MAC_fetch(NULL, "POLY1305", NULL);
    const OSSL_DISPATCH *cfns =
        im->cipher == NULL
            ? NULL
            : provider_fns(EVP_CIPHER_get0_provider(im->cipher), OSSL_OP_CIPHER, "ChaCha20");
    const OSSL_DISPATCH *mfns =
        im->mac == NULL ? NULL
                        : provider_fns(EVP_MAC_get0_provider(im->mac), OSSL_OP_MAC, "POLY1305");
    /* A function ID's first entry is the one taken, as OpenSSL's own dispatch takes it
     * (a table may list an ID twice, as some versions' Poly1305 lists its final). */
#define TAKE(slot, get) \
    if ((slot) == NULL) (slot) = get(f); \
    break
    for (const OSSL_DISPATCH *f = cfns; f != NULL && f->function_id != 0; f++) {
        switch (f->function_id) {
        case OSSL_FUNC_CIPHER_NEWCTX: TAKE(im->newctx, OSSL_FUNC_cipher_newctx);
        case OSSL_FUNC_CIPHER_FREECTX: TAKE(im->freectx, OSSL_FUNC_cipher_freectx);
        case OSSL_FUNC_CIPHER_ENCRYPT_INIT: TAKE(im->einit, OSSL_FUNC_cipher_encrypt_init);
        case OSSL_FUNC_CIPHER_UPDATE: TAKE(im->update, OSSL_FUNC_cipher_update);
        default: break;
        }
    }
    for (const OSSL_DISPATCH *f = mfns; f != NULL && f->function_id != 0; f++) {
        switch (f->function_id) {
        case OSSL_FUNC_MAC_NEWCTX: TAKE(im->mac_newctx, OSSL_FUNC_mac_newctx);
        case OSSL_FUNC_MAC_FREECTX: TAKE(im->mac_freectx, OSSL_FUNC_mac_freectx);
        case OSSL_FUNC_MAC_INIT: TAKE(im->mac_init, OSSL_FUNC_mac_init);
        case OSSL_FUNC_MAC_UPDATE: TAKE(im->mac_update, OSSL_FUNC_mac_update);
        case OSSL_FUNC_MAC_FINAL: TAKE(im->mac_final, OSSL_FUNC_mac_final);
        default: break;
        }
    }
#undef TAKE
    if (im->newctx == NULL || im->freectx == NULL || im->einit == NULL || im->update == NULL ||
        im->mac_newctx == NULL || im->mac_freectx == NULL || im->mac_init == NULL ||
        im->mac_update == NULL || im->mac_final == NULL) {
        EVP_CIPHER_free(im->cipher);
        EVP_MAC_free(im->mac);
        memset(im, 0, sizeof *im);
        return 0;
    }
    return 1;
}

/* ---- one record ------------------------------------------------------------------ */

#define BLOCK 64 /* a ChaCha20 block */

/* A record of up to SMALL_MAX bytes goes through the cipher whole with its key block, in
 * one call over a stack buffer. From 1,024 bytes on the copy through the buffer would
 * cost more than the call it saves (at 1,024 the key block and 16 of data are two passes
 * either way; 1,024-byte records sealed and opened through the buffer took 6% longer):
 * the record's head goes with the key block, the rest from the caller's buffer to the
 * output. */
#define SMALL_MAX 1023
/* The stack buffer rec_first runs over: the key block and SMALL_MAX bytes in whole blocks
 * (a larger record's head, two blocks at most, takes less). */
#define FIRST_SPAN_MAX (BLOCK + (SMALL_MAX + BLOCK - 1) / BLOCK * BLOCK)

/* The bulk of a larger record goes through the cipher in one update that spans an even
 * number of whole 64-byte blocks: OpenSSL's x86-64 ChaCha20 runs blocks in pairs, and an
 * update that spans an odd number of them (or starts inside one) costs 5-12% more per
 * byte (docs/benchmark-history.md, "Bulk, blocking"). Two blocks at most -- the frame
 * header and the data's first bytes -- go first, with the key block.
 *
 * How many of a plen-byte plaintext's first bytes go through the cipher with the key
 * block: all of them up to SMALL_MAX; else at least min_head (below 64) of them, in
 * whole blocks: 0, 64 or 128, the least that leaves an even number of whole blocks. */
static size_t first_len(size_t plen, size_t min_head) {
    if (plen <= SMALL_MAX) return plen;
    size_t head = min_head == 0 ? 0 : BLOCK;
    return ((plen - head) / BLOCK) % 2 == 0 ? head : head + BLOCK;
}

/* The bytes rec_first runs ChaCha20 over for `first` bytes of a record. */
static size_t first_span(size_t first) { return BLOCK + (first + BLOCK - 1) / BLOCK * BLOCK; }

/* Start a record: ChaCha20 (nonce(counter), from block 0) over buf[0..first_span(first)),
 * whose bytes from BLOCK to BLOCK + first the caller has filled (the rest are zeroed
 * here). Then buf[0..32) is the record's Poly1305 key, buf[BLOCK..BLOCK + first) the
 * input xor its keystream, and -- `first` being all of the record or whole blocks of it --
 * the context stands at the keystream of the record's next byte, for rec_more. Returns
 * 1, or 0 on an OpenSSL failure. */
static int rec_first(dtp_aead *ctx, uint64_t counter, uint8_t *buf, size_t first) {
    uint8_t iv[16] = {0}; /* ChaCha20's IV: block counter (u32le) 0 || nonce(counter) */
    dtp_put_u64le(iv + 8, counter);
    size_t span = first_span(first), outl = 0;
    memset(buf, 0, BLOCK);
    memset(buf + BLOCK + first, 0, span - BLOCK - first);
    return ctx->fns.einit(ctx->stream, NULL, 0, iv, sizeof iv, NULL) == 1 &&
           ctx->fns.update(ctx->stream, buf, &outl, span, buf, span) == 1 && outl == span;
}

/* The record's keystream continued over n > 0 bytes: out = in xor keystream (out may be
 * in). Returns 1, or 0 on an OpenSSL failure. */
static int rec_more(dtp_aead *ctx, uint8_t *out, const uint8_t *in, size_t n) {
    size_t outl = 0;
    return ctx->fns.update(ctx->stream, out, &outl, n, in, n) == 1 && outl == n;
}

/* The record's tag: Poly1305 under key[0..32) of ad || pad16 || ct || pad16 ||
 * ad_len (u64le) || ct_len (u64le) (RFC 8439 section 2.8). Returns 1, or 0 on an
 * OpenSSL failure. */
static int rec_tag(dtp_aead *ctx, const uint8_t *key, const uint8_t *ad, size_t ad_len,
                   const uint8_t *ct, size_t len, uint8_t tag[DTP_AEAD_TAG_LEN]) {
    static const uint8_t zeros[16] = {0};
    const chacha_poly *im = &ctx->fns;
    uint8_t lens[16];
    size_t outl = 0;
    dtp_put_u64le(lens, (uint64_t)ad_len);
    dtp_put_u64le(lens + 8, (uint64_t)len);
    return im->mac_init(ctx->mac, key, 32, NULL) == 1 &&
           (ad_len == 0 || im->mac_update(ctx->mac, ad, ad_len) == 1) &&
           (ad_len % 16 == 0 || im->mac_update(ctx->mac, zeros, 16 - ad_len % 16) == 1) &&
           (len == 0 || im->mac_update(ctx->mac, ct, len) == 1) &&
           (len % 16 == 0 || im->mac_update(ctx->mac, zeros, 16 - len % 16) == 1) &&
           im->mac_update(ctx->mac, lens, sizeof lens) == 1 &&
           im->mac_final(ctx->mac, tag, &outl, DTP_AEAD_TAG_LEN) == 1 &&
           outl == DTP_AEAD_TAG_LEN;
}

/* Check a record's tag against its Poly1305 under key[0..32) (rec_tag): DTP_OK,
 * DTP_ERR_DECRYPT when it does not hold (compared in constant time), DTP_ERR_CRYPTO on an
 * OpenSSL failure. */
static int rec_check(dtp_aead *ctx, const uint8_t *key, const uint8_t *ad, size_t ad_len,
                     const uint8_t *ct, size_t len, const uint8_t *tag) {
    uint8_t want[DTP_AEAD_TAG_LEN];
    int rc = !rec_tag(ctx, key, ad, ad_len, ct, len, want)       ? DTP_ERR_CRYPTO
             : CRYPTO_memcmp(want, tag, DTP_AEAD_TAG_LEN) != 0 ? DTP_ERR_DECRYPT
                                                               : DTP_OK;
    OPENSSL_cleanse(want, sizeof want);
    return rc;
}

/* ChaCha20-Poly1305 seal of the plaintext p1[0..l1) || p2[0..l2) (two pieces, so that a
 * frame header and the caller's data need not be copied together first): out[0..l1+l2)
 * = ciphertext, tag[0..16) = tag. Returns DTP_OK or DTP_ERR_CRYPTO. */
static int seal_raw2(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                     const uint8_t *p1, size_t l1, const uint8_t *p2, size_t l2, uint8_t *out,
                     uint8_t *tag) {
    uint8_t buf[FIRST_SPAN_MAX];
    size_t len = l1 + l2;
    /* (a header piece below a block goes in the head, so the rest is p2's alone) */
    size_t first = first_len(len, l2 > 0 && l1 < BLOCK ? l1 : 0);
    size_t from1 = first < l1 ? first : l1; /* the head's bytes from p1 */
    if (from1 > 0) memcpy(buf + BLOCK, p1, from1);
    if (first > from1) memcpy(buf + BLOCK + from1, p2, first - from1);
    int ok = rec_first(ctx, counter, buf, first);
    if (ok && first > 0) memcpy(out, buf + BLOCK, first);
    /* the rest straight from the caller's pieces */
    if (ok && l1 > first) ok = rec_more(ctx, out + first, p1 + first, l1 - first);
    size_t skip2 = first > l1 ? first - l1 : 0;
    if (ok && l2 > skip2) ok = rec_more(ctx, out + l1 + skip2, p2 + skip2, l2 - skip2);
    ok = ok && rec_tag(ctx, buf, ad, ad_len, out, len, tag);
    OPENSSL_cleanse(buf, first_span(first));
    if (ok) return DTP_OK;
    ERR_clear_error();
    return DTP_ERR_CRYPTO;
}

static int seal_raw(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                    const uint8_t *plain, size_t len, uint8_t *out, uint8_t *tag) {
    return seal_raw2(ctx, counter, ad, ad_len, plain, len, NULL, 0, out, tag);
}

/* ChaCha20-Poly1305 open of ct[0..len) with `tag` into out[0..len) (out may be ct): the
 * tag is verified first, and out written only if it holds. Returns DTP_OK,
 * DTP_ERR_DECRYPT or DTP_ERR_CRYPTO. */
static int open_raw(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                    const uint8_t *ct, size_t len, const uint8_t *tag, uint8_t *out) {
    uint8_t buf[FIRST_SPAN_MAX];
    size_t first = first_len(len, 0);
    if (first > 0) memcpy(buf + BLOCK, ct, first);
    int rc = rec_first(ctx, counter, buf, first) ? rec_check(ctx, buf, ad, ad_len, ct, len, tag)
                                                 : DTP_ERR_CRYPTO;
    if (rc == DTP_OK) {
        if (first > 0) memcpy(out, buf + BLOCK, first);
        if (len > first && !rec_more(ctx, out + first, ct + first, len - first)) {
            OPENSSL_cleanse(out, len);
            rc = DTP_ERR_CRYPTO;
        }
    }
    OPENSSL_cleanse(buf, first_span(first));
    if (rc == DTP_ERR_CRYPTO) ERR_clear_error();
    return rc;
}

static size_t rx_stream_header(const dtp_rx *rx, const uint8_t *p, size_t avail, size_t plen);

/* open_stream_record's answer for a record whose first bytes start a STREAM frame of the
 * stream taken, but not with the header predicted (the same values may be encoded with
 * longer varints): only a parse of the whole plaintext can tell. Never returned by a
 * public entry point. */
#define RX_REPARSE (-1000)

/* 1 if the h bytes at got, which rx_stream_header did not take for rx's STREAM header,
 * still start a STREAM frame of rx's stream (so only a parse of the whole plaintext can
 * tell: a stream ID longer than h bytes hold could still be rx's). */
static int rx_maybe_ours(const dtp_rx *rx, const uint8_t *got, size_t h) {
    uint64_t sid = 0;
    return got[0] == DTP_FRAME_STREAM &&
           (dtp_varint_get(got + 1, h - 1, &sid) == 0 || sid == rx->stream_id);
}

/* Open a DATA record expected to hold one STREAM frame whose header takes h bytes
 * (0 < h < 64): the record's first bytes (its head, or all of a small record) are
 * decrypted with its key block into a stack buffer and the header checked (on
 * unauthenticated bytes: only to decide whether to go on); when it matches, the tag is
 * verified, the header copied to fh and the data to out, the rest of it decrypted
 * straight there. Returns DTP_OK; DTP_STOP when the header does not match and is not a
 * STREAM frame of rx's stream, RX_REPARSE when it is one (the tag unchecked, fh and out
 * untouched, both); DTP_ERR_DECRYPT (nothing written) or DTP_ERR_CRYPTO. */
static int open_stream_record(dtp_aead *ctx, const uint8_t *hdr, const dtp_record *rec,
                              const dtp_rx *rx, uint8_t *fh, size_t h, uint8_t *out) {
    uint8_t buf[FIRST_SPAN_MAX];
    size_t plen = rec->body_len - DTP_AEAD_TAG_LEN;
    size_t first = first_len(plen, h); /* (at least h: all of a small record, else >= 64) */
    const uint8_t *ct = hdr + DTP_RECORD_HEADER_LEN;
    memcpy(buf + BLOCK, ct, first);
    int rc = DTP_OK;
    if (!rec_first(ctx, rec->counter, buf, first)) {
        rc = DTP_ERR_CRYPTO;
    } else if (rx_stream_header(rx, buf + BLOCK, h, plen) != h) {
        /* not the record hoped for: left without checking its tag */
        rc = rx_maybe_ours(rx, buf + BLOCK, h) ? RX_REPARSE : DTP_STOP;
    } else if ((rc = rec_check(ctx, buf, hdr, DTP_RECORD_HEADER_LEN, ct, plen, ct + plen)) ==
               DTP_OK) {
        memcpy(fh, buf + BLOCK, h);
        if (first > h) memcpy(out, buf + BLOCK + h, first - h);
        if (plen > first && !rec_more(ctx, out + (first - h), ct + first, plen - first)) {
            OPENSSL_cleanse(fh, h);
            OPENSSL_cleanse(out, plen - h);
            rc = DTP_ERR_CRYPTO;
        }
    }
    OPENSSL_cleanse(buf, first_span(first));
    if (rc == DTP_ERR_CRYPTO) ERR_clear_error();
    return rc;
}

/* ---- replay window (protocol.md 4.3) -------------------------------------------- */

static int window_bit(const dtp_aead *ctx, uint64_t c) {
    uint64_t pos = c % DTP_REPLAY_WINDOW;
    return (int)((ctx->seen[pos / 64] >> (pos % 64)) & 1u);
}

/* 1 if counter c may be accepted (not yet seen and not older than the window). */
static int window_check(const dtp_aead *ctx, uint64_t c) {
    if (ctx->in_order) return ctx->have_top ? c - ctx->top == 1 : c == 0;
    if (!ctx->have_top || c > ctx->top) return 1;
    if (ctx->top - c >= DTP_REPLAY_WINDOW) return 0;
    return !window_bit(ctx, c);
}

/* Clear `count` ring bits starting at ring position `pos` (wrapping), count < window. */
static void window_clear(dtp_aead *ctx, uint64_t pos, uint64_t count) {
    while (count > 0) {
        uint64_t word = pos / 64, bit = pos % 64;
        uint64_t span = 64 - bit;
        if (span > count) span = count;
        uint64_t mask = (span == 64) ? ~(uint64_t)0 : (((uint64_t)1 << span) - 1) << bit;
        ctx->seen[word] &= ~mask;
        count -= span;
        pos = (pos + span) % DTP_REPLAY_WINDOW;
    }
}

/* Record counter c as accepted (window_check(c) must have said yes). */
static void window_mark(dtp_aead *ctx, uint64_t c) {
    if (!ctx->have_top) {
        for (size_t i = 0; i < WINDOW_WORDS; i++) ctx->seen[i] = 0;
        ctx->have_top = 1;
        ctx->top = c;
    } else if (c > ctx->top) {
        uint64_t shift = c - ctx->top;
        if (shift >= DTP_REPLAY_WINDOW) {
            /* A jump of a whole window or more: nothing old stays inside it. */
            for (size_t i = 0; i < WINDOW_WORDS; i++) ctx->seen[i] = 0;
        } else {
            /* Slide: counters top+1 .. c take over the bits of top+1-W .. c-W. */
            window_clear(ctx, (ctx->top + 1) % DTP_REPLAY_WINDOW, shift);
        }
        ctx->top = c;
    }
    uint64_t pos = c % DTP_REPLAY_WINDOW;
    ctx->seen[pos / 64] |= (uint64_t)1 << (pos % 64);
}

/* ---- public API ---------------------------------------------------------------- */

dtp_aead *dtp_aead_new(const uint8_t *key, size_t key_len) {
    if (key == NULL || key_len != DTP_AEAD_KEY_LEN) return NULL;
    dtp_aead *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) return NULL;
    chacha_poly *im = &ctx->fns;
    if (fns_find(im)) {
        ctx->stream = im->newctx(
            OSSL_PROVIDER_get0_provider_ctx(EVP_CIPHER_get0_provider(im->cipher)));
        ctx->mac = im->mac_newctx(
            OSSL_PROVIDER_get0_provider_ctx(EVP_MAC_get0_provider(im->mac)));
    }
    uint8_t iv[16] = {0};
    if (ctx->stream == NULL || ctx->mac == NULL ||
        im->einit(ctx->stream, key, DTP_AEAD_KEY_LEN, iv, sizeof iv, NULL) != 1) {
        ERR_clear_error();
        dtp_aead_free(ctx);
        return NULL;
    }
    return ctx;
}

void dtp_aead_free(dtp_aead *ctx) {
    if (ctx == NULL) return;
    /* (ChaCha20's freectx cleanses its key; Poly1305's state is cleansed at each tag) */
    if (ctx->stream != NULL) ctx->fns.freectx(ctx->stream);
    if (ctx->mac != NULL) ctx->fns.mac_freectx(ctx->mac);
    EVP_CIPHER_free(ctx->fns.cipher);
    EVP_MAC_free(ctx->fns.mac);
    OPENSSL_cleanse(ctx, sizeof *ctx);
    free(ctx);
}

int dtp_aead_seal_batch(dtp_aead *ctx, uint64_t first_counter, const uint8_t *plain,
                        size_t plain_len, const uint32_t *lens, size_t n, uint8_t *out,
                        size_t out_cap, size_t *written) {
    if (ctx == NULL || written == NULL || (plain == NULL && plain_len > 0) ||
        (lens == NULL && n > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (n == 0) return plain_len == 0 ? DTP_OK : DTP_ERR_ARG;

    /* Validate everything before writing anything. Counters first .. first+n-1 must all
     * be below the reserved 2^64 - 1. */
    if (first_counter == COUNTER_RESERVED ||
        (uint64_t)(n - 1) > COUNTER_RESERVED - 1 - first_counter)
        return DTP_ERR_COUNTER;
    for (size_t i = 0; i < n; i++)
        if (lens[i] > DTP_MAX_RECORD_PLAINTEXT) return DTP_ERR_RECORD_SIZE;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > plain_len - total) return DTP_ERR_ARG; /* sum would exceed plain_len */
        total += lens[i];
    }
    if (total != plain_len) return DTP_ERR_ARG;
    /* Overhead n * 28: n records fit in memory, so n <= SIZE_MAX / 28 unless the caller
     * lies about out_cap; check without overflowing. */
    const size_t per = DTP_RECORD_HEADER_LEN + DTP_AEAD_TAG_LEN;
    if (n > (SIZE_MAX - total) / per || out_cap < total + n * per) return DTP_ERR_BUFFER;

    size_t in_pos = 0, out_pos = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t counter = first_counter + (uint64_t)i;
        size_t len = lens[i];
        uint8_t *hdr = out + out_pos;
        hdr[0] = DTP_REC_DATA;
        hdr[1] = 0;
        dtp_put_u16le(hdr + 2, (uint16_t)(len + DTP_AEAD_TAG_LEN));
        dtp_put_u64le(hdr + 4, counter);
        uint8_t *ct = hdr + DTP_RECORD_HEADER_LEN;
        int rc = seal_raw(ctx, counter, hdr, DTP_RECORD_HEADER_LEN,
                          len > 0 ? plain + in_pos : NULL, len, ct, ct + len);
        if (rc != DTP_OK) {
            OPENSSL_cleanse(out, out_pos + DTP_RECORD_HEADER_LEN + len);
            return rc;
        }
        in_pos += len;
        out_pos += DTP_RECORD_HEADER_LEN + len + DTP_AEAD_TAG_LEN;
    }
    *written = out_pos;
    return DTP_OK;
}

/* The next DATA record of a byte stream, checked in the order every open path uses:
 * DTP_OK with *rec filled (header valid, body complete), or the status that stops a
 * batch at pos: DTP_NEED_MORE, the header's error code, or DTP_STOP for another kind.
 * Output capacity and the reserved counter are the caller's checks (in that order). */
static int next_data_record(const uint8_t *buf, size_t len, size_t pos, dtp_record *rec) {
    if (len - pos < DTP_RECORD_HEADER_LEN) return DTP_NEED_MORE;
    int hc = dtp_record_header_check(buf + pos, rec);
    if (hc < 0) return hc;
    if (rec->kind != DTP_REC_DATA) return DTP_STOP;
    if (len - pos - DTP_RECORD_HEADER_LEN < rec->body_len) return DTP_NEED_MORE;
    return DTP_OK;
}

/* Authenticate and decrypt the record at hdr (checked by next_data_record) into dst;
 * the record header is the associated data. */
static int open_record(dtp_aead *ctx, const uint8_t *hdr, const dtp_record *rec,
                       uint8_t *dst) {
    size_t plen = rec->body_len - DTP_AEAD_TAG_LEN;
    const uint8_t *ct = hdr + DTP_RECORD_HEADER_LEN;
    return open_raw(ctx, rec->counter, hdr, DTP_RECORD_HEADER_LEN, ct, plen, ct + plen, dst);
}

int dtp_aead_open_batch(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_opened *out,
                        size_t max_out, uint8_t *plain_out, size_t plain_cap, size_t *n_out,
                        size_t *consumed) {
    if (ctx == NULL || n_out == NULL || consumed == NULL || (buf == NULL && len > 0) ||
        (out == NULL && max_out > 0) || (plain_out == NULL && plain_cap > 0))
        return DTP_ERR_ARG;
    size_t pos = 0, n = 0, plain_pos = 0;
    int rc = DTP_OK;
    while (pos < len) {
        const uint8_t *hdr = buf + pos;
        dtp_record rec;
        int wc = next_data_record(buf, len, pos, &rec);
        if (wc != DTP_OK) {
            rc = wc;
            break;
        }
        size_t plen = rec.body_len - DTP_AEAD_TAG_LEN;
        if (n == max_out || plain_cap - plain_pos < plen) {
            rc = DTP_FULL;
            break;
        }
        if (rec.counter == COUNTER_RESERVED) {
            /* Never produced by an honest sender: same answer as a forgery. */
            rc = DTP_ERR_DECRYPT;
            break;
        }
        dtp_opened *o = &out[n];
        o->counter = rec.counter;
        o->plain_off = plain_pos;
        if (!window_check(ctx, rec.counter)) {
            /* Lossy carriers duplicate records: report and go on, without decrypting. */
            o->plain_len = 0;
            o->status = DTP_ERR_REPLAY;
        } else {
            /* plen > 0 implies plain_cap > 0, hence plain_out != NULL. */
            uint8_t *dst = plen > 0 ? plain_out + plain_pos : NULL;
            int oc = open_record(ctx, hdr, &rec, dst);
            if (oc != DTP_OK) {
                rc = oc;
                break;
            }
            window_mark(ctx, rec.counter);
            o->plain_len = (uint32_t)plen;
            o->status = DTP_OK;
            plain_pos += plen;
        }
        n++;
        pos += DTP_RECORD_HEADER_LEN + rec.body_len;
    }
    *n_out = n;
    *consumed = pos;
    return rc;
}

/* ---- stream fast paths ------------------------------------------------------------ */

#define STREAM_HEADER_MAX 25 /* type + three 8-byte varints */
#define VARINT_MAX_U64 ((uint64_t)DTP_VARINT_MAX)
#define CREDIT_RECORD_MAX 64 /* the plaintext of a record flow_credit_record may take */

/* The data bytes of the record that starts at data position pos (of len): max_chunk, or
 * what is left, or -- when the frame header beside them would take the plaintext past
 * DTP_MAX_RECORD_PLAINTEXT -- what fills the record exactly (a full record's plaintext is
 * 16,384 bytes: the cipher then runs whole 64-byte blocks, docs/benchmark-history.md
 * "Bulk, blocking"). *hdr is the frame header's length. */
static size_t stream_chunk(size_t sid_size, uint64_t offset, size_t pos, size_t len,
                           size_t max_chunk, size_t *hdr) {
    size_t chunk = (len - pos < max_chunk) ? len - pos : max_chunk;
    size_t fixed = 1 + sid_size + dtp_varint_size(offset + (uint64_t)pos);
    if (fixed + dtp_varint_size((uint64_t)chunk) + chunk > DTP_MAX_RECORD_PLAINTEXT)
        chunk = DTP_MAX_RECORD_PLAINTEXT - fixed - 2; /* over 16,362 bytes: a 2-byte length */
    *hdr = fixed + dtp_varint_size((uint64_t)chunk);
    return chunk;
}

/* Validate dtp_stream_seal's stream arguments (checks 2 to 4 of its header comment) and
 * compute the number of records and the exact output size. Returns DTP_OK or the error
 * code. */
static int stream_seal_check(uint64_t stream_id, uint64_t offset, size_t len, size_t max_chunk,
                             size_t *n_out, size_t *size_out) {
    if (max_chunk == 0) return DTP_ERR_ARG;
    if (max_chunk > DTP_MAX_FRAME_DATA) return DTP_ERR_FRAME_SIZE;
    if (stream_id > VARINT_MAX_U64 || offset > VARINT_MAX_U64) return DTP_ERR_VARINT;
    if ((uint64_t)len > VARINT_MAX_U64 - offset) return DTP_ERR_FRAME_VALUE;
    const size_t per = DTP_RECORD_HEADER_LEN + DTP_AEAD_TAG_LEN + STREAM_HEADER_MAX;
    /* every record but the last holds at least `least` bytes (a frame header takes at
     * most 21 of a record's 16,384); a size that cannot be represented fits nowhere */
    size_t least = max_chunk < DTP_MAX_STREAM_CHUNK ? max_chunk : DTP_MAX_STREAM_CHUNK;
    if (len / least + 1 > (SIZE_MAX - len) / per) return DTP_ERR_BUFFER;
    size_t n = 0, total = 0, pos = 0, sid_size = dtp_varint_size(stream_id);
    do {
        size_t hdr = 0;
        size_t chunk = stream_chunk(sid_size, offset, pos, len, max_chunk, &hdr);
        total += DTP_RECORD_HEADER_LEN + hdr + chunk + DTP_AEAD_TAG_LEN;
        pos += chunk;
        n++;
    } while (pos < len);
    *n_out = n;
    *size_out = total;
    return DTP_OK;
}

size_t dtp_stream_seal_size(uint64_t stream_id, uint64_t offset, size_t len, size_t max_chunk) {
    size_t n = 0, size = 0;
    if (stream_seal_check(stream_id, offset, len, max_chunk, &n, &size) != DTP_OK) return 0;
    return size;
}

int dtp_stream_seal(dtp_aead *ctx, uint64_t first_counter, uint64_t stream_id, uint64_t offset,
                    const uint8_t *data, size_t len, int fin, size_t max_chunk, uint8_t *out,
                    size_t out_cap, size_t *written, size_t *n_records) {
    return dtp_stream_seal_head(ctx, first_counter, stream_id, offset, NULL, 0, data, len, fin,
                                max_chunk, out, out_cap, written, n_records);
}

int dtp_stream_seal_head(dtp_aead *ctx, uint64_t first_counter, uint64_t stream_id,
                         uint64_t offset, const uint8_t *head, size_t head_len,
                         const uint8_t *data, size_t len, int fin, size_t max_chunk,
                         uint8_t *out, size_t out_cap, size_t *written, size_t *n_records) {
    if (ctx == NULL || written == NULL || n_records == NULL || (data == NULL && len > 0) ||
        (head == NULL && head_len > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    *n_records = 0;
    if (head_len > DTP_MAX_SEAL_HEAD) return DTP_ERR_ARG;
    if (len > SIZE_MAX - head_len) return DTP_ERR_FRAME_VALUE;
    size_t all = head_len + len; /* the stream bytes: head, then data */
    size_t n = 0, total = 0;
    int rc = stream_seal_check(stream_id, offset, all, max_chunk, &n, &total);
    if (rc != DTP_OK) return rc;
    if (first_counter == COUNTER_RESERVED ||
        (uint64_t)(n - 1) > COUNTER_RESERVED - 1 - first_counter)
        return DTP_ERR_COUNTER;
    if (out_cap < total) return DTP_ERR_BUFFER;

    size_t out_pos = 0, pos = 0, sid_size = dtp_varint_size(stream_id);
    for (size_t i = 0; i < n; i++) {
        size_t h_len = 0;
        size_t chunk = stream_chunk(sid_size, offset, pos, all, max_chunk, &h_len);
        /* the frame header, then the chunk's bytes of the head (if any): one piece */
        uint8_t fh[STREAM_HEADER_MAX + DTP_MAX_SEAL_HEAD];
        size_t h = 0;
        fh[h++] = (fin && i == n - 1) ? DTP_FRAME_STREAM_FIN : DTP_FRAME_STREAM;
        h += dtp_varint_put(fh + h, STREAM_HEADER_MAX - h, stream_id);
        h += dtp_varint_put(fh + h, STREAM_HEADER_MAX - h, offset + (uint64_t)pos);
        h += dtp_varint_put(fh + h, STREAM_HEADER_MAX - h, (uint64_t)chunk);
        size_t from_head = 0;
        if (pos < head_len) {
            from_head = head_len - pos < chunk ? head_len - pos : chunk;
            memcpy(fh + h, head + pos, from_head);
        }
        /* the chunk's bytes of data: from where the head ended, or went on before */
        size_t from_data = chunk - from_head;
        const uint8_t *p2 = from_data > 0 ? data + (pos + from_head - head_len) : NULL;
        uint64_t counter = first_counter + (uint64_t)i;
        uint8_t *hdr = out + out_pos;
        size_t plen = h + chunk; /* (h == h_len) */
        hdr[0] = DTP_REC_DATA;
        hdr[1] = 0;
        dtp_put_u16le(hdr + 2, (uint16_t)(plen + DTP_AEAD_TAG_LEN));
        dtp_put_u64le(hdr + 4, counter);
        uint8_t *ct = hdr + DTP_RECORD_HEADER_LEN;
        rc = seal_raw2(ctx, counter, hdr, DTP_RECORD_HEADER_LEN, fh, h + from_head, p2,
                       from_data, ct, ct + plen);
        if (from_head > 0) OPENSSL_cleanse(fh + h, from_head);
        if (rc != DTP_OK) {
            OPENSSL_cleanse(out, out_pos + DTP_RECORD_HEADER_LEN + plen);
            return rc;
        }
        out_pos += DTP_RECORD_HEADER_LEN + plen + DTP_AEAD_TAG_LEN;
        pos += chunk;
    }
    *written = out_pos;
    *n_records = n;
    return DTP_OK;
}

int dtp_stream_seal_last(dtp_aead *ctx, uint64_t counter, uint64_t stream_id, uint64_t offset,
                         const uint8_t *data, size_t len, uint64_t max_streams, uint8_t *out,
                         size_t out_cap, size_t *written) {
    if (ctx == NULL || written == NULL || (data == NULL && len > 0) ||
        (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (stream_id > VARINT_MAX_U64 || offset > VARINT_MAX_U64 || max_streams > VARINT_MAX_U64)
        return DTP_ERR_VARINT;
    if ((uint64_t)len > VARINT_MAX_U64 - offset) return DTP_ERR_FRAME_VALUE;
    /* the two frames' heads: STREAM_FIN's before the data, MAX_STREAMS after it */
    uint8_t fh[STREAM_HEADER_MAX], tail[1 + 8];
    size_t h = 0, t = 0;
    fh[h++] = DTP_FRAME_STREAM_FIN;
    h += dtp_varint_put(fh + h, sizeof fh - h, stream_id);
    h += dtp_varint_put(fh + h, sizeof fh - h, offset);
    h += dtp_varint_put(fh + h, sizeof fh - h, (uint64_t)len);
    if (max_streams > 0) {
        tail[t++] = DTP_FRAME_MAX_STREAMS;
        t += dtp_varint_put(tail + t, sizeof tail - t, max_streams);
    }
    if (len > DTP_MAX_RECORD_PLAINTEXT - h - t) return DTP_ERR_RECORD_SIZE;
    size_t plen = h + len + t;
    if (counter == COUNTER_RESERVED) return DTP_ERR_COUNTER;
    if (out_cap < DTP_RECORD_HEADER_LEN + plen + DTP_AEAD_TAG_LEN) return DTP_ERR_BUFFER;

    uint8_t *hdr = out;
    hdr[0] = DTP_REC_DATA;
    hdr[1] = 0;
    dtp_put_u16le(hdr + 2, (uint16_t)(plen + DTP_AEAD_TAG_LEN));
    dtp_put_u64le(hdr + 4, counter);
    /* the plaintext put together where its ciphertext goes, then sealed there */
    uint8_t *ct = hdr + DTP_RECORD_HEADER_LEN;
    memcpy(ct, fh, h);
    if (len > 0) memcpy(ct + h, data, len);
    if (t > 0) memcpy(ct + h + len, tail, t);
    int rc = seal_raw(ctx, counter, hdr, DTP_RECORD_HEADER_LEN, ct, plen, ct, ct + plen);
    if (rc != DTP_OK) {
        OPENSSL_cleanse(out, DTP_RECORD_HEADER_LEN + plen);
        return rc;
    }
    *written = DTP_RECORD_HEADER_LEN + plen + DTP_AEAD_TAG_LEN;
    return DTP_OK;
}

int dtp_aead_open_frames(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_opened_rec *recs,
                         size_t max_recs, uint8_t *plain_out, size_t plain_cap,
                         dtp_frame *frames, size_t max_frames, dtp_ack_range *ranges,
                         size_t max_ranges, size_t *n_recs, size_t *n_frames, size_t *n_ranges,
                         size_t *consumed) {
    if (ctx == NULL || n_recs == NULL || n_frames == NULL || n_ranges == NULL ||
        consumed == NULL || (buf == NULL && len > 0) || (recs == NULL && max_recs > 0) ||
        (plain_out == NULL && plain_cap > 0) || (frames == NULL && max_frames > 0) ||
        (ranges == NULL && max_ranges > 0))
        return DTP_ERR_ARG;
    /* first_frame / n_frames are 32-bit: never hand out more frame slots than that
     * (unreachable in practice: it would take gigabytes of input) */
    if (max_frames > UINT32_MAX) max_frames = UINT32_MAX;
    size_t pos = 0, n = 0, nf = 0, nr = 0, plain_pos = 0;
    int rc = DTP_OK;
    while (pos < len) {
        const uint8_t *hdr = buf + pos;
        dtp_record rec;
        int wc = next_data_record(buf, len, pos, &rec);
        if (wc != DTP_OK) {
            rc = wc;
            break;
        }
        size_t plen = rec.body_len - DTP_AEAD_TAG_LEN;
        if (n == max_recs || plain_cap - plain_pos < plen) {
            rc = DTP_FULL;
            break;
        }
        if (rec.counter == COUNTER_RESERVED) {
            rc = DTP_ERR_DECRYPT;
            break;
        }
        dtp_opened_rec *o = &recs[n];
        o->counter = rec.counter;
        o->plain_off = plain_pos;
        o->first_frame = (uint32_t)nf;
        o->n_frames = 0;
        if (!window_check(ctx, rec.counter)) {
            o->plain_len = 0;
            o->status = DTP_ERR_REPLAY;
        } else {
            uint8_t *dst = plen > 0 ? plain_out + plain_pos : NULL;
            int oc = open_record(ctx, hdr, &rec, dst);
            if (oc != DTP_OK) {
                rc = oc;
                break;
            }
            size_t fn = 0, rn = 0, used = 0;
            int dc = DTP_OK;
            if (plen > 0)
                dc = dtp_frames_decode(dst, plen, 1, frames == NULL ? NULL : frames + nf,
                                       max_frames - nf, ranges == NULL ? NULL : ranges + nr,
                                       max_ranges - nr, &fn, &rn, &used);
            if (dc != DTP_OK) {
                /* DTP_FULL (retry with room) or a decode error: the record is not
                 * reported, so its plaintext must not linger either. */
                OPENSSL_cleanse(dst, plen);
                rc = dc;
                break;
            }
            for (size_t k = 0; k < fn; k++) {
                dtp_frame *f = &frames[nf + k];
                if (f->type == DTP_FRAME_ACK)
                    f->a += (uint64_t)nr;
                else
                    f->data_off += (uint64_t)plain_pos;
            }
            window_mark(ctx, rec.counter);
            o->plain_len = (uint32_t)plen;
            o->status = DTP_OK;
            o->n_frames = (uint32_t)fn;
            nf += fn;
            nr += rn;
            plain_pos += plen;
        }
        n++;
        pos += DTP_RECORD_HEADER_LEN + rec.body_len;
    }
    *n_recs = n;
    *n_frames = nf;
    *n_ranges = nr;
    *consumed = pos;
    return rc;
}

int dtp_aead_open_lone_frame(dtp_aead *ctx, const uint8_t *buf, size_t len, uint8_t *plain_out,
                             size_t plain_cap, dtp_lone_frame *out) {
    if (ctx == NULL || out == NULL || (buf == NULL && len > 0) ||
        (plain_out == NULL && plain_cap > 0))
        return DTP_ERR_ARG;
    dtp_record rec;
    if (next_data_record(buf, len, 0, &rec) != DTP_OK ||
        len - DTP_RECORD_HEADER_LEN != (size_t)rec.body_len)
        return DTP_STOP;
    size_t plen = rec.body_len - DTP_AEAD_TAG_LEN;
    /* (an empty plaintext has no frame) */
    if (plen == 0 || plen > plain_cap || rec.counter == COUNTER_RESERVED ||
        !window_check(ctx, rec.counter))
        return DTP_STOP;
    /* (open_raw writes plain_out only for a record that authenticates) */
    if (open_record(ctx, buf, &rec, plain_out) != DTP_OK) return DTP_STOP;
    dtp_frame f = {0};
    size_t fn = 0, rn = 0, used = 0;
    int dc = dtp_frames_decode(plain_out, plen, 1, &f, 1, NULL, 0, &fn, &rn, &used);
    /* (an ACK's ranges need dtp_aead_open_frames' arrays; a DATAGRAM is taken: a quiet
     * flow's record holds one, opened here once, not again by dtp_aead_open_frames) */
    if (dc != DTP_OK || fn != 1 || f.type == DTP_FRAME_ACK) {
        OPENSSL_cleanse(plain_out, plen);
        return DTP_STOP;
    }
    window_mark(ctx, rec.counter);
    out->counter = rec.counter;
    out->frame = f;
    return DTP_OK;
}

/* Parse the STREAM frame header at p[0..avail): the header length, or 0 unless it is a
 * STREAM (not FIN) frame of rx's stream at rx's offset, whose data -- the rest of a
 * plaintext of plen bytes exactly -- is nonempty and within both limits. */
static size_t rx_stream_header(const dtp_rx *rx, const uint8_t *p, size_t avail,
                               size_t plen) {
    if (avail < 4 || p[0] != DTP_FRAME_STREAM) return 0;
    uint64_t sid = 0, off = 0, n = 0;
    size_t h = 1, k;
    if ((k = dtp_varint_get(p + h, avail - h, &sid)) == 0) return 0;
    h += k;
    if ((k = dtp_varint_get(p + h, avail - h, &off)) == 0) return 0;
    h += k;
    if ((k = dtp_varint_get(p + h, avail - h, &n)) == 0) return 0;
    h += k;
    if (sid != rx->stream_id || off != rx->offset || n == 0 || h > plen ||
        n != (uint64_t)(plen - h))
        return 0;
    /* both limits, written so that nothing can overflow */
    if (rx->offset > rx->stream_limit || n > rx->stream_limit - rx->offset) return 0;
    if (rx->conn_received > rx->conn_limit || n > rx->conn_limit - rx->conn_received) return 0;
    return h;
}

/* The header length dtp_stream_seal writes for a plaintext of plen bytes at rx's stream
 * and offset (minimal varints), or 0 if there is none. */
static size_t rx_predicted_header(const dtp_rx *rx, size_t plen) {
    size_t base = 1 + dtp_varint_size(rx->stream_id) + dtp_varint_size(rx->offset);
    for (size_t k = 1; k <= 8; k *= 2)
        if (plen > base + k && dtp_varint_size((uint64_t)(plen - base - k)) == k)
            return base + k;
    return 0;
}

int dtp_rx_take(dtp_aead *ctx, const uint8_t *buf, size_t len, dtp_rx *rx, uint8_t *dst,
                size_t dst_cap, uint8_t *scratch, size_t scratch_cap) {
    if (ctx == NULL || rx == NULL || (buf == NULL && len > 0) || (dst == NULL && dst_cap > 0) ||
        scratch == NULL || scratch_cap < DTP_MAX_RECORD_PLAINTEXT)
        return DTP_ERR_ARG;
    rx->consumed = rx->records = rx->taken = rx->spill_off = rx->spill_len = 0;
    size_t pos = 0, taken = 0;
    int rc = DTP_OK;
    while (pos < len) {
        if (taken == dst_cap) {
            rc = DTP_FULL;
            break;
        }
        const uint8_t *hdr = buf + pos;
        dtp_record rec;
        int wc = next_data_record(buf, len, pos, &rec);
        if (wc != DTP_OK) {
            rc = wc == DTP_NEED_MORE ? DTP_NEED_MORE : DTP_STOP;
            break;
        }
        size_t plen = rec.body_len - DTP_AEAD_TAG_LEN;
        if (rec.counter == COUNTER_RESERVED || !window_check(ctx, rec.counter)) {
            rc = DTP_STOP;
            break;
        }
        const uint8_t *ct = hdr + DTP_RECORD_HEADER_LEN;
        size_t room = dst_cap - taken, n = 0, h;
        size_t guess = rx_predicted_header(rx, plen);
        int straight = 0; /* the record's data went straight to dst */
        if (guess > 0 && plen - guess <= room && guess <= STREAM_HEADER_MAX) {
            /* The usual record: the frame header to a small buffer, the data straight
             * to its place in dst -- no copy after the decryption. */
            uint8_t fh[STREAM_HEADER_MAX];
            int oc = open_stream_record(ctx, hdr, &rec, rx, fh, guess, dst + taken);
            if (oc != DTP_OK && oc != RX_REPARSE) {
                /* another frame or stream, or a failure: the general path's (it reports
                 * failures) */
                rc = DTP_STOP;
                break;
            }
            if (oc == DTP_OK) {
                OPENSSL_cleanse(fh, guess);
                window_mark(ctx, rec.counter);
                n = plen - guess;
                taken += n;
                straight = 1;
            }
        }
        if (!straight) {
            /* no prediction, no room for it, or a STREAM frame of ours encoded otherwise
             * than predicted: the whole plaintext to scratch, then the header parsed */
            if (open_raw(ctx, rec.counter, hdr, DTP_RECORD_HEADER_LEN, ct, plen, ct + plen,
                         plen > 0 ? scratch : NULL) != DTP_OK) {
                rc = DTP_STOP;
                break;
            }
            h = rx_stream_header(rx, scratch, plen, plen);
            if (h == 0) {
                OPENSSL_cleanse(scratch, plen);
                rc = DTP_STOP;
                break;
            }
            window_mark(ctx, rec.counter);
            n = plen - h;
            size_t copy = n < room ? n : room;
            memcpy(dst + taken, scratch + h, copy);
            taken += copy;
            if (copy < n) {
                rx->spill_off = h + copy;
                rx->spill_len = n - copy;
            }
        }
        rx->offset += n;
        rx->conn_received += n;
        rx->records++;
        pos += DTP_RECORD_HEADER_LEN + rec.body_len;
        if (rx->spill_len > 0) {
            rc = DTP_FULL;
            break;
        }
    }
    rx->consumed = pos;
    rx->taken = taken;
    return rc;
}

int dtp_rx_take_counts(dtp_aead *ctx, const uint8_t *buf, size_t len, uint64_t stream_id,
                       uint64_t offset, uint64_t stream_limit, uint64_t conn_received,
                       uint64_t conn_limit, uint8_t *dst, size_t dst_cap, uint8_t *scratch,
                       size_t scratch_cap, size_t *counts, size_t counts_len) {
    if (counts == NULL || counts_len < DTP_RX_COUNTS) return DTP_ERR_ARG;
    for (size_t i = 0; i < DTP_RX_COUNTS; i++) counts[i] = 0;
    dtp_rx rx = {.stream_id = stream_id,
                 .offset = offset,
                 .stream_limit = stream_limit,
                 .conn_received = conn_received,
                 .conn_limit = conn_limit};
    int rc = dtp_rx_take(ctx, buf, len, &rx, dst, dst_cap, scratch, scratch_cap);
    if (rc < 0) return rc;
    /* (each fits a size_t: consumed <= len, taken <= dst_cap, records <= consumed,
     * spill_off + spill_len <= scratch_cap) */
    counts[DTP_RX_CONSUMED] = (size_t)rx.consumed;
    counts[DTP_RX_RECORDS] = (size_t)rx.records;
    counts[DTP_RX_TAKEN] = (size_t)rx.taken;
    counts[DTP_RX_SPILL_OFF] = (size_t)rx.spill_off;
    counts[DTP_RX_SPILL_LEN] = (size_t)rx.spill_len;
    return rc;
}

int dtp_flow_seal(dtp_aead *ctx, dtp_flow *f, const uint8_t *data, size_t len,
                  size_t max_chunk, uint8_t *out, size_t out_cap, double now) {
    if (ctx == NULL || f == NULL || (data == NULL && len > 0) || out == NULL ||
        max_chunk == 0 || max_chunk > DTP_MAX_FRAME_DATA)
        return DTP_ERR_ARG;
    f->taken = f->written = 0;
    if (!f->can_send || len == 0 || f->send_offset >= f->send_limit ||
        f->conn_sent >= f->conn_send_limit)
        return DTP_STOP;
    uint64_t n = len;
    if (n > f->send_limit - f->send_offset) n = f->send_limit - f->send_offset;
    if (n > f->conn_send_limit - f->conn_sent) n = f->conn_send_limit - f->conn_sent;
    /* k records of at most `per` bytes on the wire each; every record but the last
     * holds at least `least` data bytes, so k * least bytes never need more than k */
    size_t plain = max_chunk + STREAM_HEADER_MAX;
    if (plain > DTP_MAX_RECORD_PLAINTEXT) plain = DTP_MAX_RECORD_PLAINTEXT;
    size_t per = plain + DTP_RECORD_HEADER_LEN + DTP_AEAD_TAG_LEN;
    size_t least = max_chunk < DTP_MAX_STREAM_CHUNK ? max_chunk : DTP_MAX_STREAM_CHUNK;
    uint64_t room = (uint64_t)(out_cap / per) * least;
    if (n > room) n = room;
    if (n == 0) return DTP_STOP;
    size_t written = 0, records = 0;
    int rc = dtp_stream_seal(ctx, f->send_counter, f->stream_id, f->send_offset, data,
                             (size_t)n, 0, max_chunk, out, out_cap, &written, &records);
    if (rc != DTP_OK) return rc;
    f->send_counter += records;
    f->send_offset += n;
    f->conn_sent += n;
    f->records_sent += records;
    f->wire_sent += written;
    f->last_sent = now;
    f->taken = n;
    f->written = written;
    return DTP_OK;
}

/* The record at the start of buf[0..len), when it is a small DATA record whose plaintext
 * is only credit for the lent stream's sending -- MAX_DATA, and MAX_STREAM_DATA of f's
 * stream -- is authenticated (the replay window advances for it) and its limits raise
 * f's send limits: the record's length on the wire. 0, taking nothing, for any other
 * record (its plaintext wiped): the general path opens and judges it. A bulk sender's
 * peer sends these as it reads; taken here, they do not end the loan. */
static size_t flow_credit_record(dtp_aead *ctx, dtp_flow *f, const uint8_t *buf, size_t len) {
    dtp_record rec;
    if (next_data_record(buf, len, 0, &rec) != DTP_OK) return 0;
    size_t plen = rec.body_len - DTP_AEAD_TAG_LEN;
    /* (larger records are never credit alone: no second decryption of stream data) */
    if (plen == 0 || plen > CREDIT_RECORD_MAX || rec.counter == COUNTER_RESERVED ||
        !window_check(ctx, rec.counter))
        return 0;
    uint8_t plain[CREDIT_RECORD_MAX];
    if (open_record(ctx, buf, &rec, plain) != DTP_OK) return 0; /* (nothing written) */
    uint64_t stream_limit = f->send_limit, conn_limit = f->conn_send_limit;
    size_t p = 0;
    int credit_only = 1;
    while (p < plen) {
        uint8_t type = plain[p++];
        uint64_t a = 0, b = 0;
        size_t k = dtp_varint_get(plain + p, plen - p, &a);
        if (k == 0 || (type != DTP_FRAME_MAX_DATA && type != DTP_FRAME_MAX_STREAM_DATA)) {
            credit_only = 0;
            break;
        }
        p += k;
        if (type == DTP_FRAME_MAX_DATA) {
            if (a > conn_limit) conn_limit = a;
            continue;
        }
        if (a != f->stream_id || (k = dtp_varint_get(plain + p, plen - p, &b)) == 0) {
            credit_only = 0;
            break;
        }
        p += k;
        if (b > stream_limit) stream_limit = b;
    }
    OPENSSL_cleanse(plain, plen);
    if (!credit_only) return 0;
    window_mark(ctx, rec.counter);
    f->send_limit = stream_limit;
    f->conn_send_limit = conn_limit;
    return DTP_RECORD_HEADER_LEN + rec.body_len;
}

int dtp_flow_take(dtp_aead *ctx, dtp_flow *f, const uint8_t *buf, size_t len, uint8_t *dst,
                  size_t dst_cap, uint8_t *scratch, size_t scratch_cap, double now) {
    if (ctx == NULL || f == NULL) return DTP_ERR_ARG;
    f->taken = 0;
    if (!f->can_recv) {
        f->rx.consumed = f->rx.records = f->rx.taken = f->rx.spill_off = f->rx.spill_len = 0;
        return DTP_STOP;
    }
    if (f->rx.stream_id != f->stream_id) return DTP_ERR_ARG;
    if (buf == NULL && len > 0) return DTP_ERR_ARG;
    size_t pos = 0, taken = 0;
    uint64_t records = 0;
    int rc;
    for (;;) {
        rc = dtp_rx_take(ctx, buf == NULL ? NULL : buf + pos, len - pos, &f->rx,
                         dst == NULL ? NULL : dst + taken, dst_cap - taken, scratch, scratch_cap);
        if (rc < 0) return rc; /* (argument errors: the first turn's) */
        pos += (size_t)f->rx.consumed;
        taken += (size_t)f->rx.taken;
        records += f->rx.records;
        if (rc != DTP_STOP || !f->take_credit) break;
        size_t used = flow_credit_record(ctx, f, buf + pos, len - pos);
        if (used == 0) break;
        pos += used;
        records++;
    }
    f->rx.consumed = pos;
    f->rx.records = records;
    f->rx.taken = taken;
    f->taken = taken;
    if (records > 0) {
        f->records_received += records;
        f->wire_received += pos;
        f->last_received = now;
    }
    if (rc == DTP_OK && (f->rx.offset > f->credit_offset || f->rx.conn_received > f->credit_conn))
        rc = DTP_DUE;
    return rc;
}

int dtp_aead_seal_one(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                      const uint8_t *plain, size_t plain_len, uint8_t *out, size_t out_cap,
                      size_t *written) {
    if (ctx == NULL || written == NULL || (ad == NULL && ad_len > 0) ||
        (plain == NULL && plain_len > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (counter == COUNTER_RESERVED) return DTP_ERR_COUNTER;
    /* far above any DTP message, and below the 256 GiB ChaCha20 takes under one nonce */
    if (ad_len > INT_MAX || plain_len > INT_MAX) return DTP_ERR_ARG;
    if (out_cap < plain_len + DTP_AEAD_TAG_LEN) return DTP_ERR_BUFFER;
    int rc = seal_raw(ctx, counter, ad, ad_len, plain, plain_len, out, out + plain_len);
    if (rc != DTP_OK) {
        OPENSSL_cleanse(out, plain_len);
        return rc;
    }
    *written = plain_len + DTP_AEAD_TAG_LEN;
    return DTP_OK;
}

int dtp_aead_open_one(dtp_aead *ctx, uint64_t counter, const uint8_t *ad, size_t ad_len,
                      const uint8_t *ct, size_t ct_len, uint8_t *out, size_t out_cap,
                      size_t *written) {
    if (ctx == NULL || written == NULL || (ad == NULL && ad_len > 0) ||
        (ct == NULL && ct_len > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (counter == COUNTER_RESERVED) return DTP_ERR_COUNTER;
    if (ct_len < DTP_AEAD_TAG_LEN) return DTP_ERR_DECRYPT;
    size_t plen = ct_len - DTP_AEAD_TAG_LEN;
    if (ad_len > INT_MAX || plen > INT_MAX) return DTP_ERR_ARG;
    if (out_cap < plen) return DTP_ERR_BUFFER;
    int rc = open_raw(ctx, counter, ad, ad_len, ct, plen, ct + plen, out);
    if (rc != DTP_OK) return rc;
    *written = plen;
    return DTP_OK;
}

int dtp_aead_set_in_order(dtp_aead *ctx) {
    if (ctx == NULL || ctx->have_top) return DTP_ERR_ARG;
    ctx->in_order = 1;
    return DTP_OK;
}

int dtp_aead_replay_top(const dtp_aead *ctx, uint64_t *top) {
    if (ctx == NULL || top == NULL) return DTP_ERR_ARG;
    *top = ctx->have_top ? ctx->top : 0;
    return ctx->have_top;
}
