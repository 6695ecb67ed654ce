/*
 * sanitize_driver.c -- drives every C entry point with valid and random input, with no
 * Python in the process, so AddressSanitizer, UndefinedBehaviorSanitizer and
 * LeakSanitizer see only the C core. scripts/test.sh builds it with
 * -fsanitize=address,undefined and runs it; any report (or a leak at exit) fails CI.
 *
 * Input comes from a fixed-seed xorshift generator: runs are repeatable.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dtp_core.h"
#include "dtp_internal.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t next(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static void fill(uint8_t *buf, size_t len) {
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)next();
}

static int failures = 0;

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                       \
        }                                                                     \
    } while (0)

static void exercise_frames(void) {
    uint8_t buf[2048], out[4096];
    dtp_frame frames[64];
    dtp_ack_range ranges[64];
    size_t nf, nr, used, written;
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(next() % sizeof buf);
        fill(buf, len);
        if (round % 3 == 0 && len > 0) buf[0] = (uint8_t)(next() % 14); /* plausible type */
        int rc = dtp_frames_decode(buf, len, (int)(round & 1), frames, 1 + next() % 64, ranges,
                                   1 + next() % 64, &nf, &nr, &used);
        CHECK(rc <= DTP_FULL && used <= len);
        if (rc >= 0 && nf > 0) {
            /* what decoded must encode again, canonically, within bounds */
            int erc = dtp_frames_encode(frames, nf, buf, len, ranges, nr, out, sizeof out,
                                        &written);
            CHECK(erc == DTP_OK || erc == DTP_ERR_BUFFER || erc == DTP_ERR_FRAME_VALUE);
        }
        dtp_record recs[16];
        size_t nrec, consumed;
        rc = dtp_records_parse(buf, len, recs, 16, &nrec, &consumed);
        CHECK(consumed <= len);
    }
    /* encode with hostile arguments: out-of-range slices and tiny buffers */
    dtp_frame f = {.type = DTP_FRAME_STREAM, .a = 1, .b = 2, .data_off = 10, .data_len = 100};
    CHECK(dtp_frames_encode(&f, 1, buf, 20, NULL, 0, out, sizeof out, &written) < 0);
    f.data_off = 0;
    f.data_len = 10;
    CHECK(dtp_frames_encode(&f, 1, buf, 20, NULL, 0, out, 3, &written) == DTP_ERR_BUFFER);
}

static void exercise_aead(void) {
    uint8_t key[32], plain[4 * 1024], sealed[4 * 1024 + 4 * 28], opened_plain[8192];
    uint32_t lens[4] = {1024, 0, 2048, 1024};
    dtp_opened opened[8];
    size_t written, n_out, consumed;
    fill(key, sizeof key);
    CHECK(dtp_aead_new(key, 31) == NULL);
    dtp_aead *tx = dtp_aead_new(key, sizeof key);
    dtp_aead *rx = dtp_aead_new(key, sizeof key);
    CHECK(tx != NULL && rx != NULL);
    for (uint64_t batch = 0; batch < 2000; batch++) {
        fill(plain, sizeof plain);
        int rc = dtp_aead_seal_batch(tx, batch * 4, plain, 4096, lens, 4, sealed, sizeof sealed,
                                     &written);
        CHECK(rc == DTP_OK && written == 4096 + 4 * 28);
        if (batch % 5 == 1) sealed[next() % written] ^= (uint8_t)(1u << (next() % 8));
        if (batch % 7 == 2) fill(sealed, written); /* garbage */
        rc = dtp_aead_open_batch(rx, sealed, written - (batch % 11 == 3 ? 9 : 0), opened, 8,
                                 opened_plain, sizeof opened_plain, &n_out, &consumed);
        CHECK(consumed <= written);
        /* replay the same bytes: every authentic record is now a replay */
        rc = dtp_aead_open_batch(rx, sealed, written, opened, 8, opened_plain,
                                 sizeof opened_plain, &n_out, &consumed);
        (void)rc;
    }
    uint8_t ct[64 + 16], pt[64];
    fill(pt, sizeof pt);
    CHECK(dtp_aead_seal_one(tx, 7, key, 12, pt, sizeof pt, ct, sizeof ct, &written) == DTP_OK);
    ct[3] ^= 1;
    CHECK(dtp_aead_open_one(rx, 7, key, 12, ct, sizeof ct, pt, sizeof pt, &written) ==
          DTP_ERR_DECRYPT);
    CHECK(dtp_aead_seal_one(tx, UINT64_MAX, NULL, 0, pt, 1, ct, sizeof ct, &written) ==
          DTP_ERR_COUNTER);
    uint64_t top;
    CHECK(dtp_aead_replay_top(rx, &top) == 1);
    CHECK(dtp_aead_set_in_order(rx) == DTP_ERR_ARG); /* records were accepted */
    CHECK(dtp_aead_set_in_order(NULL) == DTP_ERR_ARG);
    /* in order: batches 0, 1, then 3 (2 missing: every record of 3 is refused) */
    dtp_aead *strict = dtp_aead_new(key, sizeof key);
    CHECK(strict != NULL && dtp_aead_set_in_order(strict) == DTP_OK);
    for (uint64_t batch = 0; batch < 4; batch++) {
        if (batch == 2) continue;
        CHECK(dtp_aead_seal_batch(tx, batch * 4, plain, 4096, lens, 4, sealed, sizeof sealed,
                                  &written) == DTP_OK);
        CHECK(dtp_aead_open_batch(strict, sealed, written, opened, 8, opened_plain,
                                  sizeof opened_plain, &n_out, &consumed) == DTP_OK);
        CHECK(n_out == 4);
        for (size_t i = 0; i < n_out; i++)
            CHECK((opened[i].status == DTP_ERR_REPLAY) == (batch == 3));
    }
    CHECK(dtp_aead_replay_top(strict, &top) == 1 && top == 7);
    dtp_aead_free(strict);
    dtp_aead_free(tx);
    dtp_aead_free(rx);
    dtp_aead_free(NULL);
}

/* dtp_aead_open_frames (the general receive path) on records of plausible and random
 * frames, some tampered, cut or replayed, with small and random output arrays: every
 * reported frame must lie inside what was reported, and the outputs inside their caps. */
static void exercise_open_frames(void) {
    static uint8_t plain[8 * 600], sealed[8 * 600 + 8 * 28], opened[8 * 600];
    uint8_t key[32];
    uint32_t lens[8];
    dtp_opened_rec recs[8];
    static dtp_frame frames[8 * 600];
    static dtp_ack_range ranges[1024];
    size_t written, n_recs, n_frames, n_ranges, consumed, reported[2] = {0, 0};
    fill(key, sizeof key);
    dtp_aead *tx = dtp_aead_new(key, sizeof key);
    dtp_aead *rx = dtp_aead_new(key, sizeof key);
    CHECK(tx != NULL && rx != NULL);
    uint64_t counter = 0;
    for (int round = 0; round < 3000; round++) {
        size_t n = 1 + next() % 8, total = 0;
        for (size_t i = 0; i < n; i++) {
            lens[i] = (uint32_t)(next() % 600);
            uint8_t *p = plain + total;
            fill(p, lens[i]);
            /* mostly frames that decode: PING, PADDING, MAX_DATA, a short STREAM, an ACK */
            if (round % 4 != 3) memset(p, 0, lens[i]); /* PADDING where no frame goes */
            for (size_t k = 0; k + 8 < lens[i] && round % 4 != 3; k += 8) {
                static const uint8_t kinds[][8] = {{1, 1, 1, 1, 1, 1, 1, 1},
                                                   {0, 0, 0, 0, 0, 0, 0, 0},
                                                   {3, 0x3f, 1, 1, 1, 1, 1, 1},
                                                   {8, 4, 0, 3, 'a', 'b', 'c', 1},
                                                   {2, 20, 0, 2, 1, 3, 2, 1}};
                memcpy(p + k, kinds[next() % 5], 8);
            }
            total += lens[i];
        }
        if (counter > 4000 && round % 9 == 4) counter -= 4000; /* some fall under the window */
        int rc = dtp_aead_seal_batch(tx, counter, plain, total, lens, n, sealed, sizeof sealed,
                                     &written);
        CHECK(rc == DTP_OK);
        counter += n;
        if (round % 6 == 1) sealed[next() % written] ^= (uint8_t)(1u << (next() % 8));
        size_t len = round % 5 == 2 ? next() % written : written;
        /* half the time room for everything, else random (FULL stops) */
        int roomy = round % 2 == 0;
        size_t max_recs = roomy ? 8 : next() % 9, max_frames = roomy ? 8 * 600 : next() % 65;
        size_t max_ranges = roomy ? 1024 : next() % 65;
        size_t plain_cap = roomy ? sizeof opened : next() % sizeof opened;
        for (int again = 0; again < 2; again++) {
            rc = dtp_aead_open_frames(rx, sealed, len, recs, max_recs, opened, plain_cap,
                                      frames, max_frames, ranges, max_ranges, &n_recs,
                                      &n_frames, &n_ranges, &consumed);
            CHECK(consumed <= len && n_recs <= max_recs && n_frames <= max_frames &&
                  n_ranges <= max_ranges);
            size_t plain_end = 0, frames_end = 0;
            for (size_t i = 0; i < n_recs; i++) {
                const dtp_opened_rec *o = &recs[i];
                CHECK(o->status == DTP_OK || o->status == DTP_ERR_REPLAY);
                CHECK(o->first_frame == frames_end && o->plain_off == plain_end);
                frames_end += o->n_frames;
                plain_end += o->plain_len;
                for (uint32_t k = o->first_frame; k < o->first_frame + o->n_frames; k++) {
                    const dtp_frame *f = &frames[k];
                    if (f->type == DTP_FRAME_ACK)
                        CHECK(f->a + f->b <= n_ranges);
                    else
                        CHECK(f->data_len == 0 ||
                              (f->data_off >= o->plain_off &&
                               f->data_off + f->data_len <= o->plain_off + o->plain_len));
                }
            }
            CHECK(frames_end == n_frames && plain_end <= plain_cap);
            for (size_t i = 0; i < n_recs; i++) reported[recs[i].status == DTP_OK]++;
            (void)rc; /* the second pass sees the same bytes: now replays (or the stop) */
        }
    }
    CHECK(reported[0] > 1000 && reported[1] > 1000); /* replays, and records opened */
    CHECK(dtp_aead_open_frames(NULL, sealed, 1, recs, 1, opened, 1, frames, 1, ranges, 1,
                               &n_recs, &n_frames, &n_ranges, &consumed) == DTP_ERR_ARG);
    CHECK(dtp_aead_open_frames(rx, sealed, 1, NULL, 1, opened, 1, frames, 1, ranges, 1, &n_recs,
                               &n_frames, &n_ranges, &consumed) == DTP_ERR_ARG);
    dtp_aead_free(tx);
    dtp_aead_free(rx);
}

/* dtp_record_header_write against dtp_records_parse, dtp_stream_seal_size against
 * dtp_stream_seal, and dtp_flow_take's own argument checks. */
static void exercise_small_entry_points(void) {
    uint8_t hdr[DTP_RECORD_HEADER_LEN + 1];
    for (int round = 0; round < 20000; round++) {
        uint8_t kind = (uint8_t)(round % 3 ? next() % 20 : DTP_REC_DATA);
        uint8_t flags = (uint8_t)(round % 7 ? 0 : next());
        uint32_t body = (uint32_t)(next() % 70000);
        uint64_t counter = next();
        size_t cap = round % 11 ? 12 : 11;
        int rc = dtp_record_header_write(kind, flags, body, counter, hdr, cap);
        /* the parser's verdict on the same 12 bytes (the body is not there: NEED_MORE) */
        uint8_t raw[DTP_RECORD_HEADER_LEN] = {kind, flags, (uint8_t)body, (uint8_t)(body >> 8)};
        for (int i = 0; i < 8; i++) raw[4 + i] = (uint8_t)(counter >> (8 * i));
        dtp_record rec;
        size_t n, used;
        int prc = dtp_records_parse(raw, sizeof raw, &rec, 1, &n, &used);
        if (cap < 12)
            CHECK(rc == DTP_ERR_BUFFER);
        else if (body > 0xffff)
            CHECK(rc == DTP_ERR_RECORD_SIZE);
        else
            CHECK(rc == (prc == DTP_NEED_MORE ? DTP_OK : prc) &&
                  (rc != DTP_OK || memcmp(hdr, raw, sizeof raw) == 0));
    }
    CHECK(dtp_record_header_write(DTP_REC_DATA, 0, 16, 0, NULL, 12) == DTP_ERR_BUFFER);

    static uint8_t data[50000], out[50000 + 8 * 53];
    uint8_t key[32];
    fill(key, sizeof key);
    dtp_aead *tx = dtp_aead_new(key, sizeof key);
    CHECK(tx != NULL);
    for (int round = 0; round < 300; round++) {
        static const uint64_t ids[] = {0, 63, 64, 16383, 16384, 1073741823, 1073741824,
                                       DTP_VARINT_MAX, (uint64_t)DTP_VARINT_MAX + 1};
        uint64_t sid = ids[next() % 9], off = ids[next() % 9] - (next() % 2) * (next() % 60000);
        size_t len = next() % sizeof data, chunk = next() % 16400;
        size_t want = dtp_stream_seal_size(sid, off, len, chunk);
        size_t written = 1, n = 1;
        int rc = dtp_stream_seal(tx, 0, sid, off, data, len, (int)(round & 1), chunk, out,
                                 sizeof out, &written, &n);
        CHECK(rc == DTP_OK ? written == want : (want == 0 || rc == DTP_ERR_BUFFER));
        CHECK(rc == DTP_OK || (written == 0 && n == 0));
        /* the same bytes as a head (up to one past its limit) and the rest: the same
         * records, or the same refusal, but for a head over the limit */
        size_t head_len = next() % (DTP_MAX_SEAL_HEAD + 2);
        if (head_len > len) head_len = len;
        static uint8_t out2[sizeof out];
        size_t written2 = 1, n2 = 1;
        int rc2 = dtp_stream_seal_head(tx, 0, sid, off, data, head_len, data + head_len,
                                       len - head_len, (int)(round & 1), chunk, out2,
                                       sizeof out2, &written2, &n2);
        if (head_len > DTP_MAX_SEAL_HEAD)
            CHECK(rc2 == DTP_ERR_ARG && written2 == 0 && n2 == 0);
        else
            CHECK(rc2 == rc && written2 == written && n2 == n &&
                  (rc != DTP_OK || memcmp(out, out2, written) == 0));
    }
    dtp_aead_free(tx);

    static uint8_t scratch[DTP_MAX_RECORD_PLAINTEXT];
    dtp_flow f = {.stream_id = 4, .can_recv = 0};
    f.rx.stream_id = 5;
    f.rx.records = 9;
    CHECK(dtp_flow_take(NULL, &f, data, 0, out, 1, scratch, sizeof scratch, 0.0) == DTP_ERR_ARG);
    dtp_aead *rx = dtp_aead_new(key, sizeof key);
    CHECK(dtp_flow_take(rx, NULL, data, 0, out, 1, scratch, sizeof scratch, 0.0) == DTP_ERR_ARG);
    CHECK(dtp_flow_take(rx, &f, data, 0, out, 1, scratch, sizeof scratch, 0.0) == DTP_STOP &&
          f.rx.records == 0);
    f.can_recv = 1;
    CHECK(dtp_flow_take(rx, &f, data, 0, out, 1, scratch, sizeof scratch, 0.0) == DTP_ERR_ARG);
    dtp_aead_free(rx);
}

/* dtp_rx_take on random runs of records, some damaged or cut, into destinations of any
 * size within random limits; dtp_rx_take_counts on a second receiver, given the same,
 * gives the same status, counts, data and spill. */
static void exercise_rx_take(void) {
    static uint8_t data[40000], sealed[40000 + 8 * 53], dst[50000], dst2[50000];
    static uint8_t scratch[DTP_MAX_RECORD_PLAINTEXT], scratch2[DTP_MAX_RECORD_PLAINTEXT];
    uint8_t key[32];
    size_t written, n, counts[DTP_RX_COUNTS + 1];
    fill(key, sizeof key);
    dtp_aead *tx = dtp_aead_new(key, sizeof key);
    dtp_aead *rx = dtp_aead_new(key, sizeof key);
    dtp_aead *rx2 = dtp_aead_new(key, sizeof key);
    CHECK(tx != NULL && rx != NULL && rx2 != NULL);
    uint64_t counter = 0, offset = 0;
    for (int round = 0; round < 500; round++) {
        size_t len = 1 + next() % sizeof data;
        fill(data, len);
        size_t chunk = round % 2 ? DTP_MAX_STREAM_CHUNK : DTP_MAX_FRAME_DATA; /* (full records) */
        CHECK(dtp_stream_seal(tx, counter, 4, offset, data, len, 0, chunk, sealed, sizeof sealed,
                              &written, &n) == DTP_OK);
        counter += n;
        if (round % 5 == 1) sealed[next() % written] ^= (uint8_t)(1u << (next() % 8));
        size_t cut = round % 3 == 2 ? next() % written : written;
        size_t cap = next() % sizeof dst;
        dtp_rx r = {.stream_id = 4, .offset = offset, .stream_limit = offset + next() % 60000,
                    .conn_received = 0, .conn_limit = next() % 60000};
        dtp_rx before = r;
        int rc = dtp_rx_take(rx, sealed, cut, &r, dst, cap, scratch, sizeof scratch);
        CHECK(rc >= 0 && r.consumed <= cut && r.taken <= cap);
        CHECK(r.spill_off + r.spill_len <= sizeof scratch);
        CHECK(r.offset - offset == r.taken + r.spill_len);
        counts[DTP_RX_COUNTS] = 77; /* (past the counts: left alone) */
        int rc2 = dtp_rx_take_counts(rx2, sealed, cut, before.stream_id, before.offset,
                                     before.stream_limit, before.conn_received, before.conn_limit,
                                     dst2, cap, scratch2, sizeof scratch2, counts,
                                     DTP_RX_COUNTS + 1);
        CHECK(rc2 == rc && counts[DTP_RX_CONSUMED] == r.consumed &&
              counts[DTP_RX_RECORDS] == r.records && counts[DTP_RX_TAKEN] == r.taken &&
              counts[DTP_RX_SPILL_OFF] == r.spill_off && counts[DTP_RX_SPILL_LEN] == r.spill_len &&
              counts[DTP_RX_COUNTS] == 77);
        CHECK(memcmp(dst, dst2, r.taken) == 0);
        CHECK(memcmp(scratch + r.spill_off, scratch2 + r.spill_off, r.spill_len) == 0);
        /* the sender's stream moves on, whatever the receiver made of these bytes */
        offset += len;
        if (r.offset != offset) {
            /* resynchronise: fresh receivers for the next round's counters */
            dtp_aead_free(rx);
            dtp_aead_free(rx2);
            rx = dtp_aead_new(key, sizeof key);
            rx2 = dtp_aead_new(key, sizeof key);
            CHECK(rx != NULL && rx2 != NULL);
        }
    }
    dtp_rx r = {0};
    CHECK(dtp_rx_take(rx, sealed, 1, &r, dst, 1, scratch, 10) == DTP_ERR_ARG);
    CHECK(dtp_rx_take(NULL, sealed, 1, &r, dst, 1, scratch, sizeof scratch) == DTP_ERR_ARG);
    for (size_t i = 0; i < DTP_RX_COUNTS; i++) counts[i] = 9;
    CHECK(dtp_rx_take_counts(rx, sealed, 1, 4, 0, 1, 0, 1, dst, 1, scratch, 10, counts,
                             DTP_RX_COUNTS) == DTP_ERR_ARG);
    for (size_t i = 0; i < DTP_RX_COUNTS; i++) CHECK(counts[i] == 0);
    CHECK(dtp_rx_take_counts(NULL, sealed, 1, 4, 0, 1, 0, 1, dst, 1, scratch, sizeof scratch,
                             counts, DTP_RX_COUNTS) == DTP_ERR_ARG);
    CHECK(dtp_rx_take_counts(rx, sealed, 1, 4, 0, 1, 0, 1, dst, 1, scratch, sizeof scratch,
                             counts, DTP_RX_COUNTS - 1) == DTP_ERR_ARG);
    CHECK(dtp_rx_take_counts(rx, sealed, 1, 4, 0, 1, 0, 1, dst, 1, scratch, sizeof scratch, NULL,
                             DTP_RX_COUNTS) == DTP_ERR_ARG);
    CHECK(dtp_rx_take_counts(rx, NULL, 1, 4, 0, 1, 0, 1, dst, 1, scratch, sizeof scratch, counts,
                             DTP_RX_COUNTS) == DTP_ERR_ARG);
    dtp_aead_free(tx);
    dtp_aead_free(rx);
    dtp_aead_free(rx2);
}

/* dtp_aead_open_lone_frame on one-frame records (a stream's last bytes, or a random
 * plaintext), some damaged, cut, doubled or replayed: what it opens, dtp_aead_open_frames
 * opens alike on a second receiver; what it refuses changes nothing. */
static void exercise_open_lone_frame(void) {
    static uint8_t data[600], sealed[2 * (600 + 64)], plain[sizeof sealed];
    static uint8_t plain2[sizeof sealed];
    dtp_opened_rec recs[4];
    dtp_frame frames[64];
    dtp_ack_range ranges[64];
    dtp_lone_frame lone;
    uint8_t key[32];
    size_t written = 0, n = 0, opened = 0;
    fill(key, sizeof key);
    dtp_aead *tx = dtp_aead_new(key, sizeof key);
    dtp_aead *rx = dtp_aead_new(key, sizeof key);
    dtp_aead *twin = dtp_aead_new(key, sizeof key);
    CHECK(tx != NULL && rx != NULL && twin != NULL);
    for (int round = 0; round < 4000; round++) {
        size_t len = next() % sizeof data;
        fill(data, len);
        uint64_t counter = next() % 64;
        if (round % 2) {
            CHECK(dtp_stream_seal(tx, counter, next() % 100, next() % 1000, data, len, 1,
                                  DTP_MAX_FRAME_DATA, sealed, sizeof sealed, &written,
                                  &n) == DTP_OK);
        } else {
            if (len > 0) data[0] = (uint8_t)(next() % 14); /* a plausible frame type */
            uint32_t lens[1] = {(uint32_t)len};
            CHECK(dtp_aead_seal_batch(tx, counter, data, len, lens, 1, sealed, sizeof sealed,
                                      &written) == DTP_OK);
        }
        size_t size = written;
        if (round % 7 == 3) sealed[next() % size] ^= (uint8_t)(1u << (next() % 8));
        if (round % 11 == 5) size = next() % size;
        if (round % 13 == 6) {
            memcpy(sealed + size, sealed, size); /* the record twice: two records */
            size *= 2;
        }
        size_t cap = round % 17 == 8 ? next() % sizeof plain : sizeof plain;
        int rc = dtp_aead_open_lone_frame(rx, sealed, size, plain, cap, &lone);
        size_t nr = 0, nf = 0, ng = 0, used = 0;
        int gc = dtp_aead_open_frames(twin, sealed, size, recs, 4, plain2, sizeof plain2, frames,
                                      64, ranges, 64, &nr, &nf, &ng, &used);
        CHECK(rc == DTP_OK || rc == DTP_STOP);
        if (rc == DTP_OK) {
            opened++;
            CHECK(gc == DTP_OK && nr == 1 && nf == 1 && used == size);
            CHECK(recs[0].status == DTP_OK && recs[0].counter == lone.counter);
            CHECK(frames[0].type == lone.frame.type && frames[0].a == lone.frame.a &&
                  frames[0].b == lone.frame.b && frames[0].c == lone.frame.c &&
                  frames[0].data_len == lone.frame.data_len);
            CHECK(lone.frame.data_off + lone.frame.data_len <= cap &&
                  memcmp(plain + lone.frame.data_off, plain2 + frames[0].data_off,
                         lone.frame.data_len) == 0);
        } else if (gc >= 0 && nr > 0) {
            /* refused, opened there: the receivers part; start both afresh */
            dtp_aead_free(rx);
            dtp_aead_free(twin);
            rx = dtp_aead_new(key, sizeof key);
            twin = dtp_aead_new(key, sizeof key);
            CHECK(rx != NULL && twin != NULL);
        }
    }
    CHECK(opened > 400); /* (the rounds' lone records, most of them opened) */
    /* a record of one DATAGRAM frame (a quiet flow's datagram) is opened here, once;
     * two of them in one record are not */
    for (size_t count = 1; count <= 2; count++) {
        uint64_t offs[3] = {0, 300, 600}, ends[1];
        fill(data, 600);
        CHECK(dtp_datagram_frames_encode(data, 600, offs, count, DTP_MAX_RECORD_PLAINTEXT,
                                         plain2, sizeof plain2, ends, 1) == 1);
        uint32_t lens[1] = {(uint32_t)ends[0]};
        CHECK(dtp_aead_seal_batch(tx, 100 + count, plain2, ends[0], lens, 1, sealed,
                                  sizeof sealed, &written) == DTP_OK);
        int rc = dtp_aead_open_lone_frame(rx, sealed, written, plain, sizeof plain, &lone);
        if (count == 1) {
            CHECK(rc == DTP_OK && lone.counter == 101 && lone.frame.type == DTP_FRAME_DATAGRAM &&
                  lone.frame.data_len == 300 &&
                  memcmp(plain + lone.frame.data_off, data, 300) == 0);
        } else {
            CHECK(rc == DTP_STOP);
        }
    }
    CHECK(dtp_aead_open_lone_frame(NULL, sealed, 1, plain, 1, &lone) == DTP_ERR_ARG);
    CHECK(dtp_aead_open_lone_frame(rx, NULL, 1, plain, 1, &lone) == DTP_ERR_ARG);
    CHECK(dtp_aead_open_lone_frame(rx, sealed, 1, NULL, 1, &lone) == DTP_ERR_ARG);
    CHECK(dtp_aead_open_lone_frame(rx, sealed, 1, plain, 1, NULL) == DTP_ERR_ARG);
    CHECK(dtp_aead_open_lone_frame(rx, NULL, 0, NULL, 0, &lone) == DTP_STOP);
    dtp_aead_free(tx);
    dtp_aead_free(rx);
    dtp_aead_free(twin);
}

/* dtp_stream_seal_last on answers of every size up to past a record, credit or none,
 * into rooms exact, short or ample: what it seals opens as its two frames; what it
 * refuses writes nothing. */
static void exercise_seal_last(void) {
    static uint8_t data[DTP_MAX_RECORD_PLAINTEXT + 8], sealed[DTP_MAX_RECORD_PLAINTEXT + 64];
    static uint8_t plain[sizeof sealed];
    dtp_opened_rec recs[2];
    dtp_frame frames[4];
    dtp_ack_range ranges[1];
    uint8_t key[32];
    size_t written = 0, ok = 0;
    fill(key, sizeof key);
    dtp_aead *tx = dtp_aead_new(key, sizeof key);
    dtp_aead *rx = dtp_aead_new(key, sizeof key);
    CHECK(tx != NULL && rx != NULL);
    for (uint64_t round = 0; round < 3000; round++) {
        size_t len = round % 5 == 0 ? DTP_MAX_RECORD_PLAINTEXT - 40 + next() % 48
                                    : next() % 300;
        fill(data, len);
        uint64_t sid = next() % 4 == 0 ? next() : next() % 20000;
        uint64_t offset = next() % 4 == 0 ? next() >> 1 : next() % 70000;
        uint64_t limit = next() % 2 ? 0 : next() % 3 == 0 ? next() : next() % 20000;
        int credit = limit > 0;
        size_t cap = round % 3 == 0 ? next() % sizeof sealed : sizeof sealed;
        memset(sealed, 0, sizeof sealed);
        int rc = dtp_stream_seal_last(tx, round, sid, offset, data, len, limit, sealed, cap,
                                      &written);
        if (rc != DTP_OK) {
            CHECK(rc < 0 && written == 0);
            int untouched = 1;
            for (size_t i = 0; i < sizeof sealed; i++) untouched &= sealed[i] == 0;
            CHECK(untouched);
            continue;
        }
        ok++;
        CHECK(written <= cap && written == DTP_RECORD_HEADER_LEN + DTP_AEAD_TAG_LEN +
                                               1 + dtp_varint_size(sid) +
                                               dtp_varint_size(offset) +
                                               dtp_varint_size((uint64_t)len) + len +
                                               (credit ? 1 + dtp_varint_size(limit) : 0));
        size_t nr = 0, nf = 0, ng = 0, used = 0;
        CHECK(dtp_aead_open_frames(rx, sealed, written, recs, 2, plain, sizeof plain, frames,
                                   4, ranges, 1, &nr, &nf, &ng, &used) == DTP_OK);
        CHECK(nr == 1 && nf == (size_t)(1 + credit) && used == written);
        CHECK(frames[0].type == DTP_FRAME_STREAM_FIN && frames[0].a == sid &&
              frames[0].b == offset && frames[0].data_len == len &&
              memcmp(plain + frames[0].data_off, data, len) == 0);
        if (credit) CHECK(frames[1].type == DTP_FRAME_MAX_STREAMS && frames[1].a == limit);
    }
    CHECK(ok > 1000);
    CHECK(dtp_stream_seal_last(NULL, 0, 2, 0, data, 1, 0, sealed, sizeof sealed,
                               &written) == DTP_ERR_ARG);
    CHECK(dtp_stream_seal_last(tx, 0, 2, 0, NULL, 1, 0, sealed, sizeof sealed, &written) ==
          DTP_ERR_ARG);
    CHECK(dtp_stream_seal_last(tx, 0, 2, 0, data, 1, 0, NULL, sizeof sealed, &written) ==
          DTP_ERR_ARG);
    CHECK(dtp_stream_seal_last(tx, 0, 2, 0, data, 1, 0, sealed, sizeof sealed, NULL) ==
          DTP_ERR_ARG);
    CHECK(dtp_stream_seal_last(tx, UINT64_MAX, 2, 0, NULL, 0, 0, sealed, sizeof sealed,
                               &written) == DTP_ERR_COUNTER);
    dtp_aead_free(tx);
    dtp_aead_free(rx);
}

static void exercise_flow(void) {
    static uint8_t data[70000], out[1 << 18], rbuf[1 << 17], dst[80000];
    static uint8_t scratch[DTP_MAX_RECORD_PLAINTEXT];
    uint8_t key1[32], key2[32];
    fill(key1, sizeof key1);
    fill(key2, sizeof key2);
    dtp_aead *a_tx = dtp_aead_new(key1, sizeof key1), *b_rx = dtp_aead_new(key1, sizeof key1);
    CHECK(a_tx != NULL && b_rx != NULL);
    dtp_flow a = {.stream_id = 8, .can_send = 1, .send_limit = 1u << 30, .conn_send_limit = 1u << 30};
    dtp_flow b = {.stream_id = 8, .can_recv = 1, .credit_offset = 1u << 20, .credit_conn = ~0ull};
    b.rx.stream_id = 8;
    b.rx.stream_limit = b.rx.conn_limit = 1u << 30;
    dtp_lane la = {.send = a_tx, .flow = &a, .out = out, .out_cap = sizeof out,
                   .max_chunk = DTP_MAX_FRAME_DATA};
    dtp_lane lb = {.recv = b_rx, .flow = &b, .rbuf = rbuf, .rbuf_cap = sizeof rbuf,
                   .scratch = scratch, .scratch_cap = sizeof scratch};
    int fds[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    for (int i = 0; i < 2; i++) CHECK(fcntl(fds[i], F_SETFL, O_NONBLOCK) == 0);
    int err;
    for (int round = 0; round < 200; round++) {
        size_t len = next() % sizeof data;
        fill(data, len);
        int64_t rc = dtp_lane_send(&la, fds[0], data, len);
        CHECK(rc == (int64_t)a.taken || rc == DTP_ERR_QUEUE);
        CHECK(la.sent <= a.written && a.taken <= len);
        if (rc == DTP_ERR_QUEUE) {
            /* the carrier is full: the reader empties it, then the rest goes */
            size_t rest = a.written - la.sent;
            while (rest > 0) {
                while (dtp_lane_recv(&lb, fds[1], dst, sizeof dst) >= 0 && lb.status != DTP_WAIT)
                    ;
                CHECK(lb.status == DTP_WAIT);
                ssize_t n = send(fds[0], out + a.written - rest, rest, 0);
                CHECK(n > 0);
                rest -= (size_t)n;
            }
        }
        if (round == 199) {
            /* the same through dtp_flow_seal and a tampered copy after the pending bytes */
            int sc = dtp_flow_seal(a_tx, &a, data, len, DTP_MAX_STREAM_CHUNK, out, sizeof out, 2.0);
            CHECK(sc == DTP_OK || sc == DTP_STOP);
            if (a.written > 0) out[next() % a.written] ^= 1;
            size_t n = a.written < sizeof rbuf - lb.pending ? a.written : sizeof rbuf - lb.pending;
            memcpy(rbuf + lb.pending, out, n);
            rc = dtp_lane_take(&lb, n, dst, next() % sizeof dst);
            CHECK(rc >= 0 && b.rx.consumed <= lb.end && lb.pending < sizeof rbuf);
            break; /* the streams no longer agree: the rest would only stop */
        }
        /* read what arrived, in whatever pieces the socket gives, into any room */
        while (dtp_wait_readable(fds[1], -1, 0, &err) == DTP_READY) {
            rc = dtp_lane_recv(&lb, fds[1], dst, next() % sizeof dst);
            CHECK(rc >= 0 && b.rx.consumed <= lb.end && b.rx.taken <= sizeof dst);
            CHECK(lb.pending < sizeof rbuf && lb.end <= sizeof rbuf);
            if (lb.status != DTP_OK && lb.status != DTP_NEED_MORE) break; /* general path */
        }
    }
    CHECK(dtp_wait_readable(-1, -1, 0, &err) == DTP_ERR_ARG);
    CHECK(dtp_lane_recv(&lb, -1, dst, 1) == DTP_ERR_ARG);
    CHECK(dtp_lane_take(&lb, sizeof rbuf + 1, dst, 1) == DTP_ERR_ARG);
    CHECK(dtp_lane_recv(NULL, fds[1], dst, 1) == DTP_ERR_ARG);
    CHECK(dtp_lane_send(NULL, fds[0], data, 1) == DTP_ERR_ARG);
    close(fds[1]);
    int64_t rc = DTP_OK;
    for (int i = 0; i < 50 && rc != DTP_ERR_IO; i++) rc = dtp_lane_send(&la, fds[0], data, 1000);
    CHECK(rc == DTP_ERR_IO && la.err != 0);
    close(fds[0]);
    dtp_aead_free(a_tx);
    dtp_aead_free(b_rx);
}

static void exercise_reasm(void) {
    uint8_t data[4096], out[65536];
    dtp_chunk chunks[16];
    size_t written;
    for (int round = 0; round < 200; round++) {
        dtp_reasm *r = dtp_reasm_new(next() % 1000, 1 + (uint32_t)(next() % 65536),
                                     1 + (uint32_t)(next() % 32));
        CHECK(r != NULL);
        for (int step = 0; step < 50; step++) {
            size_t n = 1 + next() % 16;
            fill(data, sizeof data);
            uint64_t base = dtp_reasm_next_seq(r);
            for (size_t i = 0; i < n; i++) {
                chunks[i].seq = base + next() % 70000;
                chunks[i].data_off = next() % 4096;
                chunks[i].len = (uint32_t)(next() % 600);
                chunks[i].reserved = 0;
            }
            int rc = dtp_reasm_push(r, chunks, n, data, sizeof data);
            CHECK(rc == DTP_OK || rc < 0);
            CHECK(dtp_reasm_pop(r, out, next() % sizeof out, &written) == DTP_OK);
            CHECK(dtp_reasm_readable(r) <= dtp_reasm_buffered(r));
        }
        dtp_reasm_free(r);
    }
    dtp_reasm_free(NULL);
}

/* one update in the HAM wire form; keys/values from a small alphabet so they collide */
static size_t put_update(uint8_t *p, uint64_t soul, uint64_t field, double state,
                         uint64_t value) {
    size_t n = 0;
    p[n++] = 6;
    memcpy(p + n, "soul/", 5);
    p[n + 5] = (uint8_t)('a' + soul % 26);
    n += 6;
    p[n++] = 2;
    p[n++] = 'f';
    p[n++] = (uint8_t)('0' + field % 10);
    memcpy(p + n, &state, 8); /* little-endian host (x86_64, aarch64) */
    n += 8;
    size_t vlen = value % 40;
    p[n++] = (uint8_t)vlen;
    for (size_t i = 0; i < vlen; i++) p[n++] = (uint8_t)(value >> (i % 8));
    return n;
}

static void exercise_ham(void) {
    uint8_t seed[16], batch[64 * 1024], status[2048], changed[64 * 1024], out[64 * 1024];
    size_t n_updates, changed_len, written;
    fill(seed, sizeof seed);
    for (int round = 0; round < 100; round++) {
        dtp_ham *g = dtp_ham_new(4096, seed, sizeof seed);
        CHECK(g != NULL);
        for (int step = 0; step < 20; step++) {
            size_t count = next() % 500, len = 5;
            batch[0] = DTP_HAM_BATCH_VERSION;
            for (size_t i = 0; i < count; i++)
                len += put_update(batch + len, next(), next(), (double)(next() % 2000),
                                  next());
            batch[1] = (uint8_t)count;
            batch[2] = (uint8_t)(count >> 8);
            batch[3] = batch[4] = 0;
            if (step % 4 == 3) batch[next() % len] ^= 0x5a; /* corrupt it */
            int rc = dtp_ham_merge(g, 1000.0, batch, len, status, sizeof status, &n_updates,
                                   changed, sizeof changed, &changed_len);
            CHECK(rc == DTP_OK || rc < 0);
            uint64_t spans[64];
            size_t n_found, cap = next() % 65;
            int found_rc = dtp_ham_find_souls(batch, len, (const uint8_t *)"soul/a", 6, spans,
                                              cap, &n_found);
            CHECK((found_rc == DTP_OK) == (rc == DTP_OK) || found_rc == DTP_ERR_BUFFER);
            for (size_t i = 0; i < n_found && 2 * i + 1 < cap; i++)
                CHECK(spans[2 * i] < spans[2 * i + 1] && spans[2 * i + 1] <= len);
            /* no prefix (NULL, 0): every update is found; memcmp never sees the NULL */
            size_t n_all;
            int all_rc = dtp_ham_find_souls(batch, len, NULL, 0, spans, 0, &n_all);
            CHECK(all_rc == found_rc || all_rc == DTP_ERR_BUFFER || found_rc == DTP_ERR_BUFFER);
            CHECK(all_rc != DTP_OK || n_all == count);
            size_t n_zeroed;
            int zero_rc = dtp_ham_zero_states(batch, len, &n_zeroed);
            CHECK((zero_rc == DTP_OK) == (rc == DTP_OK));
            CHECK(zero_rc != DTP_OK || n_zeroed <= count);
            rc = dtp_ham_advance(g, (double)(step * 100), changed, sizeof changed,
                                 &changed_len);
            CHECK(rc == DTP_OK || rc == DTP_ERR_BUFFER);
        }
        uint64_t cursor = 0;
        int rc;
        do {
            rc = dtp_ham_export(g, &cursor, out, sizeof out, &written);
        } while (rc == DTP_FULL);
        CHECK(rc == DTP_OK);
        double state;
        const uint8_t *value;
        size_t vlen;
        (void)dtp_ham_get(g, (const uint8_t *)"soul/a", 6, (const uint8_t *)"f1", 2, &state,
                          &value, &vlen);
        CHECK(dtp_ham_count(g) > 0); /* the valid batches really merged */
        dtp_ham_free(g);
    }
    dtp_ham_free(NULL);
    /* re-sent deferred updates are queued once; the queue index follows advance() */
    for (int round = 0; round < 50; round++) {
        dtp_ham *g = dtp_ham_new(round % 2 ? 600 : 1 << 20, seed, sizeof seed);
        CHECK(g != NULL);
        for (int step = 0; step < 30; step++) {
            size_t count = next() % 200, len = 5;
            batch[0] = DTP_HAM_BATCH_VERSION;
            for (size_t i = 0; i < count; i++) /* few distinct updates: many repeats */
                len += put_update(batch + len, next() % 3, next() % 2,
                                  (double)(100 + next() % 8), next() % 3);
            batch[1] = (uint8_t)count;
            batch[2] = (uint8_t)(count >> 8);
            batch[3] = batch[4] = 0;
            double clock = (double)(100 + next() % 8);
            int rc = dtp_ham_merge(g, clock, batch, len, status, sizeof status, &n_updates,
                                   changed, sizeof changed, &changed_len);
            CHECK(rc == DTP_OK);
            CHECK(dtp_ham_deferred_count(g) <= 3 * 2 * 8 * 3);
            /* too little room: nothing changes, the room needed is told */
            size_t before = dtp_ham_deferred_count(g);
            rc = dtp_ham_advance(g, clock + 1, changed, 5, &changed_len);
            CHECK(rc == DTP_OK || (rc == DTP_ERR_BUFFER && changed_len > 5 &&
                                   dtp_ham_deferred_count(g) == before));
            if (rc == DTP_ERR_BUFFER) {
                CHECK(changed_len <= sizeof changed);
                size_t need = changed_len;
                rc = dtp_ham_advance(g, clock + 1, changed, need, &changed_len);
                CHECK(rc == DTP_OK && changed_len <= need);
            }
        }
        CHECK(dtp_ham_advance(g, 1e9, changed, sizeof changed, &changed_len) == DTP_OK);
        CHECK(dtp_ham_deferred_count(g) == 0 && dtp_ham_deferred_bytes(g) == 0);
        dtp_ham_free(g);
    }
    /* random garbage batches */
    dtp_ham *g = dtp_ham_new(1024, seed, sizeof seed);
    for (int round = 0; round < 20000; round++) {
        size_t len = next() % 300;
        fill(batch, len);
        if (len > 0 && round % 2) batch[0] = DTP_HAM_BATCH_VERSION;
        (void)dtp_ham_merge(g, 5.0, batch, len, status, sizeof status, &n_updates, changed,
                            sizeof changed, &changed_len);
    }
    dtp_ham_free(g);
}

/* One Noise handshake of `pattern` between fresh keys, every message's bytes also read
 * back spoiled (truncated, bit-flipped, random) by the reader first: those must fail and
 * change nothing. Returns 1 when both sides completed with matching keys. */
static int noise_round(const dtp_noise_ctx *ctx, int pattern) {
    uint8_t priv[4][32], pub_s[32], msg[512], bad[512], payload[128], out[512];
    dtp_noise_key *keys[4];
    for (int i = 0; i < 4; i++) {
        fill(priv[i], 32);
        keys[i] = dtp_noise_key_new(priv[i], 32, i == 2);
    }
    int ok = keys[0] && keys[1] && keys[2] && keys[3];
    dtp_noise hs[2];
    if (ok) {
        CHECK(dtp_noise_key_public(keys[2], pub_s, sizeof pub_s) == DTP_OK);
        int ik = pattern == DTP_NOISE_IK;
        CHECK(dtp_noise_init(&hs[0], ctx, pattern, 1, (const uint8_t *)"p", 1, keys[0], keys[1],
                             ik ? pub_s : NULL, ik ? 32 : 0) == DTP_OK);
        CHECK(dtp_noise_init(&hs[1], ctx, pattern, 0, (const uint8_t *)"p", 1, keys[2], NULL,
                             NULL, 0) == DTP_OK);
        CHECK(dtp_noise_set_ephemeral(&hs[1], keys[3]) == DTP_OK);
        int messages = ik ? 2 : 3;
        for (int m = 0; m < messages && ok; m++) {
            dtp_noise *w = &hs[m % 2], *r = &hs[1 - m % 2];
            size_t plen = next() % sizeof payload, written = 0, got = 0;
            fill(payload, plen);
            CHECK(dtp_noise_read(w, ctx, msg, 0, out, sizeof out, &got) == DTP_ERR_NOISE_TURN);
            CHECK(dtp_noise_write(w, ctx, payload, plen, msg, 8, &written) == DTP_ERR_BUFFER);
            ok = dtp_noise_write(w, ctx, payload, plen, msg, sizeof msg, &written) == DTP_OK;
            CHECK(ok);
            for (int k = 0; k < 8 && ok; k++) {
                size_t blen = written;
                memcpy(bad, msg, written);
                if (k == 0) blen = next() % written;
                else if (k < 4) bad[next() % written] ^= (uint8_t)(1u << (next() % 8));
                else fill(bad, blen = next() % sizeof bad);
                dtp_noise before = *r;
                int rc = dtp_noise_read(r, ctx, bad, blen, out, sizeof out, &got);
                if (rc != DTP_OK) CHECK(memcmp(&before, r, sizeof before) == 0);
                else *r = before; /* (XX message 1 reads whatever follows e: undo) */
            }
            ok = ok && dtp_noise_read(r, ctx, msg, written, out, sizeof out, &got) == DTP_OK &&
                 got == plen && memcmp(out, payload, plen) == 0;
            CHECK(ok);
        }
        uint8_t h0[32], h1[32], s0[32], r0[32], s1[32], r1[32];
        if (ok) {
            CHECK(dtp_noise_hash(&hs[0], h0, 32) == DTP_OK && dtp_noise_hash(&hs[1], h1, 32) == DTP_OK);
            CHECK(memcmp(h0, h1, 32) == 0);
            CHECK(dtp_noise_split(&hs[0], ctx, s0, r0) == DTP_OK);
            CHECK(dtp_noise_split(&hs[1], ctx, s1, r1) == DTP_OK);
            CHECK(memcmp(s0, r1, 32) == 0 && memcmp(r0, s1, 32) == 0);
            CHECK(dtp_noise_split(&hs[0], ctx, s0, r0) == DTP_ERR_NOISE_TURN);
        }
    }
    for (int i = 0; i < 4; i++) dtp_noise_key_free(keys[i]);
    return ok;
}

static void exercise_noise(void) {
    dtp_noise_ctx *ctx = dtp_noise_ctx_new();
    CHECK(ctx != NULL);
    if (ctx == NULL) return;
    for (int round = 0; round < 200; round++)
        CHECK(noise_round(ctx, round % 2 ? DTP_NOISE_XX : DTP_NOISE_IK));
    /* misuse: a zeroed state, wrong lengths, a low-order key */
    dtp_noise zero;
    uint8_t buf[64], key[32], low[32] = {0};
    size_t n = 0;
    memset(&zero, 0, sizeof zero);
    CHECK(dtp_noise_write(&zero, ctx, NULL, 0, buf, sizeof buf, &n) == DTP_ERR_ARG);
    CHECK(dtp_noise_read(&zero, ctx, buf, 10, buf, sizeof buf, &n) == DTP_ERR_ARG);
    CHECK(dtp_noise_key_new(key, 31, 0) == NULL);
    fill(key, sizeof key);
    dtp_noise_key *k = dtp_noise_key_new(key, 32, 1);
    CHECK(k != NULL);
    CHECK(dtp_noise_key_dh(k, low, 32, buf, sizeof buf) == DTP_ERR_NOISE_DH);
    CHECK(dtp_noise_key_dh(k, low, 31, buf, sizeof buf) == DTP_ERR_ARG);
    CHECK(dtp_noise_key_kept(k, low, 32) == 0);
    CHECK(dtp_noise_init(&zero, ctx, 3, 1, NULL, 0, k, NULL, NULL, 0) == DTP_ERR_ARG);
    CHECK(dtp_noise_init(&zero, ctx, DTP_NOISE_IK, 1, NULL, 0, k, NULL, NULL, 0) == DTP_ERR_ARG);
    /* a started state: payload inside out is refused; wiped, it is refused everywhere */
    CHECK(dtp_noise_init(&zero, ctx, DTP_NOISE_XX, 1, NULL, 0, k, k, NULL, 0) == DTP_OK);
    CHECK(dtp_noise_write(&zero, ctx, buf + 40, 8, buf, sizeof buf, &n) == DTP_ERR_ARG);
    CHECK(dtp_noise_done(&zero) == 0);
    CHECK(dtp_noise_write(&zero, ctx, buf + 40, 8, buf, 40, &n) == DTP_OK && n == 40);
    CHECK(dtp_noise_done(&zero) == 1);
    dtp_noise_wipe(&zero);
    CHECK(dtp_noise_done(&zero) == 0 && zero.s == NULL);
    CHECK(dtp_noise_overhead(&zero) == DTP_ERR_ARG);
    dtp_noise_wipe(NULL);
    dtp_noise_key_free(k);
    dtp_noise_ctx_free(ctx);
}

/* A run of DATAGRAM frames: random runs and limits, every buffer exactly as small as
 * allowed, and one byte or one record short (refused before anything is written). */
static void exercise_datagrams(void) {
    static uint8_t data[8192], out[8192 + 64 * 4];
    uint64_t offs[65], ends[65];
    for (int round = 0; round < 2000; round++) {
        size_t n = next() % 65, p = 0;
        offs[0] = 0;
        for (size_t i = 0; i < n; i++) {
            p += next() % 128;
            offs[i + 1] = p;
        }
        fill(data, p);
        size_t limit = 1 + next() % 600, total = 0;
        for (size_t i = 0; i < n; i++) {
            size_t len = (size_t)(offs[i + 1] - offs[i]);
            total += 1 + (len < 64 ? 1 : 2) + len;
        }
        int64_t records = dtp_datagram_frames_encode(data, p, offs, n, limit, out, sizeof out,
                                                     ends, 65);
        if (records < 0) {
            CHECK(records == DTP_ERR_FRAME_SIZE);
            continue;
        }
        CHECK((records == 0) == (n == 0) && (size_t)records <= n);
        if (records <= 0) continue;
        CHECK(ends[records - 1] == total);
        for (int64_t k = 0; k < records; k++)
            CHECK(ends[k] - (k ? ends[k - 1] : 0) <= limit && ends[k] > (k ? ends[k - 1] : 0));
        memset(out, 0xAB, sizeof out);
        CHECK(dtp_datagram_frames_encode(data, p, offs, n, limit, out, total - 1, ends, 65) ==
              DTP_ERR_BUFFER);
        CHECK(dtp_datagram_frames_encode(data, p, offs, n, limit, out, total, ends,
                                         (size_t)records - 1) == DTP_ERR_BUFFER);
        CHECK(out[0] == 0xAB); /* nothing written on either refusal */
        CHECK(dtp_datagram_frames_encode(data, p, offs, n, limit, out, total, ends,
                                         (size_t)records) == records);
        if (p > 0) /* a slice past the data */
            CHECK(dtp_datagram_frames_encode(data, p - 1, offs, n, limit, out, sizeof out, ends,
                                             65) == DTP_ERR_ARG);
    }
    CHECK(dtp_datagram_frames_encode(data, 0, offs, 0, 0, out, sizeof out, ends, 65) == DTP_ERR_ARG);
}

/* A run of one size over UDP loopback, sent segmented where the socket takes it (the
 * answer asked once, then given): each datagram arrives apart, whole. */
static void exercise_udp_gso(void) {
    int tx = socket(AF_INET, SOCK_DGRAM, 0), rx = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to;
    socklen_t to_len = sizeof to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (tx < 0 || rx < 0 || bind(rx, (struct sockaddr *)&to, sizeof to) != 0 ||
        getsockname(rx, (struct sockaddr *)&to, &to_len) != 0) {
        CHECK(0);
        return;
    }
    fcntl(rx, F_SETFL, fcntl(rx, F_GETFL) | O_NONBLOCK);
    int gso = dtp_udp_takes_gso(tx);
    CHECK(gso == 0 || gso == 1); /* (1 from Linux 4.18 on) */
    static uint8_t data[8 * 200], buf[8 * 512];
    uint64_t offs[9], sent = 0;
    uint32_t lens[8], alens[8];
    int err = 0;
    for (size_t i = 0; i <= 8; i++) offs[i] = i * 200 - (i == 8 ? 50 : 0); /* a shorter last */
    fill(data, sizeof data);
    CHECK(dtp_udp_send_run(tx, data, sizeof data, offs, 8, (const uint8_t *)&to, to_len, gso,
                           &sent, &err) == 8);
    CHECK(sent == offs[8] && err == 0);
    int64_t got = 0;
    for (int tries = 0; got < 8 && tries < 1000; tries++) {
        int64_t r = dtp_udp_recv_run(rx, buf + got * 512, sizeof buf - (size_t)got * 512, 512,
                                     8 - (size_t)got, lens + got, NULL, 0, 128, alens, &err);
        CHECK(r >= 0);
        if (r > 0) {
            got += r;
        } else {
            struct pollfd wait = {.fd = rx, .events = POLLIN};
            (void)poll(&wait, 1, 10);
        }
    }
    CHECK(got == 8);
    for (int64_t i = 0; i < got && i < 8; i++)
        CHECK(lens[i] == offs[i + 1] - offs[i] &&
              memcmp(buf + i * 512, data + offs[i], lens[i]) == 0);
    close(tx);
    close(rx);
}

/* UDP runs over a datagram socket pair: runs in and out, and the bounds refused
 * before any system call. */
static void exercise_udp(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) {
        CHECK(0);
        return;
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
    static uint8_t data[4096], buf[8 * 512];
    uint64_t offs[9], sent = 0;
    uint32_t lens[8], alens[8];
    uint8_t addrs[8 * 128];
    int err = 0;
    for (int round = 0; round < 200; round++) {
        size_t n = 1 + next() % 8, p = 0;
        offs[0] = 0;
        for (size_t i = 0; i < n; i++) {
            p += next() % 512;
            offs[i + 1] = p;
        }
        fill(data, p);
        /* (gso asked or known not taken: a Unix socket would ignore UDP's control
         * message; the first call, said to take it, sends nothing or only empty
         * datagrams, which are never grouped) */
        int gso = -(int)(round % 2);
        CHECK(dtp_udp_send_run(sv[0], data, p - (p > 0), offs, n, NULL, 0, 1, &sent, &err) ==
              (p > 0 ? DTP_ERR_ARG : (int64_t)n));
        if (p == 0) {
            CHECK(dtp_udp_recv_run(sv[1], buf, sizeof buf, 512, 8, lens, NULL, 0, 128, alens, &err) ==
                  (int64_t)n);
            continue;
        }
        CHECK(dtp_udp_send_run(sv[0], data, p, offs, n, NULL, 0, gso, &sent, &err) == (int64_t)n);
        CHECK(sent == p && err == 0);
        CHECK(dtp_udp_recv_run(sv[1], buf, sizeof buf - 1, 512, 8, lens, NULL, 0, 128, alens,
                               &err) == DTP_ERR_ARG);
        CHECK(dtp_udp_recv_run(sv[1], buf, sizeof buf, 512, 8, lens, addrs, sizeof addrs - 1, 128,
                               alens, &err) == DTP_ERR_ARG);
        int64_t got = dtp_udp_recv_run(sv[1], buf, sizeof buf, 512, 8, lens, addrs, sizeof addrs,
                                       128, alens, &err);
        CHECK(got == (int64_t)n);
        for (int64_t i = 0; i < got && i < (int64_t)n; i++)
            CHECK(lens[i] == offs[i + 1] - offs[i] &&
                  memcmp(buf + i * 512, data + offs[i], lens[i]) == 0);
        /* one peer sent them all: one source, counted within the slots given */
        CHECK(dtp_udp_same_source(addrs, sizeof addrs, 128, alens, n) == (int64_t)n);
        CHECK(dtp_udp_same_source(addrs, n * 128 - 1, 128, alens, n) == DTP_ERR_ARG);
    }
    CHECK(dtp_udp_recv_run(sv[1], buf, sizeof buf, 512, 8, lens, NULL, 0, 128, alens, &err) == 0);
    CHECK(dtp_udp_takes_gso(sv[0]) == 0); /* (a Unix socket: no segmented sends) */
    CHECK(dtp_udp_takes_gso(-1) == DTP_ERR_ARG);
    CHECK(dtp_udp_send_run(-1, data, 1, offs, 0, NULL, 0, -1, &sent, &err) == DTP_ERR_ARG);
    close(sv[0]);
    close(sv[1]);
    exercise_udp_gso();
}

int main(void) {
    exercise_noise();
    exercise_frames();
    exercise_datagrams();
    exercise_udp();
    exercise_aead();
    exercise_open_frames();
    exercise_small_entry_points();
    exercise_rx_take();
    exercise_open_lone_frame();
    exercise_seal_last();
    exercise_flow();
    exercise_reasm();
    exercise_ham();
    if (failures) {
        fprintf(stderr, "sanitize_driver: %d checks failed\n", failures);
        return 1;
    }
    printf("sanitize_driver: every entry point exercised, no sanitizer report\n");
    return 0;
}
