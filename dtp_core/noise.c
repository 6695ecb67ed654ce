/* noise.c -- Noise_IK and Noise_XX handshakes, 25519_ChaChaPoly_BLAKE2s.
 *
 * The Noise Protocol Framework, revision 34: the CipherState, SymmetricState and
 * HandshakeState of its section 5, for the two patterns DTP uses (section 7.5: IK, XX)
 * and no PSK. docs/protocol.md section 3 says how DTP carries the messages;
 * dtp/native/reference/_noise.py is the pure-Python twin, and tests/native/test_noise.py
 * checks both against the `noiseprotocol` package byte for byte.
 *
 * The state is plain memory the caller owns (a dtp_noise): a read works on a copy and
 * stores it back only when the whole message checked out, so a forged or damaged
 * message leaves the handshake as it was. Hashing and encryption run on objects made
 * for one call (an EVP_MD_CTX, an EVP_CIPHER_CTX) from algorithms fetched once into a
 * read-only dtp_noise_ctx, so any number of threads may run handshakes at once.
 */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "dtp_internal.h"

#define HASHLEN 32
#define BLOCKLEN 64
#define TAGLEN 16
#define KEYLEN DTP_NOISE_KEY_LEN

/* dtp_noise.flags */
#define F_K 1u     /* k holds a key (MixKey ran) */
#define F_RS 2u    /* rs is known */
#define F_RE 4u    /* re is known */
#define F_SPLIT 8u /* split: ck, k and given wiped */

struct dtp_noise_ctx {
    EVP_MD *blake2s;
    EVP_CIPHER *chacha;
};

/* Static-static results kept by a long-lived key: a ring of the last peers' (16 KiB),
 * newest overwriting oldest. The results reveal nothing beyond the key itself (anyone
 * holding it makes them again from public keys). Its lock is only ever tried, never
 * waited for (a busy ring is a miss): a child forked while another thread held it
 * must not hang on it. */
#define KEPT_RESULTS 256

typedef struct {
    uint8_t peer[KEYLEN];
    uint8_t secret[KEYLEN];
} kept_result;

struct dtp_noise_key {
    EVP_PKEY *pkey;
    uint8_t pub[KEYLEN];
    /* A derive context of pkey and a peer key whose public bytes are set for each DH:
     * making both anew costs about 4 us a DH in OpenSSL 3.0 (fetches and an import),
     * an eighth of the DH. Under derive_lock; a thread that finds it taken (another
     * handshake on the same static key) makes its own rather than wait. */
    pthread_mutex_t derive_lock;
    EVP_PKEY_CTX *derive;
    EVP_PKEY *peer;
    int keep;
    pthread_mutex_t lock; /* guards the ring below (keep != 0 only) */
    size_t kept, next;
    kept_result ring[KEPT_RESULTS];
};

/* Tokens of the message patterns (the spec's section 7). */
enum { T_END, T_E, T_S, T_EE, T_ES, T_SE, T_SS };

/* [pattern - 1][message][token]: IK is "-> e, es, s, ss / <- e, ee, se", XX is
 * "-> e / <- e, ee, s, es / -> s, se" (with IK's pre-message "<- s"). */
static const uint8_t PATTERNS[2][3][5] = {
    {{T_E, T_ES, T_S, T_SS, T_END}, {T_E, T_EE, T_SE, T_END}, {T_END}},
    {{T_E, T_END}, {T_E, T_EE, T_S, T_ES, T_END}, {T_S, T_SE, T_END}},
};
static const uint8_t MESSAGES[2] = {2, 3};
static const char *const NAMES[2] = {"Noise_IK_25519_ChaChaPoly_BLAKE2s",
                                     "Noise_XX_25519_ChaChaPoly_BLAKE2s"};

/* ---- per-call scratch ------------------------------------------------------------ */

typedef struct {
    const dtp_noise_ctx *ctx;
    EVP_MD_CTX *md;
    EVP_CIPHER_CTX *cipher;
} scratch;

static int scratch_open(scratch *sc, const dtp_noise_ctx *ctx, int with_cipher) {
    sc->ctx = ctx;
    sc->md = EVP_MD_CTX_new();
    sc->cipher = with_cipher ? EVP_CIPHER_CTX_new() : NULL;
    return sc->md != NULL && (!with_cipher || sc->cipher != NULL);
}

static void scratch_close(scratch *sc) {
    EVP_MD_CTX_free(sc->md);
    EVP_CIPHER_CTX_free(sc->cipher);
    ERR_clear_error();
}

/* ---- hash, HMAC, HKDF (spec 4.3) -------------------------------------------------- */

/* out = BLAKE2s(a || b || c); NULL parts with length 0 are skipped. */
static int hash3(scratch *sc, const uint8_t *a, size_t al, const uint8_t *b, size_t bl,
                 const uint8_t *c, size_t cl, uint8_t out[HASHLEN]) {
    unsigned int n = 0;
    return EVP_DigestInit_ex2(sc->md, sc->ctx->blake2s, NULL) == 1 &&
           (al == 0 || EVP_DigestUpdate(sc->md, a, al) == 1) &&
           (bl == 0 || EVP_DigestUpdate(sc->md, b, bl) == 1) &&
           (cl == 0 || EVP_DigestUpdate(sc->md, c, cl) == 1) &&
           EVP_DigestFinal_ex(sc->md, out, &n) == 1 && n == HASHLEN;
}

/* HMAC-BLAKE2s (RFC 2104) under a 32-byte key, over d1 || d2. */
static int hmac(scratch *sc, const uint8_t key[HASHLEN], const uint8_t *d1, size_t l1,
                const uint8_t *d2, size_t l2, uint8_t out[HASHLEN]) {
    uint8_t pad[BLOCKLEN], inner[HASHLEN];
    for (size_t i = 0; i < BLOCKLEN; i++) pad[i] = (uint8_t)((i < HASHLEN ? key[i] : 0) ^ 0x36);
    int ok = hash3(sc, pad, BLOCKLEN, d1, l1, d2, l2, inner);
    for (size_t i = 0; i < BLOCKLEN; i++) pad[i] ^= 0x36 ^ 0x5c;
    ok = ok && hash3(sc, pad, BLOCKLEN, inner, HASHLEN, NULL, 0, out);
    OPENSSL_cleanse(pad, sizeof pad);
    OPENSSL_cleanse(inner, sizeof inner);
    return ok;
}

/* HKDF(chaining_key, ikm, 2): the two outputs to o1 and o2. */
static int hkdf2(scratch *sc, const uint8_t ck[HASHLEN], const uint8_t *ikm, size_t ikm_len,
                 uint8_t o1[HASHLEN], uint8_t o2[HASHLEN]) {
    static const uint8_t one = 1, two = 2;
    uint8_t temp[HASHLEN];
    int ok = hmac(sc, ck, ikm, ikm_len, NULL, 0, temp) &&
             hmac(sc, temp, &one, 1, NULL, 0, o1) && hmac(sc, temp, o1, HASHLEN, &two, 1, o2);
    OPENSSL_cleanse(temp, sizeof temp);
    return ok;
}

/* ---- X25519 ------------------------------------------------------------------------ */

/* X25519 through a derive context of the key's and a peer key: DTP_OK,
 * DTP_ERR_CRYPTO when the peer cannot be set, else DTP_ERR_NOISE_DH for every failure
 * of the derive itself: OpenSSL reports the all-zero result of a low-order peer key no
 * differently from its other derive failures. */
static int derive_with(EVP_PKEY_CTX *pc, EVP_PKEY *peer, uint8_t out[KEYLEN]) {
    size_t len = KEYLEN;
    /* (no peer validation: an X25519 public key is any 32 bytes; a low-order one shows
     * as the all-zero result, which derive refuses) */
    if (EVP_PKEY_derive_set_peer_ex(pc, peer, 0) != 1) return DTP_ERR_CRYPTO;
    if (EVP_PKEY_derive(pc, out, &len) != 1 || len != KEYLEN) return DTP_ERR_NOISE_DH;
    return DTP_OK;
}

/* X25519 on objects made for this call. */
static int x25519_fresh(const dtp_noise_key *key, const uint8_t pub[KEYLEN],
                        uint8_t out[KEYLEN]) {
    EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, pub, KEYLEN);
    EVP_PKEY_CTX *pc = peer == NULL ? NULL : EVP_PKEY_CTX_new(key->pkey, NULL);
    int rc = DTP_ERR_CRYPTO;
    if (pc != NULL && EVP_PKEY_derive_init(pc) == 1) rc = derive_with(pc, peer, out);
    EVP_PKEY_CTX_free(pc);
    EVP_PKEY_free(peer);
    return rc;
}

static int x25519(dtp_noise_key *key, const uint8_t pub[KEYLEN], uint8_t out[KEYLEN]) {
    int rc = DTP_ERR_CRYPTO;
    if (pthread_mutex_trylock(&key->derive_lock) == 0) {
        if (key->derive == NULL) {
            key->derive = EVP_PKEY_CTX_new(key->pkey, NULL);
            if (key->derive != NULL && EVP_PKEY_derive_init(key->derive) != 1) {
                EVP_PKEY_CTX_free(key->derive);
                key->derive = NULL;
            }
        }
        if (key->peer == NULL)
            key->peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, pub, KEYLEN);
        else if (EVP_PKEY_set1_encoded_public_key(key->peer, pub, KEYLEN) != 1) {
            EVP_PKEY_free(key->peer); /* (a peer in an unknown state: made anew next time) */
            key->peer = NULL;
        }
        if (key->derive != NULL && key->peer != NULL) rc = derive_with(key->derive, key->peer, out);
        pthread_mutex_unlock(&key->derive_lock);
    }
    if (rc == DTP_ERR_CRYPTO) rc = x25519_fresh(key, pub, out); /* busy, or a failure */
    if (rc != DTP_OK) OPENSSL_cleanse(out, KEYLEN);
    ERR_clear_error();
    return rc;
}

/* X25519 of a key that keeps its static-static results: a kept one, else made and kept. */
static int x25519_kept(dtp_noise_key *key, const uint8_t pub[KEYLEN], uint8_t out[KEYLEN]) {
    if (!key->keep) return x25519(key, pub, out);
    int found = 0;
    if (pthread_mutex_trylock(&key->lock) == 0) {
        for (size_t i = 0; i < key->kept && !found; i++)
            if (memcmp(key->ring[i].peer, pub, KEYLEN) == 0) {
                memcpy(out, key->ring[i].secret, KEYLEN);
                found = 1;
            }
        pthread_mutex_unlock(&key->lock);
    }
    if (found) return DTP_OK;
    int rc = x25519(key, pub, out);
    if (rc != DTP_OK || pthread_mutex_trylock(&key->lock) != 0) return rc;
    /* (another thread may have missed on the same peer meanwhile and kept it) */
    for (size_t i = 0; i < key->kept; i++)
        if (memcmp(key->ring[i].peer, pub, KEYLEN) == 0) {
            pthread_mutex_unlock(&key->lock);
            return DTP_OK;
        }
    kept_result *slot = &key->ring[key->next];
    memcpy(slot->peer, pub, KEYLEN);
    memcpy(slot->secret, out, KEYLEN);
    key->next = (key->next + 1) % KEPT_RESULTS;
    if (key->kept < KEPT_RESULTS) key->kept++;
    pthread_mutex_unlock(&key->lock);
    return DTP_OK;
}

/* ---- SymmetricState (spec 5.2) ------------------------------------------------------- */

static int mix_hash(scratch *sc, dtp_noise *st, const uint8_t *data, size_t len) {
    return hash3(sc, st->h, HASHLEN, data, len, NULL, 0, st->h);
}

static int mix_key(scratch *sc, dtp_noise *st, const uint8_t ikm[KEYLEN]) {
    uint8_t ck[HASHLEN];
    if (!hkdf2(sc, st->ck, ikm, KEYLEN, ck, st->k)) return 0;
    memcpy(st->ck, ck, HASHLEN);
    OPENSSL_cleanse(ck, sizeof ck);
    st->n = 0;
    st->flags |= F_K;
    return 1;
}

static void make_nonce(uint8_t nonce[12], uint64_t n) {
    memset(nonce, 0, 4);
    dtp_put_u64le(nonce + 4, n);
}

/* EncryptAndHash: out[0..len (+16 once keyed)). len is at most DTP_NOISE_MAX_MESSAGE.
 * plain and out must not overlap (dtp_noise_write's rule): the keyed path and the wipe
 * of out on failure would destroy plain. */
static int encrypt_and_hash(scratch *sc, dtp_noise *st, const uint8_t *plain, size_t len,
                            uint8_t *out) {
    if (!(st->flags & F_K)) {
        if (len > 0) memcpy(out, plain, len);
        return mix_hash(sc, st, out, len) ? DTP_OK : DTP_ERR_CRYPTO;
    }
    if (st->n == UINT64_MAX) return DTP_ERR_COUNTER;
    uint8_t nonce[12];
    int outl = 0;
    make_nonce(nonce, st->n);
    EVP_CIPHER_CTX *c = sc->cipher;
    if (EVP_EncryptInit_ex2(c, sc->ctx->chacha, st->k, nonce, NULL) != 1 ||
        EVP_EncryptUpdate(c, NULL, &outl, st->h, HASHLEN) != 1 ||
        (len > 0 && EVP_EncryptUpdate(c, out, &outl, plain, (int)len) != 1) ||
        EVP_EncryptFinal_ex(c, out + len, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAGLEN, out + len) != 1)
        return DTP_ERR_CRYPTO;
    st->n++;
    return mix_hash(sc, st, out, len + TAGLEN) ? DTP_OK : DTP_ERR_CRYPTO;
}

/* DecryptAndHash of in[0..len) (len includes the tag once keyed) to out. */
static int decrypt_and_hash(scratch *sc, dtp_noise *st, const uint8_t *in, size_t len,
                            uint8_t *out) {
    if (!(st->flags & F_K)) {
        if (len > 0) memcpy(out, in, len);
        return mix_hash(sc, st, in, len) ? DTP_OK : DTP_ERR_CRYPTO;
    }
    if (len < TAGLEN) return DTP_ERR_NOISE_SIZE;
    if (st->n == UINT64_MAX) return DTP_ERR_COUNTER;
    size_t plen = len - TAGLEN;
    uint8_t nonce[12], tag[TAGLEN];
    int outl = 0;
    make_nonce(nonce, st->n);
    memcpy(tag, in + plen, TAGLEN);
    EVP_CIPHER_CTX *c = sc->cipher;
    if (EVP_DecryptInit_ex2(c, sc->ctx->chacha, st->k, nonce, NULL) != 1 ||
        EVP_DecryptUpdate(c, NULL, &outl, st->h, HASHLEN) != 1 ||
        (plen > 0 && EVP_DecryptUpdate(c, out, &outl, in, (int)plen) != 1) ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAGLEN, tag) != 1)
        return DTP_ERR_CRYPTO;
    if (EVP_DecryptFinal_ex(c, out + plen, &outl) != 1) {
        if (plen > 0) OPENSSL_cleanse(out, plen);
        return DTP_ERR_DECRYPT;
    }
    st->n++;
    return mix_hash(sc, st, in, len) ? DTP_OK : DTP_ERR_CRYPTO;
}

/* ---- HandshakeState (spec 5.3) ------------------------------------------------------- */

static const uint8_t *tokens(const dtp_noise *st) { return PATTERNS[st->pattern - 1][st->done]; }

static int my_turn(const dtp_noise *st) { return (st->done % 2 == 0) == (st->initiator != 0); }

static int finished(const dtp_noise *st) { return st->done >= MESSAGES[st->pattern - 1]; }

static int valid(const dtp_noise *st) {
    return st->pattern >= DTP_NOISE_IK && st->pattern <= DTP_NOISE_XX && st->s != NULL;
}

/* Bytes the next message adds to its payload. */
static size_t overhead(const dtp_noise *st) {
    size_t total = 0;
    int keyed = (st->flags & F_K) != 0;
    for (const uint8_t *t = tokens(st); *t != T_END; t++) {
        if (*t == T_E)
            total += KEYLEN;
        else if (*t == T_S)
            total += KEYLEN + (keyed ? TAGLEN : 0);
        else
            keyed = 1;
    }
    return total + (keyed ? TAGLEN : 0);
}

/* The result of DH token t: given ahead, else computed. */
static int dh_token(dtp_noise *st, uint8_t t, uint8_t out[KEYLEN]) {
    int slot = t - T_EE; /* DTP_NOISE_EE .. DTP_NOISE_SS */
    if (st->given_mask & (1u << slot)) {
        memcpy(out, st->given[slot], KEYLEN);
        OPENSSL_cleanse(st->given[slot], KEYLEN);
        st->given_mask &= (uint8_t) ~(1u << slot);
        return DTP_OK;
    }
    int init = st->initiator != 0;
    dtp_noise_key *mine;
    const uint8_t *theirs;
    uint8_t need;
    switch (t) {
    case T_EE: mine = st->e, theirs = st->re, need = F_RE; break;
    case T_ES: mine = init ? st->e : st->s, theirs = init ? st->rs : st->re; need = init ? F_RS : F_RE; break;
    case T_SE: mine = init ? st->s : st->e, theirs = init ? st->re : st->rs; need = init ? F_RE : F_RS; break;
    default: mine = st->s, theirs = st->rs, need = F_RS; break;
    }
    if (mine == NULL || !(st->flags & need)) return DTP_ERR_ARG;
    return t == T_SS ? x25519_kept(mine, theirs, out) : x25519(mine, theirs, out);
}

static int run_dh(scratch *sc, dtp_noise *st, uint8_t t) {
    uint8_t secret[KEYLEN];
    int rc = dh_token(st, t, secret);
    if (rc == DTP_OK && !mix_key(sc, st, secret)) rc = DTP_ERR_CRYPTO;
    OPENSSL_cleanse(secret, sizeof secret);
    return rc;
}

static int write_tokens(scratch *sc, dtp_noise *st, const uint8_t *payload, size_t payload_len,
                        uint8_t *out, size_t *pos) {
    int rc = DTP_OK;
    for (const uint8_t *t = tokens(st); *t != T_END && rc == DTP_OK; t++) {
        if (*t == T_E) {
            if (st->e == NULL) return DTP_ERR_ARG;
            memcpy(out + *pos, st->e->pub, KEYLEN);
            if (!mix_hash(sc, st, st->e->pub, KEYLEN)) return DTP_ERR_CRYPTO;
            *pos += KEYLEN;
        } else if (*t == T_S) {
            size_t before = *pos;
            rc = encrypt_and_hash(sc, st, st->s->pub, KEYLEN, out + before);
            *pos += KEYLEN + ((st->flags & F_K) ? TAGLEN : 0);
        } else {
            rc = run_dh(sc, st, *t);
        }
    }
    if (rc != DTP_OK) return rc;
    rc = encrypt_and_hash(sc, st, payload, payload_len, out + *pos);
    *pos += payload_len + ((st->flags & F_K) ? TAGLEN : 0);
    return rc;
}

static int read_tokens(scratch *sc, dtp_noise *st, const uint8_t *msg, size_t len, uint8_t *out,
                       size_t *payload_len) {
    size_t pos = 0;
    int rc = DTP_OK;
    for (const uint8_t *t = tokens(st); *t != T_END && rc == DTP_OK; t++) {
        if (*t == T_E) {
            memcpy(st->re, msg + pos, KEYLEN);
            st->flags |= F_RE;
            if (!mix_hash(sc, st, st->re, KEYLEN)) return DTP_ERR_CRYPTO;
            pos += KEYLEN;
        } else if (*t == T_S) {
            size_t n = KEYLEN + ((st->flags & F_K) ? TAGLEN : 0);
            uint8_t rs[KEYLEN];
            rc = decrypt_and_hash(sc, st, msg + pos, n, rs);
            if (rc == DTP_OK) {
                memcpy(st->rs, rs, KEYLEN);
                st->flags |= F_RS;
            }
            pos += n;
        } else {
            rc = run_dh(sc, st, *t);
        }
    }
    if (rc != DTP_OK) return rc;
    *payload_len = len - pos - ((st->flags & F_K) ? TAGLEN : 0);
    return decrypt_and_hash(sc, st, msg + pos, len - pos, out);
}

/* ---- public API ---------------------------------------------------------------- */

dtp_noise_ctx *dtp_noise_ctx_new(void) {
    dtp_noise_ctx *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) return NULL;
    ctx->blake2s = EVP_MD_fetch(NULL, "BLAKE2S-256", NULL);
    ctx->chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    if (ctx->blake2s == NULL || ctx->chacha == NULL) {
        dtp_noise_ctx_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

void dtp_noise_ctx_free(dtp_noise_ctx *ctx) {
    if (ctx == NULL) return;
    EVP_MD_free(ctx->blake2s);
    EVP_CIPHER_free(ctx->chacha);
    free(ctx);
}

dtp_noise_key *dtp_noise_key_new(const uint8_t *priv, size_t priv_len, int keep_results) {
    if (priv == NULL || priv_len != KEYLEN) return NULL;
    dtp_noise_key *key = calloc(1, sizeof *key);
    if (key == NULL) return NULL;
    size_t len = KEYLEN;
    key->pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, KEYLEN);
    if (key->pkey == NULL || EVP_PKEY_get_raw_public_key(key->pkey, key->pub, &len) != 1 ||
        len != KEYLEN) {
        EVP_PKEY_free(key->pkey);
        free(key);
        ERR_clear_error();
        return NULL;
    }
    if (pthread_mutex_init(&key->derive_lock, NULL) != 0) {
        EVP_PKEY_free(key->pkey);
        free(key);
        return NULL;
    }
    key->keep = keep_results != 0;
    if (key->keep && pthread_mutex_init(&key->lock, NULL) != 0) {
        pthread_mutex_destroy(&key->derive_lock);
        EVP_PKEY_free(key->pkey);
        free(key);
        return NULL;
    }
    return key;
}

/* Destroy a lock nobody holds. In a child forked while a thread of the parent held it,
 * it stays locked for good (the key's users only try it): destroying a locked mutex is
 * undefined, and a default one holds no resources, so it is left as it is. */
static void destroy_lock(pthread_mutex_t *lock) {
    if (pthread_mutex_trylock(lock) != 0) return;
    pthread_mutex_unlock(lock);
    pthread_mutex_destroy(lock);
}

void dtp_noise_key_free(dtp_noise_key *key) {
    if (key == NULL) return;
    EVP_PKEY_CTX_free(key->derive);
    EVP_PKEY_free(key->peer);
    EVP_PKEY_free(key->pkey); /* (OpenSSL cleanses the private key it held) */
    destroy_lock(&key->derive_lock);
    if (key->keep) destroy_lock(&key->lock);
    OPENSSL_cleanse(key, sizeof *key);
    free(key);
}

int dtp_noise_key_public(const dtp_noise_key *key, uint8_t *out, size_t out_cap) {
    if (key == NULL || out == NULL) return DTP_ERR_ARG;
    if (out_cap < KEYLEN) return DTP_ERR_BUFFER;
    memcpy(out, key->pub, KEYLEN);
    return DTP_OK;
}

int dtp_noise_key_dh(dtp_noise_key *key, const uint8_t *pub, size_t pub_len, uint8_t *out,
                     size_t out_cap) {
    if (key == NULL || pub == NULL || out == NULL || pub_len != KEYLEN) return DTP_ERR_ARG;
    if (out_cap < KEYLEN) return DTP_ERR_BUFFER;
    return x25519(key, pub, out);
}

int dtp_noise_key_kept(dtp_noise_key *key, const uint8_t *pub, size_t pub_len) {
    if (key == NULL || pub == NULL || pub_len != KEYLEN) return DTP_ERR_ARG;
    if (!key->keep) return 0;
    int found = 0;
    if (pthread_mutex_trylock(&key->lock) != 0) return 0; /* (busy: as if not kept) */
    for (size_t i = 0; i < key->kept && !found; i++)
        found = memcmp(key->ring[i].peer, pub, KEYLEN) == 0;
    pthread_mutex_unlock(&key->lock);
    return found;
}

int dtp_noise_init(dtp_noise *hs, const dtp_noise_ctx *ctx, int pattern, int initiator,
                   const uint8_t *prologue, size_t prologue_len, dtp_noise_key *s,
                   dtp_noise_key *e, const uint8_t *rs, size_t rs_len) {
    if (hs == NULL || ctx == NULL || s == NULL || (prologue == NULL && prologue_len > 0) ||
        (pattern != DTP_NOISE_IK && pattern != DTP_NOISE_XX))
        return DTP_ERR_ARG;
    /* IK: the initiator has the responder's key from the start, and only it; XX: nobody */
    int want_rs = pattern == DTP_NOISE_IK && initiator;
    if (want_rs ? (rs == NULL || rs_len != KEYLEN) : (rs != NULL || rs_len != 0))
        return DTP_ERR_ARG;
    dtp_noise st;
    memset(&st, 0, sizeof st);
    st.pattern = (uint8_t)pattern;
    st.initiator = initiator != 0;
    st.s = s;
    st.e = e;
    if (want_rs) {
        memcpy(st.rs, rs, KEYLEN);
        st.flags |= F_RS;
    }
    scratch sc;
    int ok = scratch_open(&sc, ctx, 0);
    const char *name = NAMES[pattern - 1];
    /* InitializeSymmetric: the names are longer than HASHLEN, so h = HASH(name) */
    ok = ok && hash3(&sc, (const uint8_t *)name, strlen(name), NULL, 0, NULL, 0, st.h);
    memcpy(st.ck, st.h, HASHLEN);
    ok = ok && mix_hash(&sc, &st, prologue, prologue_len);
    if (ok && pattern == DTP_NOISE_IK) /* pre-message "<- s" */
        ok = mix_hash(&sc, &st, initiator ? st.rs : s->pub, KEYLEN);
    scratch_close(&sc);
    if (!ok) return DTP_ERR_CRYPTO;
    *hs = st;
    return DTP_OK;
}

int dtp_noise_set_ephemeral(dtp_noise *hs, dtp_noise_key *e) {
    if (hs == NULL || e == NULL || !valid(hs) || hs->done != 0 || hs->e != NULL)
        return DTP_ERR_ARG;
    hs->e = e;
    return DTP_OK;
}

int dtp_noise_give_dh(dtp_noise *hs, int token, const uint8_t *secret, size_t secret_len) {
    if (hs == NULL || !valid(hs) || secret == NULL || secret_len != KEYLEN || token < DTP_NOISE_EE ||
        token > DTP_NOISE_SS)
        return DTP_ERR_ARG;
    if (finished(hs)) return DTP_ERR_NOISE_TURN;
    memcpy(hs->given[token], secret, KEYLEN);
    hs->given_mask |= (uint8_t)(1u << token);
    return DTP_OK;
}

int dtp_noise_overhead(const dtp_noise *hs) {
    if (hs == NULL || !valid(hs)) return DTP_ERR_ARG;
    if (finished(hs)) return DTP_ERR_NOISE_TURN;
    return (int)overhead(hs);
}

int dtp_noise_write(dtp_noise *hs, const dtp_noise_ctx *ctx, const uint8_t *payload,
                    size_t payload_len, uint8_t *out, size_t out_cap, size_t *written) {
    if (hs == NULL || ctx == NULL || written == NULL || !valid(hs) ||
        (payload == NULL && payload_len > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (finished(hs) || !my_turn(hs)) return DTP_ERR_NOISE_TURN;
    size_t extra = overhead(hs);
    if (payload_len > DTP_NOISE_MAX_MESSAGE - extra) return DTP_ERR_NOISE_SIZE;
    if (out_cap < payload_len + extra) return DTP_ERR_BUFFER;
    if (payload_len > 0 && out_cap > 0 && (uintptr_t)out < (uintptr_t)payload + payload_len &&
        (uintptr_t)payload < (uintptr_t)out + out_cap)
        return DTP_ERR_ARG; /* (payload inside out: see encrypt_and_hash) */
    dtp_noise st = *hs;
    scratch sc;
    size_t pos = 0;
    int rc = scratch_open(&sc, ctx, 1) ? write_tokens(&sc, &st, payload, payload_len, out, &pos)
                                        : DTP_ERR_NOMEM;
    scratch_close(&sc);
    if (rc == DTP_OK) {
        st.done++;
        *hs = st;
        *written = pos;
    } else {
        OPENSSL_cleanse(out, payload_len + extra);
    }
    OPENSSL_cleanse(&st, sizeof st);
    return rc;
}

int dtp_noise_read(dtp_noise *hs, const dtp_noise_ctx *ctx, const uint8_t *msg, size_t msg_len,
                   uint8_t *out, size_t out_cap, size_t *written) {
    if (hs == NULL || ctx == NULL || written == NULL || !valid(hs) ||
        (msg == NULL && msg_len > 0) || (out == NULL && out_cap > 0))
        return DTP_ERR_ARG;
    *written = 0;
    if (finished(hs) || my_turn(hs)) return DTP_ERR_NOISE_TURN;
    size_t extra = overhead(hs);
    if (msg_len < extra || msg_len > DTP_NOISE_MAX_MESSAGE) return DTP_ERR_NOISE_SIZE;
    if (out_cap < msg_len - extra) return DTP_ERR_BUFFER;
    dtp_noise st = *hs;
    scratch sc;
    size_t plen = 0;
    int rc = scratch_open(&sc, ctx, 1) ? read_tokens(&sc, &st, msg, msg_len, out, &plen)
                                        : DTP_ERR_NOMEM;
    scratch_close(&sc);
    if (rc == DTP_OK) {
        st.done++;
        *hs = st;
        *written = plen;
    } else if (out_cap > 0) {
        OPENSSL_cleanse(out, msg_len - extra);
    }
    OPENSSL_cleanse(&st, sizeof st);
    return rc;
}

int dtp_noise_done(const dtp_noise *hs) {
    if (hs == NULL) return DTP_ERR_ARG;
    return hs->done;
}

void dtp_noise_wipe(dtp_noise *hs) {
    if (hs != NULL) OPENSSL_cleanse(hs, sizeof *hs);
}

int dtp_noise_remote_static(const dtp_noise *hs, uint8_t *out, size_t out_cap) {
    if (hs == NULL || out == NULL || !valid(hs)) return DTP_ERR_ARG;
    if (out_cap < KEYLEN) return DTP_ERR_BUFFER;
    if (!(hs->flags & F_RS)) return 0;
    memcpy(out, hs->rs, KEYLEN);
    return 1;
}

int dtp_noise_hash(const dtp_noise *hs, uint8_t *out, size_t out_cap) {
    if (hs == NULL || out == NULL || !valid(hs)) return DTP_ERR_ARG;
    if (out_cap < HASHLEN) return DTP_ERR_BUFFER;
    if (!finished(hs)) return DTP_ERR_NOISE_TURN;
    memcpy(out, hs->h, HASHLEN);
    return DTP_OK;
}

int dtp_noise_split(dtp_noise *hs, const dtp_noise_ctx *ctx, uint8_t *send_key,
                    uint8_t *recv_key) {
    if (hs == NULL || ctx == NULL || send_key == NULL || recv_key == NULL || !valid(hs))
        return DTP_ERR_ARG;
    if (!finished(hs) || (hs->flags & F_SPLIT)) return DTP_ERR_NOISE_TURN;
    uint8_t k1[HASHLEN], k2[HASHLEN];
    scratch sc;
    int ok = scratch_open(&sc, ctx, 0) && hkdf2(&sc, hs->ck, NULL, 0, k1, k2);
    scratch_close(&sc);
    if (!ok) return DTP_ERR_CRYPTO;
    memcpy(send_key, hs->initiator ? k1 : k2, KEYLEN);
    memcpy(recv_key, hs->initiator ? k2 : k1, KEYLEN);
    OPENSSL_cleanse(k1, sizeof k1);
    OPENSSL_cleanse(k2, sizeof k2);
    /* Noise: the handshake's secrets go once the transport keys exist */
    OPENSSL_cleanse(hs->ck, HASHLEN);
    OPENSSL_cleanse(hs->k, KEYLEN);
    OPENSSL_cleanse(hs->given, sizeof hs->given);
    hs->given_mask = 0;
    hs->e = NULL;
    hs->flags = (uint8_t)((hs->flags & ~F_K) | F_SPLIT);
    return DTP_OK;
}
